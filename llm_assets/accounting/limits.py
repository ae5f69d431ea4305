"""Client-side rate limits (``aiolimiter``), applied to each request that goes out.

Requests are paced evenly, so no window of any length sees more than its share of
``requests_per_minute`` (plus one); tokens (estimated from the request body) use a
bucket holding 10 seconds' worth of ``tokens_per_minute``. Cache hits never wait.

Example:
    >>> import asyncio
    >>> limits = RateLimits(requests_per_minute=600, tokens_per_minute=None)
    >>> asyncio.run(limits.acquire(tokens=100))
"""

from aiolimiter import AsyncLimiter


def estimate_tokens(text: str | bytes) -> int:
    """A conservative token estimate (about 3 characters per token) for packing and limits."""
    return len(text) // 3 + 1


class RateLimits:
    """Requests-per-minute and tokens-per-minute limits shared by the clients of one step."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self._requests = AsyncLimiter(1, 60 / requests_per_minute) if requests_per_minute else None
        self._token_capacity = max(1, tokens_per_minute // 6) if tokens_per_minute else 0
        self._tokens = AsyncLimiter(self._token_capacity, 10) if tokens_per_minute else None

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def acquire(self, tokens: int) -> None:
        if self._tokens is not None:
            await self._tokens.acquire(min(max(tokens, 1), self._token_capacity))
        if self._requests is not None:
            await self._requests.acquire()
