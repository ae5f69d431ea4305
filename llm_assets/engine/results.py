"""Where the engine's results go: each into its call's place, and, when asked, each
partition handed over as soon as its last result is in, then forgotten, so a run of a
million rows never holds every row at once.

Examples:
    >>> done = []
    >>> results = Results(["a", "b", "a"], on_partition=lambda pk, rows: done.append((pk, rows)))
    >>> results[0], results[1] = "a0", "b0"
    >>> done
    [('b', ['b0'])]
    >>> results[2] = "a1"
    >>> done[-1], results.in_order()
    (('a', ['a0', 'a1']), [None, None, None])
"""

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: ``on_partition(partition_key, results)``: a partition's results, in order, once all are in.
OnPartition = Callable[[str | None, list[T]], None]


class Results(Generic[T]):
    """The results of calls whose partitions are ``partitions`` (one key per call)."""

    def __init__(self, partitions: Sequence[str | None], on_partition: OnPartition[T] | None = None) -> None:
        self._slots: list[T | None] = [None] * len(partitions)
        self._partitions = partitions
        self._on_partition = on_partition
        self._indices: dict[str | None, list[int]] = {}
        if on_partition is not None:
            for index, pk in enumerate(partitions):
                self._indices.setdefault(pk, []).append(index)
        self._left = {pk: len(indices) for pk, indices in self._indices.items()}

    def __len__(self) -> int:
        return len(self._slots)

    def __getitem__(self, index: int) -> T | None:
        return self._slots[index]

    def __setitem__(self, index: int, result: T) -> None:
        self._slots[index] = result
        if self._on_partition is None:
            return
        pk = self._partitions[index]
        self._left[pk] -= 1
        if self._left[pk] == 0:
            indices = self._indices.pop(pk)
            finished = [self._slots[i] for i in indices]
            for i in indices:
                self._slots[i] = None
            self._on_partition(pk, finished)  # type: ignore[arg-type]

    def in_order(self) -> list[T]:
        """Every result in call order (``None`` where a partition was handed over)."""
        return self._slots  # type: ignore[return-value]
