"""What a provider says about its rate limits, read from its response headers.

OpenAI (and many compatible servers) send, on every response, for requests and tokens:
``x-ratelimit-limit-*`` (per minute), ``x-ratelimit-remaining-*`` (left in the bucket
now) and ``x-ratelimit-reset-*`` (how long until the bucket is full again, as ``6m0s``,
``1.5s`` or ``20ms``). Together they give the bucket's refill rate (``limit / 60`` per
second), its capacity (``remaining + reset * rate``: a minute's worth, or one second's
where the provider enforces limits in shorter windows) and how full it is.

That fill is shared by everyone who uses the key: it is the one piece of shared state
that processes on different machines can all read, with no coordination of their own.
A ``ModelPace`` turns it into the rate one process may send at, per model (OpenAI's
limits are per model): the provider's rate scaled by the fill (``provider_share``),
the fill projected from the last response by the refill since and by this process's own
sends since that response's request.

Examples:
    >>> bucket = Bucket.parse({"x-ratelimit-limit-requests": "1200",
    ...     "x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "750ms"}, "requests")
    >>> bucket.rate, bucket.capacity, bucket.fill
    (20.0, 20.0, 0.25)
    >>> parse_duration("1m30.5s"), retry_after({"retry-after-ms": "250"})
    (90.5, 0.25)
"""

import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from llm_assets.accounting.pacer import Pacer

#: The lowest share of the provider's rate one process keeps (its bucket empty).
MIN_SHARE = 1 / 64
#: From this fill of the provider's bucket up, one process may take the provider's whole rate.
FULL_ENOUGH = 0.8
KINDS = ("requests", "tokens")
#: What each answer that is not a 429 gives back of the rate a 429 took (see ModelPace.backoff).
BACKOFF_REGAIN = 0.01

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1.5s``, ``20ms``; a bare number is
    seconds), or ``None`` if it is not one."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the provider asks to wait (``retry-after-ms``, else ``retry-after``)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue  # an HTTP date: the SDK honours it; pacing does without
            if 0 <= seconds <= 600:
                return seconds
    return None


@dataclass(frozen=True)
class Bucket:
    """One of the provider's limits (requests or tokens) as its last response saw it."""

    limit: float  #: per minute
    remaining: float
    reset: float  #: seconds until full

    @classmethod
    def parse(cls, headers: Mapping[str, str], kind: str) -> "Bucket | None":
        """The ``kind`` (``requests`` or ``tokens``) bucket of ``headers``, if all three
        headers are there and make sense."""
        try:
            limit = float(headers[f"x-ratelimit-limit-{kind}"])
            remaining = float(headers[f"x-ratelimit-remaining-{kind}"])
        except (KeyError, ValueError):
            return None
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
        if reset is None or not 0 < limit < math.inf or not 0 <= remaining < math.inf:
            return None  # absent, zero, negative, infinite or NaN: not a limit to pace by
        return cls(limit, min(remaining, limit), reset)

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.limit / 60

    @property
    def capacity(self) -> float:
        return max(1.0, min(self.limit, self.remaining + self.reset * self.rate))

    @property
    def fill(self) -> float:
        """How full the bucket is, from 0 (empty: the next request is refused) to 1."""
        return min(1.0, self.remaining / self.capacity)

    def fill_after(self, seconds: float, used: float = 0.0) -> float:
        """How full the bucket is ``seconds`` later if only ``used`` was taken meanwhile."""
        return max(0.0, min(1.0, (self.remaining + seconds * self.rate - used) / self.capacity))


def provider_share(fill: float) -> float:
    """The share of the provider's rate one process takes when its bucket is ``fill``
    full: all of it from 80% up, a sixteenth at 40%, at least ``MIN_SHARE``. Processes
    sharing a key settle where their shares add up to one: 4 at a fill of 57%."""
    return min(1.0, max(MIN_SHARE, (fill / FULL_ENOUGH) ** 4))


@dataclass(frozen=True)
class Ticket:
    """A request that took its place: its model, this process's sends of that model up to
    and including it (requests, tokens), when it goes, and whether it is the model's probe."""

    model: str | None
    requests: int = 0
    tokens: float = 0.0
    goes_at: float = 0.0
    probe: bool = False


