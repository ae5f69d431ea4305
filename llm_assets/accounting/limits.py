"""Rate limits: requests and (estimated) tokens per minute, paced evenly, following the
provider's own limits.

One :class:`RateLimits` serves every client of a session, sync and async, on any thread
or event loop: each request that goes out (retries included, cache hits never) takes its
place with :meth:`RateLimits.acquire`, which waits until it may go. Places are handed out
by the generic cell rate algorithm (GCRA): requests are spaced evenly; tokens may burst,
then refill. The clock is injectable, so pacing is tested by counting grants on a fake
clock, not by timing.

Two sources set the rates:

- ``requests_per_minute`` / ``tokens_per_minute``, configured: ceilings never exceeded;
- the provider's rate-limit headers, read from every response
  (:mod:`llm_assets.accounting.provider_limits`): each process sends at the provider's
  refill rate scaled by how full the provider's bucket is (``rate * min(1, (fill / 0.8) ** 4)``). Processes
  that share a key see the same bucket, so together they settle where their rates add
  up to the provider's, with the bucket part full: no 429s, no idle capacity, and no
  state shared among them. Until the first response says whether the provider reports
  limits, one request goes at a time; a 429 pauses every request for its ``Retry-After``.

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

from llm_assets.accounting.provider_limits import Bucket, retry_after


def estimate_tokens(text: str | bytes) -> int:
    """A conservative token estimate (about 3 characters per token) for packing and limits."""
    return len(text) // 3 + 1


def request_estimate(content: bytes, body: Mapping[str, Any]) -> int:
    """What a request may spend: its JSON ``content`` estimated, plus the most tokens its
    ``body`` lets the model answer (``max_tokens`` or ``max_completion_tokens``)."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return estimate_tokens(content) + (limit if isinstance(limit, int) else 0)


#: How far ahead a place may be promised: a waiter further back waits without one, so a
#: rate that drops applies to it (the SDK's clients may have thousands of requests waiting).
HORIZON_SECONDS = 0.25
#: How often requests waiting for the first answer (the probe) check again.
PROBE_POLL_SECONDS = 0.02
#: The lowest share of the provider's rate one process keeps (its bucket empty).
MIN_SHARE = 1 / 64
#: From this fill of the provider's bucket up, one process may take the provider's whole rate.
FULL_ENOUGH = 0.8


