"""``build_embeddings_asset``: an upstream text column embedded per partition, as
plan (the texts) → engine (``embed``) → report (frame and
metadata).

Examples:
    >>> rows = embedding_rows("Kirk", ["Explore.", "Boldly."], "m")
    >>> [r["row"] for r in rows]
    [0, 1]
"""

from collections.abc import Callable, Mapping
from typing import Any, Unpack

import dagster as dg
import numpy as np
import pandas as pd

from llm_assets.assets.checks import EMBEDDING_CHECKS, AssetChecks, ChecksOption, checked, embedding_results
from llm_assets.assets.config import EmbeddingConfig, config_class, factory_defaults
from llm_assets.assets.frames import EMBEDDING_COLUMNS, embeddings_frame
from llm_assets.assets.options import (
    AssetKeyLike,
    AssetOptions,
    define_asset,
)
from llm_assets.assets.reporting import MAX_LOOKUPS, latest_metadata, report_run
from llm_assets.assets.upstream import Requesting, Upstream, empty_metadata, load_texts, run_partitions
from llm_assets.assets.versions import code_version, data_version
from llm_assets.batch.settings import RequestMode
from llm_assets.engine import EmbeddingResult, Engine
from llm_assets.errors import ConfigurationError
from llm_assets.http.validation import check_model, is_openai
from llm_assets.vector_store.io_manager import LanceDBIOManager


def embedding_rows(partition_key: str | None, texts: list[str], model: str | None) -> list[dict[str, Any]]:
    return [{"partition_key": partition_key, "row": i, "text": t, "model": model} for i, t in enumerate(texts)]


def report_embeddings(
    context: dg.AssetExecutionContext,
    texts: Mapping[str | None, list[str]],
    results: Mapping[str | None, EmbeddingResult],
    requested_model: str,
) -> dict[str | None, pd.DataFrame]:
    """Each partition's embeddings frame, and its row count, dimensions and model as its
    metadata (an empty partition has no rows, and the run's vector type)."""
    dimensions = next((r.vectors.shape[1] for r in results.values()), 0)
    frames = {}
    for pk, items in texts.items():
        result = results.get(pk)
        model = result.model if result is not None else requested_model
        matrix = result.vectors if result is not None else np.empty((0, dimensions), np.float32)
        frame = embeddings_frame(embedding_rows(pk, items, model), matrix)
        frames[pk] = frame
        metadata = {"dagster/row_count": len(frame), "dimensions": matrix.shape[1], "model": model}
        context.add_asset_metadata({**metadata, **empty_metadata(len(frame))}, partition_key=pk)
    return frames


def concat_embeddings(frames: Mapping[str | None, pd.DataFrame]) -> pd.DataFrame:
    """The partitions' embeddings frames as one, its ``embedding`` column still Arrow
    vectors (an empty frame is left out: its vectors may have another dimension)."""
    kept = [frame for frame in frames.values() if len(frame)] or list(frames.values())[:1]
    return pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0]


def recorded_dimensions(context: dg.AssetExecutionContext) -> dict[str, int]:
    """The dimension each other partition of the asset (the last
    ``MAX_LOOKUPS`` of them) was last materialized with:
    their vectors share the asset with this run's."""
    partitions_def = context.assets_def.partitions_def
    if partitions_def is None:
        return {}
    this_run = set(context.partition_keys)
    keys = partitions_def.get_partition_keys(dynamic_partitions_store=context.instance)
    recorded = {}
    for pk in [k for k in keys if k not in this_run][-MAX_LOOKUPS:]:
        value = latest_metadata(context.instance, context.asset_key, pk)[1].get("dimensions")
        if isinstance(value, dg.IntMetadataValue) and value.value:  # 0: an empty partition
            recorded[pk] = value.value
    return recorded


#: The vector length of OpenAI's embedding models, when not shortened with ``dimensions``.
MODEL_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


def known_dimensions(resource: Any, model: str, dimensions: int | None) -> int | None:
    """The vectors' length before any request: the ``dimensions`` asked for, else the
    model's own length when OpenAI serves it (another server may serve the name otherwise)."""
    if dimensions:
        return dimensions
    base_url = resource.resolved_base_url()
    return MODEL_DIMENSIONS.get(model) if base_url is None or is_openai(base_url) else None


def check_store(
    context: dg.AssetExecutionContext, io_manager_key: str, dimensions: int | None, partition_keys: list[str | None]
) -> None:
    """Before any request: vectors of ``dimensions`` (``None``: not known until embedded)
    must fit the asset's vector store table, when its I/O manager is one, for this run's
    ``partition_keys`` (``[None]``: unpartitioned, the whole table)."""
    store = getattr(context.resources, io_manager_key, None)
    if isinstance(store, LanceDBIOManager):
        partitions = None if partition_keys == [None] else [str(pk) for pk in partition_keys]
        store.check_dimensions(context.asset_key, dimensions, partitions)


