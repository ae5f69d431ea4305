"""``with_usage_metadata``: dagster-openai's wrapper of one SDK method, with exact usage.

``with_usage_metadata(context, output_name, func)`` returns ``func`` wrapped so that the
usage of every call lands on ``output_name``'s metadata (in an asset: on the
materialization of the asset of that output, where ``get_client``'s usage goes too), as
dagster-openai's does, under the same keys (``openai.<model>.calls`` …) plus the
library's totals and cost. Unlike dagster-openai's, the count is what the server
reported, once:

- through a client of ``get_client``, the wrapper bills the
  requests its call sends, metered from the HTTP responses (streams, ``usage: null``,
  ``with_raw_response``, retries, cache hits and refusals included) and never read from
  what the call returns; they are billed to ``output_name`` instead of the
  ``get_client`` block, never to both;
- wrapping a wrapper (stacking) counts each call once, for the innermost wrapper;
- totals are shared with ``get_client`` blocks on the same asset (one ledger, one running
  total), in an op too (on its output, or on the asset of a graph-backed asset).

With a client the library did not make, usage is read from the returned object (a
response, or a raw response's parsed one); a stream's cannot be, and is logged. Its
running total is kept apart from ``get_client``'s: don't mix both on one asset (the
later total would overwrite the other's keys).

Examples:
    >>> import dagster as dg
    >>> from llm_assets import OpenAIResource, with_usage_metadata
    >>> @dg.asset
    ... def tuned(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
    ...     with openai.get_client(context) as client:
    ...         create = with_usage_metadata(context, "result", client.responses.create)
    ...         create(model="gpt-4o-mini", input="Say this is a test")
"""

import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import openai

# bound once, at import: tests patch ``dagster.AssetExecutionContext`` with autospec'd mocks
from dagster import AssetExecutionContext, OpExecutionContext

from llm_assets.accounting.prices import price_table
from llm_assets.accounting.targets import AnyContext, UsageReporter, UsageTarget, usage_target
from llm_assets.accounting.usage import LiveUsage, Usage
from llm_assets.errors import UsageTargetError
from llm_assets.http.attribution import rerouted
from llm_assets.session import RunSession

F = TypeVar("F", bound=Callable[..., Any])

#: The wrapped call running in this thread (task), innermost first.
_active: ContextVar["_Call | None"] = ContextVar("llm_assets_wrapped_call", default=None)

#: Usage read from responses of clients the library did not make, per context.
_readers: "weakref.WeakKeyDictionary[Any, UsageReporter]" = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def with_usage_metadata(context: AnyContext, output_name: str | None, func: F) -> F:
    """Wrap ``func`` (an SDK method) so the usage of each call lands on the metadata of
    ``output_name`` (``None``: the step's only asset or output), exactly once.

    Raises ``UsageTargetError`` (a
    ``dagster.DagsterInvariantViolationError``) when ``context`` is not an asset's or an
    op's, or ``output_name`` is not one of its outputs.

    Examples:
        >>> with openai.get_client(context) as client:  # doctest: +SKIP
        ...     create = with_usage_metadata(context, None, client.completions.create)
        ...     create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    """
    if not isinstance(context, AssetExecutionContext | OpExecutionContext):
        raise UsageTargetError(
            "with_usage_metadata records usage on an asset's or an op's output: pass the "
            f"AssetExecutionContext or OpExecutionContext of the step, not {type(context).__name__}."
        )
    target = usage_target(context, output_name=output_name)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _Call(context, target)
        try:
            with call.running():
                response = func(*args, **kwargs)
        except BaseException:
            call.finish(None)
            raise
        if inspect.isawaitable(response):  # an async client's method: its requests go when awaited
            return call.awaiting(response)
        call.finish(response)
        return response

    return wrapper  # type: ignore[return-value]


class _Call:
    """One call of a wrapped function: the counter it bills in each session whose transport
    meters its requests, and whether its usage was counted (by it or an inner wrapper)."""

    def __init__(self, context: AnyContext, target: UsageTarget | None) -> None:
        self.context, self.target = context, target
        self.parent = _active.get()
        self.counted = False
        self._sessions: dict[int, tuple[RunSession, LiveUsage]] = {}
        self._lock = threading.Lock()

    def usage_for(self, session: RunSession) -> Usage:
        """The counter of ``session``'s requests in this call (its transport asks, for every
        request: the library meters them, so the returned object is not read)."""
        with self._lock:
            self.counted = True
            if id(session) not in self._sessions:
                self._sessions[id(session)] = (session, LiveUsage())
            return self._sessions[id(session)][1]

    @contextmanager
    def running(self) -> Iterator[None]:
        token = _active.set(self)
        try:
            with rerouted(self.usage_for):
                yield
        finally:
            _active.reset(token)

    async def awaiting(self, response: Awaitable[Any]) -> Any:
        try:
            with self.running():
                result = await response
        except BaseException:
            self.finish(None)
            raise
        self.finish(result)
        return result

    def finish(self, response: Any) -> None:
        """Report what the sessions metered (and, as it comes, what they meter later: a
        stream read after the call); else read the usage ``response`` carries."""
        with self._lock:
            metered = list(self._sessions.values())
        for session, usage in metered:
            session.close_block(self.context, self.target, usage)
        if not self.counted and response is not None:
            self.counted = _read(self.context, self.target, response)
        if self.counted and self.parent is not None:
            self.parent.counted = True  # an outer wrapper must not count it again


def _read(context: AnyContext, target: UsageTarget | None, response: Any) -> bool:
    """Count the usage ``response`` (from a client the library did not make) carries;
    returns whether it carried any (``usage: null`` counts a call without usage)."""
    if hasattr(response, "parse") and hasattr(response, "http_response"):  # with_raw_response
        response = response.parse()
    if isinstance(response, openai.Stream | openai.AsyncStream):
        context.log.warning(
            "with_usage_metadata can't read the usage of a stream from a client OpenAIResource.get_client did "
            "not make: it is not recorded. Use a client of OpenAIResource.get_client, whose usage is exact."
        )
        return False
    if not hasattr(response, "usage"):
        return False  # not billed by tokens (a fine-tuning job, a file…): nothing to record
    usage = Usage()
    usage.add_response(getattr(response, "model", None), _as_mapping(response.usage))
    with _readers_lock:
        reporter = _readers.get(context)
        if reporter is None:
            reporter = _readers[context] = UsageReporter(price_table(None))
    reporter.report(context, target, usage)
    return True


def _as_mapping(usage: Any) -> Mapping[str, Any] | None:
    """A response's ``usage`` as the JSON the server sent (``None`` if it sent none)."""
    if usage is None or isinstance(usage, Mapping):
        return usage
    if hasattr(usage, "model_dump"):
        return usage.model_dump(exclude_none=True)
    return None
