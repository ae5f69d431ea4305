"""Rate limits: requests and (estimated) tokens per minute, paced evenly, following the
provider's own limits.

One ``RateLimits`` serves every client of a session, sync and async, on any thread
or event loop: each request that goes out (retries included, cache hits never) takes its
place with ``RateLimits.acquire``, which waits until it may go. Places are handed out
by token buckets (``Pacer``): requests are spaced
evenly; tokens may burst, then refill; a request bigger than the burst waits for all it
needs. The clock is injectable, so pacing is tested by counting grants on a fake clock,
not by timing.

Two sources set the rates:

- ``requests_per_minute`` / ``tokens_per_minute``, configured: ceilings for the process;
- the provider's rate-limit headers, read from every response, per model
  (``llm_assets.accounting.provider_limits``): each process sends at the provider's
  refill rate scaled by how full the provider's bucket is. Processes that share a key
  see the same bucket, so together they settle where their rates add up to the
  provider's, with the bucket part full: no idle capacity, few or no 429s, and no state
  shared among them. Until the first response says whether the provider reports limits,
  one request of the model goes at a time; a 429 pauses the model's requests for its
  ``Retry-After`` and halves the process's rate on it.

(aiolimiter, used before, keeps one limiter per event loop by design and has no sync
side; the engine, user asyncio code and sync clients of one step run on different loops
and threads, and must share one budget.)

Examples:
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

from llm_assets.accounting.pacer import Pacer
from llm_assets.accounting.provider_limits import ModelPace, Ticket


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
#: A request turned away this many times waits in line: newcomers go after it.
PATIENCE = 4


class RateLimits:
    """Requests- and tokens-per-minute limits shared by every client of a session: the
    configured ceilings, lowered per model to follow the provider's headers (``follow_provider``)."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        follow_provider: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ceilings = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self._pacers = {kind: _ceiling(kind, limit) for kind, limit in ceilings.items() if limit}
        self.follow_provider = follow_provider
        self._paces: dict[str | None, ModelPace] = {}
        self._starving: list[_Waiter] = []  # requests turned away PATIENCE times, oldest first
        self._clock = clock
        self._lock = threading.Lock()
        self.granted = 0  # places given: one per request sent

    @property
    def active(self) -> bool:
        return self.follow_provider or bool(self._pacers)

    def pace(self, model: str | None) -> ModelPace:
        """What the provider said about ``model``'s limits."""
        with self._lock:
            return self._paces.setdefault(model, ModelPace())

    def rate(self, kind: str, model: str | None = None) -> float | None:
        """Requests or tokens (``kind``) per second ``model``'s requests may go at now."""
        with self._lock:
            rates = [pacer.rate for k, pacer in self._pacers_for(model, self._clock()) if k == kind]
        return min(rates, default=None)

    def _pacers_for(self, model: str | None, now: float) -> list[tuple[str, Pacer]]:
        pacers = list(self._pacers.items())
        if self.follow_provider:
            pacers += self._paces.setdefault(model, ModelPace()).pacers_at(now).items()
        return pacers

    # -- what responses say -----------------------------------------------------------------

    def observe(self, status: int, headers: Mapping[str, str], ticket: Ticket | None) -> None:
        """Learn from the response to ``ticket``'s request: the provider's buckets for its
        model, and a 429's ``Retry-After``."""
        if self.follow_provider and ticket is not None:
            with self._lock:
                self._paces[ticket.model].learn(ticket, status, headers, self._clock())

    def abandoned(self, ticket: Ticket | None) -> None:
        """``ticket``'s request got no response (a connection error, a cancellation)."""
        if self.follow_provider and ticket is not None:
            with self._lock:
                self._paces[ticket.model].abandoned(ticket)

    # -- places -----------------------------------------------------------------------------

    def reserve(self, tokens: int, model: str | None = None) -> float:
        """Reserve one request of about ``tokens`` tokens now; returns the seconds to wait."""
        return self._place(tokens, model, horizon=float("inf"))[0]

    def _place(
        self, tokens: int, model: str | None, horizon: float, waiter: "_Waiter | None" = None
    ) -> tuple[float, Ticket | None]:
        """(seconds to wait, the ticket if a place was taken). A place is taken if it comes
        within ``horizon``, or if nothing but the request's own size keeps it waiting (no
        place is promised ahead): a request bigger than a burst is never starved by small
        ones. A waiter turned away ``PATIENCE`` times is served before any newcomer."""
        with self._lock:
            pace = self._paces.setdefault(model, ModelPace()) if self.follow_provider else None
            if pace is not None and pace.probe == "in flight":
                return PROBE_POLL_SECONDS, None
            if self._starving and horizon < float("inf") and waiter is not self._starving[0]:
                return horizon, None  # the longest waiter goes first
            now = self._clock()
            units = {"requests": 1, "tokens": tokens}
            plans = [(pacer, pacer.plan(now, units[kind]), units[kind]) for kind, pacer in self._pacers_for(model, now)]
            paused = pace.paused_until if pace is not None else now
            wait = max([paused - now, 0.0] + [w for _, (_, w), _ in plans])
            promised = any(level + need < 0 for _, (level, _), need in plans)  # places already handed out ahead
            if wait > horizon and (promised or paused > now + horizon):
                if waiter is not None and waiter.turned_away() and waiter not in self._starving:
                    self._starving.append(waiter)
                return wait - horizon / 2, None  # then it is (rates unchanged) half the horizon away
            for pacer, (level, _), _ in plans:
                pacer.take(now, level)
            if waiter in self._starving:
                self._starving.remove(waiter)
            self.granted += 1
            return wait, pace.took(model, tokens, now + wait) if pace is not None else Ticket(model)

    def _leave(self, waiter: "_Waiter") -> None:
        with self._lock:
            if waiter in self._starving:
                self._starving.remove(waiter)

    async def acquire(self, tokens: int, model: str | None = None) -> Ticket:
        """Wait (without blocking the event loop) until a request of ``tokens`` may go."""
        waiter, ticket = _Waiter(), None
        try:
            while True:
                wait, ticket = self._place(tokens, model, HORIZON_SECONDS, waiter)
                if wait:
                    await asyncio.sleep(wait)
                if ticket is not None:
                    return ticket
        except BaseException:  # cancelled while waiting for its turn: it never went
            self._leave(waiter)
            self.abandoned(ticket)
            raise

    def acquire_blocking(self, tokens: int, model: str | None = None) -> Ticket:
        """Wait (blocking this thread) until a request of ``tokens`` may go."""
        waiter, ticket = _Waiter(), None
        try:
            while True:
                wait, ticket = self._place(tokens, model, HORIZON_SECONDS, waiter)
                if wait:
                    time.sleep(wait)
                if ticket is not None:
                    return ticket
        except BaseException:
            self._leave(waiter)
            self.abandoned(ticket)
            raise


class _Waiter:
    """One request waiting for its place; turned away often enough, it goes first."""

    def __init__(self) -> None:
        self.refusals = 0

    def turned_away(self) -> bool:
        """Count one refusal; whether it has now waited long enough to go first."""
        self.refusals += 1
        return self.refusals >= PATIENCE


def _ceiling(kind: str, per_minute: int) -> Pacer:
    """A configured limit: requests evenly spaced; tokens in bursts of 10 seconds' worth."""
    rate = per_minute / 60
    return Pacer(rate, rate * 10 if kind == "tokens" else 1.0)