class ModelPace:
    """The provider's limits on one model as this process last saw them, and the pacers
    they set (not thread-safe by itself: ``RateLimits``
    holds the lock). Until the first answer (the probe's) says whether the provider reports
    limits, one request goes at a time."""

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}
        self.pacers: dict[str, Pacer] = {}
        self.probe = "unknown"  # -> "in flight" -> "known"
        self.paused_until = float("-inf")  # a 429's Retry-After
        self.round_trip = 0.0  # seconds from sending a request to reading its answer (average)
        self.backoff = 1.0  # halved by each 429 (once a round trip), regained a little by each answer
        self._halved_at = float("-inf")
        # this process's sends since the one the buckets reflect (bounded: answers trim it)
        self._sends: deque[Ticket] = deque(maxlen=100_000)
        self._reflected = Ticket(None)  # the send whose answer the buckets are from

    def _gone(self, now: float) -> Ticket:
        """This process's latest send that has gone by ``now`` (places are promised ahead)."""
        gone = self._reflected
        for ticket in self._sends:
            if ticket.goes_at > now:
                break
            gone = ticket
        return gone

    def pacers_at(self, now: float) -> dict[str, Pacer]:
        """The pacers, at the rates the buckets allow when what this process has sent
        lands: as read with the last answer, refilled for as long as this process has sent
        since that answer's request, less what it sent meanwhile (others' sends are unknown
        until the next answer)."""
        gone, reflected = self._gone(now), self._reflected
        since = max(0.0, now - reflected.goes_at)
        for kind in KINDS:
            if (bucket := self.buckets.get(kind)) is None:
                continue
            used = gone.requests - reflected.requests if kind == "requests" else gone.tokens - reflected.tokens
            fill = bucket.fill_after(since, used)
            rate = bucket.rate * provider_share(fill) * self.backoff
            burst = 1.0 if kind == "requests" else rate  # tokens: a second's worth
            if kind in self.pacers:
                self.pacers[kind].set(rate, burst)
            else:
                self.pacers[kind] = Pacer(rate, burst)
        return self.pacers

    def took(self, model: str | None, tokens: int, goes_at: float) -> Ticket:
        """Count a request that took its place (it goes at ``goes_at``); the first is the probe."""
        last = self._sends[-1] if self._sends else self._reflected
        probe = self.probe == "unknown"
        if probe:
            self.probe = "in flight"
        ticket = Ticket(model, last.requests + 1, last.tokens + tokens, goes_at, probe)
        if self.buckets or self.probe != "known":  # a provider without limit headers needs no record
            self._sends.append(ticket)
        return ticket

    def learn(self, ticket: Ticket, status: int, headers: Mapping[str, str], now: float) -> None:
        """Read the response to ``ticket``'s request (an older one than already read
        only ends the probe)."""
        if ticket.probe:
            self.probe = "known"
        if status == 429:
            if (pause := retry_after(headers)) is not None:
                self.paused_until = max(self.paused_until, now + pause)
            if now - self._halved_at > self.round_trip:  # the 429s of one round trip are one signal
                self.backoff, self._halved_at = max(MIN_SHARE, self.backoff / 2), now
        else:
            self.backoff = min(1.0, self.backoff + BACKOFF_REGAIN)
        trip = max(0.0, now - ticket.goes_at)
        self.round_trip = trip if not self.round_trip else 0.9 * self.round_trip + 0.1 * trip
        if ticket.requests < self._reflected.requests:
            return
        buckets = {kind: bucket for kind in KINDS if (bucket := Bucket.parse(headers, kind)) is not None}
        if not buckets and not self.buckets:
            self._sends.clear()  # no limits to pace by: nothing to remember
        if buckets:
            self.buckets, self._reflected = buckets, ticket
            while self._sends and self._sends[0].requests <= ticket.requests:
                self._sends.popleft()

    def abandoned(self, ticket: Ticket) -> None:
        """``ticket``'s request got no response: if it was the probe, the next one probes."""
        if ticket.probe and self.probe == "in flight":
            self.probe = "unknown"
