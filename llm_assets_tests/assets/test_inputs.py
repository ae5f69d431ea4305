"""What the factories read: empty partitions materialize as empty, and every bad upstream
or run config fails with one error naming the field, before any request is sent."""

import logging
import re

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from llm_assets import LLMAssetsError, build_chat_answers_asset, build_embeddings_asset, embedding_matrix
from llm_assets.assets.frames import ANSWER_COLUMNS, EMBEDDING_COLUMNS, split_output
from llm_assets.assets.prompts import MAX_PARTITION_KEY_CHARS, partition_values
from llm_assets.assets.upstream import load_texts
from llm_assets_tests.support import CAPTAINS, captains, event_of, failure_message, metadata_values


def upstream_of(value) -> dg.AssetsDefinition:
    @dg.asset(key="texts")
    def texts() -> object:
        return value

    return texts


def answers_of(upstream, **kwargs) -> dg.AssetsDefinition:
    return build_chat_answers_asset(key="answers", upstream=upstream, text_column="text", prompt="{text}", **kwargs)


def embeddings_of(upstream) -> dg.AssetsDefinition:
    return build_embeddings_asset(key="embeddings", upstream=upstream, text_column="text")


@dg.asset(partitions_def=captains, backfill_policy=dg.BackfillPolicy.single_run())
def notes(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """Two notes per captain, none for Kirk."""
    rows = [(pk, f"{pk} note {i}") for pk in context.partition_keys if pk != "Kirk" for i in range(2)]
    return pd.DataFrame(rows, columns=["partition_key", "text"])


# -- empty partitions -------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [answers_of, embeddings_of])
@pytest.mark.parametrize("empty", [pd.DataFrame({"text": pd.Series([], dtype=object)}), pd.DataFrame(), []])
def test_an_empty_upstream_materializes_as_an_empty_frame(server, materialize, factory, empty):
    upstream = upstream_of(empty)
    asset = factory(upstream)
    result = materialize([upstream, asset])
    frame = result.output_for_node(asset.key.path[-1])
    assert len(frame) == 0 and server.stats.requests == []
    if factory is answers_of:
        assert list(ANSWER_COLUMNS) == list(frame.columns)[: len(ANSWER_COLUMNS)]
    else:  # every documented column, the vectors' too (of no dimension: nothing was embedded)
        assert list(EMBEDDING_COLUMNS) == list(frame.columns)
        assert embedding_matrix(frame).shape == (0, 0)
    meta = metadata_values(event_of(result, asset.key.to_user_string()))
    assert meta["dagster/row_count"] == 0 and "nothing was sent" in meta["empty"]


@pytest.mark.parametrize("per_row", [True, False])
def test_a_single_run_backfill_with_an_empty_partition_stores_it_empty(server, materialize, instance, per_row):
    answers = answers_of(notes, one_request_per_row=per_row)
    embeddings = build_embeddings_asset(key="embeddings", upstream=answers)
    for _ in range(2):  # and again: nothing is refused, the re-run comes from the cache
        result = materialize([notes, answers, embeddings], partitions=CAPTAINS)
    assert len(server.stats.requests) == (4 if per_row else 2) + 2  # answers, then one embedding batch each
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path != ["notes"]]
    assert sorted(e.partition for e in events) == sorted(CAPTAINS * 2)  # every partition materialized
    for event in events:
        meta = metadata_values(event)
        assert (meta["dagster/row_count"] == 0) == (event.partition == "Kirk") == ("empty" in meta)
    stored = instance.storage_directory()
    kirk_answers = pd.read_pickle(f"{stored}/answers/Kirk")
    kirk_vectors = pd.read_pickle(f"{stored}/embeddings/Kirk")
    assert len(kirk_answers) == 0 and list(kirk_answers.columns)[: len(ANSWER_COLUMNS)] == list(ANSWER_COLUMNS)
    picard = pd.read_pickle(f"{stored}/embeddings/Jean-Luc Picard")
    assert len(picard) == (2 if per_row else 1)
    dimensions = server.embedding_dimensions
    assert picard["embedding"].dtype == pd.ArrowDtype(pa.list_(pa.float32(), dimensions))
    assert len(kirk_vectors) == 0 and kirk_vectors["embedding"].dtype == picard["embedding"].dtype  # the run's type
    assert embedding_matrix(kirk_vectors).shape == (0, dimensions)


