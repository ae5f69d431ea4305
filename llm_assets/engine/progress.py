"""Progress of a materialization's requests, logged as they complete.

Examples:
    >>> progress = Progress(context, "chat requests", total=3, usages=[])  # doctest: +SKIP
    >>> progress.step()  # doctest: +SKIP
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_assets.accounting.usage import Usage


@dataclass
class Progress:
    """Logs done / total, tokens, cache hits and failed attempts at most every ``every``
    seconds, and at the end."""

    context: Any
    what: str
    total: int
    usages: Sequence[Usage]
    every: float = 10.0
    done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.done == self.total or now - self._last >= self.every:
            self._last = now
            self.context.log.info(
                f"{self.what}: {self.done}/{self.total} done, {sum(u.total_tokens for u in self.usages)} tokens, "
                f"{sum(u.total('cache_hits') for u in self.usages)} from cache, "
                f"{sum(u.failed_attempts for u in self.usages)} failed attempts retried"
            )
