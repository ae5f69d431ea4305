"""Helpers of the benchmarks: the loopback servers in their own processes, the results
table, and the prompts → answers assets they materialize."""

import json
import os
import resource
import subprocess
import sys
import time
import urllib.request

import dagster as dg
import pandas as pd

from llm_assets import PartitionedFilesystemIOManager, build_chat_answers_asset

ROWS: list[tuple[str, str, str]] = []  # (benchmark, measured, target), printed as a table
IO = {"io_manager": PartitionedFilesystemIOManager()}


def report(name: str, value: str, target: str = "") -> None:
    ROWS.append((name, value, target))
    print(f"{name}\n    {value}  {target}", flush=True)


class ServerProcess:
    """A loopback server started as ``command`` in its own process (so it doesn't share our
    GIL), which prints its base URL on its first line and serves ``/_stats``."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.close()
            raise RuntimeError(f"{' '.join(command)} did not start (printed {self.base_url!r})")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/_stats") as response:
            return json.load(response)

    def requests(self) -> int:
        return self.stats()["requests"]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class Server(ServerProcess):
    """The scripted server, ``python -m llm_assets.testing``."""

    def __init__(self, latency: float, dimensions: int = 16, *options: str) -> None:
        command = [sys.executable, "-m", "llm_assets.testing", "--latency", str(latency), *options]
        super().__init__([*command, "--dimensions", str(dimensions)])


class FastServer(ServerProcess):
    """``benchmarks/fast_server.py``: as little CPU per request as a server can spend."""

    def __init__(self, latency: float) -> None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fast_server.py")
        super().__init__([sys.executable, path, "--latency", str(latency)])


def allow_many_connections() -> None:
    """Raise this process's open-file limit for hundreds of concurrent connections."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def print_table() -> None:
    """Every :func:`report` so far, as a markdown table."""
    print("\n| benchmark | measured | target |\n|---|---|---|")
    for name, value, target in ROWS:
        print(f"| {name} | {value} | {target} |")


def range_tags(keys: list[str]) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def request_seconds(result: dg.ExecuteInProcessResult) -> float | None:
    """The run's request phase, as the answers asset reports it on its run-wide check."""
    for evaluation in result.get_asset_check_evaluations():
        if "request_seconds" in evaluation.metadata:
            return evaluation.metadata["request_seconds"].value
    return None


def timed_materialize(assets, selection, resources, instance, tags, run_config=None) -> tuple[float, dict]:
    """Wall seconds of one run, and the metadata of its first `answers` materialization
    (with the run's ``request_seconds``)."""
    started = time.perf_counter()
    result = dg.materialize(
        assets, selection=selection, resources=resources, instance=instance, tags=tags, run_config=run_config
    )
    wall = time.perf_counter() - started
    assert result.success
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["answers"])
    return wall, {k: v.value for k, v in event.materialization.metadata.items()} | {
        "request_seconds": request_seconds(result)
    }


def prompt_text(key: str, i: int) -> str:
    return f"Prompt {i} of {key}: say something."


def backfill_assets(partitions: int, rows: int, max_tokens: int = 8) -> tuple[list[dg.AssetsDefinition], list[str]]:
    """``partitions`` × ``rows`` prompts (one single-run backfill), and the answers asset
    over them; and the partition keys."""
    keys = [f"p{i:04d}" for i in range(partitions)]

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(keys), backfill_policy=dg.BackfillPolicy.single_run())
    def prompts(context: dg.AssetExecutionContext) -> pd.DataFrame:
        run_keys = context.partition_keys
        return pd.DataFrame(
            {
                "partition_key": [key for key in run_keys for _ in range(rows)],
                "text": [prompt_text(key, i) for key in run_keys for i in range(rows)],
            }
        )

    answers = build_chat_answers_asset(
        key="answers", upstream=prompts, text_column="text", prompt="{text}", max_tokens=max_tokens
    )
    return [prompts, answers], keys
