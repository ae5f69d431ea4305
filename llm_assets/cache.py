"""A persistent request cache: identical requests are answered without calling the API.

A request's key is the SHA-256 of its method, full URL (so different servers never share
answers) and canonical JSON body (model, messages and every parameter that changes the
output). Headers, and so the API key, are not part of it and are never stored. Entries
are the response bodies as the server sent them, one file each, under any fsspec / UPath
location (local disk, ``s3://…``, ``memory://…``); writes are atomic (temp file + rename
on local disks, single PUT on object stores), so concurrent writers never corrupt an entry.

Example:
    >>> cache = RequestCache("memory://llm-cache-doctest")
    >>> cache.put("k" * 64, b'{"ok": true}')
    >>> cache.get("k" * 64)
    b'{"ok": true}'
"""

import enum
import hashlib
import json
import os
import uuid
from typing import Any

from upath import UPath

from llm_assets.accounting.usage import BILLED_PATH_SUFFIXES


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


def payload_key(url: str, payload: Any) -> str | None:
    """The cache key of a POST of JSON ``payload`` to ``url``, or ``None`` when it must not
    be cached (not a completion/embedding endpoint, not a JSON object, or streamed)."""
    url = url.split("?", 1)[0].rstrip("/")
    if not url.endswith(BILLED_PATH_SUFFIXES) or not isinstance(payload, dict) or payload.get("stream"):
        return None
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"POST {url}\n{canonical}".encode()).hexdigest()


def request_key(method: str, url: str, body: bytes) -> str | None:
    """The cache key of an HTTP request (see :func:`payload_key`)."""
    if method != "POST":
        return None
    try:
        return payload_key(url, json.loads(body))
    except ValueError:
        return None


class RequestCache:
    """Response bodies by request key under ``root`` (any fsspec / UPath location)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = UPath(root)
        self._local = self.root.protocol in ("", "file", "local")

    def _path(self, key: str) -> UPath:
        return self.root / key[:2] / f"{key}.json"

    def get_many(self, keys: list[str | None]) -> list[bytes | None]:
        """Entries for ``keys`` (``None`` where absent), read in one go."""
        return [self.get(key) if key else None for key in keys]

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, OSError):
            return None

    def put(self, key: str, body: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._local:
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            temporary.write_bytes(body)
            os.replace(temporary.path, path.path)
        else:
            path.write_bytes(body)  # one PUT: object stores never show a partial object

    def count(self) -> int:
        """Number of stored entries."""
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0
