"""``dagster dev``, as a user runs it: a run launched through its GraphQL API (what the
UI's Materialize button does) executes three LLM steps in their own processes, and one
``max_tokens_per_run`` stops them together at the budget."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request

import dagster as dg
import pytest

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.scale.runs import (
    DAGSTER,
    REPO,
    dagster_environment,
    dagster_home,
    largest_estimate,
    step_processes,
)

BUDGET, ASSETS = 1_500, 3
CONCURRENCY = 4  # max_concurrency of each step (steps.py)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dagster_dev(home, env: dict[str, str]):
    """``dagster dev`` on the scale test definitions, its output in ``home/dev.log``; yields
    its port once it answers. Stopped by process group: SIGINT, then SIGKILL for the rest."""
    port = free_port()
    environment = dagster_environment(home, env)
    command = [str(DAGSTER), "dev", "-m", "llm_assets_tests.scale.steps", "-h", "127.0.0.1", "-p", str(port)]
    log = open(home / "dev.log", "wb")  # noqa: SIM115 (closed in finally)
    process = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        for _ in range(1200):  # up to 2 minutes on a busy machine: a readiness poll, not a timing assert
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=1).close()
                break
            assert process.poll() is None, (home / "dev.log").read_text()[-3000:]
            time.sleep(0.1)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:gql")
def test_a_run_launched_in_dagster_dev_keeps_one_budget_across_its_steps(tmp_path):
    from dagster_graphql import DagsterGraphQLClient

    with ScriptedOpenAIServer(latency=0.01) as server:
        home = dagster_home(tmp_path / "home")
        env = {"OPENAI_BASE_URL": server.base_url, "SCALE_ASSETS": str(ASSETS), "SCALE_ROWS": "40"}
        env["SCALE_BUDGET"] = str(BUDGET)
        with dagster_dev(home, env) as port:
            client = DagsterGraphQLClient("127.0.0.1", port_number=port)
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
