"""``RunSession``: the state one resource initialisation shares among its clients.

:class:`~llm_assets.OpenAIResource` is configuration; when Dagster sets it up for
execution it creates one session, which owns everything with a lifetime: the connection
pool, the request cache, the governor (allow-list and budgets), the rate limits and the
usage ledger. Every client the resource hands out, and the engine behind the factories,
work through it.

Scope: Dagster calls ``setup_for_execution`` once per *process that runs steps*: once
for a whole run on the in-process executor (``materialize(...)``), once per step on the
multiprocess executor (the default of ``dagster dev`` and ``dagster asset materialize``).
What must hold for the whole run lives outside the process: the budgets in a
:class:`~llm_assets.accounting.budgets.SharedBudget` (the instance's database), the
provider's rate limits in the provider itself (read from its response headers).

Example:
    >>> from llm_assets import OpenAIResource
    >>> session = RunSession(OpenAIResource(base_url="http://127.0.0.1:9/v1"), storage_dir=None)
    >>> session.cache is None, session.governor.budget.shared
    (True, False)
    >>> session.close()
"""

import json
import os
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg
import openai
from dagster import AssetKey

from llm_assets.accounting.governance import Governor
from llm_assets.accounting.limits import RateLimits
from llm_assets.accounting.prices import ModelPrice, price_table
from llm_assets.accounting.run_budget import run_budget
from llm_assets.accounting.targets import AnyContext, UsageReporter, UsageTarget, usage_target
from llm_assets.accounting.usage import LiveUsage, Usage
from llm_assets.cache import CacheKeys, CacheMode, RequestCache
from llm_assets.cache.answers import answer_problem
from llm_assets.errors import ConfigurationError
from llm_assets.http.pools import async_pool, httpx, sync_pool
from llm_assets.http.transport import AsyncMeteredTransport, MeteredTransport

if TYPE_CHECKING:
    from llm_assets.resource import OpenAIResource

#: Where the SDK sends requests when no base URL is configured.
OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class CachedAnswer:
    """A response body from the request cache, and its decoded JSON."""

    body: bytes
    payload: dict[str, Any]

    @property
    def model(self) -> str | None:
        model = self.payload.get("model")
        return model if isinstance(model, str) else None


