"""``Pacer``: a token bucket that hands out places in time, at a rate that may change.

Examples:
    >>> pacer = Pacer(rate=2.0, burst=1.0)  # two a second, none banked
    >>> [pacer.reserve(now=0.0, units=1) for _ in range(3)]  # seconds to wait before sending
    [0.0, 0.5, 1.0]
    >>> pacer.reserve(now=0.0, units=4)  # a big request waits for all it needs
    3.0
"""


class Pacer:
    """A token bucket of ``rate`` units per second holding at most ``burst`` units, that
    may go into debt: a place promised ahead is paid for now, so the next waits longer. A
    request bigger than ``burst`` waits for all its units, so the average rate always
    holds. Waits are computed at the current rate, which may change at any time (not
    thread-safe by itself: ``RateLimits`` holds the lock)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.set(rate, burst)
        self._level, self._updated = self.burst, float("-inf")

    def set(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)

    def plan(self, now: float, units: float) -> tuple[float, float]:
        """(the level after taking ``units``, and the seconds to wait until it is paid)."""
        level = min(self.burst, self._level + max(0.0, now - self._updated) * self.rate) - max(units, 1.0)
        return level, max(0.0, -level / self.rate)

    def take(self, now: float, level: float) -> None:
        self._level, self._updated = level, now

    def reserve(self, now: float, units: float) -> float:
        """Reserve ``units``; returns the seconds to wait first."""
        level, wait = self.plan(now, units)
        self.take(now, level)
        return wait
