"""The ``embedding`` column: one Arrow float32 vector per row, kept through the pickle I/O
manager and DuckDB (``FLOAT[n]``); frames stored with one column per dimension (``e0 …``)
still read; and data versions follow the vectors' values."""

import pickle

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from dagster_duckdb_pandas import DuckDBPandasIOManager

from llm_assets import build_embeddings_asset, build_pca_plot_asset, embedding_matrix
from llm_assets.assets.frames import embeddings_frame
from llm_assets.assets.versions import frame_version
from llm_assets.testing import endpoints, scripted_vector
from llm_assets_tests.support import CAPTAINS, captains

TEXTS = ["Boldly go.", "Make it so.", "It's a faith thing.", "Engage.", "Red alert."]
COLUMNS = ["partition_key", "row", "text", "model", "embedding"]
DIMENSIONS = 8


@dg.asset
def docs() -> pd.DataFrame:
    return pd.DataFrame({"body": TEXTS})


def embeddings_of(upstream, **options) -> dg.AssetsDefinition:
    return build_embeddings_asset(
        key="embeddings", upstream=upstream, text_column="body", dimensions=DIMENSIONS, **options
    )


def vector_dtype(dimensions: int = DIMENSIONS) -> pd.ArrowDtype:
    return pd.ArrowDtype(pa.list_(pa.float32(), dimensions))


def served(texts) -> np.ndarray:
    return np.stack([scripted_vector(t, DIMENSIONS) for t in texts])


