"""HTTP transports that count the usage the server reports, and answer from the request
cache, without touching the client.

The OpenAI SDK talks HTTP through an httpx client; these transports sit under it and
read each response body as the SDK consumes it (JSON or server-sent events). Because
nothing above the HTTP layer is patched, every call shape is metered the same way and a
shared client is never mutated. A response served from the cache never reaches the
server, so it is counted as a cache hit with zero tokens.

Example:
    >>> import openai
    >>> from llm_assets.accounting.usage import Usage
    >>> usage = Usage()
    >>> client = openai.OpenAI(
    ...     api_key="sk-test", http_client=openai.DefaultHttpxClient(transport=MeteredTransport(usage))
    ... )
"""

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from llm_assets.accounting.governance import REFUSAL_CODE, Governor
from llm_assets.accounting.limits import RateLimits, estimate_tokens
from llm_assets.accounting.usage import BILLED_PATH_SUFFIXES, Usage
from llm_assets.cache import CacheMode, RequestCache, payload_key

try:  # openai >= 3 speaks httpx2; older releases speak httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover - exercised only with older openai releases
    import httpx  # type: ignore[no-redef]

#: Content encodings the meter can decode; others are not offered to the server.
_ACCEPT_ENCODING = "gzip, deflate"
CACHE_HEADER = "x-llm-assets-cache"
#: Request header naming which of a transport's usage counters a request is for; it is
#: removed before the request leaves the machine.
PARTITION_HEADER = "x-llm-assets-usage-slot"


def is_metered(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").endswith(BILLED_PATH_SUFFIXES)


class _BodyTap:
    """Reads a (possibly compressed) JSON or SSE body incrementally; when it ends, counts
    the model and usage found in it, exactly once, and returns the decoded JSON body
    (for the cache) when it was a complete JSON object."""

    def __init__(self, response: httpx.Response, usage: Usage, plan: "_Plan") -> None:
        encoding = response.headers.get("content-encoding", "").lower()
        self._plan = plan
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding else None
        self._is_sse = "text/event-stream" in response.headers.get("content-type", "")
        self._usage = usage
        self._buffer = b""
        self._model: str | None = None
        self._reported: dict[str, Any] | None = None
        self._done = False

    def feed(self, chunk: bytes) -> None:
        if self._inflate is not None:
            chunk = self._inflate.decompress(chunk)
        self._buffer += chunk
        if self._is_sse:
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                self._sse_line(line)

    def _sse_line(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict):
            self._observe(event.get("response") if isinstance(event.get("response"), dict) else event)

    def _observe(self, body: dict[str, Any]) -> None:
        if body.get("model"):
            self._model = body["model"]
        if isinstance(body.get("usage"), dict):
            self._reported = body["usage"]

    def finish(self, complete: bool) -> bytes | None:
        """Count the response once; returns the JSON body if ``complete`` and valid."""
        if self._done:
            return None
        self._done = True
        if self._is_sse:
            self._sse_line(self._buffer)
            return self._count(None)
        try:
            body = json.loads(self._buffer)
        except ValueError:
            body = None  # malformed or cut off: not a billed completion we can read
        if not isinstance(body, dict):
            self._plan.settle(None, None)
            return None
        self._observe(body)
        return self._count(self._buffer if complete else None)

    def _count(self, body: bytes | None) -> bytes | None:
        self._usage.add_response(self._model, self._reported)
        self._plan.settle(self._model, self._reported)
        return body


def _cached_response(request: httpx.Request, body: bytes, usage: Usage) -> httpx.Response:
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        model = None
    usage.add_cache_hit(model)
    headers = {"content-type": "application/json", CACHE_HEADER: "hit"}
    return httpx.Response(200, headers=headers, content=body, request=request)


class _Plan:
    """What to do with one request: whose usage it is, whether it is metered, governed,
    looked up in / stored to the cache."""

    def __init__(
        self,
        request: httpx.Request,
        usages: list[Usage],
        cache: RequestCache | None,
        mode: CacheMode,
        governor: Governor | None,
        limits: RateLimits | None = None,
    ) -> None:
        slot = request.headers.pop(PARTITION_HEADER, None)
        self.usage = usages[int(slot)] if slot is not None else usages[0]
        self.metered = is_metered(request)
        self.governor = governor if governor is not None and governor.active and self.metered else None
        self.limits = limits if limits is not None and limits.active and self.metered else None
        self.cache = cache if self.metered and mode is not CacheMode.OFF else None
        self.key, self.model, self.estimate, self._reserved = None, None, 0, False
        if self.metered:
            request.headers["accept-encoding"] = _ACCEPT_ENCODING
        if self.cache is not None or self.governor is not None or self.limits is not None:  # else: not read
            try:
                payload: Any = json.loads(request.content)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                self.model = payload.get("model")
                limit = payload.get("max_tokens") or payload.get("max_completion_tokens") or 0
                self.estimate = estimate_tokens(request.content) + (limit if isinstance(limit, int) else 0)
                if self.cache is not None:
                    self.key = payload_key(str(request.url), payload)
        self.reads = bool(self.key) and mode.reads
        self.writes = bool(self.key) and mode.writes

    def refusal(self) -> str | None:
        """Why the governor refuses this request (else it reserves its estimate)."""
        if self.governor is None:
            return None
        refused = self.governor.refusal(self.model, self.estimate)
        self._reserved = refused is None
        return refused

    def settle(self, served: str | None, usage: dict[str, Any] | None) -> None:
        if self._reserved:
            self._reserved = False
            self.governor.settle(self.model, self.estimate, usage, served)


def _refused(request: httpx.Request, reason: str) -> httpx.Response:
    """The answer to a request the governor refused: it never left the machine."""
    error = {"message": reason, "type": "invalid_request_error", "code": REFUSAL_CODE, "param": "model"}
    return httpx.Response(403, json={"error": error}, request=request)


class _MeteredStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, tap: _BodyTap, plan: _Plan) -> None:
        self._inner, self._tap, self._plan = inner, tap, plan

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._tap.feed(chunk)
            yield chunk
        body = self._tap.finish(complete=True)
        if body is not None and self._plan.writes:
            self._plan.cache.put(self._plan.key, body)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._tap.finish(complete=False)


