"""What the engine sends: :class:`Call`, and what a failed one does: :class:`ErrorPolicy`.

Example:
    >>> call = Call(None, "/embeddings", {"model": "m", "input": ["a"]}, "texts 0..0", lambda body, cached, s: body)
    >>> call.items
    1
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: What a reader raises on a body that is JSON but not the endpoint's answer.
MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError)

#: ``read(json_body, cached, latency_seconds)``: a call's answer as the caller's result.
Reader = Callable[[dict[str, Any], bool, float], T]


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
