"""Throughput benchmarks: the engine, single-run backfills, embedding batches, the request
cache, the PCA plot and per-request overhead, each measured side by side in one run
against a loopback OpenAI-compatible server (``llm_assets.testing``, in its own process)
with a fixed latency.

Run: ``.venv/bin/python benchmarks/throughput.py`` (about 4 minutes on 2 cores);
``--quick`` runs everything at a tenth of the size as a smoke test.
"""

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import dagster as dg
import openai
import pandas as pd
from common import (
    IO,
    Server,
    allow_many_connections,
    backfill_assets,
    print_table,
    range_tags,
    report,
    timed_materialize,
)
from pca_plot import plot_benchmark

from llm_assets import OpenAIResource
from llm_assets import build_embeddings_asset as embeddings_factory
from llm_assets.engine import ChatRequest, Engine

# -- chat ----------------------------------------------------------------------------------


def volume_benchmarks(server: Server, n: int, latency: float, concurrency: int) -> float:
    """1,000 prompts in one run, then again unchanged; the plain loop. Returns the run's wall."""
    openai_ = OpenAIResource(base_url=server.base_url, max_concurrency=concurrency, max_retries=0)
    assets, keys = backfill_assets(partitions=10, rows=n // 10, max_tokens=32)
    ideal = n * latency / concurrency
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets[:1], resources=IO, instance=instance, tags=range_tags(keys)).success
        resources = {"openai": openai_, **IO}
        wall, first = timed_materialize(assets, [assets[1].key], resources, instance, range_tags(keys))
        refresh = {"ops": {"answers": {"config": {"cache": "REFRESH"}}}}  # sends every request again
        repeats = [
            timed_materialize(assets, [assets[1].key], resources, instance, range_tags(keys), refresh)[1]
            for _ in range(2)
        ]
        seconds = statistics.median([first["request_seconds"], *(r["request_seconds"] for r in repeats)])
        report(
            f"chat: {n} prompts (10 partitions × {n // 10} rows, one run), {latency * 1000:.0f} ms latency, "
            f"concurrency {concurrency}: request phase (median of 3 runs)",
            f"{seconds:.2f} s = {seconds / ideal:.2f}× the ideal {ideal:.2f} s",
            "target ≤ 1.25×",
        )
        report("chat: same, whole materialization", f"{wall:.2f} s")
        sent = server.requests()
        rerun_wall, rerun = timed_materialize(assets, [assets[1].key], resources, instance, range_tags(keys))
        report("re-materialize unchanged: requests sent", f"{server.requests() - sent}", "target 0")
        report(
            "re-materialize unchanged: request phase vs first run",
            f"{rerun['request_seconds'] * 1000:.0f} ms = {rerun['request_seconds'] / first['request_seconds']:.1%}",
            "target ≤ 5%",
        )
        report("re-materialize unchanged: whole materialization vs first run", f"{rerun_wall / wall:.1%}")

    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    started = time.perf_counter()
    for i in range(n):
        messages = [{"role": "user", "content": f"Prompt {i}: say something."}]
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=32, messages=messages)
    loop = time.perf_counter() - started
    report(
        f"chat: the plain sequential loop over the same {n} prompts",
        f"{loop:.1f} s = {loop / wall:.0f}× slower",
    )
    return wall


ONE_EACH = textwrap.dedent("""
    import dagster as dg
    from llm_assets import OpenAIResource, PartitionedFilesystemIOManager, build_chat_answers_asset

    partitions = dg.StaticPartitionsDefinition([f"q{{i:04d}}" for i in range({n})])
    answers = build_chat_answers_asset(
        key="answers", partitions_def=partitions, prompt="Prompt for {{partition_key}}: say something.",
        max_tokens=32,
    )
    defs = dg.Definitions(
        assets=[answers],
        resources={{"openai": OpenAIResource(cache=False), "io_manager": PartitionedFilesystemIOManager()}},
    )
""")


