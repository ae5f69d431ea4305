"""Cache keys: which requests are the same request.

``CacheKeys`` is the one key function: a request's key is the SHA-256 of the backend
it goes to (a stable identity, see ``backend_identity``), its endpoint and its
canonical JSON body (model, messages and every parameter that changes the output).
Headers, and so the API key, are not part of it and are never stored. The engine keys the
calls it is about to make and the HTTP transport keys the requests that reach it with the
same function, so the two always agree. ``CacheMode`` says how a run uses them.

Examples:
    >>> keys = CacheKeys("http://127.0.0.1:8000/v1")
    >>> len(keys.key("/embeddings", {"model": "m", "input": ["a"]}))
    64
    >>> keys.key("/chat/completions", {"model": "m", "stream": True}) is None
    True
"""

import enum
import hashlib
import json
from typing import Any

import httpx2 as httpx  # the httpx that openai 3.x speaks

from llm_assets.accounting.usage import BILLED_PATH_SUFFIXES

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

    Examples:
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
    (default: ``backend_identity`` of ``base_url``; the embedded local model passes the
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
