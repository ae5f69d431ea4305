"""Fault injection for ``ScriptedOpenAIServer``: a ``fault`` hook
that fails a seeded, random share of requests the way real servers and networks do.

Examples:
    >>> import urllib.request
    >>> from llm_assets.testing import ScriptedOpenAIServer
    >>> injector = FaultInjector(rate=1.0, kinds=("429",))
    >>> with ScriptedOpenAIServer(fault=injector) as server:
    ...     urllib.request.urlopen(f"{server.base_url}/embeddings", data=b"{}")
    Traceback (most recent call last):
    urllib.error.HTTPError: HTTP Error 429: Too Many Requests
    >>> injector.injected
    Counter({'429': 1})
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

FAULTS = ("429", "500", "503", "slow", "drop", "cut", "malformed")


def inject_fault(handler: BaseHTTPRequestHandler, kind: str, slow_seconds: float = 1.0, retry_after: str = "1") -> None:
    """Answer the request ``handler`` serves with the fault ``kind`` (one of ``FAULTS``):
    ``429`` (with ``Retry-After``), ``500``, ``503``, ``slow`` (no answer before
    ``slow_seconds``, then the connection closes), ``drop`` (closed without an answer),
    ``cut`` (HTTP 200 whose body stops halfway, then the connection closes) and
    ``malformed`` (HTTP 200 with a complete body that is not JSON). None is billed."""
    if kind in ("429", "500", "503"):
        handler._json(
            int(kind),
            {"error": {"message": f"injected {kind}", "type": "server_error"}},
            headers={"retry-after": retry_after} if kind == "429" else None,
        )
    elif kind in ("malformed", "cut"):
        payload = b'{"choices": [{"message": '
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(payload) * (2 if kind == "cut" else 1)))
        handler.end_headers()
        handler.wfile.write(payload)
        handler.close_connection = kind == "cut"
    else:
        if kind == "slow":
            time.sleep(slow_seconds)
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(2)


class FaultInjector:
    """A ``fault`` hook for ``ScriptedOpenAIServer``: each request fails, with a
    fault drawn from ``kinds`` (see ``inject_fault``), with probability ``rate``
    (seeded, so runs repeat)."""

    def __init__(
        self,
        rate: float,
        kinds: tuple[str, ...] = FAULTS,
        seed: int = 0,
        slow_seconds: float = 1.0,
        retry_after: str = "1",
    ) -> None:
        self.rate, self.kinds, self.slow_seconds, self.retry_after = rate, kinds, slow_seconds, retry_after
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter = Counter()

    def __call__(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> bool:
        with self._lock:
            if self._random.random() >= self.rate:
                return False
            kind = self._random.choice(self.kinds)
            self.injected[kind] += 1
        inject_fault(handler, kind, self.slow_seconds, self.retry_after)
        return True


def first_attempts(reply: Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]) -> Callable[..., bool]:
    """A ``fault`` hook answering the first request of each distinct body with ``reply``
    (e.g. ``lambda handler, body: inject_fault(handler, "503")``); the retries pass through."""
    seen: set[str] = set()
    lock = threading.Lock()

    def hook(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> bool:
        key = json.dumps(body, sort_keys=True)
        with lock:
            if key in seen:
                return False
            seen.add(key)
        reply(handler, body)
        return True

    return hook
