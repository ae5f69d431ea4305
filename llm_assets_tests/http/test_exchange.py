"""The request path built from its parts, with fakes, without a resource or a session:
:class:`Exchange` with a recording gate, the SDK's transport over ``httpx.MockTransport``
(as httpx tests its own clients), and the engine's :class:`Sender` over a scripted poster."""

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from llm_assets.accounting.gate import Gate
from llm_assets.accounting.governance import Governor
from llm_assets.accounting.usage import Usage
from llm_assets.cache import CacheKeys, CacheMode, RequestCache
from llm_assets.cache.store import AnswerStore
from llm_assets.calls import Call, ErrorPolicy
from llm_assets.engine.retries import RetryPolicy
from llm_assets.engine.sender import Sender
from llm_assets.errors import GovernanceError, InvalidOutputError, LLMRequestError
from llm_assets.http.body import BodySummary, summarize
from llm_assets.http.contract import SDKContract
from llm_assets.http.exchange import Exchange
from llm_assets.http.pools import SharedPool, httpx
from llm_assets.http.transport import REFUSAL_CODE, MeteredTransport

BASE_URL = "http://127.0.0.1:9/v1"
KEY = "sk-test-not-a-real-key"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Tea?"}], "max_tokens": 10}
ANSWER = {
    "model": "m-served",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Earl Grey."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
}


class RecordingGate(Gate):
    """A gate that records what the exchange asks of it, and refuses ``refuse``d models."""

    def __init__(self, refuse: tuple[str, ...] = (), paced: bool = True) -> None:
        super().__init__(Governor(None, None, None, {}))
        self.refuse, self._paced, self.calls = refuse, paced, []

    @property
    def governed(self) -> bool:
        return True

    @property
    def paced(self) -> bool:
        return self._paced

    def admit(self, model: str | None, estimate: int) -> None:
        self.calls.append(("admit", model, estimate))
        if model in self.refuse:
            raise GovernanceError(f"model {model!r} is refused")

    def settle(self, model, estimate, usage, served, *, answered) -> None:
        self.calls.append(("settle", usage, served, answered))

    async def turn(self, estimate: int, model: str | None) -> Any:
        self.calls.append(("turn", model))
        return "ticket"

    def turn_blocking(self, estimate: int, model: str | None) -> Any:
        self.calls.append(("turn", model))
        return "ticket"

    def observe(self, status: int, headers: Any, ticket: Any) -> None:
        self.calls.append(("observe", status, ticket))

    def abandoned(self, ticket: Any) -> None:
        self.calls.append(("abandoned", ticket))


def exchange_of(gate: Gate, usage: Usage, body: dict[str, Any] = CHAT, key: str | None = "k") -> Exchange:
    content = json.dumps(body).encode()
    return Exchange(gate, usage, "/chat/completions", content, body, key=key)


def answered(body: dict[str, Any]) -> BodySummary:
    raw = json.dumps(body).encode()
    return summarize(raw, body)


# -- Exchange -------------------------------------------------------------------------------


def test_an_answered_request_is_admitted_paced_metered_settled_and_picked_for_the_cache():
    gate, usage = RecordingGate(), Usage()
    exchange = exchange_of(gate, usage)
    exchange.admit()
    asyncio.run(exchange.go())
    assert exchange.observe(200, {})
    stored = exchange.finished(answered(ANSWER), complete=True)
    assert json.loads(stored) == ANSWER
    assert usage.total_tokens == 7 and usage.calls == 1
    estimate = exchange.estimate
    assert estimate > 10  # the prompt plus max_tokens
    assert gate.calls == [
        ("admit", "m", estimate),
        ("turn", "m"),
        ("observe", 200, "ticket"),
        ("settle", ANSWER["usage"], "m-served", True),
    ]


def test_a_refused_request_raises_where_it_is_decided_and_is_never_settled():
    gate, usage = RecordingGate(refuse=("m",)), Usage()
    exchange = exchange_of(gate, usage)
    with pytest.raises(GovernanceError, match="'m' is refused"):
        exchange.admit()
    exchange.abandoned()  # a caller cleaning up anyway gives nothing back twice
    assert not exchange.sent and usage.failed_attempts == 0
    assert [call[0] for call in gate.calls] == ["admit", "abandoned"]


