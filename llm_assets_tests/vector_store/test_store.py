"""VectorStore: partition-aware writes in one commit, reads, search against numpy's exact
neighbours, the ANN index past its threshold, and one clear error for each bad input."""

import numpy as np
import pyarrow as pa
import pytest

from llm_assets.errors import ConfigurationError
from llm_assets.vector_store.column import frame_of, matrix_of, vector_array
from llm_assets.vector_store.store import IndexSettings, VectorStore


def table(partition: str | None, count: int, dimensions: int = 8, seed: int = 0) -> pa.Table:
    vectors = np.random.default_rng(seed).normal(size=(count, dimensions)).astype(np.float32)
    return pa.table(
        {
            "partition_key": pa.array([partition] * count, pa.string()),
            "row": pa.array(np.arange(count), pa.int64()),
            "text": pa.array([f"{partition}-{seed}-{i}" for i in range(count)], pa.string()),
            "model": pa.array(["m"] * count, pa.string()),
            "embedding": vector_array(vectors),
        }
    )


@pytest.fixture
def store(tmp_path) -> VectorStore:
    return VectorStore(str(tmp_path / "db"), index=IndexSettings(min_rows=0))


def test_a_write_replaces_exactly_its_partitions_rows_in_one_commit(store):
    store.write("t", table("a", 5), ["a"])
    b = table("b'quoted", 7, seed=1)
    store.write("t", b, ["b'quoted"])
    before = store.open("t").version
    written = store.write("t", table("a", 3, seed=2), ["a"])  # fewer rows: rows 3 and 4 go
    assert written.version == before + 1  # one commit
    assert written.rows == 3 + 7 and written.dimensions == 8
    a = store.read("t", ["a"])
    assert a.column("row").to_pylist() == [0, 1, 2] and a.column("text")[0].as_py() == "a-2-0"
    stored = store.read("t", ["b'quoted"])
    assert stored.cast(b.schema).equals(b)  # the other partition untouched
    assert [f.name for f in stored.schema if f.metadata and not f.nullable] == ["partition_key", "row"]  # the key
    assert store.read("t").column("partition_key").to_pylist() == ["a"] * 3 + ["b'quoted"] * 7


def test_a_partition_without_rows_is_emptied_and_none_replaces_the_whole_table(store):
    store.write("t", table("a", 4), ["a"])
    store.write("t", table("b", 4), ["b"])
    assert store.write("t", table("a", 4).slice(0, 0), ["a"]).rows == 4
    assert set(store.read("t").column("partition_key").to_pylist()) == {"b"}
    assert store.write("u", table(None, 3), None).rows == 3
    assert store.write("u", table(None, 2, seed=1), None).rows == 2


def test_the_read_frame_is_the_written_frame(store):
    data = table("a", 6, dimensions=4)
    store.write("t", data, ["a"])
    frame = frame_of(store.read("t", ["a"]))
    assert list(frame.columns) == ["partition_key", "row", "text", "model", "embedding"]
    np.testing.assert_array_equal(matrix_of(frame["embedding"]), matrix_of(data.column("embedding")))


def test_another_dimension_is_one_error_naming_both_and_the_fix_unless_it_replaces_everything(store):
    store.write("t", table("a", 4, dimensions=8), ["a"])
    store.write("t", table("b", 4, dimensions=8), ["b"])
    with pytest.raises(ConfigurationError) as raised:
        store.write("t", table("a", 4, dimensions=16), ["a"])
    message = str(raised.value)
    assert "holds vectors of 8 dimensions, and these have 16" in message and ".drop('t')" in message
    assert store.read("t").num_rows == 8  # nothing written
    store.drop("t")
    assert store.open("t") is None
    store.write("u", table("a", 4, dimensions=8), ["a"])
    assert store.write("u", table("a", 4, dimensions=16), ["a"]).dimensions == 16  # its only partition


