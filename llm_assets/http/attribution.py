"""Which usage counter a request is billed to.

A client made for one ``get_client`` block bills everything to that block's counter. The
engine shares one client among the partitions of a run, so it names the counter per
request: each of its tasks runs inside :func:`billed_to`, a ``contextvars`` scope that
the transport reads when the request reaches it. A metered request with neither is a
bug in the code that sent it: the transport raises :class:`UnattributedRequestError`
instead of billing a neighbour.

Example:
    >>> usage = Usage()
    >>> with billed_to(usage):
    ...     resolve_scope(client_usage=None).usage is usage
    True
    >>> resolve_scope(client_usage=None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    llm_assets.http.attribution.UnattributedRequestError: A metered request was sent through a shared client...
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from llm_assets.accounting.usage import Usage


@dataclass(frozen=True)
class BillingScope:
    """The counter a request is billed to; ``looked_up`` when the caller already looked
    the request up in the request cache (a miss), so the transport need not read it again."""

    usage: Usage
    looked_up: bool = False


_scope: ContextVar[BillingScope | None] = ContextVar("llm_assets_billing_scope", default=None)


class UnattributedRequestError(RuntimeError):
    """A metered request reached the transport without naming whose usage it is."""


@contextmanager
def billed_to(usage: Usage, looked_up: bool = False) -> Iterator[None]:
    """Bill the requests sent in this block (this task, in asyncio) to ``usage``."""
    token = _scope.set(BillingScope(usage, looked_up))
    try:
        yield
    finally:
        _scope.reset(token)


def resolve_scope(client_usage: Usage | None) -> BillingScope:
    """The scope of a metered request: its client's counter, else the task's scope."""
    if client_usage is not None:
        return BillingScope(client_usage)
    scope = _scope.get()
    if scope is None:
        raise UnattributedRequestError(
            "A metered request was sent through a shared client without billed_to(usage): "
            "its usage would have no owner. Wrap the call in llm_assets.http.attribution.billed_to()."
        )
    return scope
