"""The usage ledger: what a session spent, per step attempt, asset and partition.

Every client block and every engine call adds what it metered; the ledger returns the
running total for its key, which the resource re-emits as that asset's (and partition's)
metadata, so two blocks in one asset add up instead of overwriting each other. A step
retry is a new attempt with a total of its own.

This ledger lives in memory, for one session. It is the one place spending is summed, so
a ledger backed by shared state (instance storage, the cache store) can replace it
without touching the engine or the transports.

Examples:
    >>> ledger = UsageLedger()
    >>> key = LedgerKey("run-1", "answers", 0, ("answers",), "Kirk")
    >>> first, second = Usage(), Usage()
    >>> first.add_response("m", {"prompt_tokens": 3, "total_tokens": 3})
    >>> second.add_response("m", {"prompt_tokens": 4, "total_tokens": 4})
    >>> ledger.add(key, first).total_tokens, ledger.add(key, second).total_tokens
    (3, 7)
"""

import threading
from typing import NamedTuple

from llm_assets.accounting.usage import Usage


class LedgerKey(NamedTuple):
    """Whose spending: a run's step attempt, an asset (its key path) and a partition."""

    run_id: str
    step: str
    attempt: int
    asset: tuple[str, ...]
    partition_key: str | None


class UsageLedger:
    """Usage totals by ``LedgerKey``, in memory; thread-safe."""

    def __init__(self) -> None:
        self._totals: dict[LedgerKey, Usage] = {}
        self._lock = threading.Lock()

    def add(self, key: LedgerKey, usage: Usage) -> Usage:
        """Add ``usage`` to ``key``'s total, and return that total."""
        with self._lock:
            total = self._totals.setdefault(key, Usage())
            total.merge(usage)
            return total
