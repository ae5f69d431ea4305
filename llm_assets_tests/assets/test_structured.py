"""Structured outputs: typed columns from a Pydantic model or a JSON Schema, every answer
validated, invalid ones asked for again (metered, counted), refusals kept apart, and one
clear error for each bad schema."""

import json
from typing import Any

import dagster as dg
import pandas as pd
import pydantic
import pytest

from llm_assets import ChatTranslator, LLMAssetsError, OpenAIResource, ResponseFormatStyle, build_chat_answers_asset
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.testing import Refusal, count_tokens
from llm_assets_tests.support import CAPTAINS, captains, failure_message, usage_metadata


class Verdict(pydantic.BaseModel):
    quality: str = pydantic.Field(description="The quality a captain needs most.")
    reason: str
    confidence: float
    votes: int
    unanimous: bool
    tags: list[str]


VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"quality": {"type": "string"}, "confidence": {"type": ["number", "null"]}},
    "required": ["quality", "confidence"],
    "additionalProperties": False,
}


def verdict_asset(response_format: Any = Verdict, **kwargs: Any) -> dg.AssetsDefinition:
    return build_chat_answers_asset(
        key="verdicts",
        partitions_def=captains,
        prompt="Captain {partition_key}: {question}",
        question="What matters most?",
        response_format=response_format,
        **kwargs,
    )


def scripted(replies: list[str]) -> Any:
    """A ``server.chat`` answering each prompt with ``replies`` in turn (the last one
    repeats), with usage counted like the scripted server's own."""
    asked: dict[str, int] = {}

    def chat(body: dict[str, Any]) -> tuple[str, list[str], dict[str, Any], list[str]]:
        prompt = "\n".join(m["content"] for m in body["messages"])
        turn = asked[prompt] = asked.get(prompt, -1) + 1
        reply = replies[min(turn, len(replies) - 1)]
        usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": count_tokens(reply)}
        usage["total_tokens"] = sum(usage.values())
        finish = "length" if reply.endswith("…") else "stop"
        return body["model"], [reply], usage, [finish]

    return chat


def test_a_pydantic_model_gives_typed_columns_and_a_strict_schema(server, materialize):
    asset = verdict_asset()
    result = materialize([asset], partitions=CAPTAINS)
    frame = result.output_for_node("verdicts")
    assert str(frame["confidence"].dtype) == "float64" and str(frame["votes"].dtype) == "Int64"
    assert str(frame["unanimous"].dtype) == "boolean" and frame["tags"].map(type).eq(list).all()
    for _, row in frame.iterrows():
        assert Verdict.model_validate_json(row["answer"]).quality == row["quality"]  # raw text kept
    body = server.stats.requests[-1]["body"]
    sent = body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["additionalProperties"] is False
    schema = asset.specs_by_key[dg.AssetKey("verdicts")].metadata["dagster/column_schema"]
    columns = {c.name: c for c in schema.columns}
    assert columns["confidence"].type == "float" and columns["tags"].type == "json"
    assert columns["quality"].description == "The quality a captain needs most."


def test_a_json_schema_dict_is_validated_the_same_way(server, materialize):
    frame = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS).output_for_node("verdicts")
    assert list(frame.columns[-2:]) == ["quality", "confidence"]
    assert str(frame["confidence"].dtype) == "float64"
    assert server.stats.requests[-1]["body"]["response_format"]["json_schema"]["name"] == "verdicts"


def test_invalid_answers_are_asked_again_metered_and_counted(server, materialize, monkeypatch):
    good = json.dumps({"quality": "courage", "confidence": 0.5})
    monkeypatch.setattr(server, "chat", scripted(["not json", '{"quality": 3}', good]))
    result = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS)
    frame = result.output_for_node("verdicts")
    assert (frame["quality"] == "courage").all() and frame["error"].isna().all()
    for event in result.get_asset_materialization_events():
        expected = server.usage_where(lambda b, c=event.partition: f"Captain {c}:" in b["messages"][0]["content"])
        assert expected.calls == 3  # every attempt billed, and metered
        metadata = usage_metadata(event)
        assert metadata.pop("openai.parse_retries") == 2
        assert metadata == expected.to_metadata(PRICES)


