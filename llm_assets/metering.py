"""HTTP transports that count the usage the server reports, without touching the client.

The OpenAI SDK talks HTTP through an httpx client; these transports sit under it and
read each response body as the SDK consumes it (JSON or server-sent events). Because
nothing above the HTTP layer is patched, every call shape is metered the same way and a
shared client is never mutated.

Example:
    >>> import openai
    >>> from llm_assets.usage import Usage
    >>> usage = Usage()
    >>> client = openai.OpenAI(
    ...     api_key="sk-test",
    ...     http_client=openai.DefaultHttpxClient(transport=MeteredTransport(usage.add_response)),
    ... )
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

try:  # openai >= 3 speaks httpx2; older releases speak httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover - exercised only with older openai releases
    import httpx  # type: ignore[no-redef]

#: Endpoints whose successful responses are billed and carry ``usage``.
METERED_PATH_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/responses")
#: Content encodings the meter can decode; others are not offered to the server.
_ACCEPT_ENCODING = "gzip, deflate"

Recorder = Callable[[str | None, dict[str, Any] | None], None]


def is_metered(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").endswith(METERED_PATH_SUFFIXES)


class _BodyReader:
    """Reads a (possibly compressed) JSON or SSE body incrementally and reports the
    model and usage found in it, exactly once, when the body ends or is closed."""

    def __init__(self, response: httpx.Response, record: Recorder) -> None:
        encoding = response.headers.get("content-encoding", "").lower()
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding else None
        self._is_sse = "text/event-stream" in response.headers.get("content-type", "")
        self._record = record
        self._buffer = b""
        self._model: str | None = None
        self._usage: dict[str, Any] | None = None
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
            self._usage = body["usage"]

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._is_sse:
            self._sse_line(self._buffer)
        else:
            try:
                body = json.loads(self._buffer)
            except ValueError:
                return  # not a completion body (malformed or cut off): nothing billed to count
            if not isinstance(body, dict):
                return
            self._observe(body)
        self._record(self._model, self._usage)


class _MeteredStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, reader: _BodyReader) -> None:
        self._inner, self._reader = inner, reader

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._reader.feed(chunk)
            yield chunk
        self._reader.finish()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._reader.finish()


class _AsyncMeteredStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, reader: _BodyReader) -> None:
        self._inner, self._reader = inner, reader

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._reader.feed(chunk)
            yield chunk
        self._reader.finish()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._reader.finish()


def _prepare(request: httpx.Request) -> bool:
    metered = is_metered(request)
    if metered:
        request.headers["accept-encoding"] = _ACCEPT_ENCODING
    return metered


def _wrap(response: httpx.Response, record: Recorder, cls: type) -> httpx.Response:
    response.stream = cls(response.stream, _BodyReader(response, record))
    return response


class MeteredTransport(httpx.BaseTransport):
    """Sync transport that reports ``(model, usage)`` of each successful billed response
    to ``record``. ``inner`` (a shared connection pool) is not closed by this wrapper."""

    def __init__(self, record: Recorder, inner: httpx.BaseTransport | None = None) -> None:
        self._record = record
        self._owns_inner = inner is None
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        metered = _prepare(request)
        response = self._inner.handle_request(request)
        if not metered or not 200 <= response.status_code < 300:
            return response
        return _wrap(response, self._record, _MeteredStream)

    def close(self) -> None:
        if self._owns_inner:
            self._inner.close()


class AsyncMeteredTransport(httpx.AsyncBaseTransport):
    """Async twin of :class:`MeteredTransport`."""

    def __init__(self, record: Recorder, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._record = record
        self._owns_inner = inner is None
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        metered = _prepare(request)
        response = await self._inner.handle_async_request(request)
        if not metered or not 200 <= response.status_code < 300:
            return response
        return _wrap(response, self._record, _AsyncMeteredStream)

    async def aclose(self) -> None:
        if self._owns_inner:
            await self._inner.aclose()
