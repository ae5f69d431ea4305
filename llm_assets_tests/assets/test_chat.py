"""build_chat_answers_asset: prompts filled per partition and row, requests planned without
Dagster, exact usage per partition, and one clear error for each bad input."""

import dagster as dg
import pandas as pd
import pytest

from llm_assets import ChatTranslator, LLMAssetsError, build_chat_answers_asset
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.assets import ChatPrompts, plan_chat_requests
from llm_assets.assets.frames import ANSWER_COLUMNS
from llm_assets.assets.prompts import PromptTemplate
from llm_assets.batch import RequestMode
from llm_assets_tests.support import CAPTAINS, captains, failure_message, metadata_values, usage_metadata


def content(body) -> str:
    return "\n".join(m["content"] for m in body["messages"])


def test_plan_fills_templates_per_partition_and_row_without_dagster():
    grid = dg.MultiPartitionsDefinition(
        {"captain": dg.StaticPartitionsDefinition(["Kirk"]), "topic": dg.StaticPartitionsDefinition(["tea"])}
    )
    prompts = ChatPrompts(
        dg.AssetKey("answers"),
        PromptTemplate("{captain} on {topic}, row {row}: {text} {question}"),
        PromptTemplate("You are {captain}."),
        grid,
    )
    key = "Kirk|tea"
    rows = {key: [{"text": "first", "row": 0}, {"text": "second", "row": 1}]}
    requests = plan_chat_requests(prompts, rows, {"question": "Why?"}, {"model": "m", "max_tokens": 5})
    assert [r.prompt for r in requests] == ["Kirk on tea, row 0: first Why?", "Kirk on tea, row 1: second Why?"]
    assert requests[1].messages[0] == {"role": "system", "content": "You are Kirk."}
    assert [(r.partition_key, r.row) for r in requests] == [(key, 0), (key, 1)]
    assert requests[0].params == {"model": "m", "max_tokens": 5}


def test_chat_answers_per_partition_with_exact_usage(server, materialize):
    answers = build_chat_answers_asset(
        key="answers",
        partitions_def=captains,
        system_prompt="You are Captain {partition_key}.",
        prompt="{question}",
        question="Why explore strange new worlds?",
        max_tokens=7,
        temperature=0.2,
    )
    result = materialize([answers], partitions=CAPTAINS)
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


def test_run_config_overrides_question_model_and_limits(server, materialize):
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
    materialize([answers], run_config=config)
    (request,) = server.stats.requests
    assert request["body"]["messages"] == [{"role": "user", "content": "launchpad question"}]
    assert (request["body"]["max_tokens"], request["body"]["temperature"], request["body"]["model"]) == (
        3,
        1.5,
        "gpt-4.1",
    )


def test_multi_partition_dimensions_fill_the_template(server, materialize):
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
    result = materialize([answers], partition_key=key)
    assert [r["body"]["messages"][0]["content"] for r in server.stats.requests] == ["Captain Picard on tea (calm)."]
    assert result.output_for_node("answers")["partition_key"].tolist() == [str(key)]


def test_one_request_per_upstream_row_the_volume_case(server, materialize):
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
    result = materialize([questions, answers], partition_key="Kirk")
    frame = result.output_for_node("answers")
    assert len(frame) == 25 == server.stats.paths["/v1/chat/completions"]
    assert frame["row"].tolist() == list(range(25))
    assert frame["prompt"].tolist() == [f"Q{i}: Kirk question {i}" for i in range(25)]
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["answers"]]
    assert usage_metadata(event) == server.usage.to_metadata(PRICES)
    assert metadata_values(event)["dagster/row_count"] == 25


def test_chained_prompts_research_points_into_one_report(server, materialize):
    points = build_chat_answers_asset(key="points", partitions_def=captains, prompt="Research point on {partition_key}")
    report = build_chat_answers_asset(
        key="report",
        upstream=points,
        one_request_per_row=False,
        prompt="Write a structured report from these notes:\n{text}",
    )
    assert report.partitions_def == captains  # inherited from the upstream asset
    materialize([points, report], partitions=CAPTAINS)
    reports = [r["body"] for r in server.stats.requests if "structured report" in content(r["body"])]
    assert len(reports) == 3
    point_answers = [r["body"] for r in server.stats.requests if content(r["body"]).startswith("Research point")]
    assert len(point_answers) == 3
    assert any("Research point on Jean-Luc Picard" in content(b) for b in reports)


def test_translator_customises_messages_params_and_rows(server, materialize):
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
    frame = materialize([answers], partition_key="Kirk").output_for_node("answers")
    (request,) = server.stats.requests
    assert [m["content"] for m in request["body"]["messages"]] == ["Example?", "An example.", "Judge Kirk"]
    assert request["body"]["seed"] == 4 and request["body"]["response_format"]["type"] == "json_schema"
    assert frame["answer"].iloc[0].startswith('{"verdict": ')
    assert list(frame.columns)[-1] == "verdict_length" and frame["verdict_length"].iloc[0] > 10


