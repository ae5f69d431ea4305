"""HTTP transports that meter usage, answer from the request cache and enforce the
session's governance and rate limits, under an unmodified OpenAI client.

The OpenAI SDK talks HTTP through an httpx client; these transports sit under it and
read each response body as the SDK consumes it. Because nothing above the HTTP layer is
patched, every call shape is metered the same way and no client is ever mutated. Each
billed request (a POST to a completion, embedding or response endpoint) goes through
one :class:`~llm_assets.http.exchange.Exchange`:

1. whose usage it is (:mod:`llm_assets.http.attribution`; none is an error),
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
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from llm_assets.accounting.usage import BILLED_PATH_SUFFIXES, Usage
from llm_assets.cache import CacheMode
from llm_assets.http.attribution import notice, resolve_scope
from llm_assets.http.body import ACCEPT_ENCODING, BodyReader
from llm_assets.http.exchange import Exchange
from llm_assets.http.pools import httpx

if TYPE_CHECKING:
    from llm_assets.session import CachedAnswer, RunSession


def is_metered(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").endswith(BILLED_PATH_SUFFIXES)


def _exchange(request: httpx.Request, session: "RunSession", usage: Usage | None, mode: CacheMode) -> Exchange:
    """The :class:`Exchange` of a billed request reaching a transport."""
    scope = resolve_scope(usage, session)
    request.headers["accept-encoding"] = ACCEPT_ENCODING
    endpoint = session.cache_keys.endpoint_of(request)
    return Exchange(
        session,
        scope.usage,
        mode,
        endpoint or request.url.path,
        request.content,
        looked_up=scope.looked_up,
        cacheable=endpoint is not None,
    )


def _hit(exchange: Exchange, request: httpx.Request, answer: "CachedAnswer | None") -> httpx.Response | None:
    """The response of a cache hit (counted on the usage), or ``None`` on a miss."""
    if answer is None:
        return None
    exchange.usage.add_cache_hit(answer.model)
    return httpx.Response(200, headers={"content-type": "application/json"}, content=answer.body, request=request)


def _refused(exchange: Exchange, request: httpx.Request) -> httpx.Response | None:
    """The governor's 403, never sent, or ``None`` (its estimate is then reserved)."""
    error = exchange.refusal()
    return None if error is None else httpx.Response(403, json=error, request=request)


def _metered(exchange: Exchange, response: httpx.Response, stream_class: type) -> httpx.Response:
    """``response`` with its body read for usage as the SDK consumes it."""
    if exchange.observe(response.status_code, response.headers):
        reader = BodyReader(response.headers.get("content-encoding", ""), response.headers.get("content-type", ""))
        response.stream = stream_class(response.stream, reader, exchange)
    return response


def failure_kind(error: httpx.TransportError) -> str:
    """``"timeout"`` or ``"connection"``: how a request failed without a response. The
    SDK's aiohttp transport raises ``ConnectTimeout`` for every connection error (a server
    that hung up too), so its cause decides there."""
    cause = error.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        return "timeout" if isinstance(cause, TimeoutError) else "connection"
    return "timeout" if isinstance(error, httpx.TimeoutException) else "connection"


class _MeteredStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, reader: BodyReader, exchange: Exchange) -> None:
        self._inner, self._reader, self._exchange, self._done = inner, reader, exchange, False

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
        if (body := self._exchange.finished(self._reader.finish(), True, self._reader.damaged)) is not None:
            self._exchange.session.store(self._exchange.key, body, self._exchange.usage)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if not self._done:
                self._done = True
                self._exchange.finished(self._reader.finish(), False, self._reader.damaged)


class _AsyncMeteredStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, reader: BodyReader, exchange: Exchange) -> None:
        self._inner, self._reader, self._exchange, self._done = inner, reader, exchange, False

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
        if (body := self._exchange.finished(self._reader.finish(), True, self._reader.damaged)) is not None:
            exchange = self._exchange
            await asyncio.to_thread(exchange.session.store, exchange.key, body, exchange.usage)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if not self._done:
                self._done = True
                self._exchange.finished(self._reader.finish(), False, self._reader.damaged)


class MeteredTransport(httpx.BaseTransport):
    """Sync transport of a session's client: bills ``usage`` (else the request's
    :func:`~llm_assets.http.attribution.billed_to` scope) and uses the cache per
    ``cache_mode``. The session's shared connection pool is not closed by it, but by the
    session, at teardown; the transport refuses requests from then on."""

    def __init__(self, session: "RunSession", usage: Usage | None = None, cache_mode: CacheMode = CacheMode.OFF):
        self._session, self._usage, self._mode = session, usage, cache_mode
        self._inner = session.sync_pool()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._session.closed:  # what httpx says of a closed client; the SDK does not retry it
            raise RuntimeError(
                "Cannot send a request, as the client has been closed: the OpenAIResource that made it was "
                "torn down at the end of its run (or step)."
            )
        if not is_metered(request):
            notice(self._session)
            return self._inner.handle_request(request)
        exchange = _exchange(request, self._session, self._usage, self._mode)
        if exchange.reads:
            answer = self._session.cached([exchange.key], [(exchange.endpoint, exchange.payload)])[0]
            if (hit := _hit(exchange, request, answer)) is not None:
                return hit
        if (refused := _refused(exchange, request)) is not None:
            return refused
        try:
            if exchange.paced:
                exchange.ticket = self._session.limits.acquire_blocking(exchange.estimate, exchange.model)
            exchange.sent = True
            response = self._inner.handle_request(request)
        except httpx.TransportError as error:
            exchange.failed(failure_kind(error))
            raise
        except BaseException:
            exchange.abandoned()
            raise
        return _metered(exchange, response, _MeteredStream)


class AsyncMeteredTransport(httpx.AsyncBaseTransport):
    """Async twin of :class:`MeteredTransport` over its own pool (``inner``, opened on the
    event loop that uses it, and closed with this transport); cache I/O runs in a thread."""

    def __init__(
        self,
        session: "RunSession",
        inner: httpx.AsyncBaseTransport,
        usage: Usage | None = None,
        cache_mode: CacheMode = CacheMode.OFF,
    ) -> None:
        self._session, self._inner, self._usage, self._mode = session, inner, usage, cache_mode

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not is_metered(request):
            notice(self._session)
            return await self._inner.handle_async_request(request)
        exchange = _exchange(request, self._session, self._usage, self._mode)
        if exchange.reads:
            requests = [(exchange.endpoint, exchange.payload)]
            answer = (await asyncio.to_thread(self._session.cached, [exchange.key], requests))[0]
            if (hit := _hit(exchange, request, answer)) is not None:
                return hit
        if (error := await exchange.refusal_off_loop()) is not None:
            return httpx.Response(403, json=error, request=request)
        try:
            if exchange.paced:
                exchange.ticket = await self._session.limits.acquire(exchange.estimate, exchange.model)
            exchange.sent = True
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as error:
            exchange.failed(failure_kind(error))
            raise
        except BaseException:  # cancelled: the engine stopping after a failure, a timeout…
            exchange.abandoned()
            raise
        return _metered(exchange, response, _AsyncMeteredStream)

    async def aclose(self) -> None:
        await self._inner.aclose()
