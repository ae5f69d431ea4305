"""A LanceDB database of vector tables: partition-aware writes in one commit, reads,
nearest-neighbour search, and an ANN index past ``INDEX_MIN_ROWS`` rows.

LanceDB is embedded (no server): ``uri`` is a local directory or an object-store URI
(``s3://``, ``gs://``, ``az://``). Every change is one Lance commit, so a reader (or a
process killed mid-write) always sees a whole version: either the previous one or the new.

Examples:
    >>> import tempfile
    >>> store = VectorStore(tempfile.mkdtemp())
    >>> data = pa.table({"partition_key": ["a", "a"], "row": [0, 1], "text": ["x", "y"],
    ...                  "embedding": vector_array(np.eye(2))})
    >>> store.write("notes", data, partitions=["a"]).rows
    2
    >>> store.search("notes", np.array([[0.0, 1.0]]), k=1)["text"].tolist()
    ['y']
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import tenacity

from llm_assets.errors import ConfigurationError
from llm_assets.vector_store.column import VECTOR_COLUMN, dimensions_of, frame_of, schema_dimensions, vector_array

if TYPE_CHECKING:
    from lancedb.db import DBConnection
    from lancedb.table import Table

#: The row count past which a table gets an ANN index: LanceDB's guidance is that a
#: brute-force search of ~100,000 vectors is fast enough (tens of ms) without one.
INDEX_MIN_ROWS = 100_000
#: The columns that name a row of a partitioned table: replaced by a re-materialization.
ROW_KEY = ("partition_key", "row")

T = TypeVar("T")
Distance = Literal["cosine", "l2", "dot"]
IndexType = Literal["IVF_PQ", "IVF_HNSW_SQ"]


@dataclass(frozen=True)
class IndexSettings:
    """When and how a table's vectors are indexed, and how searches use the index.

    ``min_rows``: index once the table has this many rows (0: never); ``index_type``:
    ``IVF_PQ`` (compact, refined by exact distances) or ``IVF_HNSW_SQ``; ``distance``:
    cosine for OpenAI-style embeddings; ``nprobes`` and ``refine_factor``: IVF partitions
    searched, and candidates re-ranked exactly, per result.
    """

    min_rows: int = INDEX_MIN_ROWS
    index_type: IndexType = "IVF_PQ"
    distance: Distance = "cosine"
    nprobes: int = 20
    refine_factor: int | None = 10

    def config(self, dimensions: int) -> Any:
        """The LanceDB index configuration of a ``dimensions``-long vector column."""
        from lancedb.index import IvfHnswSq, IvfPq

        if self.index_type == "IVF_HNSW_SQ":
            return IvfHnswSq(distance_type=self.distance, max_iterations=KMEANS_ITERATIONS)
        return IvfPq(
            distance_type=self.distance, num_sub_vectors=_sub_vectors(dimensions), max_iterations=KMEANS_ITERATIONS
        )


#: New rows are left out of the index (searched exactly, alongside it) until they are this
#: share of the table or ``REFRESH_ROWS``, whichever comes first (LanceDB's guidance:
#: optimize after 100,000 changed rows): a refresh costs seconds at a million rows,
#: whatever was written.
REFRESH_FRACTION = 0.1
REFRESH_ROWS = 100_000

#: k-means iterations training the index: Lance's default of 50 built a 100,000-row index
#: in 68 s and 10 in 11 s, with the same recall (``benchmarks/vectors.py``).
KMEANS_ITERATIONS = 10


def _sub_vectors(dimensions: int) -> int:
    """PQ sub-vectors of about 4 dimensions each (a divisor of ``dimensions``): finer than
    Lance's default of 16, for recall (1.000 against 0.956 for 8, at a million vectors)."""
    for size in (4, 8, 2, 16, 1):
        if dimensions % size == 0:
            return dimensions // size
    return 1


@dataclass(frozen=True)
class Written:
    """What a write left: the table, its Lance version, rows, vector length and index."""

    uri: str
    table: str
    version: int
    rows: int
    dimensions: int | None
    index: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Materialization metadata: the table's URI, Lance version, rows, dimension, index."""
        import dagster as dg

        index = self.index or {"index_type": None, "reason": "fewer rows than the index's min_rows"}
        return {
            "lancedb/uri": dg.MetadataValue.path(self.uri),
            "dagster/table_name": self.table,
            "lancedb/version": self.version,
            "lancedb/table_rows": self.rows,
            "dimensions": self.dimensions or 0,
            "lancedb/index": dg.MetadataValue.json(index),
        }