def test_one_partition_of_an_unpartitioned_table_takes_only_its_rows(server, materialize):
    table = upstream_of(pd.DataFrame({"partition_key": ["Kirk", "Kirk", "Picard"], "text": ["k1", "k2", "p1"]}))
    chat = build_chat_answers_asset(
        key="answers",
        upstream=table,
        text_column="text",
        prompt="{text}",
        partitions_def=dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
    )
    result = materialize([table, chat], partition_key="Kirk")
    assert result.output_for_node("answers")["prompt"].tolist() == ["k1", "k2"]


class UnpartitionedUpstreamContext:
    """What load_texts reads of an asset's context: its log, and an unpartitioned upstream."""

    log = logging.getLogger("llm_assets_tests")

    def asset_partition_keys_for_input(self, input_name: str) -> list[str]:
        raise dg.DagsterInvariantViolationError("The input has no asset partitions")


def test_rows_of_other_partitions_in_an_upstream_table_are_skipped_with_a_warning(caplog):
    context = UnpartitionedUpstreamContext()
    value = pd.DataFrame({"partition_key": ["Kirk", "Uhura", None], "text": ["k", "u", "n"]})
    texts = load_texts(context, value, ["Kirk", "Picard"], "text", dg.AssetKey("texts"))
    assert texts == {"Kirk": ["k"], "Picard": []}
    assert "not a partition of this run (['Uhura', 'None'])" in caplog.text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (pd.DataFrame([["Kirk", "Kirk", "t"]], columns=["partition_key", "partition_key", "text"]), "2 columns named"),
        (pd.DataFrame({"partition_key": [["Kirk"]], "text": ["t"]}), "not a partition key"),
        (pd.DataFrame({"partition_key": ["Kirk", "Uhura"], "text": ["t", "u"]}), r"values for \['Uhura'\]"),
        (pd.DataFrame({"partition_key": ["Kirk", None], "text": ["t", "u"]}), r"values for \[None\]"),
        ({"Kirk": 1, "Uhura": 2}, r"values for \['Uhura'\]"),
        ({"partition_key": ["Kirk", "Uhura"], "text": ["t", "u"]}, r"values for \['Uhura'\]"),
        ({"Kirk": 1}, r"no value for partitions \['Picard'\]"),
    ],
)
def test_a_single_run_output_that_would_lose_values_is_refused(value, message):
    with pytest.raises(LLMAssetsError, match=message):
        split_output(value, ["Kirk", "Picard"], "Output of answers")


def test_a_single_run_output_splits_dicts_tables_and_fills_empty_partitions():
    table = split_output({"partition_key": ["Kirk"], "text": ["t"]}, ["Kirk", "Picard"], "Output")
    assert table["Kirk"]["text"].tolist() == ["t"] and list(table["Picard"].columns) == ["partition_key", "text"]
    assert split_output({"Kirk": 1, "Picard": 2}, ["Kirk", "Picard"], "Output") == {"Kirk": 1, "Picard": 2}


# -- bad upstream values ----------------------------------------------------------------------


def test_a_dict_of_columns_is_read_as_a_table(server, materialize):
    result = materialize([upstream_of({"text": ["a", "b", "c"]}), answers_of("texts")])
    assert result.output_for_node("answers")["prompt"].tolist() == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"body": ["a", "b"]}, r"is a dict with keys \['body'\], none of them 'text'"),
        (pd.DataFrame([["a", "b"]], columns=["text", "text"]), r"has 2 columns named 'text': rename or drop"),
        (pd.DataFrame([["a", "b"]], columns=pd.MultiIndex.from_tuples([("text", "x"), ("text", "y")])), "2 columns"),
        (pd.DataFrame({"text": ["fine", 7]}), r"row 1 column 'text' holds 7, not text"),
        (pd.DataFrame({"text": ["fine", None]}), r"row 1 column 'text' holds (None|nan), not text"),
        (pd.DataFrame({"words": ["a"]}), r"has no column 'text' \(columns: \['words'\]\)"),
        (42, r"is a int; expected a DataFrame with a 'text' column"),
        (pd.DataFrame({"text": ["ok", "bad \ud800 text"]}), r"row 1 column 'text' holds '\\ud800' at character 4"),
    ],
)
@pytest.mark.parametrize("factory", [answers_of, embeddings_of])
def test_bad_upstream_values_fail_before_any_request(server, materialize, factory, value, message):
    result = materialize([upstream_of(value), factory("texts")], raise_on_error=False)
    assert not result.success and server.stats.requests == []
    error = failure_message(result)
    assert "ConfigurationError" in error and "Upstream texts" in error
    assert re.search(message, error), error