def test_an_error_status_is_a_failed_attempt_settled_with_nothing_billed():
    gate, usage = RecordingGate(), Usage()
    exchange = exchange_of(gate, usage)
    exchange.admit()
    exchange.go_blocking()
    assert not exchange.observe(503, {})
    assert usage.failures == {"503": 1} and usage.calls == 0
    assert gate.calls[-1] == ("settle", None, None, False)


def test_a_request_lost_after_it_was_sent_counts_at_its_estimate():
    gate, usage = RecordingGate(), Usage()
    exchange = exchange_of(gate, usage)
    exchange.admit()
    exchange.go_blocking()
    exchange.failed("timeout")
    unknown = {"prompt_tokens": exchange.estimate, "total_tokens": exchange.estimate}
    assert gate.calls[-2:] == [("abandoned", "ticket"), ("settle", unknown, None, True)]
    assert usage.failures == {"timeout": 1}


def test_a_request_cancelled_before_it_was_sent_gives_its_reservation_back():
    gate, usage = RecordingGate(), Usage()
    exchange = exchange_of(gate, usage)
    exchange.admit()
    exchange.abandoned()
    assert gate.calls[-1] == ("settle", None, None, False)


@pytest.mark.parametrize(
    ("summary", "complete", "stored"),
    [
        (answered(ANSWER), False, False),  # cut off: usage counted, never cached
        (BodySummary(None, None, readable=False), True, False),  # not JSON: a malformed attempt
        (answered({**ANSWER, "choices": []}), True, False),  # JSON, but not an answer
        (answered(ANSWER), True, True),
    ],
)
def test_only_a_complete_valid_answer_is_picked_for_the_cache(summary, complete, stored):
    usage = Usage()
    body = exchange_of(Gate(), usage).finished(summary, complete=complete)
    assert (body is not None) is stored
    assert usage.failures == ({"malformed": 1} if not summary.readable else {})


def test_without_a_key_nothing_is_cached_and_without_checks_nothing_is_parsed():
    usage = Usage()
    exchange = Exchange(Gate(), usage, "/chat/completions", b"{}")
    assert exchange.estimate == 0 and exchange.payload is None
    assert exchange.finished(answered(ANSWER), complete=True) is None
    assert usage.total_tokens == 7


# -- the SDK's transport over a mock transport -------------------------------------------------


@pytest.fixture
def answers(tmp_path) -> AnswerStore:
    return AnswerStore(CacheKeys(BASE_URL), RequestCache(str(tmp_path / "cache")))


