"""Batch mode at scale: 100,000 chat requests in one materialization against a loopback
Batch API (its own process, answering lines in process), with the client side timed.

Reports the JSONL build and upload time, the download and map-back time, requests per
second of client-side work, the step's peak memory, and the cost next to live mode.
Run: ``.venv/bin/python benchmarks/batch_mode.py [REQUESTS]``.
"""

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IO, print_table, range_tags, report

from llm_assets import BatchSettings, OpenAIResource, RequestMode, build_chat_answers_asset
from llm_assets.batch import runner, submit

PARTITIONS = [f"p{i:03d}" for i in range(100)]


def timed(owner, name: str, totals: dict[str, float]) -> None:
    """Add the wall time of every call of ``owner.name`` to ``totals[name]``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

    setattr(owner, name, wrapper)


def main(requests: int) -> None:
    server = subprocess.Popen([sys.executable, "-m", "llm_assets.testing.batches"], stdout=subprocess.PIPE, text=True)
    try:
        run(server.stdout.readline().strip(), requests)
    finally:
        server.terminate()


def run(base_url: str, requests: int) -> None:
    per_partition = requests // len(PARTITIONS)
    texts = dg.StaticPartitionsDefinition(PARTITIONS)

    @dg.asset(partitions_def=texts, backfill_policy=dg.BackfillPolicy.single_run())
    def rows(context: dg.AssetExecutionContext) -> dict:
        import pandas as pd

        return {
            pk: pd.DataFrame({"text": [f"Row {i} of {pk}: say hi" for i in range(per_partition)]})
            for pk in context.partition_keys
        }

    answers = build_chat_answers_asset(
        key="answers", upstream=rows, text_column="text", prompt="{text}", max_tokens=16, mode=RequestMode.BATCH
    )
    totals: dict[str, float] = {}
    timed(runner, "custom_ids", totals)
    timed(runner, "batch_lines", totals)
    timed(submit.Submitter, "submit", totals)
    timed(runner.BatchRunner, "_collect", totals)
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        openai = OpenAIResource(
            api_key="sk-bench",
            base_url=base_url,
            cache_dir=f"{home}/cache",
            batch=BatchSettings(poll_seconds=0.2, max_poll_seconds=1.0),
        )
        resources = {"openai": openai, **IO}
        dg.materialize([rows], resources=resources, instance=instance, tags=range_tags(PARTITIONS))
        started = time.perf_counter()
        result = dg.materialize(
            [rows, answers],
            selection=[answers.key],
            resources=resources,
            instance=instance,
            tags=range_tags(PARTITIONS),
        )
        wall = time.perf_counter() - started
    assert result.success
    events = result.get_asset_materialization_events()
    count = sum(e.materialization.metadata["openai.batch_requests"].value for e in events)
    cost = sum(e.materialization.metadata["openai.cost_usd"].value for e in events)
    assert count == requests, count
    build = totals["custom_ids"] + totals["batch_lines"]
    client = build + totals["submit"] + totals["_collect"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(f"{requests:,} chat requests in batch mode, one materialization", f"{wall:.1f} s wall (server included)")
    report("  JSONL build (custom ids, lines)", f"{build:.1f} s")
    report("  upload + create (incl. records)", f"{totals['submit']:.1f} s", f"{requests // 50_000 or 1} files")
    report("  download + map back + cache", f"{totals['_collect']:.1f} s")
    report("  client-side work", f"{client:.1f} s = {requests / client:,.0f} requests/s", "target <= 60 s")
    report("  peak memory of the step's process", f"{peak:,.0f} MB", "target <= 1,024 MB")
    report("  cost at batch price (gpt-4o-mini)", f"${cost:.4f} vs ${2 * cost:.4f} live (the same usage)")
    print_table()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
