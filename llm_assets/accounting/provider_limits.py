"""What a provider says about its rate limits, read from its response headers.

OpenAI (and many compatible servers) send, on every response, for requests and tokens:
``x-ratelimit-limit-*`` (per minute), ``x-ratelimit-remaining-*`` (left in the bucket
now) and ``x-ratelimit-reset-*`` (how long until the bucket is full again, as ``6m0s``,
``1.5s`` or ``20ms``). Together they give the bucket's refill rate (``limit / 60`` per
second), its capacity (``remaining + reset * rate``: a minute's worth, or one second's
where the provider enforces limits in shorter windows) and how full it is.

That fill is shared by everyone who uses the key: it is the one piece of shared state
that processes on different machines can all read, with no coordination of their own.

Example:
    >>> bucket = Bucket.parse({"x-ratelimit-limit-requests": "1200",
    ...     "x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "750ms"}, "requests")
    >>> bucket.rate, bucket.capacity, bucket.fill
    (20.0, 20.0, 0.25)
    >>> parse_duration("1m30.5s"), retry_after({"retry-after-ms": "250"})
    (90.5, 0.25)
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

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
        if reset is None or not limit > 0 or remaining < 0:
            return None
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
