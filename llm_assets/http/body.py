"""Reading a response body as the SDK consumes it: decompressed, JSON or server-sent events.

``BodyReader`` is fed the raw bytes of one response (gzip or deflate encoded, as
OpenAI sends them, or plain) and remembers the last ``model`` and ``usage`` it saw. For
a stream these come from its events (Chat Completions put ``usage`` in the last chunk,
the Responses API inside ``response.completed``); for JSON, from the body, which it also
returns whole so it can be cached.

Examples:
    >>> import gzip
    >>> reader = BodyReader(content_encoding="gzip", content_type="application/json")
    >>> reader.feed(gzip.compress(b'{"model": "m", "usage": {"total_tokens": 5}}'))
    >>> reader.finish().usage
    {'total_tokens': 5}
"""

import json
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

#: Content encodings the reader decodes; requests offer only these to the server.
ACCEPT_ENCODING = "gzip, deflate"


@dataclass(frozen=True)
class BodySummary:
    """What a finished body said: the served model, its usage (``None`` when the server
    sent none), and the JSON body itself (raw and decoded) when it was one complete JSON
    object."""

    model: str | None
    usage: dict[str, Any] | None
    json_body: bytes | None = None
    readable: bool = True  # False: not JSON at all (malformed, cut off, or not decompressible)
    answer: dict[str, Any] | None = None


class _Inflater:
    """gzip, or deflate as HTTP specifies it (zlib-wrapped) with a fallback to the raw
    deflate some servers send, like httpx's own decoder."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16 if self._gzip else zlib.MAX_WBITS)
        self._first = True

    def decompress(self, chunk: bytes) -> bytes:
        if self._first and not self._gzip:
            self._first = False
            try:
                return self._decoder.decompress(chunk)
            except zlib.error:
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        self._first = False
        return self._decoder.decompress(chunk)


class BodyReader:
    """Incremental reader of one response body (see the module docstring)."""

    def __init__(self, content_encoding: str = "", content_type: str = "") -> None:
        encoding = content_encoding.strip().lower()
        self._inflater = _Inflater(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None
        self._is_sse = "text/event-stream" in content_type
        self._buffer = b""
        self._model: str | None = None
        self._usage: dict[str, Any] | None = None
        self._damaged = False

    def feed(self, chunk: bytes) -> None:
        if self._damaged:
            return
        if self._inflater is not None:
            try:
                chunk = self._inflater.decompress(chunk)
            except zlib.error:  # not what its content-encoding says: unreadable (httpx raises for the SDK)
                self._damaged = True
                return
        self._buffer += chunk
        if self._is_sse:
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                self._event_line(line)

    @property
    def data(self) -> bytes:
        """What was fed so far, decompressed (a JSON body: all of it)."""
        return self._buffer

    @property
    def damaged(self) -> bool:
        """Whether the body could not be decompressed."""
        return self._damaged

    def finish(self) -> BodySummary:
        """The summary of everything fed so far."""
        if self._damaged:
            return BodySummary(None, None, readable=False)
        if self._is_sse:
            self._event_line(self._buffer)
            return BodySummary(self._model, self._usage)
        return summarize(self._buffer, decode_json(self._buffer))

    def _event_line(self, line: bytes) -> None:
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
            self._observe(event["response"] if isinstance(event.get("response"), dict) else event)

    def _observe(self, body: dict[str, Any]) -> None:
        if body.get("model") and isinstance(body["model"], str):
            self._model = body["model"]
        if isinstance(body.get("usage"), dict):
            self._usage = body["usage"]


def decode_json(raw: bytes) -> Any:
    """``raw`` decoded: orjson, else the standard library (``NaN``, numbers too big for a
    double); ``None`` when it is not JSON."""
    try:
        return orjson.loads(raw)
    except ValueError:
        try:
            return json.loads(raw)
        except ValueError:
            return None


def summarize(raw: bytes, body: Any) -> BodySummary:
    """The summary of a whole JSON body: ``raw``, decoded as ``body`` (``None``: not JSON)."""
    if not isinstance(body, dict):
        return BodySummary(None, None, readable=False)
    model, usage = body.get("model"), body.get("usage")
    return BodySummary(
        model if model and isinstance(model, str) else None,
        usage if isinstance(usage, dict) else None,
        raw,
        answer=body,
    )
