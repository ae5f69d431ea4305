"""The floor: how close the engine gets to the fastest client Python can run here, side by
side in one run, against an efficient loopback server (``fast_server.py``, aiohttp on
uvloop in its own process, so it is not the bottleneck) with a fixed latency.

a. 20,000 chat requests, 20 ms latency, concurrency 256, each client in this process
   against the same server: the floor (a raw aiohttp loop on uvloop, orjson both ways),
   a hand-written ``openai.AsyncOpenAI`` + ``asyncio.gather`` on the SDK's aiohttp client,
   and the engine's request phase inside a materialization. For each: wall seconds, ×
   the ideal (n × latency / concurrency), × the floor, this process's CPU per request and
   the server's CPU share (its CPU seconds / wall).
b. 1,000 chat requests (10 partitions × 100 rows, one single-run backfill), 50 ms latency,
   concurrency 32: the whole materialization of the answers asset against the ideal.
c. 1,000,000 requests in one materialization (million.py) (100 partitions × 10,000 rows, 0 ms latency,
   concurrency 256, ``PartitionedFilesystemIOManager``), in a child process so that its
   peak RSS is the materialization's own: wall, requests per second, peak RSS, and
   exactness: each partition's usage metadata equals what the server's formula gives for
   its prompts, the total equals the server's own count, each stored partition has all
   its rows.

Run: ``.venv/bin/python benchmarks/floor.py`` (c takes minutes: 1M requests);
``--quick`` runs a and b at a tenth of the size and c at a hundredth, as a smoke test.
"""

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import dagster as dg
import openai
import orjson
import uvloop
from common import (
    IO,
    FastServer,
    allow_many_connections,
    backfill_assets,
    print_table,
    range_tags,
    report,
    request_seconds,
)
from million import million_benchmark

from llm_assets import OpenAIResource
from llm_assets.engine import ChatRequest, Engine

MODEL = "gpt-4o-mini"


@dataclass
class Measured:
    wall: float  # seconds
    cpu: float  # this process's CPU seconds
    server_cpu: float  # the server's CPU seconds
    requests: int  # requests the server answered


def measure(server: FastServer, run: Callable[[], tuple[float, float] | None]) -> Measured:
    """Wall and CPU around ``run()`` (or the ``(wall, cpu)`` it returns, measured inside),
    and the server's CPU and requests meanwhile."""
    before = server.stats()
    cpu, started = time.process_time(), time.perf_counter()
    inner = run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if inner is not None:
        wall, cpu = inner
    after = server.stats()
    return Measured(wall, cpu, after["cpu_seconds"] - before["cpu_seconds"], after["requests"] - before["requests"])


def on_uvloop(coroutine) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coroutine)


# -- a. the floor, the SDK and the engine ------------------------------------------------------


async def floor_client(base_url: str, prompts: list[str], concurrency: int) -> None:
    """The fastest client: one aiohttp session, a semaphore, orjson both ways."""
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": "Bearer unused", "Content-Type": "application/json"}
    in_flight = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(prompt: str) -> None:
            body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8})
            async with in_flight, session.post(url, data=body) as response:
                reply = orjson.loads(await response.read())
            assert response.status == 200 and reply["choices"][0]["message"]["content"], reply

        await asyncio.gather(*(one(prompt) for prompt in prompts))


async def floor_workers(base_url: str, prompts: list[str], concurrency: int) -> None:
    """The same client with ``concurrency`` workers each taking the next prompt (no task
    per request, no semaphore): how the engine schedules, and the lower floor."""
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": "Bearer unused", "Content-Type": "application/json"}
    work = iter(prompts)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for prompt in work:
                body = orjson.dumps(
                    {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
                )
                async with session.post(url, data=body) as response:
                    reply = orjson.loads(await response.read())
                assert response.status == 200 and reply["choices"][0]["message"]["content"], reply

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def sdk_client(base_url: str, prompts: list[str], concurrency: int) -> None:
    """What one would write by hand: ``AsyncOpenAI`` on the SDK's aiohttp client, ``gather``."""
    in_flight = asyncio.Semaphore(concurrency)
    http_client = openai.DefaultAioHttpClient()
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="unused", max_retries=0, http_client=http_client
    ) as client:

        async def one(prompt: str) -> None:
            async with in_flight:
                reply = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8
                )
            assert reply.choices[0].message.content

        await asyncio.gather(*(one(prompt) for prompt in prompts))


