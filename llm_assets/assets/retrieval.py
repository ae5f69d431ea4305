"""Retrieval from a vector store: query texts embedded through the resource (metered,
cached and billed to their partition like any embedding), then the nearest stored rows.

``Retrieval`` says where to look: the embeddings asset whose LanceDB table holds the
vectors, under the resource key of its ``LanceDBIOManager``.
The search asset factory (``llm_assets.assets.search``) and the chat factory's
``retrieval=`` (the ``{context}`` placeholder) both go through ``retrieve``.

Examples:
    >>> retrieval = Retrieval("captains/embeddings", k=3)
    >>> retrieval.key, retrieval.store_key
    (AssetKey(['captains', 'embeddings']), 'vector_store')
    >>> print(context_text(pd.DataFrame({"match_text": ["Explore.", "Make it so."]})))
    [1] Explore.
    [2] Make it so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

from llm_assets.assets.options import AssetKeyLike
from llm_assets.batch.settings import RequestMode
from llm_assets.cache import CacheMode
from llm_assets.engine import Engine
from llm_assets.errors import ConfigurationError
from llm_assets.vector_store.column import schema_dimensions
from llm_assets.vector_store.io_manager import LanceDBIOManager, table_name
from llm_assets.vector_store.store import VectorStore

if TYPE_CHECKING:
    from lancedb.table import Table

#: The resource key of the vector store, unless told otherwise.
STORE_KEY = "vector_store"
#: Models that take ``dimensions`` (shortened vectors): a query to them asks for the
#: stored vectors' length.
SHORTENING_MODELS = ("text-embedding-3",)
#: The most neighbours a query asks for.
MAX_K = 1_000


@dataclass(frozen=True)
class Retrieval:
    """Where and how much to retrieve.

    ``store``: the embeddings asset (definition, spec or key) whose table is searched;
    ``k``: neighbours per query; ``query``: the template of each row's query text (the
    chat factory's placeholders: ``{text}``, ``{question}``…); ``store_key``: the resource
    key of the ``LanceDBIOManager`` that stores it; ``partitions``: the stored partitions
    searched (``None``: all).
    """

    store: dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike
    k: int = 3
    query: str = "{text}"
    store_key: str = STORE_KEY
    partitions: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if type(self.k) is not int or not 1 <= self.k <= MAX_K:
            raise ConfigurationError(f"Retrieval k is {self.k!r}: give a whole number of neighbours, 1 to {MAX_K}.")

    @property
    def key(self) -> dg.AssetKey:
        if isinstance(self.store, dg.AssetsDefinition | dg.AssetSpec):
            return self.store.key
        if isinstance(self.store, str):
            return dg.AssetKey.from_user_string(self.store)  # "captains/embeddings": two parts
        return dg.AssetKey.from_coercible(self.store)

    def vector_store(self, context: dg.AssetExecutionContext) -> VectorStore:
        """The store under ``store_key``, checked to be a LanceDB one."""
        io_manager = getattr(context.resources, self.store_key, None)
        if not isinstance(io_manager, LanceDBIOManager):
            raise ConfigurationError(
                f"Retrieval from {self.key.to_user_string()} needs a LanceDBIOManager under the resource key "
                f"{self.store_key!r} (found {type(io_manager).__name__}): add resources={{{self.store_key!r}: "
                "llm_assets.LanceDBIOManager(...)}} to Definitions and give the embeddings asset "
                f"io_manager_key={self.store_key!r}."
            )
        return io_manager.store(context.instance)


def stored_model(table: Table) -> str | None:
    """The embedding model a table's vectors came from (its first row's ``model``)."""
    if "model" not in table.schema.names:
        return None
    return table.search().select(["model"]).limit(1).to_arrow().column("model")[0].as_py()


def retrieve(
    context: dg.AssetExecutionContext,
    resource: Any,
    retrieval: Retrieval,
    queries: Mapping[str | None, Sequence[str]],
    *,
    embedding_model: str | None = None,
    dimensions: int | None = None,
    max_concurrency: int | None = None,
    cache: CacheMode = CacheMode.USE,
) -> dict[str | None, list[pd.DataFrame]]:
    """Each partition's queries' neighbours: per query, a frame of the ``retrieval.k`` nearest rows
    (``rank``, ``distance``, then the stored columns prefixed ``match_``). The queries are
    embedded with ``embedding_model`` (default: the model the table was built with, else
    the resource's; a ``text-embedding-3`` model is asked for the stored vectors' length),
    live, each partition's usage on its own materialization."""
    store, name = retrieval.vector_store(context), table_name(retrieval.key)
    table = store.searchable(name)  # a missing or empty table: one clear error, before any request
    model = embedding_model or stored_model(table) or resource.embedding_model
    if dimensions is None and model.startswith(SHORTENING_MODELS):
        dimensions = schema_dimensions(table.schema)  # the stored vectors may have been shortened
    params: dict[str, Any] = {"model": model, **({"dimensions": dimensions} if dimensions else {})}
    engine = Engine(resource.session, context, max_concurrency=max_concurrency, cache=cache, mode=RequestMode.LIVE)
    embedded = engine.embed({pk: list(texts) for pk, texts in queries.items() if texts}, params)
    found: dict[str | None, list[pd.DataFrame]] = {pk: [] for pk in queries}
    for pk, result in embedded.items():
        hits = store.search(name, result.vectors, retrieval.k, retrieval.partitions)
        hits = hits.rename(columns=_match_names(hits.columns))
        groups = {number: part for number, part in hits.groupby("query", sort=False)}
        for number in range(len(result.vectors)):  # a query with no neighbour (no rows to search) gets none
            part = groups.get(number, hits.iloc[:0])
            found[pk].append(part.drop(columns="query").reset_index(drop=True))
    return found


def _match_names(columns: Sequence[str]) -> dict[str, str]:
    return {c: f"match_{c}" for c in columns if c not in ("query", "rank", "distance")}


def context_text(matches: pd.DataFrame) -> str:
    """The ``{context}`` of a prompt: the neighbours' texts, numbered, nearest first."""
    texts = matches["match_text"].astype(str) if "match_text" in matches else pd.Series([], dtype=str)
    return "\n".join(f"[{i}] {text}" for i, text in enumerate(texts, start=1))