@pytest.mark.parametrize("on_error", ["FAIL", "RECORD"])
def test_an_answer_that_never_validates_follows_on_error(server, materialize, monkeypatch, on_error):
    monkeypatch.setattr(server, "chat", scripted(['{"quality": "courage", "confidence": "high"}']))
    config = {"ops": {"verdicts": {"config": {"on_error": on_error, "max_parse_retries": 1}}}}
    result = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS, run_config=config, raise_on_error=False)
    assert server.stats.paths["/v1/chat/completions"] == 2 * len(CAPTAINS)
    if on_error == "FAIL":
        message = failure_message(result)
        assert "Invalid output after 2 attempt(s)" in message and "confidence: 'high' is not of type" in message
        return
    frame = result.output_for_node("verdicts")
    assert frame["error"].str.startswith("Invalid output after 2 attempt(s): the answer does not match").all()
    assert frame["quality"].isna().all()


def test_a_truncated_answer_is_not_asked_again_and_says_to_raise_max_tokens(server, materialize, monkeypatch):
    monkeypatch.setattr(server, "chat", scripted(['{"quality": "cour…']))
    result = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS, raise_on_error=False)
    assert "it was cut at max_tokens (finish_reason 'length'): raise max_tokens" in failure_message(result)
    assert server.stats.paths["/v1/chat/completions"] == len(CAPTAINS)  # the same max_tokens would cut it again


def test_a_refusal_is_recorded_not_asked_again(server, materialize, monkeypatch):
    monkeypatch.setattr(server, "chat", scripted([Refusal("I can't help with that.")]))
    frame = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS).output_for_node("verdicts")
    assert (frame["refusal"] == "I can't help with that.").all() and frame["quality"].isna().all()
    assert server.stats.paths["/v1/chat/completions"] == len(CAPTAINS)


def test_an_invalid_cached_answer_is_asked_again(server, materialize, monkeypatch):
    good = json.dumps({"quality": "courage", "confidence": 0.5})
    monkeypatch.setattr(server, "chat", scripted(["not json", good]))
    config = {"ops": {"verdicts": {"config": {"on_error": "RECORD", "max_parse_retries": 0}}}}
    first = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS, run_config=config)
    assert first.output_for_node("verdicts")["error"].notna().all()
    second = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS, run_config=config)
    assert (second.output_for_node("verdicts")["quality"] == "courage").all()
    assert server.stats.paths["/v1/chat/completions"] == 2 * len(CAPTAINS)


def test_json_object_style_sends_the_schema_in_json_mode(server, materialize):
    resource = OpenAIResource(
        api_key="sk-test", base_url=server.base_url, response_format_style=ResponseFormatStyle.JSON_OBJECT
    )
    frame = materialize([verdict_asset(VERDICT_SCHEMA)], resource, partitions=CAPTAINS).output_for_node("verdicts")
    assert frame["confidence"].notna().all()
    assert server.stats.requests[-1]["body"]["response_format"] == {"type": "json_object", "schema": VERDICT_SCHEMA}


def test_a_server_rejecting_json_schema_gets_a_hint(server, materialize):
    def reject(handler, body):
        handler._json(400, {"error": {"message": "response_format json_schema is not supported", "type": "x"}})
        return True

    server.fault = reject
    result = materialize([verdict_asset(VERDICT_SCHEMA)], partitions=CAPTAINS, raise_on_error=False)
    assert "response_format_style=ResponseFormatStyle.JSON_OBJECT" in failure_message(result)


@pytest.mark.parametrize(
    ("response_format", "problem"),
    [
        ("Verdict", "give a Pydantic model class"),
        ({"type": "string"}, "must be the JSON Schema of an object"),
        ({"type": "object", "properties": {"a": {"type": "nope"}}}, "not a valid JSON Schema"),
        ({**VERDICT_SCHEMA, "required": ["quality"]}, "list confidence in 'required'"),
        ({k: v for k, v in VERDICT_SCHEMA.items() if k != "additionalProperties"}, "'additionalProperties': false"),
        ({**VERDICT_SCHEMA, "properties": {"answer": {"type": "string"}}, "required": ["answer"]}, "rename them"),
    ],
)
def test_a_bad_response_format_is_one_clear_error(response_format, problem):
    with pytest.raises(LLMAssetsError, match="response_format of verdicts") as error:
        verdict_asset(response_format)
    assert problem in str(error.value)


