"""The engine's direct path keeps the official client's contract: the fault catalogue sent
through ``SendPath.DIRECT`` and through ``SendPath.SDK`` (``openai.AsyncOpenAI`` over
httpx's own transport, the SDK's reference behaviour) gives the same attempts, the same
waits, the same rows and errors, and the same usage."""

import json
import threading
from collections import Counter
from collections.abc import Callable

import dagster as dg
import openai
import pytest

from llm_assets import OpenAIResource
from llm_assets.cache import CacheMode
from llm_assets.calls import ErrorPolicy
from llm_assets.engine import ChatRequest, Engine, SendPath
from llm_assets.http.pools import httpx
from llm_assets.testing import inject_fault
from llm_assets_tests.support import event_of, usage_metadata

PROMPTS = [f"Contract question {i}" for i in range(3)]
REQUESTS = [ChatRequest(None, i, p, ({"role": "user", "content": p},), {"model": "m"}) for i, p in enumerate(PROMPTS)]


def error_reply(status: int, headers: dict[str, str] | None = None) -> Callable:
    def reply(handler, body) -> None:
        handler._json(status, {"error": {"message": f"scripted {status}", "type": "x", "code": None}}, headers)

    return reply


def damaged_gzip(status: int) -> Callable:
    def reply(handler, body) -> None:
        payload = b"\x1f\x8b\x08\x00 not gzip at all"
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-encoding", "gzip")
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    return reply


def fault(kind: str) -> Callable:
    return lambda handler, body: inject_fault(handler, kind, slow_seconds=1.0, retry_after="7")


#: name → (reply to the failing attempts, how many attempts of each request fail,
#: the attempts each request makes with max_retries=2).
SCENARIOS = {
    "429 Retry-After": (fault("429"), 1, 2),
    "500": (fault("500"), 1, 2),
    "503 on every attempt": (fault("503"), 9, 3),
    "timeout": (fault("slow"), 1, 2),
    "dropped connection on every attempt": (fault("drop"), 9, 3),
    "body cut off": (fault("cut"), 1, 2),
    "malformed body": (fault("malformed"), 1, 2),
    "retry-after-ms": (error_reply(429, {"retry-after-ms": "250"}), 1, 2),
    "Retry-After over two minutes": (error_reply(429, {"retry-after": "300"}), 1, 1),
    "Retry-After as a date": (error_reply(503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}), 1, 2),
    "x-should-retry false": (error_reply(503, {"x-should-retry": "false"}), 1, 1),
    "x-should-retry true": (error_reply(400, {"x-should-retry": "true"}), 1, 2),
    "an error whose gzip body is damaged": (damaged_gzip(400), 1, 2),
    "an answer whose gzip body is damaged": (damaged_gzip(200), 1, 2),
    "400": (error_reply(400), 9, 1),
    "401": (error_reply(401), 9, 1),
    "408": (error_reply(408), 1, 2),
    "409": (error_reply(409), 1, 2),
    "422": (error_reply(422), 9, 1),
}


class Script:
    """A fault hook failing the first ``failing`` attempts of each request with ``reply``,
    counting every attempt and the retry count the client said it was."""

    def __init__(self, reply: Callable, failing: int) -> None:
        self.reply, self.failing = reply, failing
        self.attempts: Counter = Counter()
        self.retry_counts: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, handler, body) -> bool:
        with self._lock:
            key = json.dumps(body, sort_keys=True)
            self.attempts[key] += 1
            failed = self.attempts[key] <= self.failing
            self.retry_counts.append(handler.headers.get("x-stainless-retry-count"))
        if failed:
            self.reply(handler, body)
        return failed


def run(path: SendPath, resource: OpenAIResource, instance) -> tuple[list[tuple], dict]:
    @dg.asset
    def probe(context: dg.AssetExecutionContext, openai: OpenAIResource) -> list:
        engine = Engine(openai.session, context, cache=CacheMode.OFF, on_error=ErrorPolicy.RECORD, path=path)
        rows = engine.chat(REQUESTS)
        return [(r.row, r.answer, r.error, r.model, r.finish_reason, r.total_tokens) for r in rows]

    result = dg.materialize([probe], resources={"openai": resource}, instance=instance)
    return result.output_for_node("probe"), usage_metadata(event_of(result, "probe"))


@pytest.fixture
def recorded_waits(monkeypatch) -> list[float]:
    """The client's retry waits, on no clock, with the jitter fixed."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(round(seconds, 6))

    monkeypatch.setattr(openai._base_client.anyio, "sleep", record)
    monkeypatch.setattr(openai._base_client, "random", lambda: 0.5)
    return waits


@pytest.fixture
def httpx_under_the_sdk(monkeypatch) -> None:
    """The SDK path over httpx's own transport: the SDK's reference behaviour (its aiohttp
    adapter reports every connection error as a timeout)."""
    monkeypatch.setattr("llm_assets.session.async_pool", lambda: httpx.AsyncHTTPTransport())


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_direct_path_keeps_the_sdk_contract(server, instance, recorded_waits, httpx_under_the_sdk, scenario):
    reply, failing, attempts_each = SCENARIOS[scenario]
    resource = OpenAIResource(
        api_key="sk-test-not-a-real-key",
        base_url=server.base_url,
        timeout=0.5,
        max_retries=2,
        follow_provider_limits=False,
    )  # the provider limits would pause the model for each Retry-After on a real clock: not what is compared here
    seen = {}
    for path in SendPath:
        server.reset()
        server.fault = script = Script(reply, failing)
        recorded_waits.clear()
        rows, usage = run(path, resource, instance)
        seen[path] = (
            rows,
            usage,
            sorted(script.attempts.values()),
            sorted(recorded_waits),
            sorted(script.retry_counts),
        )
        assert sorted(script.attempts.values()) == [attempts_each] * len(PROMPTS), path
        assert usage["openai.calls"] == server.usage.calls and usage.get("openai.total_tokens", 0) == (
            server.usage.total_tokens
        )
    assert seen[SendPath.DIRECT] == seen[SendPath.SDK]


def test_the_direct_path_sends_the_sdk_headers(server, instance):
    seen: dict[SendPath, dict] = {}
    for path in SendPath:
        server.reset()

        def capture(handler, body, path=path) -> bool:
            seen[path] = {k.lower(): v for k, v in handler.headers.items()}
            return False

        server.fault = capture
        resource = OpenAIResource(
            api_key="sk-test-not-a-real-key",
            base_url=server.base_url,
            organization="org-1",
            project="proj-1",
            default_headers={"X-Team": "captains"},
        )
        run(path, resource, instance)
    per_request = {"host", "content-length", "connection"}
    direct, sdk = ({k: v for k, v in seen[p].items() if k not in per_request} for p in SendPath)
    assert direct == sdk
    assert direct["authorization"] == "Bearer sk-test-not-a-real-key" and direct["x-team"] == "captains"
    assert direct["openai-organization"] == "org-1" and direct["openai-project"] == "proj-1"