class VectorStore:
    """The LanceDB database at ``uri``: one table per asset.

    Args:
        uri: a local directory or an object-store URI (``s3://bucket/path``…).
        storage_options: the object store's options (endpoint, region…), as LanceDB
            takes them; credentials are best left to the environment.
        index: when to build an ANN index and how searches use it.
    """

    def __init__(
        self, uri: str, storage_options: dict[str, str] | None = None, index: IndexSettings | None = None
    ) -> None:
        self.uri = str(uri)
        self.storage_options = dict(storage_options or {})
        self.index = index or IndexSettings()

    def __repr__(self) -> str:
        return f"VectorStore({self.uri!r})"  # never the storage options: they may hold credentials

    @cached_property
    def db(self) -> DBConnection:
        import lancedb

        return lancedb.connect(self.uri, storage_options=self.storage_options or None)

    def table_uri(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}.lance"

    def open(self, name: str) -> Table | None:
        """The table ``name``, or ``None`` if it does not exist."""
        try:
            return self.db.open_table(name)
        except ValueError as error:  # LanceDB's "Table 'name' was not found"
            if "was not found" in str(error):
                return None
            raise

    def dimensions(self, name: str) -> int | None:
        """The vector length of table ``name`` (``None``: no table, or no rows yet)."""
        table = self.open(name)
        return _dimensions(table) if table is not None and table.count_rows() else None

    def drop(self, name: str) -> None:
        """Delete table ``name`` (and every version of it), if it exists."""
        if self.open(name) is not None:
            self.db.drop_table(name)

    # -- writes -----------------------------------------------------------------------------

    def write(self, name: str, data: pa.Table, partitions: Sequence[str] | None) -> Written:
        """Replace ``partitions``' rows of table ``name`` with ``data`` in one commit (other
        partitions' rows stay as they are); ``partitions=None`` replaces the whole table.
        Then index it, or refresh its index, past ``IndexSettings.min_rows`` rows."""
        if partitions is not None:
            data = _keyed(data, name)
        table = self.open(name)
        if table is None:
            table = self._create(name, data, partitions)
        else:
            committed(table, lambda: self._replace(table, name, data, partitions))
        index = self._maintained(table, name)
        return Written(self.table_uri(name), name, table.version, table.count_rows(), _dimensions(table), index)

    def _create(self, name: str, data: pa.Table, partitions: Sequence[str] | None) -> Table:
        try:
            table = self.db.create_table(name, _stream(data), mode="create")
        except (ValueError, OSError, RuntimeError):
            table = self.open(name)
            if table is None:  # not a writer that created it first: a real failure
                raise
            committed(table, lambda: self._replace(table, name, data, partitions))  # another step created it first
            return table
        if table.version > 1 and partitions is not None:
            self._restore_overwritten(table, name, partitions)
        return table

    def _restore_overwritten(self, table: Table, name: str, partitions: Sequence[str]) -> None:
        """Put back the other partitions' rows that this create overwrote. Lance commits a
        create that raced another writer's create as an overwrite of it (at version 2, or
        later), so a step creating the table at the same moment as another one erased that
        step's rows: they are in the version before this one, and are merged in again."""
        before = self.db.open_table(name)
        before.checkout(table.version - 1)
        lost = before.search().where(f"NOT ({_where(partitions)})").limit(before.count_rows() or 1).to_arrow()
        if not len(lost):
            return
        lost = _conformed(lost, table.schema, name)
        committed(table, lambda: table.merge_insert(list(ROW_KEY)).when_not_matched_insert_all().execute(_stream(lost)))
        _warn(
            f"The LanceDB table {name!r} was created by two writers at once; the {len(lost)} rows of other "
            "partitions that the second creation overwrote are restored."
        )

    def _replace(self, table: Table, name: str, data: pa.Table, partitions: Sequence[str] | None) -> None:
        """One commit: the whole table (``partitions=None``, or a new schema or dimension
        over a table holding only these partitions' rows), else a merge on the row key that
        deletes the partitions' rows ``data`` no longer has. A merge never touches another
        partition's rows, so steps writing other partitions at the same time lose nothing."""
        new = dimensions_of(data.column(VECTOR_COLUMN)) if VECTOR_COLUMN in data.column_names and len(data) else None
        if partitions is None or (not self._others(table, partitions) and not _fits(data, table.schema, new)):
            table.add(_stream(data), mode="overwrite")
            return
        self._check_dimensions(table, name, new)
        data = _conformed(data, table.schema, name)
        if not len(data):
            table.delete(_where(partitions))
            return
        (
            table.merge_insert(list(ROW_KEY))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(_where(partitions))
            .execute(_stream(data))
        )

    def check_dimensions(self, name: str, dimensions: int | None, partitions: Sequence[str] | None) -> None:
        """Raise if vectors of ``dimensions`` can't replace ``partitions``' rows of table
        ``name``: other rows of the table have vectors of another length."""
        table = self.open(name)
        if table is not None and dimensions is not None and self._others(table, partitions):
            self._check_dimensions(table, name, dimensions)

    @staticmethod
    def _others(table: Table, partitions: Sequence[str] | None) -> int:
        """The rows of ``table`` outside ``partitions`` (``None``: the whole table is replaced)."""
        rows = table.count_rows()
        return rows - table.count_rows(_where(partitions)) if partitions is not None and rows else 0

    def _check_dimensions(self, table: Table, name: str, new: int | None) -> None:
        stored = _dimensions(table)
        if stored is None or new is None or stored == new:
            return
        raise ConfigurationError(
            f"The LanceDB table {name!r} ({self.table_uri(name)}) holds vectors of {stored} dimensions, and these "
            f"have {new}: embed with the model and `dimensions` the table was built with ({stored}), or drop the "
            f"table (llm_assets.VectorStore({self.uri!r}).drop({name!r})) and materialize every partition again."
        )

    def _maintained(self, table: Table, name: str) -> dict[str, Any]:
        """The index after ``_indexed``; a failure to maintain it (the rows are committed:
        searches still find them, exactly) is a warning, and the ``error`` of its metadata."""
        try:
            return committed(table, lambda: self._indexed(table))
        except Exception as error:  # Lance's errors have no common type
            problem = f"{type(error).__name__}: {str(error)[:300]}"
            _warn(
                f"The ANN index of the LanceDB table {name!r} could not be brought up to date ({problem}); its rows "
                "are written, and searches scan those the index lacks. The next write tries again."
            )
            return {"index_type": self.index.index_type, "action": "failed", "error": problem}

    def optimize(self, name: str) -> dict[str, Any]:
        """Bring table ``name``'s index up to date now (every row in it; small files
        compacted), e.g. from a maintenance job after many small writes; its state."""
        table = self.searchable(name)
        return committed(table, lambda: self._indexed(table, refresh=True))

    def _indexed(self, table: Table, *, refresh: bool = False) -> dict[str, Any]:
        """Build the vector index once the table has ``min_rows`` rows, or keep an existing
        one up to date: new rows are added once they are ``REFRESH_FRACTION`` of the
        table or ``REFRESH_ROWS`` (searched exactly until then; ``refresh``: now), and
        it is retrained once fewer than half the rows are indexed. Its settings and state."""
        settings = self.index
        if VECTOR_COLUMN not in table.schema.names:
            return {}
        dimensions = _dimensions(table) or 0
        rows = table.count_rows()
        existing = _vector_index(table)
        if existing is None and (not settings.min_rows or rows < settings.min_rows or not dimensions):
            return {}
        started = time.perf_counter()
        if existing is None:
            table.create_index(VECTOR_COLUMN, config=settings.config(dimensions))
            action = "built"
        else:
            stats = table.index_stats(existing)
            if stats is None or not stats.num_unindexed_rows:
                action = "up to date"
            elif stats.num_indexed_rows < rows / 2:
                table.create_index(VECTOR_COLUMN, config=settings.config(dimensions), replace=True)
                action = "retrained"
            elif not refresh and stats.num_unindexed_rows < min(REFRESH_ROWS, rows * REFRESH_FRACTION):
                action = "new rows searched exactly"  # a write costs its own rows, not the table's
            else:
                table.optimize()  # adds the new rows to the index (and compacts small files)
                action = "refreshed"
        stats = table.index_stats(_vector_index(table) or "")
        return {
            "index_type": settings.index_type,
            "distance": settings.distance,
            "num_sub_vectors": _sub_vectors(dimensions) if settings.index_type == "IVF_PQ" else None,
            "indexed_rows": getattr(stats, "num_indexed_rows", None),
            "unindexed_rows": getattr(stats, "num_unindexed_rows", None),
            "min_rows": settings.min_rows,
            "action": action,
            "seconds": round(time.perf_counter() - started, 3),
            "nprobes": settings.nprobes,
            "refine_factor": settings.refine_factor,
        }

    # -- reads --------------------------------------------------------------------------------

    def read(self, name: str, partitions: Sequence[str] | None = None) -> pa.Table:
        """Table ``name``'s rows (``partitions``' only, if given), in partition order then row
        order; a missing table has none."""
        table = self.open(name)
        if table is None:
            raise ConfigurationError(
                f"The LanceDB table {name!r} at {self.table_uri(name)} does not exist: materialize its asset first."
            )
        query = table.search()
        if partitions is not None:
            query = query.where(_where(partitions))
        data = query.limit(table.count_rows() or 1).to_arrow()
        return _ordered(data, partitions)

    def search(
        self,
        name: str,
        query: Any,
        k: int = 10,
        partitions: Sequence[str] | None = None,
        *,
        embed: Callable[[list[str]], Any] | None = None,
    ) -> pd.DataFrame:
        """The ``k`` nearest rows of table ``name`` to each query, among ``partitions``'
        rows if given: the table's columns but the vectors, then ``query`` (which one),
        ``rank`` (from 1) and ``distance``. A query is a vector (or a matrix of them), or a
        text (or a list of texts) that ``embed`` turns into vectors.

        Examples:
            >>> client = openai.OpenAI()  # doctest: +SKIP
            >>> embed = lambda texts: [e.embedding for e in client.embeddings.create(  # doctest: +SKIP
            ...     model="text-embedding-3-small", input=texts).data]
            >>> store.search("captains__embeddings", "Make it so.", k=3, embed=embed)  # doctest: +SKIP
        """
        table = self.searchable(name)
        if isinstance(query, str) or (isinstance(query, list | tuple) and query and isinstance(query[0], str)):
            if embed is None:
                raise ConfigurationError(
                    f"A text search of {name!r} needs embed=: a function from texts to their vectors, with the model "
                    "the table was built with (or search with vectors)."
                )
            query = embed([query] if isinstance(query, str) else list(query))
        matrix = np.atleast_2d(np.asarray(query, dtype=np.float32))
        stored = _dimensions(table)
        if matrix.ndim != 2 or matrix.shape[1] != stored:
            raise ConfigurationError(
                f"The query vectors have {matrix.shape[-1]} dimensions and the table {name!r} "
                f"({self.table_uri(name)}) {stored}: embed the query with the model (and dimensions) the table "
                "was built with."
            )
        if not np.isfinite(matrix).all() or (
            self.index.distance == "cosine" and not np.linalg.norm(matrix, axis=1).all()
        ):
            raise ConfigurationError(
                f"A query vector of {name!r} is NaN, infinite or all zeros: it has no {self.index.distance} distance."
            )
        columns = [c for c in table.schema.names if c != VECTOR_COLUMN]
        settings, frames = self.index, []
        for number, vector in enumerate(matrix):
            query = table.search(vector, vector_column_name=VECTOR_COLUMN).distance_type(settings.distance)
            query = query.limit(k).nprobes(settings.nprobes)
            if settings.refine_factor:
                query = query.refine_factor(settings.refine_factor)
            if partitions is not None:
                query = query.where(_where(partitions), prefilter=True)
            found = frame_of(query.select(columns).to_arrow())
            found = found.rename(columns={"_distance": "distance"}).sort_values("distance", kind="stable")
            found.insert(0, "rank", np.arange(1, len(found) + 1))
            found.insert(0, "query", number)
            frames.append(found.reset_index(drop=True))
        return pd.concat(frames, ignore_index=True)

    def searchable(self, name: str) -> Table:
        table = self.open(name)
        if table is None or VECTOR_COLUMN not in table.schema.names or not table.count_rows():
            state = "does not exist" if table is None else "has no vectors"
            raise ConfigurationError(
                f"Nothing to search: the LanceDB table {name!r} at {self.table_uri(name)} {state}. Materialize "
                "the embeddings asset it stores first (with the vector store as its I/O manager)."
            )
        return table