def test_empty_question_is_a_clear_error_and_sends_nothing(server, materialize):
    answers = build_chat_answers_asset(key="answers", prompt="{question}")
    config = {"ops": {"answers": {"config": {"question": "  "}}}}
    result = materialize([answers], raise_on_error=False, run_config=config)
    assert not result.success
    assert "Run config 'question' of answers is empty" in failure_message(result)
    assert server.stats.requests == []


def test_unknown_placeholder_fails_at_definition_time():
    with pytest.raises(LLMAssetsError, match=r"\{captian\}.*rename the placeholder"):
        build_chat_answers_asset(key="answers", partitions_def=captains, prompt="Hello {captian}")


def test_empty_prompt_after_filling(server, materialize):
    answers = build_chat_answers_asset(key="answers", prompt="{topic}", variables={"topic": "tea"})
    result = materialize(
        [answers],
        raise_on_error=False,
        run_config={"ops": {"answers": {"config": {"variables": {"topic": "  "}}}}},
    )
    assert "The prompt of answers is empty once filled (row 0)" in failure_message(result)
    assert server.stats.requests == []


def test_placeholder_the_partition_does_not_provide():
    grid = dg.StaticPartitionsDefinition(["a", "b"])
    with pytest.raises(LLMAssetsError, match=r"uses \{captain\} but only .*\{partition_key\}.*can be filled"):
        build_chat_answers_asset(key="answers", partitions_def=grid, prompt="Hi {captain}")


def test_unknown_model_fails_with_the_servers_message(server, materialize):
    def unknown(handler, body):
        message = f"The model `{body['model']}` does not exist or you do not have access to it."
        handler._json(404, {"error": {"message": message, "type": "invalid_request_error", "code": "model_not_found"}})
        return True

    server.fault = unknown
    answers = build_chat_answers_asset(key="answers", prompt="hello", chat_model="gpt-9")
    result = materialize(
        [answers],
        raise_on_error=False,
    )
    assert "HTTP 404" in failure_message(result) and "The model `gpt-9` does not exist" in failure_message(result)
    assert len(server.stats.requests) == 1  # 404 is not retried


def test_prompt_over_the_models_context(server, materialize):
    def too_long(handler, body):
        message = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens."
        handler._json(
            400, {"error": {"message": message, "type": "invalid_request_error", "code": "context_length_exceeded"}}
        )
        return True

    server.fault = too_long
    result = materialize(
        [build_chat_answers_asset(key="answers", prompt="long")],
        raise_on_error=False,
    )
    assert "maximum context length is 8192 tokens" in failure_message(result) and "row 0" in failure_message(result)


def test_non_text_values_in_the_text_column(server, materialize):
    @dg.asset
    def rows() -> pd.DataFrame:
        return pd.DataFrame({"text": ["fine", 42, None]})

    answers = build_chat_answers_asset(key="answers", upstream=rows, text_column="text", prompt="{text}")
    result = materialize(
        [rows, answers],
        raise_on_error=False,
    )
    assert "row 1 column 'text' holds 42, not text" in failure_message(result)
    assert server.stats.requests == []


@pytest.mark.parametrize(
    ("field", "value", "bound"), [("temperature", 2.5, "2"), ("temperature", -0.1, "0"), ("max_tokens", 0, "1")]
)
def test_invalid_temperature_and_max_tokens_are_refused_before_sending(server, materialize, field, value, bound):
    answers = build_chat_answers_asset(key="answers", prompt="hello")
    result = materialize(
        [answers],
        raise_on_error=False,
        run_config={"ops": {"answers": {"config": {field: value}}}},
    )
    message = failure_message(result)
    assert field in message and f"than or equal to {bound}" in message
    assert server.stats.requests == []


@pytest.mark.parametrize(("field", "value"), [("temperature", 3.0), ("max_tokens", 0)])
def test_invalid_factory_defaults_fail_at_definition(field, value):
    with pytest.raises(LLMAssetsError, match=f"Invalid default for answers: {field}"):
        build_chat_answers_asset(key="answers", prompt="hello", **{field: value})


@pytest.mark.parametrize("mode", ["batch", "BATCH", RequestMode.BATCH])
def test_a_mode_given_as_a_string_is_the_run_configs_default(mode):
    """``mode="batch"`` (as YAML or an environment variable gives it) is the enum's value
    (Dagster's config shows an enum by its name)."""
    asset = build_chat_answers_asset(key="answers", prompt="{question}", question="Why?", mode=mode)
    assert asset.op.config_schema.config_type.fields["mode"].default_value == "BATCH"
