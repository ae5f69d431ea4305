"""One API key shared by 4 step processes: header-driven pacing against none.

``dagster asset materialize`` runs 4 chat answers assets (1,000 requests each) in 4 step
processes (the multiprocess executor) with one key, against a loopback server in its own
process that enforces 1,200 requests a minute per key the way OpenAI does (quantized to
a second: 20 a second, headers, 429 bodies, ``retry-after-ms``). Reports the rate the
server accepted as a fraction of the limit, the share of requests answered 429, and the
completion time next to the ideal (total ÷ limit), with the provider's headers followed
(the default) and ignored (only the SDK's retries on 429, 20 of them).

Run: ``.venv/bin/python benchmarks/shared_rate_limit.py [ROWS_PER_PROCESS]``.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, report

from llm_assets_tests.scale.runs import dagster_home, materialize

LIMIT, PROCESSES, KEY = 1200, 4, "sk-shared-key"


def run(rows: int, follow: bool) -> None:
    server = Server(0.02, 16, "--rpm", str(LIMIT), "--window", "1")
    try:
        with tempfile.TemporaryDirectory() as folder:
            env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "SCALE_ASSETS": str(PROCESSES)}
            env.update(SCALE_ROWS=str(rows), SCALE_FOLLOW="1" if follow else "0", SCALE_MAX_RETRIES="20")
            started = time.perf_counter()
            done = materialize(dagster_home(Path(folder)), "llm_assets_tests.scale.steps", "*", env)
            wall = time.perf_counter() - started
        key = server.stats()["provider_limits"]["keys"][KEY]
    finally:
        server.close()
    accepted, refused = key["accepted"], key["rejected"]
    span = key["last_accepted"] - key["first_accepted"]
    ideal = PROCESSES * rows / (LIMIT / 60)
    how = "headers followed" if follow else "headers ignored "
    outcome = "ok" if done.returncode == 0 else "run FAILED"
    report(
        f"{PROCESSES} processes x {rows} requests, {LIMIT} RPM per key, {how}",
        f"{accepted / span * 60 / LIMIT:.1%} of the limit, {refused / (accepted + refused):.2%} 429s "
        f"({refused} of {accepted + refused}), requests done in {span:.0f} s vs ideal {ideal:.0f} s "
        f"({span / ideal:.2f}x), run {wall:.0f} s, {outcome}",
        "target ≥ 95%, ≤ 1% 429s" if follow else "",
    )


if __name__ == "__main__":
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    run(rows, follow=True)
    run(rows, follow=False)