def _dimensions(table: Table) -> int | None:
    return schema_dimensions(table.schema)


def _vector_index(table: Table) -> str | None:
    return next((i.name for i in table.list_indices() if VECTOR_COLUMN in i.columns), None)


def _warn(message: str) -> None:
    import dagster as dg

    dg.get_dagster_logger("llm_assets").warning(message)


def _quoted(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _where(partitions: Sequence[str] | None) -> str:
    """The SQL filter of ``partitions``' rows."""
    if not partitions:
        return "false"
    return f"partition_key IN ({', '.join(_quoted(p) for p in partitions)})"


#: Rows per Arrow batch handed to LanceDB: it streams them (a whole table in one piece
#: cost twice its size again, in memory, to write at a million vectors).
BATCH_ROWS = 65_536


def _stream(data: pa.Table) -> pa.RecordBatchReader:
    """``data`` as a stream of batches, for one write (a stream is read once)."""
    return pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=BATCH_ROWS))


#: Attempts of a commit that a concurrent writer's commit preempted (Lance says "retryable").
COMMIT_ATTEMPTS = 8


def _preempted(error: BaseException) -> bool:
    """Whether a concurrent commit preempted this one: Lance says "retryable", or that it is
    incompatible with it (e.g. a merge over a version that a racing create overwrote). Each
    action recomputes its commit from the latest version, so either is retried."""
    message = str(error)
    return "Retryable commit conflict" in message or "Incompatible transaction" in message


