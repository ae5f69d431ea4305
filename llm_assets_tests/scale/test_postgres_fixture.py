"""The throwaway PostgreSQL server holds a Dagster instance: a materialization written
through one instance is read back through another on the same database."""

import dagster as dg

from llm_assets_tests.scale.postgres import dagster_yaml


@dg.asset
def greeting() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"words": 2})


def test_instance_in_postgres(postgres_url: str, tmp_path) -> None:
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    (tmp_path / "dagster.yaml").write_text(dagster_yaml(postgres_url))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        result = dg.materialize([greeting], instance=instance)
        assert result.success
    with dg.DagsterInstance.from_config(str(tmp_path)) as reread:
        event = reread.get_latest_materialization_event(dg.AssetKey("greeting"))
        assert event is not None and event.run_id == result.run_id
        assert event.asset_materialization.metadata["words"].value == 2
        assert reread.get_run_by_id(result.run_id).is_success


def test_dagster_yaml_without_postgres() -> None:
    text = dagster_yaml(None)
    assert "postgres" not in text and "telemetry:\n  enabled: false" in text
