"""Which usage counter a request is billed to.

A client made for one ``get_client`` block bills everything to that block's counter. The
engine shares one client among the partitions of a run, so it names the counter per
request: each of its tasks runs inside ``billed_to``, a ``contextvars`` scope that
the transport reads when the request reaches it. A metered request with neither is a
bug in the code that sent it: the transport raises ``UnattributedRequestError``
instead of billing a neighbour. A ``rerouted`` block (``with_usage_metadata``'s
wrapper) names the counter per session instead, whichever client sends the request.

Examples:
    >>> usage = Usage()
    >>> with billed_to(usage):
    ...     resolve_scope(client_usage=None).usage is usage
    True
    >>> resolve_scope(client_usage=None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    llm_assets.http.attribution.UnattributedRequestError: A metered request was sent through a shared client...
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from llm_assets.accounting.usage import Usage


@dataclass(frozen=True)
class BillingScope:
    """The counter a request is billed to; ``looked_up`` when the caller already looked
    the request up in the request cache (a miss), so the transport need not read it again."""

    usage: Usage
    looked_up: bool = False


_scope: ContextVar[BillingScope | None] = ContextVar("llm_assets_billing_scope", default=None)

#: ``route(session) -> Usage``: the counter of a ``rerouted`` block, per session.
Route = Callable[[Any], Usage]
_route: ContextVar[Route | None] = ContextVar("llm_assets_billing_route", default=None)


class UnattributedRequestError(RuntimeError):
    """A metered request reached the transport without naming whose usage it is."""


@contextmanager
def billed_to(usage: Usage, looked_up: bool = False) -> Iterator[None]:
    """Bill the requests sent in this block (this task, in asyncio) to ``usage``."""
    token, unrouted = _scope.set(BillingScope(usage, looked_up)), _route.set(None)
    try:
        yield
    finally:
        _route.reset(unrouted)
        _scope.reset(token)


@contextmanager
def rerouted(route: Route) -> Iterator[None]:
    """Bill the metered requests sent in this block (this task) to ``route(session)``, the
    session being the one whose transport meters the request, even through a client that
    bills its own counter. The innermost block wins; ``billed_to`` inside it too.

    Examples:
        >>> mine = Usage()
        >>> with rerouted(lambda session: mine):
        ...     resolve_scope(client_usage=Usage(), session=None).usage is mine
        True
    """
    token = _route.set(route)
    try:
        yield
    finally:
        _route.reset(token)


def notice(session: Any) -> None:
    """An unbilled request (a GET, a file, a fine-tuning job) reached ``session``'s
    transport: a ``rerouted`` block learns that its requests go through the library,
    which meters them, so it must not read usage from what its call returns."""
    if (route := _route.get()) is not None:
        route(session)


def resolve_scope(client_usage: Usage | None, session: Any = None) -> BillingScope:
    """The scope of a metered request sent through ``session``'s transport: a
    ``rerouted`` block's counter, else its client's, else the task's scope."""
    if (route := _route.get()) is not None:
        return BillingScope(route(session))
    if client_usage is not None:
        return BillingScope(client_usage)
    scope = _scope.get()
    if scope is None:
        raise UnattributedRequestError(
            "A metered request was sent through a shared client without billed_to(usage): "
            "its usage would have no owner. Wrap the call in llm_assets.http.attribution.billed_to()."
        )
    return scope