def test_rows_for_partitions_outside_the_run_are_refused_not_dropped(server, materialize):
    @dg.asset(key="texts", partitions_def=captains, backfill_policy=dg.BackfillPolicy.single_run())
    def texts(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"partition_key": ["Kirk", "Uhura"], "text": ["x", "y"]})

    chat = build_chat_answers_asset(key="answers", upstream=texts, text_column="text", prompt="{text}")
    result = materialize([texts, chat], partitions=CAPTAINS, raise_on_error=False)
    assert not result.success and server.stats.requests == []
    assert "Output of texts has values for ['Uhura'], which are not partitions of this run" in failure_message(result)


def test_an_upstream_with_none_of_the_runs_partitions_is_an_error():
    context = dg.build_asset_context()
    value = pd.DataFrame({"partition_key": ["Uhura"], "text": ["x"]})
    with pytest.raises(LLMAssetsError, match=r"Upstream texts has values, but none for this run's partitions"):
        load_texts(context, value, ["Kirk", "Picard"], "text", dg.AssetKey("texts"))
    with pytest.raises(LLMAssetsError, match=r"Upstream texts is a dict with keys \['Uhura'\], none of them a partit"):
        load_texts(context, {"Uhura": value}, ["Kirk", "Picard"], "text", dg.AssetKey("texts"))


# -- bad run config and definitions -----------------------------------------------------------


def test_unsendable_text_in_run_config_names_the_prompt_and_row(server, materialize):
    answers = build_chat_answers_asset(key="answers", prompt="{question}", question="fine")
    config = {"ops": {"answers": {"config": {"question": "why \udcff?"}}}}
    result = materialize([answers], run_config=config, raise_on_error=False)
    assert "The prompt of answers (row 0) holds '\\udcff' at character 4" in failure_message(result)
    assert server.stats.requests == []


@pytest.mark.parametrize("field", ["chat_model", "embedding_model"])
def test_unsendable_model_names_in_run_config_fail_before_any_request(server, materialize, field):
    upstream = upstream_of(pd.DataFrame({"text": ["a"]}))
    asset = answers_of(upstream) if field == "chat_model" else embeddings_of(upstream)
    config = {"ops": {asset.key.to_python_identifier(): {"config": {field: "gpt\udcff"}}}}
    result = materialize([upstream, asset], run_config=config, raise_on_error=False)
    assert f"{field} holds '\\udcff' at character 3" in failure_message(result)
    assert server.stats.requests == []


def test_a_failed_upstream_answer_says_why_it_has_no_text(server, materialize):
    def reject(handler, body):
        handler._json(400, {"error": {"message": "nope", "type": "invalid_request_error"}})
        return True

    upstream = upstream_of(pd.DataFrame({"text": ["a"]}))
    answers, embeddings = answers_of(upstream), build_embeddings_asset(key="embeddings", upstream="answers")
    server.fault = reject
    record = {"ops": {"answers": {"config": {"on_error": "RECORD"}}}}
    result = materialize([upstream, answers, embeddings], run_config=record, raise_on_error=False)
    assert "row 0 column 'answer' holds None, not text: its upstream request failed (" in failure_message(result)


@pytest.mark.parametrize(
    "partitions_def",
    [
        dg.StaticPartitionsDefinition([]),
        dg.MultiPartitionsDefinition(
            {"captain": dg.StaticPartitionsDefinition(["Kirk"]), "topic": dg.StaticPartitionsDefinition([])}
        ),
    ],
)
def test_an_empty_partitions_definition_is_refused_when_the_factory_is_called(partitions_def):
    with pytest.raises(
        LLMAssetsError,
        match=r"partitions_def of answers \(given, or the upstream asset's\) has no partitions: list at least one",
    ):
        build_chat_answers_asset(key="answers", partitions_def=partitions_def, prompt="Hi {partition_key}")
    with pytest.raises(LLMAssetsError, match=r"partitions_def of answers .* has no partitions"):
        build_chat_answers_asset(key="answers", partitions_def=partitions_def, prompt="Hi")
    with pytest.raises(LLMAssetsError, match=r"partitions_def of embeddings .* has no partitions"):
        build_embeddings_asset(key="embeddings", upstream="texts", partitions_def=partitions_def)


