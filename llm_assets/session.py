"""``RunSession``: the state one resource initialisation shares among its clients.

``OpenAIResource`` is configuration; when Dagster sets it up for
execution it creates one session, which owns everything with a lifetime: the connection
pool, the request cache, the governor (allow-list and budgets), the rate limits and the
usage ledger. Every client the resource hands out, and the engine behind the factories,
work through it.

Scope: Dagster calls ``setup_for_execution`` once per *process that runs steps*: once
for a whole run on the in-process executor (``materialize(...)``), once per step on the
multiprocess executor (the default of ``dagster dev`` and ``dagster asset materialize``).
What must hold for the whole run lives outside the process: the budgets in a
``SharedBudget`` (the instance's database), the
provider's rate limits in the provider itself (read from its response headers).

A session is built from ``SessionSettings``, a frozen copy of what the resource
configures, and hands its parts to what needs them: the
``Gate`` (governor and rate limits), the
``AnswerStore``, the shared pool. The code that sends
requests takes those parts, never the session.

Examples:
    >>> settings = SessionSettings(client_kwargs={"base_url": "http://127.0.0.1:9/v1", "api_key": "k"})
    >>> session = RunSession(settings, storage_dir=None)
    >>> session.answers.files is None, session.gate.governor.budget.shared
    (True, False)
    >>> session.close()
"""

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import openai
from dagster import AssetKey

from llm_assets.accounting.gate import Gate
from llm_assets.accounting.governance import Governor
from llm_assets.accounting.limits import RateLimits
from llm_assets.accounting.prices import ModelPrice, price_table
from llm_assets.accounting.run_budget import run_budget
from llm_assets.accounting.targets import AnyContext, UsageReporter, UsageTarget, usage_target
from llm_assets.accounting.usage import LiveUsage, Usage
from llm_assets.batch.settings import BatchSettings
from llm_assets.cache import CacheKeys, CacheMode, RequestCache
from llm_assets.cache.store import AnswerStore
from llm_assets.http.pools import SharedPool, async_pool
from llm_assets.http.transport import AsyncMeteredTransport, MeteredTransport

#: Where the SDK sends requests when no base URL is configured.
OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class SessionSettings:
    """What a ``RunSession`` is made from: the resource's configuration, checked
    (``session_settings``). Never shows the key. Every
    field but the first two is the resource's field of the same name."""

    client_kwargs: Mapping[str, Any] = field(repr=False)  # the openai clients' (the API key included)
    cache_identity: str | None = None  # what the cache keys the backend by (None: its URL)
    timeout: float = 120.0
    max_retries: int = 2
    max_concurrency: int = 8
    redact_text: bool = False
    cache: bool = True
    cache_dir: str | None = None
    allowed_models: Sequence[str] | None = None
    max_tokens_per_run: int | None = None
    max_cost_usd_per_run: float | None = None
    budget_url: str | None = field(default=None, repr=False)  # may hold a password
    prices: Mapping[str, Mapping[str, float]] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    follow_provider_limits: bool = True
    batch: BatchSettings = field(default_factory=BatchSettings)


class RunSession:
    """Per-resource-initialisation state (see the module docstring).

    Args:
        settings: the configuration.
        storage_dir: the Dagster instance's storage directory; the request cache defaults
            to ``<storage_dir>/llm_assets/request_cache``.
        instance, run_id: the Dagster instance and run whose steps share the run's budget
            (``run_budget``); without them, this
            process keeps it.
    """

    def __init__(
        self,
        settings: SessionSettings,
        storage_dir: str | None,
        instance: dg.DagsterInstance | None = None,
        run_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.prices: dict[str, ModelPrice] = price_table(dict(settings.prices) if settings.prices else None)
        keys = CacheKeys(settings.client_kwargs.get("base_url") or OPENAI_BASE_URL, settings.cache_identity)
        root = settings.cache_dir
        if root is None and storage_dir:
            root = os.path.join(storage_dir, "llm_assets", "request_cache")
        # checked now: one clear error at set-up, not an answer lost mid-run
        self.answers = AnswerStore(keys, RequestCache.checked(root) if settings.cache and root is not None else None)
        limits = (settings.max_tokens_per_run, settings.max_cost_usd_per_run)
        budget = run_budget(
            budget_url=settings.budget_url,
            instance=instance,
            run_id=run_id,
            limits=limits,
            backend=keys.identity,  # the same server, however its URL is written
            ttl=settings.timeout * (settings.max_retries + 1) + 60,  # no request stays in flight longer
        )
        governor = Governor(settings.allowed_models, *limits, self.prices, budget)
        rates = RateLimits(settings.requests_per_minute, settings.tokens_per_minute, settings.follow_provider_limits)
        self.gate = Gate(governor, rates)
        self.reporter = UsageReporter(self.prices)
        self._pool: SharedPool | None = None
        self.closed = False

    @property
    def client_kwargs(self) -> Mapping[str, Any]:
        """Keyword arguments of the ``openai`` clients (the settings')."""
        return self.settings.client_kwargs

    @property
    def governor(self) -> Governor:
        """The allow-list and budgets (the gate's)."""
        return self.gate.governor

    @property
    def limits(self) -> RateLimits:
        """The rate limits (the gate's)."""
        return self.gate.limits

    @property
    def cache(self) -> RequestCache | None:
        """Where cached answers live (``None``: no cache)."""
        return self.answers.files

    # -- clients ----------------------------------------------------------------------------

    def sync_pool(self) -> SharedPool:
        """The connection pool every sync client of this session shares (until ``close``)."""
        if self.closed:
            raise RuntimeError("This session was closed (its resource was torn down): it makes no more clients.")
        if self._pool is None:
            self._pool = SharedPool()
        return self._pool

    def client(self, usage: Usage | None, cache: CacheMode | bool = False) -> openai.OpenAI:
        """A light ``openai.OpenAI`` over the shared pool, billing ``usage``, using the cache
        per ``cache`` (see ``AnswerStore.mode <llm_assets.cache.store.AnswerStore.mode>``)."""
        mode = self.answers.mode(cache)
        transport = MeteredTransport(self.sync_pool(), self.gate, self.answers, usage, mode, owner=self)
        return openai.OpenAI(**self.client_kwargs, http_client=openai.DefaultHttpxClient(transport=transport))

    @asynccontextmanager
    async def async_client(
        self, usage: Usage | None, cache: CacheMode | bool = False
    ) -> AsyncIterator[openai.AsyncOpenAI]:
        """An ``openai.AsyncOpenAI`` with its own pool on the running event loop, billing
        ``usage`` (``None``: each request's ``billed_to``)."""
        mode = self.answers.mode(cache)
        transport = AsyncMeteredTransport(async_pool(), self.gate, self.answers, usage, mode, owner=self)
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
        asset, partition or output (see ``usage_target``)."""
        target = usage_target(context, asset_key, partition_key)
        usage = LiveUsage()
        try:
            yield usage
        finally:
            self.close_block(context, target, usage)
