"""``OpenAIResource``: dagster-openai's resource, with exact usage accounting.

A drop-in superset of ``dagster_openai.OpenAIResource``: the same fields and the same
``get_client`` / ``get_client_for_asset`` context managers yielding an ``openai.OpenAI``
client, so existing code only changes its import. Every block gets its own lightweight
client whose HTTP transport meters the usage the server reports, over one shared
connection pool; no client is ever patched. As with dagster-openai, the client stays
usable after its block (until the resource is torn down), and what it spends then still
lands on the block's asset. In an op, usage lands on the asset the op materializes (an
op of a graph-backed asset) or else on the op's output.

Examples:
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

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import dagster as dg
import dagster_openai
import openai
from pydantic import Field, PrivateAttr

from llm_assets.batch.settings import BatchSettings
from llm_assets.cache import CacheMode
from llm_assets.engine.structured import ResponseFormatStyle
from llm_assets.errors import ConfigurationError
from llm_assets.http.validation import check_base_url, check_header_name, check_header_value, check_model, is_openai
from llm_assets.session import AnyContext, RunSession, SessionSettings

#: Placeholder key sent to OpenAI-compatible servers that need none.
NO_KEY = "no-key-needed"


class OpenAIResource(dagster_openai.OpenAIResource):
    """OpenAI (or any OpenAI-compatible server) for Dagster assets, recording exact usage.

    Usage lands on the asset (and partition) it was spent for, as metadata keys
    ``openai.<model>.calls|prompt_tokens|completion_tokens|total_tokens`` (dagster-openai's
    scheme, model as returned by the server) plus totals over models (``openai.total_tokens``…)
    and ``cached_tokens`` / ``reasoning_tokens`` where reported.

    Examples:
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
    timeout: float = Field(
        default=120.0, gt=0, le=86_400, allow_inf_nan=False, description="Seconds before one request times out."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Retries of the OpenAI SDK (with backoff) for connection errors, 408, 409, 429 and 5xx.",
    )
    chat_model: str = Field(default="gpt-4o-mini", description="Default model for chat answers.")
    embedding_model: str = Field(default="text-embedding-3-small", description="Default model for embeddings.")
    response_format_style: ResponseFormatStyle = Field(
        default=ResponseFormatStyle.JSON_SCHEMA,
        description="How structured answers are asked for: JSON_SCHEMA (OpenAI's strict structured outputs) or "
        "JSON_OBJECT (JSON mode with the schema alongside, for servers such as llama.cpp that reject "
        "json_schema). Answers are validated either way.",
    )
    max_concurrency: int = Field(
        default=8, ge=1, le=100_000, description="Requests in flight at once within one materialization."
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description="Ceiling on requests per minute of each process (step), paced evenly; the provider's own "
        "limits, read from its response headers, lower it (see follow_provider_limits).",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10**12,
        description="Ceiling on (estimated) tokens per minute of each process, like requests_per_minute.",
    )
    follow_provider_limits: bool = Field(
        default=True,
        description="Pace requests by the provider's x-ratelimit-* headers and Retry-After, so processes "
        "sharing one key (steps, runs, machines) settle at the key's limit together, without 429s.",
    )
    cache: bool = Field(
        default=True,
        description="Answer identical requests from the request cache (the factories' default; "
        "get_client uses it only with cache=True). False turns it off everywhere.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where the request cache lives: any fsspec/UPath location (e.g. s3://bucket/llm-cache) "
        "to share it across machines. Defaults to `<instance storage>/llm_assets/request_cache`.",
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
        le=10**15,
        description="Tokens one run may spend, over all its steps and processes (kept in the Dagster instance's "
        "database, or budget_url); the request that would exceed it is not sent.",
    )
    max_cost_usd_per_run: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Estimated USD one run may spend (see prices); scoped and enforced like max_tokens_per_run.",
    )
    budget_url: str | None = Field(
        default=None,
        repr=False,
        description="SQLAlchemy URL of the database that keeps run-wide budgets (sqlite:///path or "
        "postgresql://...), for every process of a run to share. Defaults to the Dagster instance's own "
        "storage (SQLite or Postgres); use dg.EnvVar if it holds a password.",
    )
    prices: dict[str, dict[str, float]] | None = Field(
        default=None,
        description="USD per 1M tokens by model, overriding/extending the shipped table: "
        "{'my-model': {'input': 1.0, 'cached_input': 0.5, 'output': 2.0}}.",
    )
    batch: BatchSettings = Field(
        default_factory=BatchSettings,
        description="Batch mode (run config mode: BATCH): completion window, polling, how long a step "
        "waits, and the per-file limits of the Batch API.",
    )

    _session: RunSession | None = PrivateAttr(default=None)

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    # -- set-up -----------------------------------------------------------------------------

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        instance = context.instance
        storage = instance.storage_directory() if instance is not None else None
        run_id = context.run.run_id if context.run is not None else None
        self._session = RunSession(self.session_settings(), storage, instance, run_id)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._session is not None:
            self._session.close()  # the pool every sync client shared: they refuse requests from now on
            self._session = None

    @property
    def session(self) -> RunSession:
        """The state of this run (step, on the multiprocess executor): pool, cache, governor,
        rate limits, usage ledger. Outside Dagster (a notebook) a session without the
        instance's default cache location is made on first use."""
        if self._session is None:
            self._session = RunSession(self.session_settings(), storage_dir=None)
        return self._session

    @property
    def asset_kinds(self) -> set[str]:
        """The kinds (UI icons) of the assets this backend answers: ``openai``, the API."""
        return {"openai"}

    def resolved_base_url(self) -> str | None:
        """The base URL requests go to (``None`` means OpenAI's)."""
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or "").strip().rstrip("/") or None

    def cache_identity(self) -> str | None:
        """What the request cache keys this backend by (``None``: its base URL, see
        ``backend_identity``); a backend whose URL changes every run
        returns something stable instead."""
        return None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``openai`` clients, after checking every field they
        come from: bad configuration fails here, at set-up, before any request."""
        base_url = self.resolved_base_url()
        if base_url is not None:
            check_base_url(base_url, "base_url" if self.base_url else "OPENAI_BASE_URL")
        api_key = (self.api_key or os.environ.get("OPENAI_API_KEY") or "").strip()
        if not api_key:
            if base_url is None or is_openai(base_url):
                raise ConfigurationError(
                    "No OpenAI API key: set the OPENAI_API_KEY environment variable (the resource reads it "
                    "with dg.EnvVar('OPENAI_API_KEY')). Only a base_url / OPENAI_BASE_URL that is not "
                    "OpenAI's (an OpenAI-compatible server that needs no key) may go without one."
                )
            api_key = NO_KEY
        # the SDK reads these two from the environment when unset: check what it would send
        organization = self.organization or os.environ.get("OPENAI_ORG_ID") or None
        project = self.project or os.environ.get("OPENAI_PROJECT_ID") or None
        headers = {
            "api_key": api_key,
            "organization" if self.organization else "organization (OPENAI_ORG_ID)": organization,
            "project" if self.project else "project (OPENAI_PROJECT_ID)": project,
        }
        headers.update({f"default_headers[{name!r}]": value for name, value in (self.default_headers or {}).items()})
        for field, value in headers.items():
            check_header_value(field, value)
        for name in self.default_headers or {}:
            check_header_name(name)
        for field in ("chat_model", "embedding_model"):
            check_model(getattr(self, field), field, f"OpenAIResource({field}=...)")
        return {
            "api_key": api_key,
            "organization": organization,
            "project": project,
            "base_url": base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "default_headers": self.default_headers,
        }

    def session_settings(self) -> SessionSettings:
        """What a ``RunSession`` of this resource is made from,
        every field checked (bad configuration fails here, at set-up, before any request)."""
        derived = {"client_kwargs": self.client_kwargs(), "cache_identity": self.cache_identity()}
        copied = {f.name: getattr(self, f.name) for f in dataclasses.fields(SessionSettings) if f.name not in derived}
        if self.allowed_models is not None:
            copied["allowed_models"] = tuple(self.allowed_models)
        return SessionSettings(**derived, **copied)

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
        one ``partition_key`` of a run that materializes several partitions; in an op, on
        the asset it materializes or else its output. With ``cache=True`` identical
        non-streamed requests are answered from the request cache. The client stays usable
        after the block: later calls are recorded on the same asset or output.

        Raises ``UsageTargetError`` (a
        ``dagster.DagsterInvariantViolationError`` too) in a multi-asset without ``asset_key``.

        Examples:
            >>> with openai.get_client(context) as client:  # doctest: +SKIP
            ...     client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        """
        with self.session.metered(context, asset_key, partition_key) as usage:
            yield self.session.client(usage, cache)  # not closed: it shares the session's pool, closed at teardown

    @contextmanager
    def get_client_for_asset(
        self,
        context: AnyContext,
        asset_key: dg.AssetKey,
        partition_key: str | None = None,
        cache: CacheMode | bool = False,
    ) -> Iterator[openai.OpenAI]:
        """Like ``get_client``, recording usage on ``asset_key`` (for multi-assets)."""
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
        """Async twin of ``get_client``, yielding an ``openai.AsyncOpenAI`` (open it in
        the event loop that uses it).

        Examples:
            >>> async with openai.get_async_client(context) as client:  # doctest: +SKIP
            ...     await client.chat.completions.create(model="gpt-4o-mini", messages=[...])
        """
        with self.session.metered(context, asset_key, partition_key) as usage:
            async with self.session.async_client(usage, cache) as client:
                yield client
