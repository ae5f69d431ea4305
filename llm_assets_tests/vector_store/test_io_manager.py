"""LanceDBIOManager under Dagster: a run replaces its partitions' rows, loading gives the
frame the pickle I/O manager gives, the materialization names the table, and bad set-ups
are one clear error."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from llm_assets import LanceDBIOManager, PartitionedFilesystemIOManager, build_embeddings_asset, embedding_matrix
from llm_assets.testing import scripted_vector
from llm_assets_tests.support import CAPTAINS, captains, failure_message, metadata_values, partition_range


@dg.asset(partitions_def=captains, backfill_policy=dg.BackfillPolicy.single_run())
def lines(context: dg.AssetExecutionContext) -> pd.DataFrame:
    frames = [
        pd.DataFrame({"partition_key": pk, "text": [f"{pk} says {i}" for i in range(1 + len(pk) % 3)]})
        for pk in context.partition_keys
    ]
    return pd.concat(frames, ignore_index=True)


def pipeline(store_key: str) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition]:
    embeddings = build_embeddings_asset(
        key="vectors", upstream=lines, text_column="text", dimensions=8, io_manager_key=store_key, checks=False
    )

    @dg.asset(ins={"vectors": dg.AssetIn("vectors")})
    def loaded(vectors: dict) -> pd.DataFrame:
        return pd.concat([vectors[k] for k in CAPTAINS], ignore_index=True)  # {partition: frame}, as pickles load

    return embeddings, loaded


def run(assets, openai_resource, instance, store, partitions, selection=None, **kwargs):
    resources = {"openai": openai_resource, "io_manager": PartitionedFilesystemIOManager(), "vector_store": store}
    return dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        selection=selection,
        tags=partition_range(partitions) if partitions else {},
        **kwargs,
    )


def test_partitions_are_written_in_place_and_load_as_the_pickled_frame(openai_resource, instance, tmp_path):
    store = LanceDBIOManager(uri=str(tmp_path / "lancedb"))
    embeddings, loaded = pipeline("vector_store")
    first = run([lines, embeddings], openai_resource, instance, store, CAPTAINS[:2])
    events = {
        e.partition: metadata_values(e)
        for e in first.get_asset_materialization_events()
        if e.asset_key.path == ["vectors"]
    }
    for values in events.values():
        assert values["lancedb/uri"] == str(tmp_path / "lancedb" / "vectors.lance")
        assert values["dagster/table_name"] == "vectors" and values["dimensions"] == 8
        assert values["lancedb/table_rows"] == 3 and values["lancedb/version"] == 1
    second = run([lines, embeddings], openai_resource, instance, store, CAPTAINS[2:])
    (event,) = [e for e in second.get_asset_materialization_events() if e.asset_key.path == ["vectors"]]
    assert metadata_values(event)["lancedb/version"] == 2 and metadata_values(event)["lancedb/table_rows"] == 4

    stored = store.store(instance)
    kirk_before = stored.read("vectors", ["Kirk"])
    run([lines, embeddings], openai_resource, instance, store, ["Jean-Luc Picard"])  # one partition again
    assert stored.read("vectors", ["Kirk"]).equals(kirk_before)  # the others untouched
    assert stored.read("vectors").num_rows == 4

    from_lance = run(
        [lines, embeddings, loaded], openai_resource, instance, store, None, selection=[loaded]
    ).output_for_node("loaded")
    pickled_embeddings, pickled_loaded = pipeline("io_manager")
    run([lines, pickled_embeddings], openai_resource, instance, store, CAPTAINS)
    from_pickle = run(
        [lines, pickled_embeddings, pickled_loaded], openai_resource, instance, store, None, selection=[pickled_loaded]
    ).output_for_node("loaded")
    pd.testing.assert_frame_equal(from_lance, from_pickle)
    texts = from_lance["text"].tolist()
    np.testing.assert_allclose(embedding_matrix(from_lance), np.stack([scripted_vector(t, 8) for t in texts]))


def test_an_unwritable_uri_fails_at_set_up_naming_the_field(openai_resource, instance, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    embeddings, _ = pipeline("vector_store")
    result = run(
        [lines, embeddings],
        openai_resource,
        instance,
        LanceDBIOManager(uri=str(blocker / "db")),
        CAPTAINS[:1],
        raise_on_error=False,
    )
    assert not result.success
    message = "\n".join(str(e.event_specific_data.error) for e in result.all_events if e.is_failure)
    assert f"LanceDBIOManager `uri` '{blocker / 'db'}' can't be written" in message


def test_a_value_that_is_not_a_frame_is_one_clear_error(openai_resource, instance, tmp_path):
    @dg.asset(io_manager_key="vector_store")
    def numbers() -> list[int]:
        return [1, 2]

    result = run(
        [numbers], openai_resource, instance, LanceDBIOManager(uri=str(tmp_path / "db")), None, raise_on_error=False
    )
    assert "numbers returned a list, and LanceDBIOManager stores DataFrames" in failure_message(result)


def test_a_partitioned_frame_without_its_row_key_is_one_clear_error(openai_resource, instance, tmp_path):
    @dg.asset(partitions_def=captains, io_manager_key="vector_store")
    def notes() -> pd.DataFrame:
        return pd.DataFrame({"partition_key": ["Kirk"], "text": ["x"]})

    result = run(
        [notes], openai_resource, instance, LanceDBIOManager(uri=str(tmp_path / "db")), ["Kirk"], raise_on_error=False
    )
    assert "has no 'row' column: LanceDBIOManager replaces a partition's rows" in failure_message(result)


@pytest.mark.parametrize("uri", [None, "relative/db"])
def test_the_default_database_lives_in_the_instance_storage(uri, openai_resource, instance, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = LanceDBIOManager(uri=uri)
    embeddings, _ = pipeline("vector_store")
    result = run([lines, embeddings], openai_resource, instance, store, CAPTAINS[:1])
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["vectors"]]
    where = instance.storage_directory() + "/lancedb" if uri is None else "relative/db"
    assert metadata_values(event)["lancedb/uri"] == f"{where}/vectors.lance"


def test_another_dimension_is_refused_before_any_request(server, openai_resource, instance, tmp_path):
    store = LanceDBIOManager(uri=str(tmp_path / "lancedb"))
    embeddings, _ = pipeline("vector_store")
    run([lines, embeddings], openai_resource, instance, store, CAPTAINS[:1])
    before = server.stats.paths["/v1/embeddings"]
    config = {"ops": {"vectors": {"config": {"dimensions": 4}}}}
    result = run(
        [lines, embeddings], openai_resource, instance, store, CAPTAINS[1:2], run_config=config, raise_on_error=False
    )
    message = failure_message(result)
    assert "holds vectors of 8 dimensions, and these have 4" in message and ".drop('vectors')" in message
    assert server.stats.paths["/v1/embeddings"] == before  # refused before any request
    replaced = run([lines, embeddings], openai_resource, instance, store, CAPTAINS[:1], run_config=config)
    assert replaced.success  # Kirk's rows were all the table had: the run replaces them
    assert store.store(instance).dimensions("vectors") == 4
