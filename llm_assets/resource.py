"""``OpenAIResource``: dagster-openai's resource, with exact usage accounting.

A drop-in superset of :class:`dagster_openai.OpenAIResource`: the same fields and the same
``get_client`` / ``get_client_for_asset`` context managers yielding an ``openai.OpenAI``
client, so existing code only changes its import. Every block gets its own lightweight
client whose HTTP transport meters the usage the server reports, over one shared
connection pool; no client is ever patched.

Example:
    >>> import dagster as dg
    >>> from llm_assets import OpenAIResource
    >>> @dg.asset
    ... def haiku(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
    ...     with openai.get_client(context) as client:
    ...         reply = client.chat.completions.create(
    ...             model="gpt-4o-mini", messages=[{"role": "user", "content": "A haiku on data"}]
    ...         )
    ...     return reply.choices[0].message.content
    >>> resource = OpenAIResource(api_key=dg.EnvVar("OPENAI_API_KEY"))
    >>> defs = dg.Definitions(assets=[haiku], resources={"openai": resource})
"""

import functools
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import dagster as dg
import dagster_openai
import openai
from pydantic import Field, PrivateAttr

from llm_assets.accounting.governance import Governor
from llm_assets.accounting.limits import RateLimits
from llm_assets.accounting.prices import ModelPrice, price_table
from llm_assets.accounting.usage import Usage
from llm_assets.cache import CacheMode, RequestCache
from llm_assets.errors import LLMAssetsError
from llm_assets.http.transport import PARTITION_HEADER, AsyncMeteredTransport, MeteredTransport, httpx

#: Placeholder key sent to OpenAI-compatible servers that need none.
NO_KEY = "no-key-needed"
_POOL_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)

AnyContext = dg.AssetExecutionContext | dg.OpExecutionContext | dg.AssetCheckExecutionContext
UsageKey = tuple[dg.AssetKey | None, str | None]


@functools.cache
def _ssl_context() -> Any:
    """One TLS context per process: building one reads the CA bundle (~50 ms)."""
    return httpx.create_ssl_context()


def async_connection_pool() -> httpx.AsyncBaseTransport:
    """The transport async clients share: openai's aiohttp transport (``openai[aiohttp]``,
    about 2× less CPU per request than httpx's pool, which matters at hundreds of requests
    per second), else httpx's own."""
    try:
        return openai.DefaultAioHttpClient(limits=_POOL_LIMITS, verify=_ssl_context())._transport
    except (RuntimeError, AttributeError, ImportError):  # aiohttp missing, or openai changed
        return httpx.AsyncHTTPTransport(limits=_POOL_LIMITS, verify=_ssl_context())


class PartitionedClient:
    """An ``openai.AsyncOpenAI`` whose requests are attributed to partitions, created on
    first use (a run answered entirely from the cache never opens a connection).

    Send ``options={"headers": clients.headers(key)}`` with a request to record its usage
    on partition ``key``.
    """

    def __init__(
        self,
        make_client: Callable[[], openai.AsyncOpenAI],
        partition_keys: list[str | None],
        usages: list[Usage],
    ) -> None:
        self._make_client = make_client
        self._client: openai.AsyncOpenAI | None = None
        self._index = {key: i for i, key in enumerate(partition_keys)}
        self.usage = dict(zip(partition_keys, usages, strict=True))

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def headers(self, partition_key: str | None) -> dict[str, str]:
        return {PARTITION_HEADER: str(self._index[partition_key])}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


