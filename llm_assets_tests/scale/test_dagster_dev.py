"""``dagster dev``, as a user runs it: a run launched through its GraphQL API (what the
UI's Materialize button does) executes three LLM steps in their own processes, and one
``max_tokens_per_run`` stops them together at the budget."""

import time

import dagster as dg
import pytest

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.scale.runs import (
    dagster_dev,
    dagster_home,
    largest_estimate,
    step_processes,
)

BUDGET, ASSETS = 1_500, 3
CONCURRENCY = 4  # max_concurrency of each step (steps.py)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:gql")
def test_a_run_launched_in_dagster_dev_keeps_one_budget_across_its_steps(tmp_path):
    from dagster_graphql import DagsterGraphQLClient

    with ScriptedOpenAIServer(latency=0.01) as server:
        home = dagster_home(tmp_path / "home")
        env = {"OPENAI_BASE_URL": server.base_url, "SCALE_ASSETS": str(ASSETS), "SCALE_ROWS": "40"}
        env["SCALE_BUDGET"] = str(BUDGET)
        with dagster_dev(home, env, home / "dev.log", "-m", "llm_assets_tests.scale.steps") as url:
            client = DagsterGraphQLClient("127.0.0.1", port_number=int(url.rsplit(":", 1)[1]))
            config = {"execution": {"config": {"multiprocess": {"max_concurrent": 4}}}}
            run_id = client.submit_job_execution("__ASSET_JOB", run_config=config)
            done = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
            for _ in range(600):  # up to 5 minutes: polling the run's status, not timing it
                if (status := client.get_run_status(run_id)) in done:
                    break
                time.sleep(0.5)
        assert status == dg.DagsterRunStatus.FAILURE
        with dg.DagsterInstance.from_config(str(home)) as instance:
            failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            messages = [event.dagster_event.step_failure_data.error.to_string() for event in failures]
            assert any(f"max_tokens_per_run {BUDGET} would be exceeded" in message for message in messages)
            assert len(set(step_processes(instance, run_id).values())) == 1 + ASSETS
        largest = largest_estimate(server)
        assert server.usage.total_tokens <= BUDGET + ASSETS * largest  # plus one estimate in flight per process
        assert server.usage.total_tokens > BUDGET - ASSETS * CONCURRENCY * largest  # less only what was in flight
