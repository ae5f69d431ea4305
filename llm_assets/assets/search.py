"""``build_search_asset``: for each query, the nearest rows of a vector store.

The queries are an upstream asset's text column, per partition (for each support ticket,
the 5 nearest past answers), or, without an upstream, the run config's ``queries``
("which captain answered most like this sentence?"). They are embedded through the
resource, so metered and cached like any embedding, then searched in the LanceDB table of
the embeddings asset given as ``store`` (a dependency of the search asset, not loaded).

Examples:
    >>> search = build_search_asset(key="most_like", store="captains/embeddings", k=1)
    >>> [dep.asset_key.to_user_string() for dep in search.specs_by_key[search.key].deps]
    ['captains/embeddings']
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Unpack

import dagster as dg
import pandas as pd
import pydantic

from llm_assets.assets.checks import checked
from llm_assets.assets.config import config_class, factory_defaults
from llm_assets.assets.frames import preview, typed_frame
from llm_assets.assets.options import (
    AssetKeyLike,
    AssetOptions,
    define_asset,
)
from llm_assets.assets.reporting import report_run
from llm_assets.assets.retrieval import MAX_K, STORE_KEY, Retrieval, retrieve
from llm_assets.assets.upstream import Requesting, Upstream, load_texts, run_partitions
from llm_assets.assets.versions import code_version, data_version
from llm_assets.cache import CacheMode
from llm_assets.engine.rows import ColumnSpec, column, column_specs
from llm_assets.errors import ConfigurationError
from llm_assets.http.validation import check_text


class SearchConfig(dg.Config):
    """Run config of a search asset."""

    queries: list[str] = pydantic.Field(
        default_factory=list, description="Texts to search for, when the asset has no upstream of queries."
    )
    k: int = pydantic.Field(default=5, ge=1, le=MAX_K, description="Nearest rows per query.")
    partitions: list[str] | None = pydantic.Field(
        default=None, description="Partitions of the store to search (default: all)."
    )
    embedding_model: str | None = pydantic.Field(
        default=None,
        description="Model embedding the queries; default: the one the store's vectors came from, else the "
        "resource's embedding_model.",
    )
    dimensions: int | None = pydantic.Field(
        default=None, ge=1, description="Vector size, if the store's vectors were shortened (dimensions=)."
    )
    cache: CacheMode = pydantic.Field(default=CacheMode.USE, description="Request cache of the query embeddings.")


@dataclass
class SearchRow:
    """One neighbour of one query."""

    partition_key: str | None = column("string", "Partition of the query (empty when unpartitioned).")
    row: int = column("int", "Position of the query within its partition.", "int64")
    query: str = column("string", "Text searched for.")
    rank: int = column("int", "1 for the nearest row, then 2, 3…", "int64")
    distance: float = column("float", "Distance to the query (the store's distance: cosine by default).", "float64")
    match_partition_key: str | None = column("string", "Partition of the stored row.")
    match_row: int = column("int", "Row of the stored row within its partition.", "int64")
    match_text: str = column("string", "Text of the stored row.")


SEARCH_COLUMNS: dict[str, ColumnSpec] = column_specs(SearchRow)


def build_search_asset(
    *,
    store: dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike,
    key: AssetKeyLike | None = None,
    queries: Upstream | dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike | None = None,
    text_column: str | None = None,
    k: int | None = None,
    store_key: str = STORE_KEY,
    partitions_def: dg.PartitionsDefinition | None = None,
    partition_mapping: dg.PartitionMapping | None = None,
    max_concurrency: int | None = None,
    defaults: SearchConfig | None = None,
    **options: Unpack[AssetOptions],
) -> dg.AssetsDefinition:
    """An asset of the ``k`` nearest stored rows of ``store`` (an embeddings asset kept by
    the ``LanceDBIOManager`` under ``store_key``) to each query: each row of ``queries``'
    ``text_column`` (default ``"answer"``, as the other factories), per partition, or the run config's ``queries``.
    ``k`` and ``defaults=SearchConfig(...)`` are the run config's defaults; ``options`` are
    Dagster's (``AssetOptions``).

    Examples:
        >>> tickets = dg.AssetSpec("tickets", partitions_def=dg.DailyPartitionsDefinition("2026-01-01"))
        >>> similar = build_search_asset(key="similar_answers", store="support/embeddings",
        ...                              queries=Upstream(tickets, text_column="question"), k=5)
        >>> similar.partitions_def == tickets.partitions_def
        True
    """
    options, name, where, source, partitions_def = Requesting.of(
        "build_search_asset",
        "search",
        key,
        options,
        queries,
        (text_column, partition_mapping),
        partitions_def,
        max_concurrency,
    )
    retrieval = Retrieval(store, store_key=store_key)
    config = config_class(
        SearchConfig, name.to_python_identifier(), factory_defaults(SearchConfig, {"k": k}, defaults, where)
    )
    options["deps"] = [*(options.get("deps") or ()), retrieval.key]
    searched = {"store": retrieval.key.to_user_string(), "text_column": source.text_column if source else None}
    searched.update(config().model_dump(include={"queries", "k", "partitions", "embedding_model", "dimensions"}))
    return define_asset(
        _Search(retrieval, source, max_concurrency, options).compute(),
        key=name,
        config_class=config,
        columns=SEARCH_COLUMNS,
        ins={"upstream": source.asset_in()} if source else {},
        partitions_def=partitions_def,
        options=options,
        description=f"The nearest rows of {retrieval.key.to_user_string()} to each query.",
        kinds={"openai", "lancedb"},
        code_version=code_version("search", searched),
        extra_resource_keys={store_key},
    )


@dataclass(frozen=True)
class _Search:
    """The asset's body: the queries, embedded and searched, reported."""

    retrieval: Retrieval
    source: Upstream | None
    max_concurrency: int | None
    options: AssetOptions

    def compute(self) -> Callable[..., dg.MaterializeResult]:
        def search(context: dg.AssetExecutionContext, config: SearchConfig, **inputs: Any) -> dg.MaterializeResult:
            return self.run(context, config, inputs.pop("upstream", None))

        return search

    def run(self, context: dg.AssetExecutionContext, config: SearchConfig, upstream: Any) -> dg.MaterializeResult:
        resource = getattr(context.resources, self.options["resource_key"])
        partition_keys = run_partitions(context, self.options["io_manager_key"])
        queries = self.queries(context, config, partition_keys, upstream)
        retrieval = Retrieval(
            self.retrieval.store, config.k, store_key=self.retrieval.store_key, partitions=config.partitions
        )
        started = time.perf_counter()
        found = retrieve(
            context,
            resource,
            retrieval,
            queries,
            embedding_model=config.embedding_model,
            dimensions=config.dimensions,
            max_concurrency=self.max_concurrency,
            cache=config.cache,
        )
        count = sum(len(texts) for texts in queries.values())
        report_run(context, "queries searched", count, len(partition_keys), time.perf_counter() - started)
        frames = {pk: self.report(context, pk, queries[pk], found[pk], resource.redact_text) for pk in queries}
        frame = pd.concat(list(frames.values()), ignore_index=True) if len(frames) > 1 else next(iter(frames.values()))
        return checked(frame, [], data_version=data_version(context, frames))

    def queries(
        self, context: dg.AssetExecutionContext, config: SearchConfig, partition_keys: list, upstream: Any
    ) -> dict[str | None, list[str]]:
        if self.source is not None:
            return load_texts(context, upstream, partition_keys, self.source.text_column, self.source.key)
        if not config.queries:
            raise ConfigurationError(
                f"{context.asset_key.to_user_string()} has no queries: set run config `queries` (a list of texts "
                "to search for), or give the factory queries= (an upstream asset of texts)."
            )
        for number, text in enumerate(config.queries):
            check_text(text, f"Run config queries[{number}] of {context.asset_key.to_user_string()}")
        return {pk: list(config.queries) for pk in partition_keys}

    @staticmethod
    def report(
        context: dg.AssetExecutionContext, pk: str | None, texts: list[str], found: list[pd.DataFrame], redact: bool
    ) -> pd.DataFrame:
        """One partition's frame, with its row count, best matches and a preview as metadata."""
        records = [
            {"partition_key": pk, "row": row, "query": text, **match}
            for row, (text, matches) in enumerate(zip(texts, found, strict=True))
            for match in matches.to_dict("records")
        ]
        frame = typed_frame(records, SEARCH_COLUMNS)
        best = [r for r in records if r["rank"] == 1]
        columns = ["query", "rank", "distance", "match_partition_key", "match_text"]
        metadata: dict[str, Any] = {
            "dagster/row_count": len(frame),
            "queries": len(texts),
            "preview": dg.MetadataValue.md(preview(records, columns, redacted=redact, count=10)),
        }
        if best:
            metadata["nearest"] = str(best[0]["match_partition_key"] or best[0]["match_text"])
            metadata["nearest_distance"] = float(best[0]["distance"])
        context.add_asset_metadata(metadata, partition_key=pk)
        return frame