def engine_client(base_url: str, prompts: list[str], concurrency: int) -> tuple[float, float]:
    """The engine's request phase inside a materialization: (``engine.seconds``, CPU seconds)."""
    requests = [
        ChatRequest(None, i, prompt, ({"role": "user", "content": prompt},), {"model": MODEL, "max_tokens": 8})
        for i, prompt in enumerate(prompts)
    ]

    @dg.asset
    def probe(context: dg.AssetExecutionContext, openai: OpenAIResource) -> tuple[float, float, int]:
        engine = Engine(openai.session, context, max_concurrency=concurrency)
        cpu = time.process_time()
        rows = engine.chat(requests)
        cpu = time.process_time() - cpu
        assert len(rows) == len(requests)
        return engine.seconds, cpu, sum(1 for row in rows if row.error is not None)

    resource_ = OpenAIResource(base_url=base_url, max_concurrency=concurrency, max_retries=0, cache=False)
    with dg.instance_for_test() as instance:
        result = dg.materialize([probe], resources={"openai": resource_}, instance=instance)
    assert result.success
    seconds, cpu, errors = result.output_for_node("probe")
    assert errors == 0, f"{errors} rows with an error"
    return seconds, cpu


def floor_benchmarks(n: int, latency: float, concurrency: int) -> None:
    server = FastServer(latency)
    try:
        prompts = [f"Prompt {i}: say something." for i in range(n)]
        ideal = n * latency / concurrency
        clients = {
            "the floor (raw aiohttp + orjson on uvloop)": lambda: on_uvloop(
                floor_client(server.base_url, prompts, concurrency)
            ),
            "the floor with workers (raw aiohttp + orjson on uvloop, a worker per connection)": lambda: on_uvloop(
                floor_workers(server.base_url, prompts, concurrency)
            ),
            "openai.AsyncOpenAI (DefaultAioHttpClient) + asyncio.gather": lambda: on_uvloop(
                sdk_client(server.base_url, prompts, concurrency)
            ),
            "the engine's request phase (Engine.chat in a materialization)": lambda: engine_client(
                server.base_url, prompts, concurrency
            ),
        }
        measured = {}
        for label, run in clients.items():
            measured[label] = m = measure(server, run)
            assert m.requests == n, f"{label}: the server answered {m.requests} requests, not {n}"
        floor, workers, sdk, engine = measured.values()
        for label, m in measured.items():
            report(
                f"chat: {n} requests, {latency * 1000:.0f} ms latency, concurrency {concurrency}: {label}",
                f"{m.wall:.2f} s = {m.wall / ideal:.2f}× the ideal {ideal:.2f} s = "
                f"{m.wall / floor.wall:.2f}× the floor; "
                f"client CPU {m.cpu / n * 1e6:.0f} µs/request; server CPU {m.server_cpu / m.wall:.0%} of wall",
            )
        report("chat: openai SDK vs the floor", f"openai SDK = {sdk.wall / floor.wall:.2f}× the floor")
        report("chat: engine vs the floor", f"engine = {engine.wall / floor.wall:.2f}× the floor", "target ≤ 1.5×")
        report(
            "chat: engine vs the floor with workers",
            f"engine = {engine.wall / workers.wall:.2f}× its wall; "
            f"client CPU {engine.cpu / n * 1e6:.0f} vs {workers.cpu / n * 1e6:.0f} µs/request",
        )
    finally:
        server.close()


# -- b. a single-run backfill --------------------------------------------------------------------


def backfill_benchmark(partitions: int, rows: int, latency: float, concurrency: int) -> None:
    server = FastServer(latency)
    try:
        n = partitions * rows
        ideal = n * latency / concurrency
        assets, keys = backfill_assets(partitions, rows)
        openai_ = OpenAIResource(base_url=server.base_url, max_concurrency=concurrency, max_retries=0, cache=False)
        with dg.instance_for_test() as instance:
            assert dg.materialize(assets[:1], resources=IO, instance=instance, tags=range_tags(keys)).success
            before = server.requests()
            started = time.perf_counter()
            result = dg.materialize(
                assets,
                selection=[assets[1].key],
                resources={"openai": openai_, **IO},
                instance=instance,
                tags=range_tags(keys),
            )
            wall = time.perf_counter() - started
            assert result.success
        sent = server.requests() - before
        events = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["answers"]]
        stored = sum(e.materialization.metadata["dagster/row_count"].value for e in events)
        assert sent == n and stored == n, f"{sent} requests sent, {stored} rows stored, {n} expected"
        where = f"{n} requests ({partitions} partitions × {rows} rows, one run), {latency * 1000:.0f} ms latency"
        report(
            f"chat: {where}, concurrency {concurrency}: whole materialization of the answers",
            f"{wall:.2f} s = {wall / ideal:.2f}× the ideal {ideal:.2f} s; {stored} rows",
            "target ≤ 1.25×",
        )
        seconds = request_seconds(result)
        if seconds is not None:
            report("chat: same, request phase (from the run-wide check)", f"{seconds:.2f} s = {seconds / ideal:.2f}×")
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes (c: a hundredth), as a smoke test")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}\n"
    )
    floor_benchmarks(n=20_000 // scale, latency=0.02, concurrency=256)
    backfill_benchmark(partitions=10, rows=100 // scale, latency=0.05, concurrency=32)
    if args.quick:
        million_benchmark(partitions=10, rows=1_000, concurrency=256)
    else:
        million_benchmark(partitions=100, rows=10_000, concurrency=256)
    print_table()


if __name__ == "__main__":
    allow_many_connections()
    main()
