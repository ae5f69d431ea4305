"""The request cache: identical requests are answered without calling the API.

:class:`CacheKeys` is the one key function: a request's key is the SHA-256 of the backend
it goes to (the client's base URL), its endpoint and its canonical JSON body (model,
messages and every parameter that changes the output). Headers, and so the API key, are
not part of it and are never stored. The engine keys the calls it is about to make and
the HTTP transport keys the requests that reach it with the same function, so the two
always agree.

:class:`RequestCache` stores the response bodies as the server sent them, one file each,
under any fsspec / UPath location (local disk, ``s3://…``, ``memory://…``). Writes are
atomic (temp file + rename on local disks, one PUT on object stores), so concurrent
writers never corrupt an entry.

Example:
    >>> keys = CacheKeys("http://127.0.0.1:8000/v1")
    >>> key = keys.key("/embeddings", {"model": "m", "input": ["a"]})
    >>> cache = RequestCache("memory://llm-cache-doctest")
    >>> cache.put(key, b'{"ok": true}')
    >>> cache.get_many([key, None])
    [b'{"ok": true}', None]
"""

import enum
import hashlib
import json
import os
import uuid
from typing import Any

from upath import UPath

from llm_assets.accounting.usage import BILLED_PATH_SUFFIXES
from llm_assets.http.pools import httpx


class CacheMode(enum.Enum):
    """How a run uses the request cache."""

    USE = "use"  # answer from the cache when possible, store new answers
    REFRESH = "refresh"  # always ask the API (re-sample), store the new answers
    OFF = "off"  # neither read nor write

    @property
    def reads(self) -> bool:
        return self is CacheMode.USE

    @property
    def writes(self) -> bool:
        return self is not CacheMode.OFF


class CacheKeys:
    """Cache keys of the requests a client sends to ``base_url``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = str(httpx.URL(base_url)).rstrip("/")

    def key(self, endpoint: str, payload: Any) -> str | None:
        """The key of a POST of JSON ``payload`` to ``endpoint`` (e.g. ``/chat/completions``),
        or ``None`` when it must not be cached (not a billed endpoint, not a JSON object,
        or streamed)."""
        endpoint = endpoint.rstrip("/")
        if not endpoint.endswith(BILLED_PATH_SUFFIXES) or not isinstance(payload, dict) or payload.get("stream"):
            return None
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(f"POST {self.base_url}{endpoint}\n{canonical}".encode()).hexdigest()

    def key_of(self, request: httpx.Request, payload: Any) -> str | None:
        """The key of an HTTP request whose decoded JSON body is ``payload``."""
        url = str(request.url.copy_with(query=None))
        if request.method != "POST" or not url.startswith(self.base_url + "/"):
            return None
        return self.key(url[len(self.base_url) :], payload)


class RequestCache:
    """Response bodies by key under ``root`` (any fsspec / UPath location)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = UPath(root)
        self._local = self.root.protocol in ("", "file", "local")

    def _path(self, key: str) -> UPath:
        return self.root / key[:2] / f"{key}.json"

    def get_many(self, keys: list[str | None]) -> list[bytes | None]:
        """The entries of ``keys`` (``None`` where absent), read with one fsspec ``cat``
        (concurrently on object stores)."""
        paths = {key: self._path(key).path for key in keys if key}
        try:
            found = self.root.fs.cat(list(paths.values()), on_error="omit") if paths else {}
        except OSError:
            found = {}
        return [found.get(paths[key]) if key else None for key in keys]

    def put(self, key: str, body: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._local:
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            temporary.write_bytes(body)
            os.replace(temporary.path, path.path)
        else:
            path.write_bytes(body)  # one PUT: object stores never show a partial object
