"""HTTP transports that meter usage, answer from the request cache and enforce the
governance and rate limits, under an unmodified OpenAI client.

The OpenAI SDK talks HTTP through an httpx client; these transports sit under it and
read each response body as the SDK consumes it. Because nothing above the HTTP layer is
patched, every call shape is metered the same way and no client is ever mutated. Each
billed request (a POST to a completion, embedding or response endpoint) goes through
one ``Exchange``:

1. whose usage it is (``llm_assets.http.attribution``; none is an error),
2. answered from the cache, if the cache mode reads and nobody looked it up already,
3. refused by the governor (an HTTP 403 that never left the machine), or
4. paced by the rate limits, sent, its rate-limit headers read, and its body read as it
   streams to the SDK: usage counted once, the governor's reservation settled, a
   complete JSON body stored.

Example (what ``RunSession.client`` does):
    >>> import openai
    >>> from llm_assets import OpenAIResource
    >>> session = OpenAIResource(base_url="http://127.0.0.1:9/v1").session
    >>> usage = Usage()
    >>> transport = MeteredTransport(session, usage, CacheMode.OFF)
    >>> client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused",
    ...                        http_client=openai.DefaultHttpxClient(transport=transport))
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from llm_assets.accounting.gate import Gate
from llm_assets.accounting.usage import BILLED_PATH_SUFFIXES, Usage
from llm_assets.cache.keys import CacheMode
from llm_assets.cache.store import AnswerStore, CachedAnswer
from llm_assets.errors import GovernanceError
from llm_assets.http.attribution import notice, resolve_scope
from llm_assets.http.body import ACCEPT_ENCODING, BodyReader
from llm_assets.http.exchange import Exchange
from llm_assets.http.pools import SharedPool, httpx

#: The ``code`` of the HTTP 403 an SDK client gets for a request the governor refused.
REFUSAL_CODE = "llm_assets_refused"


def is_metered(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").endswith(BILLED_PATH_SUFFIXES)


def _hit(exchange: Exchange, request: httpx.Request, answer: CachedAnswer | None) -> httpx.Response | None:
    """The response of a cache hit (counted on the usage), or ``None`` on a miss."""
    if answer is None:
        return None
    exchange.usage.add_cache_hit(answer.model)
    return httpx.Response(200, headers={"content-type": "application/json"}, content=answer.body, request=request)


def refusal_response(request: httpx.Request, refused: GovernanceError) -> httpx.Response:
    """The OpenAI-style HTTP 403 an SDK client gets for a refused request (never retried)."""
    error = {"message": str(refused), "type": "invalid_request_error", "code": REFUSAL_CODE, "param": "model"}
    return httpx.Response(403, json={"error": error}, request=request)


def failure_kind(error: httpx.TransportError) -> str:
    """``"timeout"`` or ``"connection"``: how a request failed without a response. The
    SDK's aiohttp transport raises ``ConnectTimeout`` for every connection error (a server
    that hung up too), so its cause decides there."""
    cause = error.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        return "timeout" if isinstance(cause, TimeoutError) else "connection"
    return "timeout" if isinstance(error, httpx.TimeoutException) else "connection"


class _MeteredStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, reader: BodyReader, exchange: Exchange, answers: AnswerStore):
        self._inner, self._reader, self._exchange, self._answers, self._done = inner, reader, exchange, answers, False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._reader.feed(chunk)
                yield chunk
        except httpx.TransportError as error:  # cut off mid-body: a failed attempt
            self._done = True
            self._exchange.failed(failure_kind(error))
            raise
        self._done = True
        exchange = self._exchange
        if (body := exchange.finished(self._reader.finish(), complete=True, damaged=self._reader.damaged)) is not None:
            self._answers.store(exchange.key, body, exchange.usage)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if not self._done:
                self._done = True
                self._exchange.finished(self._reader.finish(), complete=False, damaged=self._reader.damaged)


class _AsyncMeteredStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, reader: BodyReader, exchange: Exchange, answers: AnswerStore):
        self._inner, self._reader, self._exchange, self._answers, self._done = inner, reader, exchange, answers, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                self._reader.feed(chunk)
                yield chunk
        except httpx.TransportError as error:  # cut off mid-body: a failed attempt
            self._done = True
            self._exchange.failed(failure_kind(error))
            raise
        self._done = True
        exchange = self._exchange
        if (body := exchange.finished(self._reader.finish(), complete=True, damaged=self._reader.damaged)) is not None:
            await asyncio.to_thread(self._answers.store, exchange.key, body, exchange.usage)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if not self._done:
                self._done = True
                self._exchange.finished(self._reader.finish(), complete=False, damaged=self._reader.damaged)


class _Metering:
    """What both transports hold: the transport under them (``inner``), the ``gate`` that
    lets requests through, the ``answers`` used per ``cache_mode``, and whom a request is
    billed to: ``usage``, else the request's ``billed_to``
    scope, or a ``rerouted`` block's counter for ``owner``."""

    def __init__(
        self,
        inner: Any,
        gate: Gate,
        answers: AnswerStore,
        usage: Usage | None = None,
        cache_mode: CacheMode = CacheMode.OFF,
        *,
        owner: object = None,
    ) -> None:
        self._inner, self._gate, self._answers, self._usage = inner, gate, answers, usage
        self._mode, self._owner = cache_mode, owner

    def _exchange(self, request: httpx.Request) -> tuple[Exchange, bool]:
        """The ``Exchange`` of a billed request reaching the transport, and whether to
        look it up in the cache first."""
        scope = resolve_scope(self._usage, self._owner)
        request.headers["accept-encoding"] = ACCEPT_ENCODING
        endpoint = self._answers.keys.endpoint_of(request)
        cached = self._mode.writes and endpoint is not None  # OFF when the session has no cache (AnswerStore.mode)
        payload = None
        if cached or self._gate.active:  # else nothing reads the body: don't parse it
            with contextlib.suppress(ValueError):
                payload = json.loads(request.content)
        key = self._answers.key(endpoint, payload) if cached and endpoint is not None else None
        exchange = Exchange(self._gate, scope.usage, endpoint or request.url.path, request.content, payload, key=key)
        return exchange, key is not None and self._mode.reads and not scope.looked_up

    def _metered(self, exchange: Exchange, response: httpx.Response, stream_class: type) -> httpx.Response:
        """``response`` with its body read for usage as the SDK consumes it (a complete
        answer stored in the answer store)."""
        if exchange.observe(response.status_code, response.headers):
            reader = BodyReader(response.headers.get("content-encoding", ""), response.headers.get("content-type", ""))
            response.stream = stream_class(response.stream, reader, exchange, self._answers)
        return response


