"""Client-side rate limits: requests and (estimated) tokens per minute, paced evenly.

One :class:`RateLimits` serves every client of a session, sync and async, on any thread
or event loop: each request that goes out (retries included, cache hits never) reserves
its place with :meth:`RateLimits.reserve`, which returns how long to wait, then sleeps
that long. Reservations are the generic cell rate algorithm (GCRA): requests are spaced
``60 / requests_per_minute`` seconds apart; tokens may burst to 10 seconds' worth of
``tokens_per_minute``, then refill at that rate. The clock is injectable, so pacing is
tested by counting grants on a fake clock, not by timing.

(aiolimiter, used before, keeps one limiter per event loop by design and has no sync
side; the engine, user asyncio code and sync clients of one step run on different loops
and threads, and must share one budget.)

Example:
    >>> now = [0.0]
    >>> limits = RateLimits(requests_per_minute=60, tokens_per_minute=None, clock=lambda: now[0])
    >>> [limits.reserve(tokens=10) for _ in range(3)]  # seconds to wait before sending
    [0.0, 1.0, 2.0]
"""

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any


def estimate_tokens(text: str | bytes) -> int:
    """A conservative token estimate (about 3 characters per token) for packing and limits."""
    return len(text) // 3 + 1


def request_estimate(content: bytes, body: Mapping[str, Any]) -> int:
    """What a request may spend: its JSON ``content`` estimated, plus the most tokens its
    ``body`` lets the model answer (``max_tokens`` or ``max_completion_tokens``)."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return estimate_tokens(content) + (limit if isinstance(limit, int) else 0)


class Pacer:
    """GCRA: ``rate`` units per second, at most ``burst`` units at once (not thread-safe
    by itself: :class:`RateLimits` holds the lock)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.interval = 1.0 / rate
        self.burst = burst
        self._tolerance = burst * self.interval
        self._theoretical_arrival = float("-inf")

    def reserve(self, now: float, units: float) -> float:
        """Reserve ``units`` (capped at ``burst``); returns the seconds to wait first."""
        units = min(max(units, 1.0), self.burst)
        self._theoretical_arrival = max(self._theoretical_arrival, now) + units * self.interval
        return max(0.0, self._theoretical_arrival - self._tolerance - now)


class RateLimits:
    """Requests-per-minute and tokens-per-minute limits shared by every client of a session."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = Pacer(requests_per_minute / 60, 1) if requests_per_minute else None
        self._tokens = Pacer(tokens_per_minute / 60, max(1, tokens_per_minute // 6)) if tokens_per_minute else None
        self._clock = clock
        self._lock = threading.Lock()
        self.granted = 0  # reservations made: one per request sent

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def reserve(self, tokens: int) -> float:
        """Reserve one request of about ``tokens`` tokens; returns the seconds to wait."""
        with self._lock:
            now = self._clock()
            self.granted += 1
            waits = [p.reserve(now, units) for p, units in ((self._requests, 1), (self._tokens, tokens)) if p]
            return max(waits, default=0.0)

    async def acquire(self, tokens: int) -> None:
        """Wait (without blocking the event loop) until a request of ``tokens`` may go."""
        if delay := self.reserve(tokens):
            await asyncio.sleep(delay)

    def acquire_blocking(self, tokens: int) -> None:
        """Wait (blocking this thread) until a request of ``tokens`` may go."""
        if delay := self.reserve(tokens):
            time.sleep(delay)
