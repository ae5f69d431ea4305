"""Each bad input gets one clear error naming the field and the fix; nothing completed is lost."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from llm_assets import (
    LLMAssetsError,
    OpenAIResource,
    PartitionedFilesystemIOManager,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_pca_plot_asset,
)
from llm_assets.assets.frames import embeddings_frame
from llm_assets_tests.conftest import failure_message


def run(assets, resource, instance, run_config=None, **kwargs):
    return dg.materialize(
        assets,
        resources={"openai": resource, "io_manager": PartitionedFilesystemIOManager()},
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
        **kwargs,
    )


def test_unknown_model_fails_with_the_servers_message(server, instance):
    def unknown(handler, body):
        message = f"The model `{body['model']}` does not exist or you do not have access to it."
        handler._json(404, {"error": {"message": message, "type": "invalid_request_error", "code": "model_not_found"}})
        return True

    server.fault = unknown
    answers = build_chat_answers_asset(key="answers", prompt="hello", chat_model="gpt-9")
    result = run([answers], OpenAIResource(base_url=server.base_url), instance)
    assert "HTTP 404" in failure_message(result) and "The model `gpt-9` does not exist" in failure_message(result)
    assert len(server.stats.requests) == 1  # 404 is not retried


def test_empty_prompt_after_filling(server, instance):
    answers = build_chat_answers_asset(key="answers", prompt="{topic}", variables={"topic": "tea"})
    result = run(
        [answers],
        OpenAIResource(base_url=server.base_url),
        instance,
        run_config={"ops": {"answers": {"config": {"variables": {"topic": "  "}}}}},
    )
    assert "The prompt of answers is empty once filled (partition None, row 0)" in failure_message(result)
    assert server.stats.requests == []


def test_placeholder_the_partition_does_not_provide():
    grid = dg.StaticPartitionsDefinition(["a", "b"])
    with pytest.raises(LLMAssetsError, match=r"uses \{captain\} but only .*\{partition_key\}.*can be filled"):
        build_chat_answers_asset(key="answers", partitions_def=grid, prompt="Hi {captain}")


def test_prompt_over_the_models_context(server, instance):
    def too_long(handler, body):
        message = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens."
        handler._json(
            400, {"error": {"message": message, "type": "invalid_request_error", "code": "context_length_exceeded"}}
        )
        return True

    server.fault = too_long
    result = run(
        [build_chat_answers_asset(key="answers", prompt="long")], OpenAIResource(base_url=server.base_url), instance
    )
    assert "maximum context length is 8192 tokens" in failure_message(result) and "row 0" in failure_message(result)


def test_non_text_values_in_the_text_column(server, instance):
    @dg.asset
    def rows() -> pd.DataFrame:
        return pd.DataFrame({"text": ["fine", 42, None]})

    answers = build_chat_answers_asset(key="answers", upstream=rows, text_column="text", prompt="{text}")
    result = run([rows, answers], OpenAIResource(base_url=server.base_url), instance)
    assert "row 1 column 'text' holds 42, not text" in failure_message(result)
    assert server.stats.requests == []


def test_missing_text_column(server, instance):
    @dg.asset
    def rows() -> pd.DataFrame:
        return pd.DataFrame({"body": ["fine"]})

    embeddings = build_embeddings_asset(key="vectors", upstream=rows)
    result = run([rows, embeddings], OpenAIResource(base_url=server.base_url), instance)
    assert "has no column 'answer' (columns: ['body']): pass text_column=" in failure_message(result)


def test_embeddings_of_differing_dimension_in_one_pca(server, instance):
    parts = dg.StaticPartitionsDefinition(["small", "large"])

    @dg.asset(partitions_def=parts)
    def vectors(context: dg.AssetExecutionContext) -> pd.DataFrame:
        dims = 8 if context.partition_key == "small" else 16
        return embeddings_frame(
            [{"partition_key": context.partition_key, "row": i, "text": "t", "model": "m"} for i in range(3)],
            np.ones((3, dims)),
        )

    plot = build_pca_plot_asset(key="map", upstream=vectors)
    for key in ("small", "large"):
        assert run([vectors], OpenAIResource(base_url=server.base_url), instance, partition_key=key).success
    result = run([vectors, plot], OpenAIResource(base_url=server.base_url), instance, selection=[plot.key])
    assert "differ in dimension across partitions ({'small': 8, 'large': 16})" in failure_message(result)


@pytest.mark.parametrize(
    ("field", "value", "bound"), [("temperature", 2.5, "2"), ("temperature", -0.1, "0"), ("max_tokens", 0, "1")]
)
def test_invalid_temperature_and_max_tokens_are_refused_before_sending(server, instance, field, value, bound):
    answers = build_chat_answers_asset(key="answers", prompt="hello")
    result = run(
        [answers],
        OpenAIResource(base_url=server.base_url),
        instance,
        run_config={"ops": {"answers": {"config": {field: value}}}},
    )
    message = failure_message(result)
    assert field in message and f"than or equal to {bound}" in message
    assert server.stats.requests == []


@pytest.mark.parametrize(("field", "value"), [("temperature", 3.0), ("max_tokens", 0)])
def test_invalid_factory_defaults_fail_at_definition(field, value):
    with pytest.raises(LLMAssetsError, match=f"Invalid default for answers: {field}"):
        build_chat_answers_asset(key="answers", prompt="hello", **{field: value})
