"""How reply bodies go on the wire: content-encoding (gzip, deflate, raw deflate) and the
chunked framing of server-sent-event streams.

``"deflate"`` is what HTTP specifies (RFC 9110: a zlib stream, RFC 1950); ``"deflate-raw"``
is a bare deflate stream (RFC 1951) sent as ``content-encoding: deflate``, as some servers do.

Examples:
    >>> accepts("gzip, br", "gzip"), accepts("gzip;q=0", "gzip"), content_encoding("deflate-raw")
    (True, False, 'deflate')
    >>> zlib.decompress(compress("deflate-raw", b"hello"), wbits=-15)
    b'hello'
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

COMPRESSIONS = ("gzip", "deflate", "deflate-raw")

_WBITS = {"gzip": 31, "deflate": 15, "deflate-raw": -15}  # zlib's window bits select the wrapper
_HEADER = {"gzip": "gzip", "deflate": "deflate", "deflate-raw": "deflate"}
_END = b"0\r\n\r\n"  # the last chunk of a chunked body


def check(compression: str | None) -> str | None:
    """``compression`` if it is a known one (or None), else ValueError."""
    if compression is not None and compression not in _WBITS:
        raise ValueError(f"compression must be one of {COMPRESSIONS} or None, not {compression!r}")
    return compression


def content_encoding(compression: str) -> str:
    """The ``content-encoding`` header value of ``compression``."""
    return _HEADER[compression]


def accepts(accept_encoding: str | None, compression: str | None) -> bool:
    """Whether a request's ``Accept-Encoding`` header allows the server's ``compression``."""
    if compression is None or not accept_encoding:
        return False
    wanted = _HEADER[compression]
    for item in accept_encoding.split(","):
        coding, *params = (p.strip() for p in item.split(";"))
        refused = any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
        if coding.lower() in (wanted, "*") and not refused:
            return True
    return False


def compress(compression: str, data: bytes) -> bytes:
    """``data`` compressed whole."""
    compressor = zlib.compressobj(wbits=_WBITS[compression])
    return compressor.compress(data) + compressor.flush()


def event_stream(payloads: list[str], names: list[str] | None, compression: str | None) -> Iterator[bytes]:
    """The chunked body of a server-sent-event stream, one piece to write per event.

    Compressed, it is one stream (one compress object) flushed after each event, so the
    client decodes every event as it arrives; the last event carries the final flush and
    the body's end, since clients stop reading at it.
    """
    compressor = zlib.compressobj(wbits=_WBITS[compression]) if compression else None
    last = len(payloads) - 1
    for i, payload in enumerate(payloads):
        prefix = f"event: {names[i]}\n" if names else ""
        data = f"{prefix}data: {payload}\n\n".encode()
        if compressor is not None:
            data = compressor.compress(data) + compressor.flush(zlib.Z_FINISH if i == last else zlib.Z_SYNC_FLUSH)
        yield _chunk(data) + (_END if i == last else b"")
    if not payloads:
        yield _chunk(compressor.flush() if compressor is not None else b"") + _END


def _chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked body (nothing if empty: that would end the body)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b""