class _AsyncMeteredStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, tap: _BodyTap, plan: _Plan) -> None:
        self._inner, self._tap, self._plan = inner, tap, plan

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._tap.feed(chunk)
            yield chunk
        body = self._tap.finish(complete=True)
        if body is not None and self._plan.writes:
            await asyncio.to_thread(self._plan.cache.put, self._plan.key, body)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._tap.finish(complete=False)


def _meter(response: httpx.Response, plan: _Plan, stream_cls: type) -> httpx.Response:
    """Count a failed attempt, or wrap a successful billed response's body in a tap."""
    if not plan.metered:
        return response
    if not 200 <= response.status_code < 300:
        plan.usage.add_failed_attempt()
        plan.settle(None, None)
        return response
    response.stream = stream_cls(response.stream, _BodyTap(response, plan.usage, plan), plan)
    return response


class MeteredTransport(httpx.BaseTransport):
    """Sync transport counting the usage of each billed response into ``usage``, and
    answering from ``cache`` per ``cache_mode``. ``inner`` (a shared connection pool) is
    not closed by this wrapper."""

    def __init__(
        self,
        usage: Usage | list[Usage],
        inner: httpx.BaseTransport | None = None,
        cache: RequestCache | None = None,
        cache_mode: CacheMode = CacheMode.OFF,
        governor: Governor | None = None,
    ) -> None:
        self._usages = usage if isinstance(usage, list) else [usage]
        self._cache, self._mode, self._governor = cache, cache_mode, governor
        self._owns_inner = inner is None
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        plan = _Plan(request, self._usages, self._cache, self._mode, self._governor)
        if plan.reads and (body := plan.cache.get(plan.key)) is not None:
            return _cached_response(request, body, plan.usage)
        if (reason := plan.refusal()) is not None:
            return _refused(request, reason)
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError:
            plan.usage.add_failed_attempt()
            plan.settle(None, None)
            raise
        return _meter(response, plan, _MeteredStream)

    def close(self) -> None:
        if self._owns_inner:
            self._inner.close()


class AsyncMeteredTransport(httpx.AsyncBaseTransport):
    """Async twin of :class:`MeteredTransport` (cache I/O runs in a worker thread); each
    billed request that goes out (retries included, cache hits not) first waits for
    ``limits``."""

    def __init__(
        self,
        usage: Usage | list[Usage],
        inner: httpx.AsyncBaseTransport | None = None,
        cache: RequestCache | None = None,
        cache_mode: CacheMode = CacheMode.OFF,
        limits: RateLimits | None = None,
        governor: Governor | None = None,
    ) -> None:
        self._usages = usage if isinstance(usage, list) else [usage]
        self._cache, self._mode, self._limits, self._governor = cache, cache_mode, limits, governor
        self._owns_inner = inner is None
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plan = _Plan(request, self._usages, self._cache, self._mode, self._governor, self._limits)
        if plan.reads and (body := await asyncio.to_thread(plan.cache.get, plan.key)) is not None:
            return _cached_response(request, body, plan.usage)
        if (reason := plan.refusal()) is not None:
            return _refused(request, reason)
        if plan.limits is not None:
            await plan.limits.acquire(plan.estimate)
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError:
            plan.usage.add_failed_attempt()
            plan.settle(None, None)
            raise
        return _meter(response, plan, _AsyncMeteredStream)

    async def aclose(self) -> None:
        if self._owns_inner:
            await self._inner.aclose()