def build_embeddings_asset(
    *,
    upstream: Upstream | dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike,
    key: AssetKeyLike | None = None,
    text_column: str | None = None,
    embedding_model: str | None = None,
    dimensions: int | None = None,
    batch_size: int | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    partition_mapping: dg.PartitionMapping | None = None,
    max_concurrency: int | None = None,
    mode: RequestMode | None = None,
    checks: ChecksOption = True,
    defaults: EmbeddingConfig | None = None,
    **options: Unpack[AssetOptions],
) -> dg.AssetsDefinition:
    """An asset embedding ``text_column`` (default ``"answer"``) of ``upstream`` (an asset,
    or an ``Upstream``), per partition (partitions follow
    the upstream's unless given). Many texts go in one request; order is kept.
    ``embedding_model``, ``dimensions``, ``batch_size`` and ``mode`` are run config defaults
    (``EmbeddingConfig``; ``None`` keeps its own), or ``defaults=EmbeddingConfig(...)``
    gives them in one place; ``checks`` configures the generated asset checks
    (``llm_assets.assets.checks``); ``options`` are Dagster's (``AssetOptions``).

    Examples:
        >>> embeddings = build_embeddings_asset(key="embeddings", upstream=answers)  # doctest: +SKIP
        >>> embeddings = build_embeddings_asset(  # doctest: +SKIP
        ...     upstream=Upstream(notes, text_column="text"), defaults=EmbeddingConfig(dimensions=256)
        ... )
    """
    options, name, where, read, partitions_def = Requesting.of(
        "build_embeddings_asset",
        "embeddings",
        key,
        options,
        upstream,
        (text_column, partition_mapping),
        partitions_def,
        max_concurrency,
    )
    assert read is not None  # upstream= is required
    source = read.asset_in()
    keywords = {"embedding_model": embedding_model, "dimensions": dimensions, "batch_size": batch_size, "mode": mode}
    asset_checks = AssetChecks(name, EMBEDDING_CHECKS, checks)
    config = config_class(
        EmbeddingConfig, name.to_python_identifier(), factory_defaults(EmbeddingConfig, keywords, defaults, where)
    )
    text_column = read.text_column
    embedded = {"text_column": text_column, "mapping": read.partition_mapping}
    embedded.update(config().model_dump(include={"embedding_model", "dimensions"}))
    return define_asset(
        _embeddings(source.key, text_column, max_concurrency, options, asset_checks),
        key=name,
        config_class=config,
        columns=EMBEDDING_COLUMNS,
        ins={"upstream": source},
        partitions_def=partitions_def,
        options=options,
        description=(
            f"Embeddings of {source.key.to_user_string()}.{text_column}, one float32 vector column `embedding`."
        ),
        kinds={"openai"},
        code_version=code_version("embeddings", embedded),
        check_specs=asset_checks.specs,
    )


def _embeddings(
    source: dg.AssetKey, text_column: str, max_concurrency: int | None, options: AssetOptions, checks: AssetChecks
) -> Callable[..., dg.MaterializeResult]:
    """The asset's body: load the texts, embed them through the engine, report, check."""

    def embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, upstream: Any) -> dg.MaterializeResult:
        resource = getattr(context.resources, options["resource_key"])
        partition_keys = run_partitions(context, options["io_manager_key"])
        texts = load_texts(context, upstream, partition_keys, text_column, source)
        params: dict[str, Any] = {"model": config.embedding_model or resource.embedding_model}
        where = "run config embedding_model, the factory's embedding_model or the resource's"
        check_model(params["model"], "embedding_model", where)
        if (refused := resource.session.governor.model_refusal(params["model"])) is not None:
            raise ConfigurationError(
                f"{refused} (set by run config or factory `embedding_model`, else the resource's)."
            )
        if config.dimensions:
            params["dimensions"] = config.dimensions
        known = known_dimensions(resource, params["model"], config.dimensions)
        check_store(context, options["io_manager_key"], known, partition_keys)
        engine = Engine(
            resource.session, context, max_concurrency=max_concurrency, cache=config.cache, mode=config.mode
        )
        results = engine.embed(
            {pk: t for pk, t in texts.items() if t}, params, config.batch_size, config.max_batch_tokens
        )
        count = sum(len(t) for t in texts.values())
        run = report_run(context, "texts embedded", count, len(texts), engine.seconds)
        frames = report_embeddings(context, texts, results, params["model"])
        frame = concat_embeddings(frames)
        dimensions = {**recorded_dimensions(context), **{str(pk): r.vectors.shape[1] for pk, r in results.items()}}
        results = embedding_results(checks, frame, count, dimensions, run, resource.redact_text)
        return checked(frame, results, data_version=data_version(context, frames))

    return embeddings
