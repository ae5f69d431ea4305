"""Chat answers, embeddings and PCA plot factories against the scripted server."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from llm_assets import (
    ChatTranslator,
    LLMAssetsError,
    PartitionedFilesystemIOManager,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_llm_pipeline_assets,
    vectors,
)
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.assets.frames import ANSWER_COLUMNS
from llm_assets.testing import scripted_vector
from llm_assets_tests.conftest import failure_message, metadata_values, usage_metadata

CAPTAINS = ["Kirk", "Jean-Luc Picard", "Benjamin Lafayette Sisko"]
captains = dg.StaticPartitionsDefinition(CAPTAINS)
ALL = {"dagster/asset_partition_range_start": CAPTAINS[0], "dagster/asset_partition_range_end": CAPTAINS[-1]}


def resources(openai_resource):
    return {"openai": openai_resource, "io_manager": PartitionedFilesystemIOManager()}


def run(assets, openai_resource, instance, select=None, **kwargs):
    result = dg.materialize(assets, selection=select, resources=resources(openai_resource), instance=instance, **kwargs)
    assert result.success
    return result


def content(body) -> str:
    return "\n".join(m["content"] for m in body["messages"])


def test_chat_answers_per_partition_with_exact_usage(server, openai_resource, instance):
    answers = build_chat_answers_asset(
        key="answers",
        partitions_def=captains,
        system_prompt="You are Captain {partition_key}.",
        prompt="{question}",
        question="Why explore strange new worlds?",
        max_tokens=7,
        temperature=0.2,
    )
    result = run([answers], openai_resource, instance, tags=ALL)
    events = {e.partition: e for e in result.get_asset_materialization_events()}
    assert set(events) == set(CAPTAINS)
    for captain, event in events.items():
        expected = server.usage_where(lambda b, c=captain: f"Captain {c}." in content(b))
        assert expected.calls == 1
        assert usage_metadata(event) == expected.to_metadata(PRICES)
    totals = [usage_metadata(e)["openai.prompt_tokens"] for e in events.values()]
    assert len(set(totals)) == 3  # the captains' names differ in length, so do their prompts

    frame = result.output_for_node("answers")
    assert list(frame.columns) == list(ANSWER_COLUMNS)
    assert sorted(frame["partition_key"]) == sorted(CAPTAINS)
    assert (frame["finish_reason"] == "length").all()  # max_tokens=7 cuts the scripted answer
    assert (frame["completion_tokens"] == 7).all()
    sent = [r["body"] for r in server.stats.requests]
    assert {b["max_tokens"] for b in sent} == {7} and {b["temperature"] for b in sent} == {0.2}
    assert {b["model"] for b in sent} == {"gpt-4o-mini"}
    assert int(frame["total_tokens"].sum()) == server.usage.total_tokens


def test_run_config_overrides_question_model_and_limits(server, openai_resource, instance):
    answers = build_chat_answers_asset(key="answers", prompt="{question}", question="default question")
    config = {
        "ops": {
            "answers": {
                "config": {
                    "question": "launchpad question",
                    "max_tokens": 3,
                    "temperature": 1.5,
                    "chat_model": "gpt-4.1",
                }
            }
        }
    }
    run([answers], openai_resource, instance, run_config=config)
    (request,) = server.stats.requests
    assert request["body"]["messages"] == [{"role": "user", "content": "launchpad question"}]
    assert (request["body"]["max_tokens"], request["body"]["temperature"], request["body"]["model"]) == (
        3,
        1.5,
        "gpt-4.1",
    )


def test_multi_partition_dimensions_fill_the_template(server, openai_resource, instance):
    grid = dg.MultiPartitionsDefinition(
        {
            "captain": dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
            "topic": dg.StaticPartitionsDefinition(["tea", "war"]),
        }
    )
    answers = build_chat_answers_asset(
        key="answers",
        partitions_def=grid,
        prompt="Captain {captain} on {topic} ({mood}).",
        variables={"mood": "calm"},
        backfill_policy=dg.BackfillPolicy.multi_run(),
    )
    key = dg.MultiPartitionKey({"captain": "Picard", "topic": "tea"})
    result = run([answers], openai_resource, instance, partition_key=key)
    assert [r["body"]["messages"][0]["content"] for r in server.stats.requests] == ["Captain Picard on tea (calm)."]
    assert result.output_for_node("answers")["partition_key"].tolist() == [str(key)]


def test_one_request_per_upstream_row_the_volume_case(server, openai_resource, instance):
    @dg.asset(partitions_def=captains)
    def questions(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"question": [f"{context.partition_key} question {i}" for i in range(25)]})

    answers = build_chat_answers_asset(
        key="answers",
        upstream=questions,
        text_column="question",
        prompt="Q{row}: {text}",
        backfill_policy=dg.BackfillPolicy.multi_run(),
    )
    result = run([questions, answers], openai_resource, instance, partition_key="Kirk")
    frame = result.output_for_node("answers")
    assert len(frame) == 25 == server.stats.paths["/v1/chat/completions"]
    assert frame["row"].tolist() == list(range(25))
    assert frame["prompt"].tolist() == [f"Q{i}: Kirk question {i}" for i in range(25)]
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["answers"]]
    assert usage_metadata(event) == server.usage.to_metadata(PRICES)
    assert metadata_values(event)["dagster/row_count"] == 25


def test_chained_prompts_research_points_into_one_report(server, openai_resource, instance):
    points = build_chat_answers_asset(key="points", partitions_def=captains, prompt="Research point on {partition_key}")
    report = build_chat_answers_asset(
        key="report",
        upstream=points,
        one_request_per_row=False,
        prompt="Write a structured report from these notes:\n{text}",
    )
    assert report.partitions_def == captains  # inherited from the upstream asset
    run([points, report], openai_resource, instance, tags=ALL)
    reports = [r["body"] for r in server.stats.requests if "structured report" in content(r["body"])]
    assert len(reports) == 3
    point_answers = [r["body"] for r in server.stats.requests if content(r["body"]).startswith("Research point")]
    assert len(point_answers) == 3
    assert any("Research point on Jean-Luc Picard" in content(b) for b in reports)


def test_embeddings_batch_keep_order_and_store_columnar(server, openai_resource, instance):
    texts = [f"text number {i} " + "word " * (i % 4) for i in range(10)]

    @dg.asset
    def docs() -> pd.DataFrame:
        return pd.DataFrame({"body": texts})

    embeddings = build_embeddings_asset(key="embeddings", upstream=docs, text_column="body", batch_size=4, dimensions=8)
    result = run([docs, embeddings], openai_resource, instance)
    frame = result.output_for_node("embeddings")
    assert server.stats.paths["/v1/embeddings"] == 3  # 4 + 4 + 2 inputs
    assert frame["text"].tolist() == texts
    matrix = vectors(frame)
    assert matrix.dtype == np.float32 and matrix.shape == (10, 8)
    expected = np.stack([scripted_vector(t, 8) for t in texts])
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)
    assert all(frame[c].dtype == np.float32 for c in frame.columns if c.startswith("e") and c[1:].isdigit())
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["embeddings"]]
    assert usage_metadata(event) == server.usage.to_metadata(PRICES)
    assert metadata_values(event)["dimensions"] == 8


def test_pipeline_single_run_backfill_then_plot(server, openai_resource, instance, tmp_path):
    pipeline = build_llm_pipeline_assets(
        key_prefix="crew",
        partitions_def=captains,
        prompt="Captain {partition_key}: {question}",
        question="Why?",
        group_name="crew",
    )
    assets = list(pipeline)
    answers = run(assets, openai_resource, instance, select=[pipeline.answers.key], tags=ALL)
    assert server.stats.paths["/v1/chat/completions"] == 3
    assert len(answers.get_asset_materialization_events()) == 3  # one run, one event per partition
    embeddings = run(assets, openai_resource, instance, select=[pipeline.embeddings.key], tags=ALL)
    for event in embeddings.get_asset_materialization_events():
        expected = server.usage_where(lambda b, p=event.partition: "input" in b and p in b["input"][0])
        assert usage_metadata(event) == expected.to_metadata(PRICES)
    plot = run(assets, openai_resource, instance, select=[pipeline.plot.key])
    frame = plot.output_for_node("crew__answer_map")
    assert sorted(frame["label"]) == sorted(CAPTAINS)
    (event,) = plot.get_asset_materialization_events()
    meta = metadata_values(event)
    assert meta["plot"].startswith("![crew/answer_map](data:image/png;base64,")
    with open(meta["plot_path"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert 0 < meta["explained_variance_pc1"] <= 1 and meta["explained_variance_pc1"] >= meta["explained_variance_pc2"]
    assert len(meta["coordinates"].records) == 3


def test_plot_skips_missing_partitions_with_a_log_line(server, openai_resource, instance, caplog):
    pipeline = build_llm_pipeline_assets(partitions_def=captains, prompt="Captain {partition_key}")
    assets = list(pipeline)
    two = {
        "dagster/asset_partition_range_start": CAPTAINS[0],
        "dagster/asset_partition_range_end": CAPTAINS[1],
    }
    run(assets, openai_resource, instance, select=[pipeline.answers.key, pipeline.embeddings.key], tags=two)
    result = run(assets, openai_resource, instance, select=[pipeline.plot.key])
    assert len(result.output_for_node("answer_map")) == 2
    logs = [e.message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any("Skipping 1 partition(s)" in m and CAPTAINS[2] in m for m in logs)


def test_plot_with_fewer_than_two_points_is_a_clear_error(server, openai_resource, instance):
    pipeline = build_llm_pipeline_assets(partitions_def=captains, prompt="Captain {partition_key}")
    assets = list(pipeline)
    run(
        assets,
        openai_resource,
        instance,
        select=[pipeline.answers.key, pipeline.embeddings.key],
        partition_key=CAPTAINS[0],
    )
    result = dg.materialize(
        assets,
        selection=[pipeline.plot.key],
        resources=resources(openai_resource),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert "PCA needs at least 2 embeddings, got 1" in failure_message(result)


def test_empty_question_is_a_clear_error_and_sends_nothing(server, openai_resource, instance):
    answers = build_chat_answers_asset(key="answers", prompt="{question}")
    result = dg.materialize(
        [answers],
        resources=resources(openai_resource),
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"answers": {"config": {"question": "  "}}}},
    )
    assert not result.success
    assert "Run config 'question' of answers is empty" in failure_message(result)
    assert server.stats.requests == []


def test_unknown_placeholder_fails_at_definition_time():
    with pytest.raises(LLMAssetsError, match=r"\{captian\}.*rename the placeholder"):
        build_chat_answers_asset(key="answers", partitions_def=captains, prompt="Hello {captian}")


def test_single_run_on_the_default_io_manager_is_refused_before_sending(server, openai_resource, instance):
    answers = build_chat_answers_asset(key="answers", partitions_def=captains, prompt="Captain {partition_key}")
    result = dg.materialize(
        [answers], resources={"openai": openai_resource}, instance=instance, raise_on_error=False, tags=ALL
    )
    assert not result.success
    assert "PartitionedFilesystemIOManager" in failure_message(result)
    assert server.stats.requests == []


def test_io_manager_writes_where_the_default_one_reads(server, openai_resource, instance):
    answers = build_chat_answers_asset(key="answers", partitions_def=captains, prompt="Captain {partition_key}")

    @dg.asset(partitions_def=captains)
    def lengths(answers: pd.DataFrame) -> int:
        return int(answers["answer"].str.len().sum())

    run([answers], openai_resource, instance, tags=ALL)
    result = dg.materialize(
        [answers, lengths],
        selection=[lengths.key],
        instance=instance,
        resources={"openai": openai_resource, "io_manager": dg.FilesystemIOManager()},
        partition_key=CAPTAINS[1],
    )
    assert result.output_for_node("lengths") > 0


def test_translator_customises_messages_params_and_rows(server, openai_resource, instance):
    class Structured(ChatTranslator):
        def get_messages(self, prompt, system_prompt, values):
            shot = [{"role": "user", "content": "Example?"}, {"role": "assistant", "content": "An example."}]
            return shot + super().get_messages(prompt, system_prompt, values)

        def get_params(self, params, values):
            return {
                **params,
                "seed": len(values["partition_key"]),
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"properties": {"verdict": {"type": "string"}}}},
                },
            }

        def get_record(self, record, response):
            return {**record, "verdict_length": len(record["answer"] or "")}

    answers = build_chat_answers_asset(
        key="answers",
        partitions_def=captains,
        prompt="Judge {partition_key}",
        translator=Structured(),
        backfill_policy=dg.BackfillPolicy.multi_run(),
    )
    frame = run([answers], openai_resource, instance, partition_key="Kirk").output_for_node("answers")
    (request,) = server.stats.requests
    assert [m["content"] for m in request["body"]["messages"]] == ["Example?", "An example.", "Judge Kirk"]
    assert request["body"]["seed"] == 4 and request["body"]["response_format"]["type"] == "json_schema"
    assert frame["answer"].iloc[0].startswith('{"verdict": ')
    assert list(frame.columns)[-1] == "verdict_length" and frame["verdict_length"].iloc[0] > 10
