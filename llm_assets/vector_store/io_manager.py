"""``LanceDBIOManager``: DataFrame assets (embeddings above all) as LanceDB tables.

One table per asset (named after its key: ``captains/embeddings`` → ``captains__embeddings``).
A run replaces exactly its partitions' rows, in one Lance commit: a run killed mid-write
leaves the previous version readable, and a re-run leaves one copy of each row. Loading a
partition, or all of them, gives the frame the asset returned, vector column included.
Each materialization records the table's URI, Lance version, rows, dimension and index.

Examples:
    >>> resources = {"vector_store": LanceDBIOManager(uri="data/lancedb")}
    >>> embeddings = build_embeddings_asset(upstream=answers, io_manager_key="vector_store")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, ClassVar

import dagster as dg
import pandas as pd
import pyarrow as pa
from pydantic import Field, PrivateAttr

from llm_assets.errors import ConfigurationError
from llm_assets.vector_store.column import VECTOR_COLUMN, dimensions_of, frame_of
from llm_assets.vector_store.store import INDEX_MIN_ROWS, ROW_KEY, Distance, IndexSettings, IndexType, VectorStore


class LanceDBIOManager(dg.ConfigurableIOManager):
    """Stores each DataFrame asset as one LanceDB table, partition by partition.

    ``uri`` is a local directory or an object-store URI (default: ``lancedb`` in the
    Dagster instance's storage directory); the index fields are ``IndexSettings``'.
    Search a table with ``store`` (``.search(...)``) or the search asset factory.
    """

    uri: str | None = Field(
        default=None,
        description="LanceDB database: a local directory or an object-store URI (s3://, gs://, az://). "
        "Default: 'lancedb' in the Dagster instance's storage directory.",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object-store options as LanceDB takes them (endpoint, region, allow_http…); "
        "leave credentials to the environment (AWS_ACCESS_KEY_ID…).",
    )
    index_min_rows: int = Field(
        default=INDEX_MIN_ROWS, ge=0, description="Build an ANN index once a table has this many rows (0: never)."
    )
    index_type: IndexType = Field(default="IVF_PQ", description="ANN index: IVF_PQ or IVF_HNSW_SQ.")
    distance: Distance = Field(default="cosine", description="Distance of the index and of searches.")
    nprobes: int = Field(default=20, ge=1, description="IVF partitions a search probes.")
    refine_factor: int | None = Field(
        default=10, ge=1, description="Candidates per result re-ranked by exact distance (None: none)."
    )

    _resolved_uri: str | None = PrivateAttr(default=None)

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    #: Read by ``stores_partition_ranges``.
    stores_partition_ranges: ClassVar[bool] = True

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        uri = self.uri or os.path.join(context.instance.storage_directory(), "lancedb")  # type: ignore[union-attr]
        check_writable(uri, self.storage_options)
        self._resolved_uri = uri

    def store(self, instance: dg.DagsterInstance | None = None) -> VectorStore:
        """The ``VectorStore`` this I/O manager writes (outside a run, give the
        ``instance`` whose storage directory holds the default database)."""
        uri = self._resolved_uri or self.uri
        if uri is None:
            instance = instance or dg.DagsterInstance.get()
            uri = os.path.join(instance.storage_directory(), "lancedb")
        settings = IndexSettings(self.index_min_rows, self.index_type, self.distance, self.nprobes, self.refine_factor)
        return VectorStore(uri, self.storage_options, settings)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        name = context.asset_key.to_user_string()
        if not isinstance(obj, pd.DataFrame):
            raise ConfigurationError(
                f"{name} returned a {type(obj).__name__}, and LanceDBIOManager stores DataFrames: give the asset "
                "io_manager_key= of another I/O manager (e.g. PartitionedFilesystemIOManager)."
            )
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        data = to_arrow(obj, partitions, name)
        written = self.store().write(table_name(context.asset_key), data, partitions)
        context.add_output_metadata(written.metadata())

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """The asset's frame; several partitions load as ``{partition_key: frame}`` of
        those that have rows, as Dagster's filesystem I/O managers load them."""
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        data = self.store().read(table_name(context.asset_key), partitions)
        if partitions is None or len(partitions) == 1:
            return frame_of(data)
        return {key: frame_of(part) for key, part in partition_slices(data)}

    def check_dimensions(self, asset_key: dg.AssetKey, dimensions: int | None, partitions: list | None) -> None:
        """Raise (before any request) if vectors of ``dimensions`` can't replace
        ``partitions``' rows of the asset's table (``None`` dimensions, not known before
        embedding: checked when written)."""
        self.store().check_dimensions(table_name(asset_key), dimensions, partitions)


def partition_slices(data: pa.Table) -> list[tuple[str, pa.Table]]:
    """The consecutive runs of rows of one ``partition_key`` in ``data`` (as
    ``VectorStore.read`` orders them), each a zero-copy slice."""
    keys = data.column("partition_key").to_pylist() if len(data) else []
    parts, start = [], 0
    for index in range(1, len(keys) + 1):
        if index == len(keys) or keys[index] != keys[start]:
            parts.append((keys[start], data.slice(start, index - start)))
            start = index
    return parts


def table_name(asset_key: dg.AssetKey) -> str:
    """The table of an asset: its key's parts joined by ``__``.

    Examples:
        >>> table_name(dg.AssetKey(["captains", "embeddings"]))
        'captains__embeddings'
    """
    return "__".join(asset_key.path)


def check_writable(uri: str, storage_options: dict[str, str]) -> None:
    """Raise one error naming ``uri`` if LanceDB can't write a table there (a local
    directory is created if need be): a small probe table is written and dropped, through
    the same client and ``storage_options`` the writes use."""
    store, probe = VectorStore(uri, storage_options), f"llm_assets_probe_{uuid.uuid4().hex}"
    try:
        if "://" not in uri or uri.startswith("file://"):
            os.makedirs(uri.removeprefix("file://"), exist_ok=True)
        store.db.create_table(probe, pa.table({"probe": pa.array([0], pa.int8())}), mode="create")
        store.db.drop_table(probe)
    except Exception as error:  # any failure to reach or write the store (Lance's errors have no common type)
        problem = f"{type(error).__name__}: {getattr(error, 'strerror', None) or str(error)[:200]}"
        raise ConfigurationError(
            f"LanceDBIOManager `uri` {uri!r} can't be written ({problem}): give a directory or object-store URI "
            "this process can write (and its storage_options)."
        ) from None


def to_arrow(frame: pd.DataFrame, partitions: list[str] | None, name: str) -> pa.Table:
    """``frame`` as an Arrow table to store, after checking it names its rows: a
    partitioned asset's frame needs ``partition_key`` and ``row`` columns."""
    if partitions is not None:
        missing = [column for column in ROW_KEY if column not in frame.columns]
        if missing:
            raise ConfigurationError(
                f"The output of {name} has no {', '.join(repr(m) for m in missing)} column: LanceDBIOManager "
                f"replaces a partition's rows by ({', '.join(ROW_KEY)}), so give each row both."
            )
    if VECTOR_COLUMN in frame.columns and dimensions_of(frame[VECTOR_COLUMN]) is None and len(frame):
        raise ConfigurationError(
            f"The {VECTOR_COLUMN!r} column of {name} is not a vector column (fixed-length float32 arrays): "
            "build it with llm_assets' embeddings frames."
        )
    try:
        data = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ConfigurationError(f"The output of {name} can't be stored as a LanceDB table ({error}).") from None
    return without_vector_dtypes(data)


def without_vector_dtypes(data: pa.Table) -> pa.Table:
    """``data`` with pandas' metadata naming its vector columns' dtype as ``object``:
    pandas can't rebuild a parametrised Arrow dtype from its name, so
    ``frame_of`` restores it from the Arrow type instead."""
    metadata = data.schema.pandas_metadata
    if not metadata:
        return data
    vectors = {f.name for f in data.schema if pa.types.is_fixed_size_list(f.type)}
    for column in metadata.get("columns", []):
        if column.get("name") in vectors:
            column["numpy_type"] = "object"
    return data.replace_schema_metadata({**data.schema.metadata, b"pandas": json.dumps(metadata).encode()})