def test_batch_mode_validates_every_line_and_records_invalid_ones(server, materialize, monkeypatch, tmp_path):
    """A batch answers once: a line that does not validate is recorded (RECORD) as an
    invalid output, never asked again; the valid ones get their typed columns."""
    from llm_assets.testing.batches import ScriptedBatchServer
    from llm_assets_tests.batch import job

    good = json.dumps({"quality": "courage", "confidence": 0.5})
    monkeypatch.setattr(server, "chat", lambda body: scripted([good if "Kirk" in str(body) else "{}"])(body))
    config = {"ops": {"verdicts": {"config": {"on_error": "RECORD", "mode": "BATCH"}}}}
    with ScriptedBatchServer(server) as batch_server:
        openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
        result = materialize([verdict_asset(VERDICT_SCHEMA)], openai, partitions=CAPTAINS, run_config=config)
    frame = result.output_for_node("verdicts").set_index("partition_key")
    assert frame.loc["Kirk", "quality"] == "courage" and pd.isna(frame.loc["Kirk", "error"])
    for captain in CAPTAINS[1:]:
        assert "Invalid output: the answer does not match verdicts: top level: 'quality'" in frame.loc[captain, "error"]
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "valid_structured_answers"]
    assert not check.passed and check.metadata["count"].value == 2


def test_pydantic_aliases_name_the_columns(server, materialize):
    class Aliased(pydantic.BaseModel):
        quality: str = pydantic.Field(alias="Quality")
        used: float = pydantic.Field(alias="model_confidence")

    frame = materialize([verdict_asset(Aliased)], partitions=CAPTAINS).output_for_node("verdicts")
    assert frame["Quality"].notna().all() and frame["model_confidence"].notna().all()
    assert "quality" not in frame.columns and frame["model"].eq("gpt-4o-mini-2024-07-18").all()

    class Clash(pydantic.BaseModel):
        used: str = pydantic.Field(alias="model")

    with pytest.raises(LLMAssetsError, match=r"field\(s\) model, which the answers frame already has"):
        verdict_asset(Clash)


def test_a_whole_number_too_big_for_its_column_is_invalid(server, materialize, monkeypatch):
    monkeypatch.setattr(server, "chat", scripted(['{"votes": 123456789012345678901234567890}']))
    schema = {**VERDICT_SCHEMA, "properties": {"votes": {"type": "integer"}}, "required": ["votes"]}
    config = {"ops": {"verdicts": {"config": {"on_error": "RECORD"}}}}
    frame = materialize([verdict_asset(schema)], partitions=CAPTAINS, run_config=config).output_for_node("verdicts")
    assert frame["error"].str.contains("votes: 123456789012345678901234567890 does not fit a 64-bit integer").all()


def test_a_translator_overriding_the_response_format_is_one_clear_error(server, materialize):
    class Moody(ChatTranslator):
        def get_params(self, params, values):
            return {**params, "response_format": {"type": "json_object"}}

    result = materialize([verdict_asset(VERDICT_SCHEMA, translator=Moody())], partitions=CAPTAINS, raise_on_error=False)
    assert "The translator's get_params changed the response_format of verdicts" in failure_message(result)
    assert server.stats.paths["/v1/chat/completions"] == 0


@pytest.mark.parametrize(
    ("response_format", "problem"),
    [
        (
            {
                **VERDICT_SCHEMA,
                "properties": {"crew": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                "required": ["crew"],
            },
            "crew: list size in 'required'; crew: set 'additionalProperties': false",
        ),
        (
            {
                **VERDICT_SCHEMA,
                "properties": {"ranks": {"type": "array", "items": {"type": "object"}}},
                "required": ["ranks"],
            },
            "ranks[]: a free-form object",
        ),
    ],
)
def test_strictness_is_checked_at_every_level(response_format, problem):
    with pytest.raises(LLMAssetsError, match="is not strict") as error:
        verdict_asset(response_format)
    assert problem in str(error.value)


def test_a_pydantic_free_form_dict_is_refused():
    class Tally(pydantic.BaseModel):
        votes: dict[str, int]

    with pytest.raises(LLMAssetsError, match="votes: a free-form object"):
        verdict_asset(Tally)
