"""A deterministic simulation of processes sharing one rate-limited key, on a fake clock.

Each process has its own :class:`RateLimits` (nothing shared) and ``tasks`` requests in
flight at a time, like the engine; the provider is a token bucket per key that answers
with OpenAI's rate-limit headers, or a 429 with ``retry-after-ms``. Events run in time
order from a heap, so a simulated minute takes a fraction of a second and never flakes.
"""

import heapq
import itertools
import math
from dataclasses import dataclass, field

from llm_assets.accounting.limits import RateLimits


@dataclass
class Provider:
    requests_per_minute: int
    window_seconds: float  # bucket capacity in seconds of refill: 60 (a minute), 1 (quantized)
    level: float = field(init=False)
    updated: float = 0.0
    accepted: list[float] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        self.level = self.capacity

    @property
    def rate(self) -> float:
        return self.requests_per_minute / 60

    @property
    def capacity(self) -> float:
        return self.rate * self.window_seconds

    def answer(self, now: float) -> tuple[int, dict[str, str]]:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        status = 200 if self.level >= 1 else 429
        if status == 200:
            self.level -= 1
            self.accepted.append(now)
        else:
            self.refused += 1
        headers = {
            "x-ratelimit-limit-requests": str(self.requests_per_minute),
            "x-ratelimit-remaining-requests": str(math.floor(self.level)),
            "x-ratelimit-reset-requests": f"{(self.capacity - self.level) / self.rate:.3f}s",
        }
        if status == 429:
            headers["retry-after-ms"] = str(math.ceil((1 - self.level) / self.rate * 1000))
        return status, headers


def simulate(
    processes: int, provider: Provider, seconds: float, tasks: int = 16, latency: float = 0.02, follow: bool = True
) -> Provider:
    """Run ``processes`` clients that always have work against ``provider`` for ``seconds``
    (``follow``: pacing by the provider's headers, else only the 429s' Retry-After)."""
    clock = [0.0]
    limits = [RateLimits(None, None, follow, clock=lambda: clock[0]) for _ in range(processes)]
    order = itertools.count()
    events = [(0.0, next(order), p, "ask") for p in range(processes) for _ in range(tasks)]
    heapq.heapify(events)
    while events:
        now, _, p, what = heapq.heappop(events)
        if now > seconds:
            break
        clock[0] = now
        if what == "ask":
            wait, ticket = limits[p]._place(1, "m", horizon=0.25)
            if ticket is None:
                heapq.heappush(events, (now + wait, next(order), p, "ask"))
            else:  # it arrives half a latency after it goes, and its answer half a latency later
                heapq.heappush(events, (now + wait + latency / 2, next(order), p, ("serve", ticket)))
        elif what[0] == "serve":
            status, headers = provider.answer(now)
            heapq.heappush(events, (now + latency / 2, next(order), p, ("answer", what[1], status, headers)))
        else:  # the answer arrives
            _, ticket, status, headers = what
            limits[p].observe(status, headers, ticket)
            pause = int(headers.get("retry-after-ms", 0)) / 1000
            heapq.heappush(events, (now + pause, next(order), p, "ask"))
    return provider