@pytest.mark.parametrize("max_concurrency", [0, -1, "4", 2.5])
def test_a_max_concurrency_that_is_not_a_count_is_refused_when_the_factory_is_called(max_concurrency):
    with pytest.raises(LLMAssetsError, match=r"max_concurrency of answers is .*: give a whole number"):
        build_chat_answers_asset(key="answers", prompt="Hi", max_concurrency=max_concurrency)
    with pytest.raises(LLMAssetsError, match=r"max_concurrency of embeddings is"):
        build_embeddings_asset(key="embeddings", upstream="texts", max_concurrency=max_concurrency)


# -- partition keys that can't fill a prompt --------------------------------------------------

#: Partitions users add to (from the UI's "Add a partition", or the instance's API).
crew = dg.DynamicPartitionsDefinition(name="crew")
TOO_LONG = "x" * (MAX_PARTITION_KEY_CHARS + 1)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "it is empty"),
        ("  ", "it is only blanks"),
        (TOO_LONG, f"it has {MAX_PARTITION_KEY_CHARS + 1} characters, more than {MAX_PARTITION_KEY_CHARS}"),
        ("Kirk\nSpock", "it holds the control character '\\n' at character 4"),
        ("Kirk\x1b[31m", "it holds the control character '\\x1b' at character 4"),
        ("Kirk\u2028", "it holds the control character '\\u2028' at character 4"),
    ],
)
def test_a_partition_key_that_cannot_fill_a_prompt_is_one_error_saying_why_and_the_fix(key, problem):
    with pytest.raises(LLMAssetsError) as raised:
        partition_values(crew, key)
    message = str(raised.value)
    assert "can't fill {partition_key}" in message and problem in message, message
    assert (
        "delete it from the dynamic partitions 'crew'" in message
        and f"1 to {MAX_PARTITION_KEY_CHARS} characters" in message
    )


def test_partition_keys_up_to_the_limit_fill_prompts():
    for key in ("x" * MAX_PARTITION_KEY_CHARS, "Jean-Luc Picard", "Nyota Uhura 🖖", "Ro Laren (Bajoran)"):
        assert partition_values(crew, key) == {"partition_key": key}


def test_each_dimension_of_a_multi_partition_key_is_checked_by_its_name():
    ships = dg.MultiPartitionsDefinition({"captain": crew, "ship": dg.StaticPartitionsDefinition(["Enterprise"])})
    assert partition_values(ships, "Riker|Enterprise") == {
        "partition_key": "Riker|Enterprise",
        "captain": "Riker",
        "ship": "Enterprise",
    }
    with pytest.raises(
        LLMAssetsError, match=r"can't fill \{captain\}: it has 201 characters.*dynamic partitions 'crew'"
    ):
        partition_values(ships, f"{TOO_LONG}|Enterprise")


@pytest.mark.parametrize("key", [TOO_LONG, "Riker\tand Troi"])
def test_a_run_with_a_partition_key_that_cannot_fill_the_prompt_sends_nothing(server, materialize, instance, key):
    instance.add_dynamic_partitions(crew.name, ["Kirk", key])  # as the instance's API allows
    answers = build_chat_answers_asset(key="answers", partitions_def=crew, prompt="Captain {partition_key}")
    result = materialize([answers], partitions=["Kirk", key], raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "ConfigurationError" in message and "can't fill {partition_key}" in message, message
    assert server.stats.requests == []  # not even Kirk's


def test_only_the_placeholders_a_template_uses_are_checked(server, materialize, instance):
    instance.add_dynamic_partitions(crew.name, [TOO_LONG])  # a URL or path key, say
    answers = build_chat_answers_asset(key="answers", partitions_def=crew, prompt="Say hi.")
    assert materialize([answers], partitions=[TOO_LONG]).success
    ships = dg.MultiPartitionsDefinition({"captain": crew, "ship": dg.StaticPartitionsDefinition(["Enterprise"])})
    assert partition_values(ships, f"{TOO_LONG}|Enterprise", used={"ship"})["ship"] == "Enterprise"


def test_a_static_key_that_cannot_fill_the_prompt_is_refused_when_the_asset_is_defined():
    partitions = dg.StaticPartitionsDefinition(["Kirk", TOO_LONG])
    with pytest.raises(LLMAssetsError, match=r"can't fill \{partition_key\}: it has 201 characters"):
        build_chat_answers_asset(key="answers", partitions_def=partitions, prompt="Captain {partition_key}")
    assert build_chat_answers_asset(key="answers", partitions_def=partitions, prompt="Say hi.")  # not used: fine