class RunSession:
    """Per-resource-initialisation state (see the module docstring).

    Args:
        resource: the configuration.
        storage_dir: the Dagster instance's storage directory; the request cache defaults
            to ``<storage_dir>/llm_assets/request_cache``.
        instance, run_id: the Dagster instance and run whose steps share the run's budget
            (:func:`~llm_assets.accounting.run_budget.run_budget`); without them, this
            process keeps it.
    """

    def __init__(
        self,
        resource: "OpenAIResource",
        storage_dir: str | None,
        instance: dg.DagsterInstance | None = None,
        run_id: str | None = None,
    ) -> None:
        self.client_kwargs = resource.client_kwargs()  # fails here, before any asset runs, on bad config
        self.max_concurrency = resource.max_concurrency
        self.max_retries = resource.max_retries
        self.redact_text = resource.redact_text
        self.batch = resource.batch
        self.prices: dict[str, ModelPrice] = price_table(resource.prices)
        self.cache_keys = CacheKeys(self.client_kwargs["base_url"] or OPENAI_BASE_URL, resource.cache_identity())
        root = resource.cache_dir
        if root is None and storage_dir:
            root = os.path.join(storage_dir, "llm_assets", "request_cache")
        # checked now: one clear error at set-up, not an answer lost mid-run
        self.cache = RequestCache.checked(root) if resource.cache and root is not None else None
        budget = run_budget(
            budget_url=resource.budget_url,
            instance=instance,
            run_id=run_id,
            limits=(resource.max_tokens_per_run, resource.max_cost_usd_per_run),
            backend=self.cache_keys.identity,  # the same server, however its URL is written
            ttl=resource.timeout * (resource.max_retries + 1) + 60,  # no request stays in flight longer
        )
        self.governor = Governor(
            resource.allowed_models, resource.max_tokens_per_run, resource.max_cost_usd_per_run, self.prices, budget
        )
        self.limits = RateLimits(
            resource.requests_per_minute, resource.tokens_per_minute, resource.follow_provider_limits
        )
        self.reporter = UsageReporter(self.prices)
        self._warned: set[str] = set()  # cache problems already logged (each once)
        self._warned_lock = threading.Lock()
        self._pool: httpx.BaseTransport | None = None
        self.closed = False

    # -- clients ----------------------------------------------------------------------------

    def sync_pool(self) -> httpx.BaseTransport:
        """The connection pool every sync client of this session shares (until :meth:`close`)."""
        if self.closed:
            raise RuntimeError("This session was closed (its resource was torn down): it makes no more clients.")
        if self._pool is None:
            self._pool = sync_pool()
        return self._pool

    def client(self, usage: Usage | None, cache: CacheMode | bool = False) -> openai.OpenAI:
        """A light ``openai.OpenAI`` over the shared pool, billing ``usage``, using the cache
        per ``cache`` (see :meth:`cache_mode`)."""
        transport = MeteredTransport(self, usage, self.cache_mode(cache))
        return openai.OpenAI(**self.client_kwargs, http_client=openai.DefaultHttpxClient(transport=transport))

    @asynccontextmanager
    async def async_client(
        self, usage: Usage | None, cache: CacheMode | bool = False
    ) -> AsyncIterator[openai.AsyncOpenAI]:
        """An ``openai.AsyncOpenAI`` with its own pool on the running event loop, billing
        ``usage`` (``None``: each request's :func:`~llm_assets.http.attribution.billed_to`)."""
        transport = AsyncMeteredTransport(self, async_pool(), usage, self.cache_mode(cache))
        client = openai.AsyncOpenAI(
            **self.client_kwargs, http_client=openai.DefaultAsyncHttpxClient(transport=transport)
        )
        try:
            yield client
        finally:
            await client.close()  # closes the transport, and so its pool

    def close(self) -> None:
        """Close the shared pool (the sync clients it served refuse requests from now on)."""
        self.closed = True
        try:
            self.governor.close()
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # -- the request cache ------------------------------------------------------------------

    def cache_mode(self, requested: CacheMode | bool | str) -> CacheMode:
        """``requested`` (``True`` means USE; a mode's name is accepted), or OFF when this
        session has no cache."""
        if isinstance(requested, str) and requested.upper() in CacheMode.__members__:
            requested = CacheMode[requested.upper()]
        if requested is True:
            requested = CacheMode.USE
        if requested is False:
            requested = CacheMode.OFF
        if not isinstance(requested, CacheMode):
            raise ConfigurationError(
                f"cache={requested!r}: pass True, False or a llm_assets.CacheMode (USE, REFRESH, OFF)."
            )
        return CacheMode.OFF if self.cache is None else requested

    def cached(self, keys: Sequence[str | None], requests: Iterable[tuple[str, Any]]) -> list[CachedAnswer | None]:
        """The cached answers of ``keys`` (``None``: a miss) of ``requests`` (endpoint, JSON
        body). A damaged entry (:func:`~llm_assets.cache.answers.answer_problem`) is a miss,
        logged once; the fresh answer then overwrites it. An unreadable cache is all misses."""
        if self.cache is None:
            return [None] * len(keys)
        try:
            bodies = self.cache.get_many(list(keys))
        except Exception as error:  # any fsspec backend's error: answer live instead
            self._warn("read", f"The request cache at {self.cache.root} can't be read ({error}): sending instead.")
            return [None] * len(keys)
        answers: list[CachedAnswer | None] = []
        for key, body, (endpoint, request) in zip(keys, bodies, requests, strict=True):
            answer = None
            if body is not None:
                try:
                    payload = json.loads(body)
                except ValueError as error:  # UnicodeDecodeError included
                    payload, problem = None, f"not JSON ({error})"
                else:
                    problem = answer_problem(endpoint, payload, request)
                if problem is None:
                    answer = CachedAnswer(body, payload)
                else:
                    self.discard(key, problem)
            answers.append(answer)
        return answers

    def discard(self, key: str, problem: str) -> None:
        """Log (once) that the entry of ``key`` is damaged; it is a miss, and the fresh
        answer will overwrite it."""
        path = self.cache.path(key) if self.cache is not None else key
        self._warn(key, f"Ignoring the damaged request cache entry {path} ({problem}): it will be asked again.")

    def store(self, key: str, body: bytes, usage: Usage, durable: bool = True) -> None:
        """Store an answer; a failure never loses it (it is already on its way to the
        caller): it is counted on ``usage`` and logged once per session. Without
        ``durable``, :meth:`RequestCache.sync` must follow."""
        if self.cache is None:
            return
        try:
            self.cache.put(key, body, durable)
        except Exception as error:  # OSError, or any fsspec backend's error
            usage.add_cache_store_failure()
            self._warn(
                "store",
                f"Could not store an answer in the request cache at {self.cache.path(key)} "
                f"({type(error).__name__}: {error}); the answer "
                "is kept in the output, but a re-run will ask again. Fix cache_dir, or set cache=False.",
            )

    def _warn(self, topic: str, message: str) -> None:
        with self._warned_lock:  # cache I/O runs in worker threads
            if topic in self._warned:
                return
            self._warned.add(topic)
        dg.get_dagster_logger("llm_assets").warning(message)

    # -- usage ------------------------------------------------------------------------------

    def report(self, context: AnyContext, target: UsageTarget | None, usage: Usage) -> None:
        """Add ``usage`` to ``target``'s running total and emit it as the target's metadata."""
        try:
            self.reporter.report(context, target, usage)
        finally:
            self.governor.flush()

    def close_block(self, context: AnyContext, target: UsageTarget | None, usage: LiveUsage) -> None:
        """Report what ``usage`` counted in its block, and from now on each later change
        (a client used past its block, a stream read after it) as it comes."""

        def late(change: Usage) -> None:
            try:
                self.report(context, target, change)
            except Exception as error:  # never fail the SDK call (a stream being read) over metadata
                dg.get_dagster_logger("llm_assets").warning(
                    f"OpenAI usage of a call made after its block could not be recorded ({error}): "
                    f"{change.to_metadata()}"
                )

        usage.close(late)
        self.report(context, target, usage)

    @contextmanager
    def metered(
        self, context: AnyContext, asset_key: AssetKey | None = None, partition_key: str | None = None
    ) -> Iterator[Usage]:
        """A fresh usage counter for one block of work, reported when the block ends; what it
        counts later (its client used after the block) is reported as it comes, on the same
        asset, partition or output (see :func:`usage_target`)."""
        target = usage_target(context, asset_key, partition_key)
        usage = LiveUsage()
        try:
            yield usage
        finally:
            self.close_block(context, target, usage)
