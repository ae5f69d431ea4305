"""PartitionedFilesystemIOManager: single-run backfills stored one file per partition,
readable by Dagster's default filesystem I/O manager."""

import dagster as dg
import pandas as pd

from llm_assets import build_chat_answers_asset
from llm_assets.assets.io_manager import PartitionedFilesystemIOManager, stores_partition_ranges
from llm_assets_tests.support import CAPTAINS, captains, failure_message, partition_range


def test_which_io_managers_store_partition_ranges(instance):
    context = dg.build_init_resource_context(instance=instance)
    assert stores_partition_ranges(PartitionedFilesystemIOManager().create_io_manager(context))
    assert not stores_partition_ranges(dg.FilesystemIOManager().create_io_manager(context))
    assert stores_partition_ranges(object())  # database I/O managers split by partition_expr


def test_single_run_on_the_default_io_manager_is_refused_before_sending(server, openai_resource, instance):
    answers = build_chat_answers_asset(key="answers", partitions_def=captains, prompt="Captain {partition_key}")
    result = dg.materialize(
        [answers],
        resources={"openai": openai_resource},
        instance=instance,
        raise_on_error=False,
        tags=partition_range(CAPTAINS),
    )
    assert not result.success
    assert "PartitionedFilesystemIOManager" in failure_message(result)
    assert server.stats.requests == []


def test_io_manager_writes_where_the_default_one_reads(server, materialize, openai_resource, instance):
    answers = build_chat_answers_asset(key="answers", partitions_def=captains, prompt="Captain {partition_key}")

    @dg.asset(partitions_def=captains)
    def lengths(answers: pd.DataFrame) -> int:
        return int(answers["answer"].str.len().sum())

    stored = materialize([answers], partitions=CAPTAINS)
    for event in stored.get_asset_materialization_events():  # each partition names its own file
        path = event.materialization.metadata["path"].value
        assert (
            path.endswith(f"/answers/{event.partition}")
            and pd.read_pickle(path)["partition_key"].eq(event.partition).all()
        )
    result = dg.materialize(
        [answers, lengths],
        selection=[lengths.key],
        instance=instance,
        resources={"openai": openai_resource, "io_manager": dg.FilesystemIOManager()},
        partition_key=CAPTAINS[1],
    )
    assert result.output_for_node("lengths") > 0