def old_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as embeddings frames were stored before the ``embedding`` column: one
    float32 column per dimension, ``e0 … e{n-1}``."""
    matrix = embedding_matrix(frame)
    columns = pd.DataFrame(matrix, columns=[f"e{i}" for i in range(matrix.shape[1])], index=frame.index)
    return pd.concat([frame.drop(columns="embedding"), columns], axis=1)


def test_the_embeddings_asset_outputs_one_arrow_vector_column(server, materialize):
    frame = materialize([docs, embeddings_of(docs)]).output_for_node("embeddings")
    assert list(frame.columns) == COLUMNS
    assert frame["embedding"].dtype == vector_dtype()
    matrix = embedding_matrix(frame)
    assert matrix.dtype == np.float32 and matrix.shape == (len(TEXTS), DIMENSIONS)
    np.testing.assert_array_equal(matrix, served(TEXTS))
    np.testing.assert_array_equal(np.asarray(frame["embedding"].iloc[1], np.float32), served(TEXTS)[1])


def test_the_vectors_come_back_the_same_from_the_pickle_io_manager(server, materialize, instance):
    """Stored one file per partition by a single-run backfill, loaded by a downstream asset."""

    @dg.asset(partitions_def=captains, backfill_policy=dg.BackfillPolicy.single_run())
    def notes(context: dg.AssetExecutionContext) -> pd.DataFrame:
        rows = [(pk, f"{pk}: {text}") for pk in context.partition_keys for text in TEXTS[:2]]
        return pd.DataFrame(rows, columns=["partition_key", "body"])

    loaded: dict = {}

    @dg.asset(ins={"vectors": dg.AssetIn("embeddings", partition_mapping=dg.AllPartitionMapping())})
    def downstream(vectors: dict) -> None:
        loaded.update(vectors)

    embeddings = embeddings_of(notes)
    written = materialize([notes, embeddings], partitions=CAPTAINS).output_for_node("embeddings")
    materialize([notes, embeddings, downstream], selection=[downstream.key])
    assert sorted(loaded) == sorted(CAPTAINS)
    for pk, frame in loaded.items():
        assert list(frame.columns) == COLUMNS and frame["embedding"].dtype == vector_dtype()
        expected = written[written["partition_key"] == pk]
        np.testing.assert_array_equal(embedding_matrix(frame), embedding_matrix(expected))
        np.testing.assert_array_equal(embedding_matrix(frame), served(frame["text"]))
    stored = pd.read_pickle(f"{instance.storage_directory()}/embeddings/{CAPTAINS[0]}")
    assert stored["embedding"].dtype == vector_dtype()


def test_a_frame_stored_with_one_column_per_dimension_reads_the_same():
    records = [{"partition_key": "a", "row": i, "text": t, "model": "m"} for i, t in enumerate(TEXTS[:3])]
    frame = embeddings_frame(records, served(TEXTS[:3])[:, :4])
    old = old_frame(frame)
    assert list(old.columns) == ["partition_key", "row", "text", "model", "e0", "e1", "e2", "e3"]
    old = pickle.loads(pickle.dumps(old))  # as an I/O manager stored it
    assert embedding_matrix(old).dtype == np.float32
    np.testing.assert_array_equal(embedding_matrix(old), embedding_matrix(frame))


def test_the_map_draws_partitions_stored_before_the_vector_column(server, materialize, instance):
    """One partition re-materialized (``embedding``), one stored before (``e0 …``): one map,
    the same as when both are new."""
    parts = dg.StaticPartitionsDefinition(["before", "after"])

    @dg.asset(partitions_def=parts)
    def vectors(context: dg.AssetExecutionContext) -> pd.DataFrame:
        texts = [f"{context.partition_key} {t}" for t in TEXTS]
        records = [
            {"partition_key": context.partition_key, "row": i, "text": t, "model": "m"} for i, t in enumerate(texts)
        ]
        return embeddings_frame(records, served(texts))

    plot = build_pca_plot_asset(key="map", upstream=vectors, label_column="text")
    for pk in ("before", "after"):
        materialize([vectors], partition_key=pk)
    both_new = materialize([vectors, plot], selection=[plot.key]).output_for_node("map")

    path = f"{instance.storage_directory()}/vectors/before"
    new = pd.read_pickle(path)
    old_frame(new).to_pickle(path)  # what an earlier version of the library wrote
    assert "embedding" not in pd.read_pickle(path).columns
    mixed = materialize([vectors, plot], selection=[plot.key]).output_for_node("map")
    assert len(mixed) == 2 * len(TEXTS)
    pd.testing.assert_frame_equal(mixed, both_new)


def test_duckdb_stores_the_vectors_as_a_float_array_and_the_map_reads_them_back(openai_resource, instance, tmp_path):
    database = tmp_path / "vectors.duckdb"
    embeddings = embeddings_of(docs)
    plot = build_pca_plot_asset(key="answer_map", upstream=embeddings, label_column="text")
    resources = {"openai": openai_resource, "io_manager": DuckDBPandasIOManager(database=str(database))}
    result = dg.materialize([docs, embeddings, plot], resources=resources, instance=instance)
    assert result.success
    assert sorted(result.output_for_node("answer_map")["label"]) == sorted(TEXTS)

    with duckdb.connect(str(database), read_only=True) as connection:
        columns = connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'embeddings' ORDER BY ordinal_position"
        ).fetchall()
        stored = connection.execute("SELECT * FROM public.embeddings ORDER BY row").fetchdf()
    assert [name for name, _ in columns] == COLUMNS
    assert dict(columns)["embedding"] == f"FLOAT[{DIMENSIONS}]"
    assert stored["embedding"].dtype == object  # DuckDB gives a FLOAT[n] back as numpy arrays
    np.testing.assert_array_equal(embedding_matrix(stored), served(TEXTS))


def test_a_partitioned_duckdb_table_loads_back_into_the_map(openai_resource, instance, tmp_path):
    @dg.asset(partitions_def=captains, metadata={"partition_expr": "partition_key"})
    def notes(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame(
            {"partition_key": context.partition_key, "body": [f"{context.partition_key} {t}" for t in TEXTS[:2]]}
        )

    embeddings = embeddings_of(notes)
    plot = build_pca_plot_asset(key="answer_map", upstream=embeddings)
    resources = {"openai": openai_resource, "io_manager": DuckDBPandasIOManager(database=str(tmp_path / "v.duckdb"))}
    for pk in CAPTAINS:
        dg.materialize([notes, embeddings], resources=resources, instance=instance, partition_key=pk)
    points = dg.materialize([notes, embeddings, plot], resources=resources, instance=instance, selection=[plot.key])
    assert sorted(points.output_for_node("answer_map")["label"]) == sorted(CAPTAINS * 2)


def test_the_data_version_follows_the_vectors_values():
    records = [{"partition_key": None, "row": i, "text": t, "model": "m"} for i, t in enumerate(TEXTS)]
    matrix = served(TEXTS)
    version = frame_version(embeddings_frame(records, matrix))
    assert frame_version(embeddings_frame(records, matrix.copy())) == version
    changed = matrix.copy()
    changed[3, 5] = np.nextafter(changed[3, 5], np.float32(np.inf))  # one float, by its smallest step
    assert frame_version(embeddings_frame(records, changed)) != version
    assert frame_version(embeddings_frame(records, matrix).iloc[1:]) == frame_version(
        embeddings_frame(records[1:], matrix[1:])
    )  # a slice hashes its own rows


def test_re_embedding_to_the_same_vectors_keeps_the_data_version(server, materialize, monkeypatch):
    embeddings = embeddings_of(docs)
    refresh = {"ops": {"embeddings": {"config": {"cache": "REFRESH"}}}}

    def data_version(**kwargs) -> str:
        result = materialize([docs, embeddings], selection=[embeddings.key], **kwargs)
        (event,) = result.get_asset_materialization_events()
        return event.materialization.tags["dagster/data_version"]

    materialize([docs])
    first = data_version()
    sent = server.stats.paths["/v1/embeddings"]
    assert data_version(run_config=refresh) == first  # asked again, the same vectors
    assert server.stats.paths["/v1/embeddings"] > sent
    real = endpoints.scripted_vector

    def nudged(text: str, dimensions: int) -> np.ndarray:
        vector = real(text, dimensions)
        if text == TEXTS[2]:
            vector[0] = np.nextafter(vector[0], np.float32(np.inf))
        return vector

    monkeypatch.setattr(endpoints, "scripted_vector", nudged)
    assert data_version(run_config=refresh) != first
