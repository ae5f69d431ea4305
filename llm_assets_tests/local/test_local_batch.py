"""Batch mode offline: the captains on the embedded model's own Files and Batches API."""

import importlib

import dagster as dg
import numpy as np
import pytest

from llm_assets import embedding_matrix
from llm_assets.local import CHAT_MODEL, LocalOpenAIResource
from llm_assets_tests.support import usage_metadata

pytestmark = pytest.mark.slow


def run_config(key: dg.AssetKey, mode: str, cache: str) -> dict:
    config = {"mode": mode, "cache": cache, **({"temperature": 0.0} if key.path[-1] == "answers" else {})}
    return {"ops": {key.to_python_identifier(): {"config": config}}}


def test_captains_in_batch_mode_match_live_mode(instance):
    example = importlib.reload(importlib.import_module("llm_assets.examples.captains"))
    resources = example.defs.resources
    assert isinstance(resources["openai"], LocalOpenAIResource)
    tags = {
        "dagster/asset_partition_range_start": example.CAPTAINS[0],
        "dagster/asset_partition_range_end": example.CAPTAINS[-1],
    }
    pipeline = example.pipeline
    frames = {}
    for mode, cache in (("LIVE", "OFF"), ("BATCH", "USE")):
        answers, embeddings = (
            dg.materialize(
                list(pipeline),
                selection=[key],
                resources=resources,
                instance=instance,
                tags=tags,
                run_config=run_config(key, mode, cache),
            )
            for key in (pipeline.answers.key, pipeline.embeddings.key)
        )
        frames[mode] = (
            answers.output_for_node("captains__answers"),
            embeddings.output_for_node("captains__embeddings"),
        )
        if mode == "BATCH":
            for result, model in ((answers, CHAT_MODEL), (embeddings, None)):
                for event in result.get_asset_materialization_events():
                    recorded = usage_metadata(event)
                    assert recorded["openai.batch_requests"] == 1
                    assert recorded["openai.cost_usd"] == 0.0  # the local model is free, in batch mode too
                    if model:
                        assert recorded[f"openai.{model}.batch_requests"] == 1
    (live_answers, live_vectors), (batch_answers, batch_vectors) = frames["LIVE"], frames["BATCH"]
    columns = ["partition_key", "row", "prompt", "answer", "model", "finish_reason", "total_tokens"]
    assert batch_answers[columns].equals(live_answers[columns])  # same table, same order
    assert batch_answers["latency_s"].isna().all()  # a batch has no per-request latency
    np.testing.assert_allclose(embedding_matrix(batch_vectors), embedding_matrix(live_vectors), atol=1e-6)
    plot = dg.materialize(list(pipeline), selection=[pipeline.plot.key], resources=resources, instance=instance)
    assert plot.success
