"""The engine's hot path: billed POSTs sent over aiohttp directly, each decoded once.

Through the SDK, each request costs ~1 ms of CPU to build, send and parse (options
copied per attempt, an httpx request, an httpx-over-aiohttp adapter, the body parsed
twice); a self-hosted server answering thousands of requests per second makes that the
bottleneck. ``DirectClient`` builds each endpoint's URL and headers once (by the
official client itself), encodes bodies with orjson, and decodes each answer once: the
engine's row, the usage and the cached body all come from that one parse.

Nothing else changes: the same ``Exchange`` as the
SDK's transports (usage, governance, rate limits), the same
``AnswerStore``, and the official client's own retry
contract (``SDKContract``): same retried statuses, waits,
``max_retries`` and exception classes. A request the governor refuses raises
``GovernanceError`` before anything is sent. User code that calls
``get_client()`` still gets the official client.

Examples:
    >>> async def answer(contract, gate, answers, usage):  # doctest: +SKIP
    ...     async with DirectClient(contract, gate, answers, connections=64) as client:
    ...         return await client.post("/chat/completions", {"model": "m", "messages": []}, usage)
"""

import asyncio
import json
import math
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp
import orjson
from multidict import CIMultiDict

from llm_assets.accounting.gate import Gate
from llm_assets.accounting.usage import Usage
from llm_assets.cache.store import AnswerStore
from llm_assets.http.body import BodyReader, BodySummary, decode_json, summarize
from llm_assets.http.contract import RETRY_COUNT_HEADER, SDKContract
from llm_assets.http.exchange import Exchange
from llm_assets.http.pools import httpx, ssl_context


def encode(body: dict[str, Any]) -> bytes:
    """``body`` as JSON, refused as the SDK's encoder refuses it: ``ValueError`` for a
    non-finite number (orjson would send ``null``), ``UnicodeEncodeError`` for text that
    can't be sent (orjson reports lone surrogates as a ``TypeError``)."""
    if any(_non_finite(value) for name, value in body.items() if name not in _TEXT):
        raise ValueError("Out of range float values are not JSON compliant")
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


#: Body fields that hold text, not numbers (not scanned for NaN: the hot path's biggest).
_TEXT = frozenset({"messages", "input", "prompt"})


def _non_finite(value: Any) -> bool:
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(item) for item in value)
    return False


#: Headers that describe a body as sent, not as decompressed here.
_ENCODING_HEADERS = ("content-encoding", "content-length")


class _Reply(NamedTuple):
    """What one attempt got: a status, its headers and its decompressed body, or no
    response (``failure``: ``"timeout"`` or ``"connection"``)."""

    status: int | None
    headers: Any = None
    body: bytes = b""
    failure: str = ""


class DirectClient:
    """Sends billed JSON POSTs for one engine run (see the module docstring). The caller
    has already looked each one up in the request cache.

    Args:
        contract: the official client's headers, retries and errors (its caller closes it).
        gate: admits and paces each attempt.
        answers: where an answer with a cache key is stored.
        connections: the most connections open at once (the engine's concurrency).
    """

    def __init__(self, contract: SDKContract, gate: Gate, answers: AnswerStore, connections: int) -> None:
        self.contract, self.gate, self.answers, self.connections = contract, gate, answers, connections
        self._templates: dict[str, tuple[str, dict[str, str]]] = {}
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "DirectClient":
        timeout = httpx.Timeout(self.contract.client.timeout)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, ssl=ssl_context()),
            timeout=aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read),
            skip_auto_headers=("User-Agent", "Content-Type"),
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None):
        assert self._http is not None
        await self._http.close()

    async def post(self, endpoint: str, body: dict[str, Any], usage: Usage, key: str | None = None) -> Any:
        """POST ``body`` to ``endpoint`` billed to ``usage``, retried as the SDK retries; the
        decoded answer (``None``: a 2xx body that is not JSON, counted as malformed), stored
        under ``key`` (``None``: not stored). Raises the SDK's ``APIStatusError`` /
        ``APIConnectionError`` subclasses, or ``GovernanceError``."""
        url, headers = self._templates.get(endpoint) or await self._template(endpoint)
        content = encode(body)
        for taken in range(self.contract.max_retries + 1):
            retries_left = taken < self.contract.max_retries
            exchange = Exchange(self.gate, usage, endpoint, content, body, key=key)  # per attempt
            await exchange.admit_async()
            reply = await self._attempt(exchange, url, headers, content, taken)
            if reply.status is None:  # no response: a timeout or a connection failure
                if retries_left:
                    await self.contract.wait(taken)
                    continue
                raise self.contract.connection_error(url, timed_out=reply.failure == "timeout")
            if 200 <= reply.status < 300:
                return await self._answer(exchange, reply)
            if retries_left and self.contract.should_retry(reply.status, reply.headers):
                await self.contract.wait(taken, reply.status, reply.headers)
                continue
            raise self.contract.status_error(url, reply.status, reply.headers, reply.body)
        raise AssertionError("unreachable")

    async def _attempt(
        self, exchange: Exchange, url: str, headers: dict[str, str], content: bytes, taken: int
    ) -> "_Reply":
        """One attempt, metered on ``exchange`` (a cancellation settles it too)."""
        assert self._http is not None
        status = None
        try:
            await exchange.go()
            sent = {**headers, RETRY_COUNT_HEADER: str(taken)}
            async with self._http.post(url, data=content, headers=sent) as response:
                status = response.status
                answered = exchange.observe(status, response.headers)
                raw = await response.read()  # as sent: decompressed below, to mirror the SDK on damage
            reader = BodyReader(response.headers.get("content-encoding", ""))
            reader.feed(raw)
            if reader.damaged:  # the SDK's httpx can't decode it either: a connection error, retried
                if answered:  # and metered as a malformed answer, as under the SDK
                    exchange.finished(BodySummary(None, None, readable=False), complete=True, damaged=True)
                return _Reply(None, failure="connection")
            plain = [(k, v) for k, v in response.headers.items() if k.lower() not in _ENCODING_HEADERS]
            return _Reply(status, CIMultiDict(plain), reader.data)
        except (aiohttp.ClientError, TimeoutError) as error:
            kind = "timeout" if isinstance(error, TimeoutError) else "connection"
            if status is None or 200 <= status < 300:  # an error status was counted already
                exchange.failed(kind)
            return _Reply(None, failure=kind)
        except BaseException:  # cancelled: the engine stopping after a failure, a termination
            if status is None:
                exchange.abandoned()
            elif 200 <= status < 300:  # cut off mid-body: settled like the SDK's stream closing early
                exchange.finished(BodySummary(None, None, readable=False), complete=False)
            raise

    async def _answer(self, exchange: Exchange, reply: "_Reply") -> Any:
        """The decoded 2xx body, metered once, its answer stored in the cache."""
        summary = summarize(reply.body, decode_json(reply.body))
        stored = exchange.finished(summary, complete=True)
        if stored is not None:
            await asyncio.to_thread(self.answers.store, exchange.key, stored, exchange.usage)
        return summary.answer

    async def _template(self, endpoint: str) -> tuple[str, dict[str, str]]:
        self._templates[endpoint] = await self.contract.template(endpoint)
        return self._templates[endpoint]
