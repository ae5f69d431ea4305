"""User code on the request path and Dagster's partition mappings: a translator's bug is
one clear error (never a re-billed "malformed" answer), a bad template fails when the asset
is defined, and several upstream partitions mapped to one are read whole."""

import dagster as dg
import pandas as pd
import pytest

from llm_assets import ChatTranslator, LLMAssetsError, build_chat_answers_asset, build_embeddings_asset
from llm_assets_tests.support import failure_message, usage_metadata


@dg.asset
def texts() -> pd.DataFrame:
    return pd.DataFrame({"text": ["one", "two"]})


def answers_with(translator: ChatTranslator) -> dg.AssetsDefinition:
    return build_chat_answers_asset(
        key="answers", upstream=texts, text_column="text", prompt="{text}", translator=translator
    )


class RecordRaises(ChatTranslator):
    def get_record(self, record, response):
        return {**record, "verdict": response["choices"][0]["no such field"]}


class RecordIsNone(ChatTranslator):
    def get_record(self, record, response):
        return None


class RecordMovesPartition(ChatTranslator):
    def get_record(self, record, response):
        return {**record, "row": 99}


class RecordWrongType(ChatTranslator):
    def get_record(self, record, response):
        return {**record, "prompt_tokens": "n/a"}


@pytest.mark.parametrize(
    ("translator", "message"),
    [
        (RecordRaises(), "The translator's get_record failed on row"),
        (RecordIsNone(), "The translator's get_record returned NoneType for row"),
        (RecordMovesPartition(), "partition_key and row unchanged"),
        (RecordWrongType(), "A column of the answers has values of the wrong type"),
    ],
)
def test_a_failing_get_record_is_one_error_and_nothing_is_billed_twice(server, materialize, translator, message):
    for _ in range(2):
        result = materialize([texts, answers_with(translator)], raise_on_error=False)
        assert not result.success and message in failure_message(result)
        assert "malformed" not in failure_message(result)
    assert len(server.stats.requests) == 2  # each answer was bought once, cached, and never asked again


def test_a_failing_hook_lets_the_requests_in_flight_finish_and_keeps_their_answers(server, materialize):
    @dg.asset
    def six() -> pd.DataFrame:
        return pd.DataFrame({"text": [f"q{i}" for i in range(6)]})

    class FailsOnTheFirst(ChatTranslator):
        def get_record(self, record, response):
            if record["prompt"] == "q0":
                raise RuntimeError("a bug in the hook")
            return record

    server.latency = lambda body: 0.0 if body["messages"][0]["content"] == "q0" else 0.5
    buggy = build_chat_answers_asset(
        key="answers", upstream=six, text_column="text", prompt="{text}", translator=FailsOnTheFirst()
    )
    fixed = build_chat_answers_asset(key="answers", upstream=six, text_column="text", prompt="{text}")
    result = materialize([six, buggy], raise_on_error=False)
    assert "a bug in the hook" in failure_message(result)
    assert len(server.stats.requests) == 6  # all were in flight: they finished, were billed…
    assert materialize([six, fixed]).output_for_node("answers")["cached"].all()  # …and kept
    assert len(server.stats.requests) == 6


def test_a_hook_failing_on_a_recorded_failure_says_so(server, materialize):
    class ReadsTheId(ChatTranslator):
        def get_record(self, record, response):
            return {**record, "id": response["id"]}

    def reject(handler, body):
        handler._json(400, {"error": {"message": "nope", "type": "invalid_request_error"}})
        return True

    server.fault = reject
    record = {"ops": {"answers": {"config": {"on_error": "RECORD"}}}}
    result = materialize([texts, answers_with(ReadsTheId())], run_config=record, raise_on_error=False)
    assert "(a failed request, recorded under on_error=RECORD: its response is {})" in failure_message(result)


class IntKeys(ChatTranslator):
    def get_params(self, params, values):
        return {**params, "logit_bias": {99: -1, 100: -1}}


class MixedKeys(ChatTranslator):
    def get_params(self, params, values):
        return {**params, "logit_bias": {99: -1, "100": -1}}


def test_a_translators_request_is_keyed_as_the_server_sees_it(server, materialize):
    for _ in range(2):
        materialize([texts, answers_with(IntKeys())])
    assert len(server.stats.requests) == 2  # the re-run was answered from the cache
    assert server.stats.requests[0]["body"]["logit_bias"] == {"99": -1, "100": -1}


class StreamParams(ChatTranslator):
    def get_params(self, params, values):
        return {**params, "stream": True}


class NanParams(ChatTranslator):
    def get_params(self, params, values):
        return {**params, "temperature": float("nan")}


