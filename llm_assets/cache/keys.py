"""The request cache: identical requests are answered without calling the API.

:class:`CacheKeys` is the one key function: a request's key is the SHA-256 of the backend
it goes to (a stable identity, see :func:`backend_identity`), its endpoint and its
canonical JSON body (model, messages and every parameter that changes the output).
Headers, and so the API key, are not part of it and are never stored. The engine keys the
calls it is about to make and the HTTP transport keys the requests that reach it with the
same function, so the two always agree.

:class:`RequestCache` stores the response bodies as the server sent them, one file each,
under any fsspec / UPath location (local disk, ``s3://…``, ``memory://…``). Writes are
atomic and durable (temp file, ``fsync``, rename on local disks; one PUT on object
stores), so neither concurrent writers nor a power loss leave a partial entry. Entries
are validated when stored and read (:mod:`llm_assets.http.answers`, by the transport and
:meth:`~llm_assets.session.RunSession.cached`): a damaged one is a miss.

Example:
    >>> keys = CacheKeys("http://127.0.0.1:8000/v1")
    >>> key = keys.key("/embeddings", {"model": "m", "input": ["a"]})
    >>> cache = RequestCache("memory://llm-cache-doctest")
    >>> cache.put(key, b'{"ok": true}')
    >>> cache.get_many([key, None])
    [b'{"ok": true}', None]
"""

import contextlib
import enum
import hashlib
import json
import os
import shutil
import uuid
from typing import Any

from upath import UPath

from llm_assets.accounting.usage import BILLED_PATH_SUFFIXES
from llm_assets.errors import LLMAssetsError
from llm_assets.http.pools import httpx

_LOOPBACK_NAMES = {"localhost": "127.0.0.1", "::1": "127.0.0.1"}


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


def backend_identity(base_url: str) -> str:
    """What the cache keys a remote backend by: its base URL without the parts that change
    while the backend stays the same (credentials, case, default port, ``localhost`` vs
    ``127.0.0.1``, trailing slash, fragment).

    Example:
        >>> backend_identity("HTTPS://user:secret@API.example.com:443/v1/")
        'https://api.example.com/v1'
    """
    url = httpx.URL(base_url)
    host = _LOOPBACK_NAMES.get(url.host, url.host)
    port = None if (url.scheme, url.port) in (("http", 80), ("https", 443)) else url.port
    url = url.copy_with(username=None, password=None, host=host, port=port, fragment=None)
    return str(url).rstrip("/")


class CacheKeys:
    """Cache keys of the requests a client sends to ``base_url``, keyed by ``identity``
    (default: :func:`backend_identity` of ``base_url``; the embedded local model passes the
    model files it serves, since its port changes every run)."""

    def __init__(self, base_url: str, identity: str | None = None) -> None:
        self.base_url = str(httpx.URL(base_url)).rstrip("/")
        self.identity = identity or backend_identity(base_url)

    def key(self, endpoint: str, payload: Any) -> str | None:
        """The key of a POST of JSON ``payload`` to ``endpoint`` (e.g. ``/chat/completions``),
        or ``None`` when it must not be cached (not a billed endpoint, not a JSON object,
        or streamed)."""
        endpoint = endpoint.rstrip("/")
        if not endpoint.endswith(BILLED_PATH_SUFFIXES) or not isinstance(payload, dict) or payload.get("stream"):
            return None
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(f"POST {self.identity}{endpoint}\n{canonical}".encode()).hexdigest()

    def endpoint_of(self, request: httpx.Request) -> str | None:
        """The endpoint of an HTTP request to this base URL (``None``: a GET, or elsewhere)."""
        url = str(request.url.copy_with(query=None))
        if request.method != "POST" or not url.startswith(self.base_url + "/"):
            return None
        return url[len(self.base_url) :]


class RequestCache:
    """Response bodies by key under ``root`` (any fsspec / UPath location; ``~`` expands)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = UPath(os.path.expanduser(root) if isinstance(root, str) else root)
        self._local = self.root.protocol in ("", "file", "local")

    @classmethod
    def checked(cls, root: str, field: str = "cache_dir") -> "RequestCache":
        """The cache at ``root``, after proving entries can be stored there (a probe written
        and removed); anything else is one error naming ``field``."""
        try:
            if not str(root).strip():
                raise ValueError("it is blank")
            cache = cls(root)
            probe = cache.root / f".probe.{uuid.uuid4().hex}"
            cache._write(probe, b"")
            probe.unlink()
        except Exception as error:  # OSError, or an fsspec backend's own (unknown protocol, missing package…)
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise LLMAssetsError(
                f"The request cache can't be written at {str(root)!r} ({reason}): set "
                f"OpenAIResource({field}=...) to a writable directory or fsspec URL, or cache=False."
            ) from None
        return cache

    def path(self, key: str) -> UPath:
        """Where the entry of ``key`` lives."""
        return self.root / key[:2] / f"{key}.json"

    def get_many(self, keys: list[str | None]) -> list[bytes | None]:
        """The entries of ``keys`` (``None`` where absent), read with one fsspec ``cat``
        (concurrently on object stores). A location that can't be read raises ``OSError``."""
        paths = {key: self.path(key).path for key in keys if key}
        found = self.root.fs.cat(list(paths.values()), on_error="omit") if paths else {}
        return [found.get(paths[key]) if key else None for key in keys]

    def put(self, key: str, body: bytes, durable: bool = True) -> None:
        """Store ``body`` under ``key``: atomic, and durable (see the module docstring)
        unless many writes leave that to one :meth:`sync` at the end."""
        self._write(self.path(key), body, durable)

    def sync(self) -> None:
        """Make every write so far durable: one ``sync`` of the disks instead of two
        ``fsync`` per entry (object stores are durable once a PUT returns)."""
        if self._local:
            os.sync()

    def _write(self, path: UPath, body: bytes, durable: bool = True) -> None:
        if not self._local:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)  # one PUT: object stores never show a partial object
            return
        directory = os.path.dirname(path.path)
        if os.path.isfile(directory) and os.path.abspath(os.path.dirname(directory)) == os.path.abspath(self.root.path):
            os.remove(directory)  # damage in the cache's own layout: a file where a shard directory goes
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{os.path.basename(path.path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(body)
                if durable:
                    file.flush()
                    os.fsync(file.fileno())
            if os.path.isdir(path.path):  # a damaged entry that became a directory: replace it
                shutil.rmtree(path.path)
            os.replace(temporary, path.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        if durable:
            _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the OS allows opening directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
