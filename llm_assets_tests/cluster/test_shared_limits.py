"""One run's budget, and one key's rate limit, held by steps on three Celery workers at once
(the scale tests' three answers assets, :mod:`llm_assets_tests.cluster.scale`): the budget
in the instance's Postgres, the rate from the provider's headers alone."""

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets.testing.ratelimits import ProviderLimits
from llm_assets_tests.cluster.cluster import runs, step_workers
from llm_assets_tests.scale.runs import largest_estimate

SCALE = "llm_assets_tests.cluster.scale"
ASSETS = 3


def workers_of_answers(cluster) -> set[str]:
    instance = cluster.instance
    (run,) = runs(instance)
    found = step_workers(instance, run.run_id)
    return {found[f"answers_{n}"] for n in range(ASSETS) if f"answers_{n}" in found}


def test_one_run_budget_holds_across_three_workers(cluster):
    budget, rows = 1_500, 40  # each asset alone would spend ~1,100 tokens
    cluster.server.latency = 0.01
    cluster.env.update(SCALE_ASSETS=str(ASSETS), SCALE_ROWS=str(rows), SCALE_BUDGET=str(budget))
    with cluster.workers(ASSETS):
        run = cluster.launch("*", partitions=None, module=SCALE)
    output = cluster.output(run)
    assert run.returncode != 0 and "max_tokens_per_run 1500 would be exceeded" in output, output[-5000:]
    assert len(workers_of_answers(cluster)) == ASSETS, "the three steps did not run on three workers"
    server = cluster.server
    largest, billed = largest_estimate(server), server.usage.total_tokens
    print(f"billed {billed} tokens of a {budget} budget; the largest estimate {largest}")
    assert billed <= budget + ASSETS * largest  # the budget, plus at most one estimate in flight per worker
    assert billed > budget - ASSETS * 4 * largest  # less only what was in flight (max_concurrency 4 each)
    spent = {n: server.usage_where(lambda b, n=n: f"asset {n}:" in str(b["messages"])).calls for n in range(ASSETS)}
    assert sum(1 for calls in spent.values() if calls) >= 2, f"the steps did not share it: {spent}"


def test_one_keys_rate_limit_holds_across_three_workers(cluster):
    """At 1,200 requests a minute per key (OpenAI's headers), three workers together stay
    under it with at most 1% answered 429. (The rate they reach is timed in
    benchmarks/cluster.py; this test prints it and asserts no timing.)"""
    limit, rows = 1200, 300
    limits = ProviderLimits(requests_per_minute=limit, tokens_per_minute=None, window_seconds=1)
    with ScriptedOpenAIServer(provider_limits=limits, latency=0.02) as server:
        cluster.env.update(OPENAI_BASE_URL=server.base_url, SCALE_ASSETS=str(ASSETS), SCALE_ROWS=str(rows))
        with cluster.workers(ASSETS):
            run = cluster.launch("*", partitions=None, module=SCALE)
        assert run.returncode == 0, cluster.output(run)[-5000:]
    assert len(workers_of_answers(cluster)) == ASSETS, "the three steps did not run on three workers"
    key = limits.stats()["keys"]["sk-cluster-test-key"]
    assert key["accepted"] == ASSETS * rows
    assert key["rejected"] <= 0.01 * (key["accepted"] + key["rejected"]), key
    span = key["last_accepted"] - key["first_accepted"]
    print(f"{key['accepted'] / span * 60 / limit:.1%} of the limit, {key['rejected']} 429s")
