"""The shapes users run: ``dagster asset materialize`` with the multiprocess executor (one
process per step), on SQLite and on Postgres-backed instances.

- usage recorded per asset and per partition equals the server's own totals;
- one ``max_tokens_per_run`` holds across parallel steps: the server bills at most the
  budget plus one in-flight estimate per process;
- a Dagster pool runs LLM steps one at a time.
"""

import pytest

from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.scale.runs import (
    dagster_home,
    largest_estimate,
    materialization_metadata,
    materialize,
    only_run,
    set_pool_limit,
    step_processes,
)

pytestmark = pytest.mark.slow  # each test starts several dagster processes

CAPTAINS = ["Kirk", "Picard", "Sisko", "Janeway", "Archer", "Pike", "Burnham"]


def usage_of(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k.startswith("openai.")}


def test_captains_in_step_processes_record_exact_usage_per_asset_and_partition(tmp_path):
    with ScriptedOpenAIServer() as server:
        home = dagster_home(tmp_path / "home")
        env = {"OPENAI_BASE_URL": server.base_url}
        select = "captains/answers,captains/embeddings"
        done = materialize(home, "llm_assets.examples.captains", select, env, "--partition-range", "Kirk...Burnham")
        assert done.returncode == 0, done.stderr[-3000:]
        instance, run = only_run(home)
        processes = step_processes(instance, run.run_id)
        assert set(processes) == {"captains__answers", "captains__embeddings"}
        assert len(set(processes.values())) == 2  # each step in its own process
        answered_for = {}  # answer text -> the captain it was asked for
        for _, _, body in server.stats.billed:
            if "messages" in body:
                captain = next(c for c in CAPTAINS if f"Captain {c} " in body["messages"][0]["content"])
                answered_for[server.chat(body)[1][0]] = captain
        for captain in CAPTAINS:
            chat = server.usage_where(lambda b, c=captain: "messages" in b and f"Captain {c} " in str(b["messages"]))
            embedded = server.usage_where(
                lambda b, c=captain: "input" in b and {answered_for[text] for text in b["input"]} == {c}
            )
            assert usage_of(materialization_metadata(instance, "captains/answers", captain)) == chat.to_metadata(PRICES)
            assert usage_of(materialization_metadata(instance, "captains/embeddings", captain)) == (
                embedded.to_metadata(PRICES)
            )
            assert chat.calls == 1 and embedded.calls == 1
        assert server.stats.paths["/v1/embeddings"] == len(CAPTAINS)  # so every input was one captain's


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_one_budget_holds_across_parallel_step_processes(storage, tmp_path, request):
    postgres_url = request.getfixturevalue("postgres_url") if storage == "postgres" else None
    budget, assets, rows = 1_500, 3, 40  # each asset alone would spend ~1,100 tokens
    with ScriptedOpenAIServer(latency=0.01) as server:
        home = dagster_home(tmp_path / "home", postgres_url)
        env = {"OPENAI_BASE_URL": server.base_url, "SCALE_ASSETS": str(assets), "SCALE_ROWS": str(rows)}
        env["SCALE_BUDGET"] = str(budget)
        done = materialize(home, "llm_assets_tests.scale.steps", "*", env)
        assert done.returncode != 0 and "max_tokens_per_run 1500 would be exceeded" in done.stderr
        instance, run = only_run(home)
        assert len(set(step_processes(instance, run.run_id).values())) == 1 + assets  # questions + 3 LLM steps
        largest = largest_estimate(server)
        billed = server.usage.total_tokens
        assert billed <= budget + assets * largest  # the budget, plus at most one estimate in flight each
        assert billed > budget - assets * 4 * largest  # less only what was in flight (max_concurrency 4 each)
        spent = {n: server.usage_where(lambda b, n=n: f"asset {n}:" in str(b["messages"])).calls for n in range(3)}
        assert sum(1 for calls in spent.values() if calls) >= 2  # steps in parallel shared it


def test_a_pool_runs_llm_steps_one_at_a_time(tmp_path):
    with ScriptedOpenAIServer(latency=0.02) as server:
        home = dagster_home(tmp_path / "home")
        env = {"OPENAI_BASE_URL": server.base_url, "SCALE_ASSETS": "3", "SCALE_ROWS": "8", "SCALE_POOL": "llm"}
        set_pool_limit(home, "llm", 1)
        done = materialize(home, "llm_assets_tests.scale.steps", "*", env)
        assert done.returncode == 0, done.stderr[-3000:]
        order = [
            next(n for n in range(3) if f"asset {n}:" in str(r["body"]["messages"])) for r in server.stats.requests
        ]
        assert order == sorted(order, key=order.index)  # each asset's requests all came together: no overlap
        assert len(set(order)) == 3 and server.stats.max_in_flight <= 4  # one step's max_concurrency