def committed(table: Table, action: Callable[[], T]) -> T:
    """``action`` (Lance commits to ``table``), again on the table's latest version while a
    concurrent writer's commit preempts it: steps writing other partitions of the same
    table, or refreshing its index, at once."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_preempted),
        stop=tenacity.stop_after_attempt(COMMIT_ATTEMPTS),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=2),
        before_sleep=lambda _: table.checkout_latest(),
        reraise=True,
    )
    return retrying(action)


#: Arrow field metadata declaring a column part of a Lance table's primary key: Lance then
#: detects concurrent merges inserting the same new keys, and retries one of them, where it
#: would otherwise commit both (duplicate rows).
PRIMARY_KEY = "lance-schema:unenforced-primary-key"


def _keyed(data: pa.Table, name: str) -> pa.Table:
    """``data`` with ``ROW_KEY`` declared its primary key (not null)."""
    if not set(ROW_KEY) <= set(data.column_names):
        return data
    missing = [column for column in ROW_KEY if data.column(column).null_count]
    if missing:
        raise ConfigurationError(
            f"Rows of the LanceDB table {name!r} have no {' or '.join(missing)}: a partitioned table's rows are "
            f"replaced by ({', '.join(ROW_KEY)}), so give every row both."
        )
    schema = data.schema
    for position, column in enumerate(ROW_KEY, start=1):
        metadata = {PRIMARY_KEY: "true", f"{PRIMARY_KEY}:position": str(position)}
        index = schema.get_field_index(column)
        schema = schema.set(index, schema.field(index).with_nullable(False).with_metadata(metadata))
    return data.cast(schema)


def _fits(data: pa.Table, schema: pa.Schema, dimensions: int | None) -> bool:
    """Whether ``data`` can be merged into a table of ``schema``: the same columns, and
    vectors of its length."""
    if set(data.column_names) != set(schema.names):
        return False
    stored = schema_dimensions(schema)
    return dimensions is None or stored is None or stored == dimensions


def _conformed(data: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """``data`` cast to the table's ``schema`` (same columns, in its order)."""
    if set(data.column_names) != set(schema.names):
        missing, extra = (
            sorted(set(schema.names) - set(data.column_names)),
            sorted(set(data.column_names) - set(schema.names)),
        )
        raise ConfigurationError(
            f"The LanceDB table {name!r} has other columns than this output (missing: {missing}, new: {extra}): "
            "keep the asset's columns, or drop the table and materialize every partition again."
        )
    try:
        return data.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise ConfigurationError(
            f"This output's columns can't be stored in the LanceDB table {name!r} ({error}): keep their types, "
            "or drop the table and materialize every partition again."
        ) from None


def _ordered(data: pa.Table, partitions: Sequence[str] | None) -> pa.Table:
    """``data`` sorted by ``partitions``' order (else the key's), then by row."""
    if "partition_key" not in data.column_names or "row" not in data.column_names or not len(data):
        return data
    keys = data.column("partition_key").to_pylist()
    order = {p: i for i, p in enumerate(partitions or sorted({k for k in keys if k is not None}))}
    rank = pa.array([order.get(k, -1) for k in keys], pa.int64())
    indices = np.lexsort((data.column("row").to_numpy(), rank.to_numpy()))
    return data.take(pa.array(indices))


__all__ = ["INDEX_MIN_ROWS", "IndexSettings", "VectorStore", "Written", "vector_array"]