class Streamed(httpx.SyncByteStream):
    """A body that arrives as a network stream does (httpx reads a ``content=`` body at once)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()

    def __iter__(self) -> Iterator[bytes]:
        yield self.data


def streamed(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "application/json"}, stream=Streamed(body))


def client_over(handler: Callable[[httpx.Request], httpx.Response], gate: Gate, answers: AnswerStore, usage: Usage):
    pool = SharedPool(httpx.MockTransport(handler))
    transport = MeteredTransport(pool, gate, answers, usage, CacheMode.USE)
    http_client = openai.DefaultHttpxClient(transport=transport)
    return openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, http_client=http_client), pool


def ask(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(**CHAT)


def test_the_transport_meters_caches_and_answers_again_from_the_cache(answers):
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return streamed(ANSWER)

    usage = Usage()
    client, _ = client_over(handler, Gate(), answers, usage)
    assert ask(client).choices[0].message.content == "Earl Grey."
    assert ask(client).choices[0].message.content == "Earl Grey."
    assert len(sent) == 1 and usage.total_tokens == 7 and usage.total("cache_hits") == 1


def test_the_transport_gives_an_sdk_client_the_refusal_as_a_403_never_sent(answers):
    governor = Governor(["other"], None, None, {})
    client, _ = client_over(lambda request: pytest.fail("sent"), Gate(governor), answers, Usage())
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(client)
    assert refused.value.body["code"] == REFUSAL_CODE and "allowed_models" in refused.value.body["message"]


def test_the_transport_refuses_everything_once_its_pool_is_closed(answers):
    client, pool = client_over(lambda request: streamed(ANSWER), Gate(), answers, Usage())
    ask(client)
    pool.close()
    with pytest.raises(RuntimeError, match="client has been closed"):
        ask(client)  # even the cached answer: the resource is gone


# -- the engine's sender over a scripted poster -------------------------------------------------


class ScriptedPoster:
    """Answers each post with the next of ``replies`` (an exception is raised)."""

    def __init__(self, *replies: Any) -> None:
        self.replies: Iterator[Any] = iter(replies)
        self.posts = 0

    async def post(self, endpoint: str, body: dict[str, Any], usage: Usage, key: str | None) -> Any:
        self.posts += 1
        reply = next(self.replies)
        if isinstance(reply, Exception):
            raise reply
        return reply


def read_answer(body: dict[str, Any], *, cached: bool, latency: float | None) -> str:
    text = body["choices"][0]["message"]["content"]
    if text == "not JSON":
        raise InvalidOutputError("not JSON")
    return text


CALL = Call("Picard", "/chat/completions", CHAT, "Picard", read_answer, failed=lambda message: f"failed: {message}")


def sender_over(poster: ScriptedPoster, on_error: ErrorPolicy = ErrorPolicy.FAIL, warnings: list | None = None):
    contract = SDKContract(openai.AsyncOpenAI(base_url=BASE_URL, api_key=KEY, max_retries=2))
    warn = (warnings if warnings is not None else []).append
    return Sender(poster, RetryPolicy(contract, max_parse_retries=1), on_error, warn, secret=KEY)


def chat(text: str) -> dict[str, Any]:
    return {**ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_the_sender_retries_malformed_bodies_then_reads_the_answer(no_backoff):
    poster, usage = ScriptedPoster(None, {"choices": "?"}, chat("Engage.")), Usage()
    assert asyncio.run(sender_over(poster).send(CALL, usage)) == "Engage."
    assert poster.posts == 3 and usage.failures == {"malformed": 1}  # the None: counted by its exchange


def test_the_sender_stops_after_max_retries_malformed_bodies(no_backoff):
    poster = ScriptedPoster(None, None, None)
    error = asyncio.run(sender_over(poster).outcome(CALL, Usage()))
    assert isinstance(error, LLMRequestError) and "malformed response body" in str(error) and poster.posts == 3


def test_the_sender_asks_again_for_an_invalid_structured_answer_then_names_it(no_backoff):
    poster, usage = ScriptedPoster(chat("not JSON"), chat("not JSON")), Usage()
    error = asyncio.run(sender_over(poster).outcome(CALL, usage))
    assert isinstance(error, LLMRequestError) and "Invalid output after 2 attempt(s)" in str(error)
    assert usage.parse_retries == 1 and poster.posts == 2


def test_a_refusal_is_named_and_never_recorded_as_a_row():
    poster = ScriptedPoster(GovernanceError("max_tokens_per_run 10 would be exceeded"))
    error = asyncio.run(sender_over(poster, ErrorPolicy.RECORD).outcome(CALL, Usage()))
    assert isinstance(error, GovernanceError)
    assert str(error) == "Request for Picard was not sent: max_tokens_per_run 10 would be exceeded"


def test_an_api_error_is_recorded_in_its_row_with_the_key_masked():
    request = httpx.Request("POST", BASE_URL + "/chat/completions")
    response = httpx.Response(400, json={"error": {"message": f"bad key {KEY}"}}, request=request)
    poster, warnings = ScriptedPoster(openai.BadRequestError(f"bad key {KEY}", response=response, body=None)), []
    row = asyncio.run(sender_over(poster, ErrorPolicy.RECORD, warnings).outcome(CALL, Usage()))
    assert row.startswith("failed: Request for Picard failed: HTTP 400") and KEY not in row
    assert warnings == [row.removeprefix("failed: ")]