class Pacer:
    """A token bucket of ``rate`` units per second holding at most ``burst`` units, that
    may go into debt: a place promised ahead is paid for now, so the next waits longer.
    Waits are computed at the current rate, which may change at any time (not thread-safe
    by itself: :class:`RateLimits` holds the lock)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.set(rate, burst)
        self._level, self._updated = self.burst, float("-inf")

    def set(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)

    def plan(self, now: float, units: float) -> tuple[float, float]:
        """(the level after taking ``units``, capped at ``burst``, and the seconds to wait)."""
        level = min(self.burst, self._level + max(0.0, now - self._updated) * self.rate)
        level -= min(max(units, 1.0), self.burst)
        return level, max(0.0, -level / self.rate)

    def take(self, now: float, level: float) -> None:
        self._level, self._updated = level, now

    def reserve(self, now: float, units: float) -> float:
        """Reserve ``units``; returns the seconds to wait first."""
        level, wait = self.plan(now, units)
        self.take(now, level)
        return wait


def provider_share(fill: float) -> float:
    """The share of the provider's rate one process takes when its bucket is ``fill``
    full: all of it from 80% up, a sixteenth at 40%, at least :data:`MIN_SHARE`."""
    return min(1.0, max(MIN_SHARE, (fill / FULL_ENOUGH) ** 4))


class RateLimits:
    """Requests- and tokens-per-minute limits shared by every client of a session: the
    configured ceilings, lowered to follow the provider's headers (``follow_provider``)."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        follow_provider: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ceilings = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self._pacers: dict[str, Pacer] = {}
        self.follow_provider = follow_provider
        self.provider: dict[str, Bucket] = {}  # the latest of each kind the provider reported
        self._seen: dict[str, float] = {}  # when
        self._sent = {kind: 0.0 for kind in self._ceilings}  # units sent since
        self._clock = clock
        self._lock = threading.Lock()
        self._probe = "unknown" if follow_provider else "known"  # -> "in flight" -> "known"
        self._paused_until = float("-inf")
        self.granted = 0  # places given: one per request sent
        for kind in self._ceilings:
            self._set_rate(kind)

    @property
    def active(self) -> bool:
        return self.follow_provider or any(self._ceilings.values())

    def _set_rate(self, kind: str, now: float | None = None) -> None:
        ceiling = (self._ceilings[kind] or 0) / 60 or None
        rate, burst = ceiling, (ceiling or 0) * 10 if kind == "tokens" else 1.0  # tokens: 10 s worth
        if (bucket := self.provider.get(kind)) is not None:
            # since it was seen, the bucket refilled, and this process took what it sent
            seen, sent = self._seen[kind], self._sent[kind]
            fill = bucket.fill if now is None else bucket.fill_after(max(0.0, now - seen), sent)
            followed = bucket.rate * provider_share(fill)
            if rate is None or followed < rate:
                rate, burst = followed, (followed if kind == "tokens" else 1)
        if rate is None:
            self._pacers.pop(kind, None)
        elif kind in self._pacers:
            self._pacers[kind].set(rate, burst)
        else:
            self._pacers[kind] = Pacer(rate, burst)

    def rate(self, kind: str) -> float | None:
        """The current rate of ``kind`` (``requests`` or ``tokens``) per second, if limited."""
        pacer = self._pacers.get(kind)
        return pacer.rate if pacer is not None else None

    # -- what responses say -----------------------------------------------------------------

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from a response: the provider's buckets, and a 429's ``Retry-After``."""
        with self._lock:
            self._probe = "known"
            if not self.follow_provider:
                return
            for kind in self._ceilings:
                if (bucket := Bucket.parse(headers, kind)) is not None:
                    self.provider[kind], self._seen[kind], self._sent[kind] = bucket, self._clock(), 0.0
                    self._set_rate(kind)
            if status == 429 and (pause := retry_after(headers)) is not None:
                self._paused_until = max(self._paused_until, self._clock() + pause)

    def unanswered(self) -> None:
        """A request got no response: if it was the probe, the next request probes again."""
        with self._lock:
            if self._probe == "in flight":
                self._probe = "unknown"

    # -- places -----------------------------------------------------------------------------

    def reserve(self, tokens: int) -> float:
        """Reserve one request of about ``tokens`` tokens; returns the seconds to wait."""
        return self._place(tokens, horizon=float("inf"))[0]

    def _place(self, tokens: int, horizon: float) -> tuple[float, bool]:
        """(seconds to wait, whether a place was taken): a place is taken if it comes
        within ``horizon``; otherwise the wait is how long until to ask again."""
        with self._lock:
            if self._probe == "in flight":
                return PROBE_POLL_SECONDS, False
            now = self._clock()
            for kind in self.provider:
                self._set_rate(kind, now)
            plans = [(p, p.plan(now, units)) for p, units in self._units(tokens)]
            wait = max([self._paused_until - now] + [w for _, (_, w) in plans] + [0.0])
            if wait > horizon:
                return wait - horizon / 2, False  # then it is (rates unchanged) half the horizon away
            for pacer, (level, _) in plans:
                pacer.take(now, level)
            self._sent["requests"] += 1
            self._sent["tokens"] += tokens
            if self._probe == "unknown":
                self._probe = "in flight"
            self.granted += 1
            return wait, True

    def _units(self, tokens: int) -> list[tuple[Pacer, float]]:
        units = {"requests": 1, "tokens": tokens}
        return [(pacer, units[kind]) for kind, pacer in self._pacers.items()]

    async def acquire(self, tokens: int) -> None:
        """Wait (without blocking the event loop) until a request of ``tokens`` may go."""
        while True:
            wait, placed = self._place(tokens, HORIZON_SECONDS)
            if wait:
                await asyncio.sleep(wait)
            if placed:
                return

    def acquire_blocking(self, tokens: int) -> None:
        """Wait (blocking this thread) until a request of ``tokens`` may go."""
        while True:
            wait, placed = self._place(tokens, HORIZON_SECONDS)
            if wait:
                time.sleep(wait)
            if placed:
                return