class MeteredTransport(_Metering, httpx.BaseTransport):
    """Sync transport of a session's client, over the session's shared pool (a
    ``SharedPool``, closed by the session at teardown, not by
    this transport, which refuses requests from then on). See ``_Metering``."""

    _inner: SharedPool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._inner.check_open()  # a cache hit after teardown is refused too
        if not is_metered(request):
            notice(self._owner)
            return self._inner.handle_request(request)
        exchange, look_up = self._exchange(request)
        if look_up:
            answer = self._answers.cached([exchange.key], [(exchange.endpoint, exchange.payload)])[0]
            if (hit := _hit(exchange, request, answer)) is not None:
                return hit
        try:
            exchange.admit()
        except GovernanceError as refused:
            return refusal_response(request, refused)
        try:
            exchange.go_blocking()
            response = self._inner.handle_request(request)
        except httpx.TransportError as error:
            exchange.failed(failure_kind(error))
            raise
        except BaseException:
            exchange.abandoned()
            raise
        return self._metered(exchange, response, _MeteredStream)


class AsyncMeteredTransport(_Metering, httpx.AsyncBaseTransport):
    """Async twin of ``MeteredTransport`` over its own pool (``inner``, opened on the
    event loop that uses it, and closed with this transport); cache I/O runs in a thread."""

    _inner: httpx.AsyncBaseTransport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not is_metered(request):
            notice(self._owner)
            return await self._inner.handle_async_request(request)
        exchange, look_up = self._exchange(request)
        if look_up:
            requests = [(exchange.endpoint, exchange.payload)]
            answer = (await asyncio.to_thread(self._answers.cached, [exchange.key], requests))[0]
            if (hit := _hit(exchange, request, answer)) is not None:
                return hit
        try:
            await exchange.admit_async()
        except GovernanceError as refused:
            return refusal_response(request, refused)
        try:
            await exchange.go()
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as error:
            exchange.failed(failure_kind(error))
            raise
        except BaseException:  # cancelled: the engine stopping after a failure, a timeout…
            exchange.abandoned()
            raise
        return self._metered(exchange, response, _AsyncMeteredStream)

    async def aclose(self) -> None:
        await self._inner.aclose()
