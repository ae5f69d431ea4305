"""A million requests in one materialization: 100 partitions × 10,000 rows, 0 ms
latency, concurrency 256, ``PartitionedFilesystemIOManager``, against the loopback
server of ``fast_server.py``. The materialization runs in a child process, so that its
peak RSS is its own. Reported: wall, requests per second, peak RSS, and exactness:
each partition's usage metadata equals what the server's formula gives for its prompts,
the totals equal the server's own count, and each stored partition holds all its rows.

Run: part c of ``benchmarks/floor.py``; on its own, ``.venv/bin/python
benchmarks/million.py`` (``--quick``: 10 partitions × 1,000 rows).
"""

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

import dagster as dg
from common import FastServer, allow_many_connections, backfill_assets, prompt_text, range_tags, report, request_seconds
from fast_server import usage_of

from llm_assets import OpenAIResource, PartitionedFilesystemIOManager

USAGE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens")  # openai.<counter> totals


def million_child(spec_path: str) -> None:
    """The answers asset's materialization over an upstream already stored in ``base_dir``;
    writes its figures (wall, peak RSS, each partition's usage metadata and path) to ``out``."""
    with open(spec_path) as f:
        spec = json.load(f)
    assets, keys = backfill_assets(spec["partitions"], spec["rows"])
    resources = {
        "openai": OpenAIResource(
            base_url=spec["base_url"], max_concurrency=spec["concurrency"], max_retries=0, cache=False
        ),
        "io_manager": PartitionedFilesystemIOManager(base_dir=spec["base_dir"]),
    }
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        result = dg.materialize(
            assets, selection=[assets[1].key], resources=resources, instance=instance, tags=range_tags(keys)
        )
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert result.success
        partitions = {}
        for event in result.get_asset_materialization_events():
            if event.asset_key.path == ["answers"]:
                metadata = event.materialization.metadata
                partitions[event.partition] = {
                    **{counter: metadata[f"openai.{counter}"].value for counter in USAGE_KEYS},
                    "failed_attempts": metadata["openai.failed_attempts"].value,
                    "row_count": metadata["dagster/row_count"].value,
                    "path": metadata["path"].value,
                }
    figures = {
        "wall": wall,
        "baseline_kib": baseline,
        "peak_kib": peak,
        "request_seconds": request_seconds(result),
        "partitions": partitions,
    }
    with open(spec["out"], "w") as f:
        json.dump(figures, f)


def expected_usage(key: str, rows: int) -> dict[str, int]:
    """What the server's formula gives for the prompts of partition ``key``."""
    prompt = completion = 0
    for i in range(rows):
        p, c = usage_of(prompt_text(key, i))
        prompt += p
        completion += c
    return {
        "calls": rows,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def materialize_in_child(server: FastServer, partitions: int, rows: int, concurrency: int) -> tuple[dict, dict]:
    """The child's figures (see :func:`million_child`), and each partition's stored rows."""
    with tempfile.TemporaryDirectory() as home:
        base_dir = os.path.join(home, "storage")
        assets, keys = backfill_assets(partitions, rows)
        io = {"io_manager": PartitionedFilesystemIOManager(base_dir=base_dir)}
        with dg.instance_for_test() as instance:  # the upstream, stored where the child reads it
            assert dg.materialize(assets[:1], resources=io, instance=instance, tags=range_tags(keys)).success
        spec = {"partitions": partitions, "rows": rows, "concurrency": concurrency}
        spec |= {"base_url": server.base_url, "base_dir": base_dir, "out": os.path.join(home, "figures.json")}
        spec_path = os.path.join(home, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        with open(os.path.join(home, "child.log"), "w+") as log:
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", spec_path], stdout=log, stderr=log
            )
            if child.returncode:
                log.seek(0)
                sys.exit(f"the materializing child failed ({child.returncode}):\n{log.read()[-5000:]}")
        with open(spec["out"]) as f:
            figures = json.load(f)
        stored = {}
        for key, part in figures["partitions"].items():
            with open(part["path"], "rb") as f:
                stored[key] = len(pickle.load(f))
    return figures, stored


def million_benchmark(partitions: int, rows: int, concurrency: int) -> None:
    n = partitions * rows
    server = FastServer(0.0)
    try:
        before = server.stats()
        figures, stored = materialize_in_child(server, partitions, rows, concurrency)
        after = server.stats()
    finally:
        server.close()
    keys = sorted(stored)
    expected = {key: expected_usage(key, rows) for key in keys}
    reported = figures["partitions"]
    wrong = [
        key
        for key in keys
        if any(reported[key][counter] != expected[key][counter] for counter in USAGE_KEYS)
        or reported[key]["failed_attempts"]
    ]
    totals = {counter: sum(e[counter] for e in expected.values()) for counter in USAGE_KEYS}
    served = {"calls": "requests", "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens"}
    server_totals = {counter: after[name] - before[name] for counter, name in served.items()}
    reported_totals = {counter: sum(part[counter] for part in reported.values()) for counter in USAGE_KEYS}
    agree = all(reported_totals[c] == server_totals[c] == totals[c] for c in server_totals)
    wall, peak = figures["wall"], figures["peak_kib"] / 1024
    where = f"{n:,} requests ({partitions} partitions × {rows:,} rows, one materialization), 0 ms latency"
    phase = f" (request phase {figures['request_seconds']:.1f} s)" if figures["request_seconds"] else ""
    report(
        f"chat: {where}, concurrency {concurrency}: whole materialization (child process)",
        f"{wall:.1f} s = {n / wall:,.0f} requests/s{phase}",
    )
    report(
        "chat: same, peak RSS of the materializing process",
        f"{peak:,.0f} MB ({figures['baseline_kib'] / 1024:,.0f} MB before materializing)",
        "target ≤ 2 GB",
    )
    report(
        "chat: same, usage metadata exact (per partition vs the prompts; total vs the server's count)",
        f"{len(keys) - len(wrong)}/{partitions} partitions exact; totals "
        + ("agree" if agree else f"differ: metadata {reported_totals}, server {server_totals}, expected {totals}")
        + f" ({totals['total_tokens']:,} tokens)",
        "target all",
    )
    short = [key for key in keys if stored[key] != rows]
    report(
        "chat: same, stored rows per partition",
        f"{len(keys) - len(short)}/{partitions} partitions hold {rows:,} rows",
        "target all",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 partitions × 1,000 rows, as a smoke test")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)  # the materializing process
    args = parser.parse_args()
    allow_many_connections()
    if args.child:
        million_child(args.child)
    else:
        million_benchmark(*((10, 1_000) if args.quick else (100, 10_000)), concurrency=256)
