"""One API key shared by four step processes (``dagster asset materialize``, multiprocess
executor) against a server that enforces 1,200 requests a minute per key the way OpenAI
does: each process paces itself from the rate-limit headers alone, so together they stay
under the limit with at most 1% of requests answered 429. (That they also sustain ≥ 95%
of it is proven on a fake clock in accounting/test_provider_pacing.py and measured in
benchmarks/shared_rate_limit.py; this test prints the rate it saw and asserts no timing.)
"""

import pytest

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets.testing.ratelimits import ProviderLimits
from llm_assets_tests.scale.runs import dagster_home, materialize, only_run, step_processes

LIMIT, PROCESSES, ROWS = 1200, 4, 300  # 1,200 requests: a minute at the limit


@pytest.mark.slow
def test_four_step_processes_sharing_a_key_stay_under_its_limit(tmp_path):
    limits = ProviderLimits(requests_per_minute=LIMIT, tokens_per_minute=None, window_seconds=1)
    with ScriptedOpenAIServer(provider_limits=limits, latency=0.02) as server:
        home = dagster_home(tmp_path / "home")
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-shared-key"}
        env.update(SCALE_ASSETS=str(PROCESSES), SCALE_ROWS=str(ROWS))
        done = materialize(home, "llm_assets_tests.scale.steps", "*", env, max_concurrent=PROCESSES)
        assert done.returncode == 0, done.stderr[-3000:]
        instance, run = only_run(home)
        assert len(set(step_processes(instance, run.run_id).values())) == 1 + PROCESSES
        key = limits.stats()["keys"]["sk-shared-key"]
        assert key["accepted"] == PROCESSES * ROWS
        assert key["rejected"] <= 0.01 * (key["accepted"] + key["rejected"])
        span = key["last_accepted"] - key["first_accepted"]
        print(f"{key['accepted'] / span * 60 / LIMIT:.1%} of the limit, {key['rejected']} 429s")