def partition_benchmarks(server: Server, n: int, runs: int, cli_runs: int) -> None:
    """One prompt per partition: all partitions in one run vs one run per partition."""
    with tempfile.TemporaryDirectory() as home:
        module = os.path.join(home, "one_each.py")
        with open(module, "w") as f:
            f.write(ONE_EACH.format(n=n))
        namespace: dict = {}
        os.environ["OPENAI_BASE_URL"] = server.base_url
        exec(compile(ONE_EACH.format(n=n), module, "exec"), namespace)
        answers, resources = namespace["answers"], namespace["defs"].resources
        keys = answers.partitions_def.get_partition_keys()
        with dg.instance_for_test() as instance:
            wall, _ = timed_materialize([answers], None, resources, instance, range_tags(keys))
            single = wall / n
            started = time.perf_counter()
            for key in keys[:runs]:
                result = dg.materialize([answers], resources=resources, instance=instance, partition_key=key)
                assert result.success
            in_process = (time.perf_counter() - started) / runs
        env = {**os.environ, "DAGSTER_HOME": home}
        started = time.perf_counter()
        for key in keys[:cli_runs]:
            command = [
                "dagster",
                "asset",
                "materialize",
                "-f",
                module,
                "--select",
                "answers",
                "--partition",
                key,
            ]
            subprocess.run([sys.executable, "-m", *command], env=env, check=True, capture_output=True)
        per_process = (time.perf_counter() - started) / cli_runs
    report(
        f"chat: one prompt per partition, {n} partitions in one run vs one run per partition "
        f"(N={runs} in-process runs: a lower bound)",
        f"{single * 1000:.1f} vs {in_process * 1000:.0f} ms/prompt = {in_process / single:.0f}×",
        "target ≥ 20×",
    )
    report(
        f"chat: same, one `dagster asset materialize` process per partition (N={cli_runs}), "
        "as Dagster's run launcher starts runs",
        f"{single * 1000:.1f} vs {per_process * 1000:.0f} ms/prompt = {per_process / single:.0f}×",
        "target ≥ 20×",
    )


# -- embeddings ------------------------------------------------------------------------------


def embedding_benchmarks(n: int, latency: float, concurrency: int) -> None:
    server = Server(latency, dimensions=256)
    try:
        texts = [f"text number {i}: " + "lorem ipsum " * (i % 20) for i in range(n)]

        @dg.asset
        def docs() -> pd.DataFrame:
            return pd.DataFrame({"answer": texts})

        vectors = embeddings_factory(key="vectors", upstream=docs)
        openai_ = OpenAIResource(base_url=server.base_url, max_concurrency=concurrency, cache=False)
        measured = []
        for batch in (2048, 1):
            with dg.instance_for_test() as instance:
                before = server.requests()
                config = {"ops": {"vectors": {"config": {"batch_size": batch}}}}
                result = dg.materialize(
                    [docs, vectors], resources={"openai": openai_}, instance=instance, run_config=config
                )
                assert result.success
                event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["vectors"])
                measured.append((server.requests() - before, event.materialization.metadata["request_seconds"].value))
        (batched, batched_s), (single, single_s) = measured
        report(f"embeddings: {n} texts, requests: batched vs one text per request", f"{batched} vs {single}")
        report(
            "embeddings: request phase, batched vs one text per request",
            f"{batched_s:.2f} s vs {single_s:.2f} s = {single_s / batched_s:.0f}× faster",
        )
    finally:
        server.close()


# -- overhead ---------------------------------------------------------------------------------


def overhead_benchmark(n: int) -> None:
    server = Server(latency=0.0)
    try:
        messages = [{"role": "user", "content": "overhead probe"}]

        async def raw() -> float:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            await client.chat.completions.create(model="m", messages=messages)  # connect
            started = time.perf_counter()
            for _ in range(n):
                await client.chat.completions.create(model="m", messages=messages)
            await client.close()
            return (time.perf_counter() - started) / n

        requests = [ChatRequest(None, i, "overhead probe", tuple(messages), {"model": "m"}) for i in range(n)]

        @dg.asset
        def probe(context: dg.AssetExecutionContext, openai: OpenAIResource) -> float:
            engine = Engine(openai.session, context, max_concurrency=1)
            engine.chat(requests[:1])  # connect
            engine.chat(requests)
            return engine.seconds / n

        openai_ = OpenAIResource(base_url=server.base_url, max_concurrency=1, max_retries=0, cache=False)
        raw_s = min(asyncio.run(raw()) for _ in range(3))
        ours = min(dg.materialize([probe], resources={"openai": openai_}).output_for_node("probe") for _ in range(3))
        report(
            f"overhead per request vs the raw openai client ({n} sequential requests, 0 ms server)",
            f"{(ours - raw_s) * 1000:+.2f} ms ({raw_s * 1000:.2f} → {ours * 1000:.2f} ms per request)",
            "target ≤ 1 ms",
        )
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, as a smoke test")
    scale = 10 if parser.parse_args().quick else 1
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}\n"
    )
    server = Server(latency=0.05)
    try:
        volume_benchmarks(server, n=1000 // scale, latency=0.05, concurrency=32)
        partition_benchmarks(server, n=1000 // scale, runs=max(2, 40 // scale), cli_runs=max(2, 5 // scale))
    finally:
        server.close()
    embedding_benchmarks(n=10_000 // scale, latency=0.05, concurrency=32)
    plot_benchmark(rows=100_000 // scale, dims=1536, parts=10)
    overhead_benchmark(n=500 // scale)
    print_table()


if __name__ == "__main__":
    allow_many_connections()
    main()
