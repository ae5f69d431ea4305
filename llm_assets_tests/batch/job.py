"""The captains' answers and embeddings in batch mode, for tests that kill or interrupt
the process running them: ``python -m llm_assets_tests.batch.job BASE_URL HOME POLL``."""

import sys
from typing import Any

import dagster as dg

from llm_assets import OpenAIResource, PartitionedFilesystemIOManager, build_chat_answers_asset, build_embeddings_asset
from llm_assets.batch import BatchSettings, RequestMode

CAPTAINS = ["Kirk", "Jean-Luc Picard", "Benjamin Lafayette Sisko"]
captains = dg.StaticPartitionsDefinition(CAPTAINS)
answers = build_chat_answers_asset(
    key="answers",
    partitions_def=captains,
    prompt="You are Captain {partition_key}. {question}",
    question="What matters most on a starship?",
    mode=RequestMode.BATCH,
)
embeddings = build_embeddings_asset(key="embeddings", upstream=answers, mode=RequestMode.BATCH)
IMPATIENT = {"max_wait_seconds": 0}  # batch settings: submit, then fail saying the batch still runs
EVERYONE = {"dagster/asset_partition_range_start": CAPTAINS[0], "dagster/asset_partition_range_end": CAPTAINS[-1]}


def resource(base_url: str, poll: float = 0.01, **fields: Any) -> OpenAIResource:
    settings = {"poll_seconds": poll, "max_poll_seconds": max(poll, 0.05), **fields.pop("batch", {})}
    return OpenAIResource(api_key="sk-test", base_url=base_url, batch=BatchSettings(**settings), **fields)


def materialize(
    openai: OpenAIResource, instance: dg.DagsterInstance, assets: tuple = (answers,), **kwargs: Any
) -> dg.ExecuteInProcessResult:
    resources = {"openai": openai, "io_manager": PartitionedFilesystemIOManager()}
    tags = {**EVERYONE, **kwargs.pop("tags", {})}
    return dg.materialize(list(assets), resources=resources, instance=instance, tags=tags, **kwargs)


if __name__ == "__main__":
    base_url, home, poll = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with dg.instance_for_test(temp_dir=home) as instance:
        print("started", flush=True)
        materialize(resource(base_url, poll, cache_dir=f"{home}/cache"), instance)