class OpenAIResource(dagster_openai.OpenAIResource):
    """OpenAI (or any OpenAI-compatible server) for Dagster assets, recording exact usage.

    Usage lands on the asset (and partition) it was spent for, as metadata keys
    ``openai.<model>.calls|prompt_tokens|completion_tokens|total_tokens`` (dagster-openai's
    scheme, model as returned by the server) plus totals over models (``openai.total_tokens``…)
    and ``cached_tokens`` / ``reasoning_tokens`` where reported.

    Example:
        >>> OpenAIResource(api_key=dg.EnvVar("OPENAI_API_KEY"), chat_model="gpt-4o-mini")  # doctest: +SKIP
    """

    api_key: str | None = Field(
        default=None,
        repr=False,
        description=(
            "API key; use dg.EnvVar('OPENAI_API_KEY'). Defaults to the OPENAI_API_KEY environment "
            "variable; optional when base_url points at a server that needs no key."
        ),
    )
    organization: str | None = Field(default=None, description="OpenAI organization ID.")
    project: str | None = Field(default=None, description="OpenAI project ID.")
    base_url: str | None = Field(
        default=None,
        description=(
            "Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1. Defaults to the "
            "OPENAI_BASE_URL environment variable, then to OpenAI."
        ),
    )
    timeout: float = Field(default=120.0, gt=0, description="Seconds before one request times out.")
    max_retries: int = Field(
        default=2,
        ge=0,
        description="Retries of the OpenAI SDK (with backoff) for connection errors, 408, 409, 429 and 5xx.",
    )
    chat_model: str = Field(default="gpt-4o-mini", description="Default model for chat answers.")
    embedding_model: str = Field(default="text-embedding-3-small", description="Default model for embeddings.")
    max_concurrency: int = Field(default=8, ge=1, description="Requests in flight at once within one materialization.")
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Client-side cap on requests per minute within one step."
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Client-side cap on (estimated) tokens per minute within one step."
    )
    cache: bool = Field(
        default=True,
        description="Answer identical requests from the request cache (the factories' default; "
        "get_client uses it only with cache=True). False turns it off everywhere.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where the request cache lives: any fsspec/UPath location (e.g. s3://bucket/llm-cache) "
        "to share it across machines. Defaults to <instance storage>/llm_assets/request_cache.",
    )
    default_headers: dict[str, str] | None = Field(
        default=None, description="Extra HTTP headers sent with every request."
    )
    redact_text: bool = Field(
        default=False,
        description="Mask e-mail addresses, phone numbers and key-like strings in the prompt and answer text "
        "the library logs or records as metadata (previews, error messages).",
    )
    allowed_models: list[str] | None = Field(
        default=None,
        description="Models that may be requested; any other is refused before it is sent. None allows all.",
    )
    max_tokens_per_run: int | None = Field(
        default=None,
        ge=1,
        description="Tokens a run may spend; the request that would exceed it is not sent.",
    )
    max_cost_usd_per_run: float | None = Field(
        default=None,
        gt=0,
        description="Estimated USD a run may spend (see prices); enforced like max_tokens_per_run.",
    )
    prices: dict[str, dict[str, float]] | None = Field(
        default=None,
        description="USD per 1M tokens by model, overriding/extending the shipped table: "
        "{'my-model': {'input': 1.0, 'cached_input': 0.5, 'output': 2.0}}.",
    )

    _pool: Any = PrivateAttr(default=None)
    _ledgers: Any = PrivateAttr(default_factory=weakref.WeakKeyDictionary)  # step → {(asset, partition): Usage}
    _cache: RequestCache | None = PrivateAttr(default=None)
    _governor: Governor | None = PrivateAttr(default=None)

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    # -- set-up -----------------------------------------------------------------------------

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client_kwargs()  # fail at start-up, before any asset runs, on bad configuration
        self._pool = httpx.HTTPTransport(limits=_POOL_LIMITS)
        self._governor = self._new_governor()
        root = self.cache_dir
        if root is None and context.instance is not None:
            root = os.path.join(context.instance.storage_directory(), "llm_assets", "request_cache")
        self._cache = RequestCache(root) if self.cache and root else None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()

    def price_table(self) -> dict[str, ModelPrice]:
        """The prices cost is estimated with: the shipped table plus ``prices``."""
        return price_table(self.prices)

    def _new_governor(self) -> Governor:
        return Governor(self.allowed_models, self.max_tokens_per_run, self.max_cost_usd_per_run, self.price_table())

    def governor(self) -> Governor:
        """The allow-list and budgets of this run."""
        if self._governor is None:
            self._governor = self._new_governor()
        return self._governor

    def resolved_base_url(self) -> str | None:
        """The base URL requests go to (``None`` means OpenAI's)."""
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def _client_kwargs(self) -> dict[str, Any]:
        base_url = self.resolved_base_url()
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise LLMAssetsError(
                f"base_url {base_url!r} is not an http(s) URL: set OpenAIResource(base_url=...) or "
                "OPENAI_BASE_URL to e.g. http://127.0.0.1:8000/v1, or unset it to use OpenAI."
            )
        api_key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key or not api_key.strip():
            if base_url is None:
                raise LLMAssetsError(
                    "No OpenAI API key: set the OPENAI_API_KEY environment variable (the resource "
                    "reads it with dg.EnvVar('OPENAI_API_KEY')), or set base_url / OPENAI_BASE_URL "
                    "to an OpenAI-compatible server."
                )
            api_key = NO_KEY
        return {
            "api_key": api_key.strip(),
            "organization": self.organization,
            "project": self.project,
            "base_url": base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "default_headers": self.default_headers,
        }

    # -- clients --------------------------------------------------------------------------

    @contextmanager
    def get_client(
        self,
        context: AnyContext,
        asset_key: dg.AssetKey | None = None,
        partition_key: str | None = None,
        cache: CacheMode | bool = False,
    ) -> Iterator[openai.OpenAI]:
        """Yield an ``openai.OpenAI`` client whose usage is recorded on the asset being
        materialized (``asset_key`` picks one asset of a multi-asset) and, when given, on
        one ``partition_key`` of a run that materializes several partitions. With
        ``cache=True`` identical non-streamed requests are answered from the request cache.

        Example:
            >>> with openai.get_client(context) as client:  # doctest: +SKIP
            ...     client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        """
        usage_key = self._usage_key(context, asset_key, partition_key)
        usage = Usage()
        transport = MeteredTransport(usage, self._shared_pool(), self._cache, self.cache_mode(cache), self.governor())
        http_client = openai.DefaultHttpxClient(transport=transport)
        client = openai.OpenAI(**self._client_kwargs(), http_client=http_client)
        try:
            yield client
        finally:
            client.close()
            self._record(context, usage_key, usage)

    @contextmanager
    def get_client_for_asset(
        self,
        context: dg.AssetExecutionContext,
        asset_key: dg.AssetKey,
        partition_key: str | None = None,
        cache: CacheMode | bool = False,
    ) -> Iterator[openai.OpenAI]:
        """Like :meth:`get_client`, recording usage on ``asset_key`` (for multi-assets)."""
        with self.get_client(context, asset_key, partition_key, cache) as client:
            yield client

    @asynccontextmanager
    async def get_async_client(
        self,
        context: AnyContext,
        asset_key: dg.AssetKey | None = None,
        partition_key: str | None = None,
        cache: CacheMode | bool = False,
    ) -> AsyncIterator[openai.AsyncOpenAI]:
        """Async twin of :meth:`get_client`, yielding an ``openai.AsyncOpenAI``.

        Example:
            >>> async with openai.get_async_client(context) as client:  # doctest: +SKIP
            ...     await client.chat.completions.create(model="gpt-4o-mini", messages=[...])
        """
        async with self.get_partitioned_async_client(context, [partition_key], asset_key, cache) as clients:
            yield clients.client

    @asynccontextmanager
    async def get_partitioned_async_client(
        self,
        context: AnyContext,
        partition_keys: Sequence[str | None],
        asset_key: dg.AssetKey | None = None,
        cache: CacheMode | bool = False,
    ) -> AsyncIterator["PartitionedClient"]:
        """One ``openai.AsyncOpenAI`` for requests of several partitions: each request names
        its partition (``clients.options(key)``) and its usage is recorded there; the
        resource's rate limits apply to what goes out. ``clients.usage[key]`` is live."""
        usage_keys = [self._usage_key(context, asset_key, pk) for pk in partition_keys]
        usages = [Usage() for _ in partition_keys]
        kwargs = self._client_kwargs()
        transport_args = (
            self._cache,
            self.cache_mode(cache),
            RateLimits(self.requests_per_minute, self.tokens_per_minute),
            self.governor(),
        )
        pools: list[httpx.AsyncBaseTransport] = []

        def make_client() -> openai.AsyncOpenAI:
            pools.append(async_connection_pool())
            transport = AsyncMeteredTransport(usages, pools[0], *transport_args)
            return openai.AsyncOpenAI(**kwargs, http_client=openai.DefaultAsyncHttpxClient(transport=transport))

        clients = PartitionedClient(make_client, list(partition_keys), usages)
        try:
            yield clients
        finally:
            await clients.aclose()
            for pool in pools:
                await pool.aclose()
            for usage_key, usage in zip(usage_keys, usages, strict=True):
                self._record(context, usage_key, usage)

    @property
    def request_cache(self) -> RequestCache | None:
        """The request cache of this run (``None`` when off)."""
        return self._cache if self.cache else None

    def cache_mode(self, requested: CacheMode | bool) -> CacheMode:
        """The cache mode a client gets: ``requested`` unless the cache is off or absent."""
        if requested is True:
            requested = CacheMode.USE
        if requested is False or not self.cache or self._cache is None:
            return CacheMode.OFF
        return requested

    # -- accounting -------------------------------------------------------------------------

    def _shared_pool(self) -> httpx.BaseTransport:
        if self._pool is None:  # used outside a Dagster run, e.g. in a notebook
            self._pool = httpx.HTTPTransport(limits=_POOL_LIMITS)
        return self._pool

    @staticmethod
    def _usage_key(context: AnyContext, asset_key: dg.AssetKey | None, partition_key: str | None) -> UsageKey | None:
        if not isinstance(context, dg.AssetExecutionContext):
            return None
        if asset_key is None:
            if len(context.assets_def.keys) > 1:
                raise LLMAssetsError(
                    "asset_key is required in a multi_asset: use "
                    "openai.get_client_for_asset(context, asset_key) to say which asset the usage is for."
                )
            asset_key = context.asset_key
        return (asset_key, partition_key)

    def _record(self, context: AnyContext, usage_key: UsageKey | None, usage: Usage) -> None:
        if usage_key is None or not isinstance(context, dg.AssetExecutionContext):
            if usage.calls:
                context.log.info(f"OpenAI usage (not attributed to an asset): {usage.to_metadata()}")
            return
        ledger = self._ledgers.setdefault(context.get_step_execution_context(), {})
        total = ledger.setdefault(usage_key, Usage())
        total.merge(usage)
        asset_key, partition_key = usage_key
        context.add_asset_metadata(
            total.to_metadata(self.price_table()), asset_key=asset_key, partition_key=partition_key
        )
