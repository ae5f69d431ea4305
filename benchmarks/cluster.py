"""Celery workers on one run: 3 workers against 1 on 20,000 requests at a fixed latency,
and 3 workers sharing one key's rate limit.

The cluster of ``llm_assets_tests/cluster`` (Postgres, Redis, an S3 store on loopback, Celery
workers that share no disk) runs the scale tests' three answers assets (6,667 requests each,
``max_concurrency`` 8, the server answering after 50 ms, no cache) with 1 worker (the three
steps one after another) and with 3 (the three at once), and reports each run's time
(``dagster asset materialize``, launch to exit), next to the ideal (requests ÷ (8 in flight
÷ 50 ms) ÷ workers), and the ratio of the two. The provider is not the limit here, so the
ideal ratio is 3×; the machine's cores are shared by the workers, the server and the run.
Then 3 workers ask 1,000 requests each with one key, against a server enforcing 1,200
requests a minute per key as OpenAI does (its headers, 429s): the rate the server
accepted, as a share of the limit, and the share answered 429.

Run: ``.venv/bin/python benchmarks/cluster.py [REQUESTS]``.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROWS, Server, report

from llm_assets_tests.cluster.cluster import Cluster, fresh_database
from llm_assets_tests.cluster.redis_server import running_redis
from llm_assets_tests.cluster.s3 import running_s3
from llm_assets_tests.scale.postgres import running_postgres

ASSETS, LATENCY, CONCURRENCY = 3, 0.05, 8
LIMIT, KEY = 1200, "sk-cluster-test-key"


def timed_run(
    folder: Path, postgres: str, broker: str, s3, server: Server, workers: int, rows: int, concurrency: int = 8
) -> float:
    cluster = Cluster(folder, fresh_database(postgres), broker, s3, server)
    cluster.env.update(SCALE_ASSETS=str(ASSETS), SCALE_ROWS=str(rows), SCALE_CONCURRENCY=str(concurrency))
    with cluster.workers(workers):
        started = time.perf_counter()
        run = cluster.launch("*", partitions=None, module="llm_assets_tests.cluster.scale")
        seconds = time.perf_counter() - started
    assert run.returncode == 0, cluster.output(run)[-3000:]
    return seconds


def shared_limit(postgres: str, broker: str, s3, rows: int = 1000) -> None:
    limited = Server(0.02, 16, "--rpm", str(LIMIT), "--window", "1")
    try:
        with tempfile.TemporaryDirectory() as folder:
            timed_run(Path(folder), postgres, broker, s3, limited, ASSETS, rows, concurrency=4)
        key = limited.stats()["provider_limits"]["keys"][KEY]
    finally:
        limited.close()
    accepted, refused = key["accepted"], key["rejected"]
    span = key["last_accepted"] - key["first_accepted"]
    report(
        f"3 Celery workers × {rows:,} requests, one key at {LIMIT:,} requests a minute",
        f"{accepted / span * 60 / LIMIT:.1%} of the limit, {refused / (accepted + refused):.2%} 429s "
        f"({refused} of {accepted + refused})",
        "≥ 95%, ≤ 1% 429s",
    )


def main(requests: int = 20_000) -> None:
    rows = requests // ASSETS
    ideal_one = ASSETS * rows / (CONCURRENCY / LATENCY)
    server = Server(LATENCY)
    try:
        with running_postgres() as postgres, running_redis() as broker, running_s3() as s3:
            times = {}
            for workers in (1, 3):
                with tempfile.TemporaryDirectory() as folder:
                    times[workers] = timed_run(Path(folder), postgres, broker, s3, server, workers, rows)
                ideal = ideal_one / workers
                report(
                    f"{ASSETS * rows:,} requests, {workers} Celery worker{'s' * (workers > 1)} "
                    f"(3 steps × {rows:,}, {LATENCY * 1000:.0f} ms, {CONCURRENCY} in flight a step)",
                    f"{times[workers]:.1f} s = {times[workers] / ideal:.2f}× the ideal {ideal:.1f} s",
                )
            report("3 workers against 1", f"{times[1] / times[3]:.2f}× faster", "ideal 3×")
            shared_limit(postgres, broker, s3)
    finally:
        server.close()
    print("\n| benchmark | measured | target |\n|---|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
