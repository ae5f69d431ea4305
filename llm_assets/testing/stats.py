"""What the scripted server saw: the requests by path, the usage it billed, concurrency peaks.

Examples:
    >>> stats = ServerStats()
    >>> stats.arrive("/v1/embeddings", {"model": "m", "input": ["hi"]})
    >>> stats.bill("m", {"prompt_tokens": 1, "total_tokens": 1}, {"model": "m", "input": ["hi"]})
    >>> stats.leave()
    >>> stats.paths["/v1/embeddings"], stats.max_in_flight, stats.in_flight, stats.usage.total_tokens
    (1, 1, 0, 1)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_assets.accounting.usage import Usage


@dataclass
class ServerStats:
    """What the server saw: requests by path, usage it reported, concurrency peaks."""

    usage: Usage = field(default_factory=Usage)
    requests: list[dict[str, Any]] = field(default_factory=list)
    billed: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    paths: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arrive(self, path: str, body: Any) -> None:
        """A request for ``path`` arrived and is now in flight."""
        with self.lock:
            self.requests.append({"path": path, "body": body})
            self.arrivals.append(time.monotonic())
            self.paths[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        """A request that ``arrive`` counted is answered (or failed)."""
        with self.lock:
            self.in_flight -= 1

    def bill(self, model: str, usage: dict[str, Any] | None, body: dict[str, Any]) -> None:
        """The server reported ``usage`` for the request ``body``, answered by ``model``."""
        self.usage.add_response(model, usage)
        with self.lock:
            self.billed.append((model, usage, body))

    def usage_where(self, predicate: Callable[[dict[str, Any]], bool]) -> Usage:
        """Usage reported for the requests whose JSON body matches ``predicate``."""
        usage = Usage()
        for model, reported, body in list(self.billed):
            if predicate(body):
                usage.add_response(model, reported)
        return usage
