"""The direct path settles every request it starts, whatever stops it, and refuses what
the SDK's encoder refuses."""

import asyncio
import gc
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dagster as dg
import openai
import pytest

from llm_assets import OpenAIResource
from llm_assets.accounting.usage import Usage
from llm_assets.cache import CacheMode
from llm_assets.engine import ChatRequest, Engine
from llm_assets.engine.chat import ChatCalls
from llm_assets.engine.sender import Poster, SDKPoster, SendPath
from llm_assets.http.contract import SDKContract
from llm_assets.http.direct import DirectClient, encode
from llm_assets.testing import inject_fault

CALL = ChatCalls([ChatRequest(None, 0, "q", ({"role": "user", "content": "q"},), {"model": "gpt-4o-mini"})])[0]


async def until(condition) -> None:
    """Wait, on no clock, until ``condition()`` holds."""
    while not condition():
        await asyncio.sleep(0.005)


@asynccontextmanager
async def poster(session, path: SendPath) -> AsyncIterator[Poster]:
    """What the engine posts through on ``path``, made from the session's parts."""
    if path is SendPath.SDK:
        async with session.async_client(None, CacheMode.OFF) as sdk:
            yield SDKPoster(sdk, looked_up=False)
        return
    contract = SDKContract(openai.AsyncOpenAI(**session.client_kwargs))
    try:
        async with DirectClient(contract, session.gate, session.answers, connections=4) as client:
            yield client
    finally:
        await contract.aclose()


async def cancelled_once(session, path: SendPath, in_flight) -> None:
    """Send ``CALL`` and cancel it once ``in_flight(usage)`` (its usage so far)."""
    usage = Usage()
    async with poster(session, path) as post:
        task = asyncio.create_task(post.post(CALL.endpoint, CALL.body, usage, None))
        await until(lambda: in_flight(usage))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("path", SendPath)
def test_a_request_cancelled_mid_body_gives_its_reservation_back(server, path):
    started, release = threading.Event(), threading.Event()

    def stalls_mid_body(handler, body) -> bool:
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"id": "x", "mod')
        handler.wfile.flush()
        started.set()
        release.wait(10)
        return True

    server.fault = stalls_mid_body
    session = OpenAIResource(api_key="sk-test", base_url=server.base_url, max_tokens_per_run=100_000).session
    try:
        asyncio.run(cancelled_once(session, path, lambda usage: started.is_set()))
    finally:
        release.set()
    totals = session.governor.budget.totals()
    assert totals.reserved_tokens == 0 and totals.reserved_cost == 0


@pytest.mark.parametrize("path", SendPath)
def test_a_retry_cancelled_before_it_is_sent_is_not_spent(server, no_backoff, path):
    server.fault = lambda handler, body: inject_fault(handler, "500") or True
    resource = OpenAIResource(
        api_key="sk-test", base_url=server.base_url, max_tokens_per_run=100_000, requests_per_minute=1
    )
    session = resource.session
    budget = session.governor.budget

    def waiting_to_retry(usage: Usage) -> bool:  # the first attempt failed; the retry holds a reservation, not a place
        return usage.failed_attempts == 1 and budget.totals().reserved_tokens > 0

    asyncio.run(cancelled_once(session, path, waiting_to_retry))
    totals = budget.totals()
    assert len(server.stats.requests) == 1
    assert totals.tokens == 0 and totals.reserved_tokens == 0


def test_what_the_sdk_would_not_encode_is_refused():
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode({"model": "m", "temperature": math.nan})
    with pytest.raises(UnicodeEncodeError):
        encode({"messages": [{"role": "user", "content": "\ud800"}]})
    assert (
        encode({"messages": [{"content": "é"}], "top_p": 0.5}) == '{"messages":[{"content":"é"}],"top_p":0.5}'.encode()
    )


def test_an_engine_run_leaves_a_callers_gc_freeze_alone(openai_resource, instance):
    @dg.asset
    def probe(context: dg.AssetExecutionContext, openai: OpenAIResource) -> int:
        gc.freeze()
        try:
            Engine(openai.session, context).chat([ChatRequest(None, 0, "q", ({"role": "user", "content": "q"},))])
            return gc.get_freeze_count()
        finally:
            gc.unfreeze()

    frozen = dg.materialize([probe], resources={"openai": openai_resource}, instance=instance).output_for_node("probe")
    assert frozen > 0