def test_search_finds_numpys_exact_neighbours_within_the_partitions_asked(store):
    data = pa.concat_tables([table("a", 50, seed=1), table("b", 50, seed=2)])
    store.write("t", data, ["a", "b"])
    matrix = matrix_of(data.column("embedding"))
    queries = np.random.default_rng(9).normal(size=(3, 8)).astype(np.float32)
    found = store.search("t", queries, k=4, partitions=["b"])
    assert found["query"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and found["rank"].tolist()[:4] == [1, 2, 3, 4]
    assert set(found["partition_key"]) == {"b"} and "embedding" not in found.columns
    unit = matrix[50:] / np.linalg.norm(matrix[50:], axis=1, keepdims=True)
    for number, query in enumerate(queries):
        cosine = 1 - unit @ (query / np.linalg.norm(query))
        exact = np.argsort(cosine)[:4]
        got = found[found["query"] == number]
        assert got["row"].tolist() == exact.tolist()
        np.testing.assert_allclose(got["distance"], cosine[exact], rtol=1e-4, atol=1e-5)


def test_an_index_is_built_past_its_threshold_then_refreshed(tmp_path):
    store = VectorStore(str(tmp_path / "db"), index=IndexSettings(min_rows=600))
    assert store.write("t", table("a", 400), ["a"]).index == {}  # below the threshold: exact search
    written = store.write("t", table("b", 400, seed=1), ["b"])
    assert written.index["action"] == "built" and written.index["index_type"] == "IVF_PQ"
    assert written.index["indexed_rows"] == 800 and written.index["num_sub_vectors"] == 2
    assert written.metadata()["lancedb/index"].data["distance"] == "cosine"
    refreshed = store.write("t", table("c", 100, seed=2), ["c"])
    assert refreshed.index["action"] == "refreshed" and refreshed.index["unindexed_rows"] == 0  # 100 of 900: past 10%
    small = store.write("t", table("d", 40, seed=3), ["d"])  # 40 of 940: searched exactly until more come
    assert small.index["action"] == "new rows searched exactly" and small.index["unindexed_rows"] == 40
    assert store.search("t", matrix_of(table("d", 40, seed=3).column("embedding"))[5], k=1)["text"].tolist() == [
        "d-3-5"
    ]
    optimized = store.optimize("t")  # a maintenance job: every row into the index now
    assert optimized["action"] == "refreshed" and optimized["unindexed_rows"] == 0
    query = matrix_of(table("b", 400, seed=1).column("embedding"))[7]
    assert store.search("t", query, k=1)["text"].tolist() == ["b-1-7"]  # itself, through the index


def test_searching_a_missing_or_empty_table_or_with_other_dimensions_is_one_clear_error(store):
    with pytest.raises(ConfigurationError, match=r"Nothing to search: the LanceDB table 'gone' .* does not exist"):
        store.search("gone", np.ones(8))
    store.write("t", table("a", 3), ["a"])
    store.write("t", table("a", 0), ["a"])
    with pytest.raises(ConfigurationError, match="has no vectors"):
        store.search("t", np.ones(8))
    store.write("t", table("a", 3), ["a"])
    with pytest.raises(ConfigurationError, match="The query vectors have 4 dimensions and the table 't'"):
        store.search("t", np.ones(4))


def test_the_store_never_shows_its_storage_options():
    store = VectorStore("s3://bucket/db", {"aws_secret_access_key": "sk-secret-value"})
    assert "sk-secret" not in repr(store)


def test_an_index_that_cant_be_maintained_is_a_warning_not_a_lost_write(tmp_path, monkeypatch, caplog):
    store = VectorStore(str(tmp_path / "db"), index=IndexSettings(min_rows=10))

    def refuse(*args, **kwargs):
        raise RuntimeError("lance error: the disk is full")

    monkeypatch.setattr(IndexSettings, "config", refuse)
    written = store.write("t", table("a", 40), ["a"])
    assert written.rows == 40 and store.read("t").num_rows == 40  # committed
    assert written.index == {
        "index_type": "IVF_PQ",
        "action": "failed",
        "error": "RuntimeError: lance error: the disk is full",
    }
    assert "could not be brought up to date (RuntimeError: lance error: the disk is full)" in caplog.text


def test_a_text_search_embeds_its_texts_with_the_function_given(store):
    data = table("a", 20)
    store.write("t", data, ["a"])
    matrix = matrix_of(data.column("embedding"))
    asked = []

    def embed(texts):
        asked.append(texts)
        return [matrix[int(text)] for text in texts]

    found = store.search("t", ["3", "11"], k=1, embed=embed)
    assert asked == [["3", "11"]] and found["row"].tolist() == [3, 11]
    assert store.search("t", "5", k=1, embed=embed)["row"].tolist() == [5]
    with pytest.raises(ConfigurationError, match="A text search of 't' needs embed="):
        store.search("t", "5")
    with pytest.raises(ConfigurationError, match="is NaN, infinite or all zeros"):
        store.search("t", np.zeros(8))
