"""What the engine sends: ``Call``, and what a failed one does: ``ErrorPolicy``.

Examples:
    >>> call = Call(None, "/embeddings", {"model": "m", "input": ["a"]}, "texts 0..0", lambda body, **_: body)
    >>> call.items
    1
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

#: What a reader raises on a body that is JSON but not the endpoint's answer.
MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError)


class Reader(Protocol[T_co]):
    """A call's answer as the caller's result: ``read(body, cached=..., latency=...)``,
    ``cached`` when the request cache answered it, ``latency`` its seconds (``None``: not
    timed, as in a batch)."""

    def __call__(self, body: dict[str, Any], *, cached: bool, latency: float | None) -> T_co: ...


class ErrorPolicy(enum.Enum):
    """What a failed item (after retries) does to its materialization."""

    FAIL = "fail"  # stop sending, fail the materialization (completed answers stay cached)
    RECORD = "record"  # keep going; the item's row carries the error


@dataclass(frozen=True)
class Call(Generic[T]):
    """One POST: its partition, endpoint and JSON body, a description for errors, how its
    answer becomes a result, how many items it counts for in progress, and, when a failure
    can be recorded instead of raised, the result for a failed item (``failed(message)``)."""

    partition_key: str | None
    endpoint: str
    body: dict[str, Any]
    description: str
    read: Reader[T]
    items: int = 1
    failed: Callable[[str], T] | None = None