class SetParams(ChatTranslator):
    def get_params(self, params, values):
        return {**params, "stop": {"a", "b"}}


class SurrogateMessages(ChatTranslator):
    def get_messages(self, prompt, system_prompt, values):
        return [{"role": "user", "content": prompt + " \udcff"}]


@pytest.mark.parametrize(
    ("translator", "message"),
    [
        (StreamParams(), "is not a non-streamed chat request"),
        (NanParams(), "can't be sent as JSON (ValueError: Out of range float values"),
        (SetParams(), "can't be sent as JSON (TypeError: Object of type set"),
        (SurrogateMessages(), "can't be sent as JSON (UnicodeEncodeError"),
        (MixedKeys(), "can't be sent as JSON (TypeError: '<' not supported"),
    ],
)
def test_a_request_a_translator_builds_is_checked_before_anything_is_sent(server, materialize, translator, message):
    result = materialize([texts, answers_with(translator)], raise_on_error=False)
    assert f"The request of answers (row 0) {message}" in failure_message(result)
    assert server.stats.requests == []


@pytest.mark.parametrize("template", ["{question:d}", "{question!z}", "{question:{width}}", "{question} }", "{ {q}"])
def test_a_template_that_is_not_plain_placeholders_fails_when_the_asset_is_defined(template):
    with pytest.raises(LLMAssetsError, match=r"Template .* (has a placeholder|is not a valid template)"):
        build_chat_answers_asset(key="answers", prompt=template, question="Why?")


# -- partition mappings -------------------------------------------------------------------


daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-22")
weekly = dg.WeeklyPartitionsDefinition(start_date="2024-01-07", end_date="2024-01-21")
DAYS = daily.get_partition_keys()


@dg.asset(partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run())
def notes(context: dg.AssetExecutionContext) -> pd.DataFrame:
    keys = context.partition_keys
    return pd.DataFrame({"partition_key": keys, "text": [f"note of {key}" for key in keys]})


def test_a_week_of_daily_partitions_is_read_whole(server, materialize, instance):
    days = DAYS[6:13]  # 2024-01-07 … 2024-01-13: the week starting 2024-01-07
    materialize([notes], partitions=DAYS)
    summary = build_embeddings_asset(key="weekly", upstream=notes, text_column="text", partitions_def=weekly)
    result = materialize([notes, summary], selection=[summary.key], partition_key="2024-01-07")
    assert result.output_for_node("weekly")["text"].tolist() == [f"note of {d}" for d in days]


def test_a_single_run_of_several_weeks_of_daily_partitions_is_refused(server, materialize):
    materialize([notes], partitions=DAYS)
    summary = build_embeddings_asset(key="weekly", upstream=notes, text_column="text", partitions_def=weekly)
    weeks = weekly.get_partition_keys()
    assert len(weeks) == 2
    result = materialize([notes, summary], selection=[summary.key], partitions=weeks, raise_on_error=False)
    assert "which one run can't split: pass backfill_policy=dg.BackfillPolicy.multi_run()" in failure_message(result)
    assert server.stats.requests == []


@pytest.mark.parametrize("run", [["2024-01-02"], ["2024-01-01", "2024-01-02", "2024-01-03"]])
def test_upstream_partitions_never_materialized_are_named(server, materialize, run):
    materialize([notes], partition_key="2024-01-01")
    chat = build_chat_answers_asset(key="answers", upstream=notes, text_column="text", prompt="{text}")
    result = materialize([notes, chat], selection=[chat.key], partitions=run, raise_on_error=False)
    message = failure_message(result)
    assert "ConfigurationError: Upstream notes partitions [" in message and "are not materialized" in message
    assert "'2024-01-02'" in message and "'2024-01-01'" not in message
    assert server.stats.requests == []


def test_an_unpartitioned_asset_reads_every_partition_of_its_upstream(server, materialize):
    materialize([notes], partitions=DAYS)
    everything = build_embeddings_asset(key="everything", upstream="notes", text_column="text")  # by key: unpartitioned
    result = materialize([notes, everything], selection=[everything.key])
    assert result.output_for_node("everything")["text"].tolist() == [f"note of {d}" for d in DAYS]


def test_no_stray_rows_warning_for_an_unpartitioned_pipeline(server, materialize, instance):
    answers = build_chat_answers_asset(key="answers", upstream=texts, text_column="text", prompt="{text}")
    vectors = build_embeddings_asset(key="vectors", upstream=answers)
    result = materialize([texts, answers, vectors])
    assert not [e for e in instance.all_logs(result.run_id) if "skipping its rows" in e.user_message]
    assert usage_metadata(result.get_asset_materialization_events()[-1])["openai.calls"] == 1
