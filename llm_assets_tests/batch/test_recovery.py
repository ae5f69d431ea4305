"""Batch mode when things go sideways: odd error bodies, batches found finished by a
re-run, cache modes, other runs' partitions, budgets with renamed models, and the sensor
facing lost batches, terminated runs and runs it does not know."""

import json

import dagster as dg
import pytest

from llm_assets import OpenAIResource, build_batch_sensor
from llm_assets.accounting.usage import Usage
from llm_assets.batch.lines import batch_lines, custom_ids
from llm_assets.batch.outcome import BatchOutcome
from llm_assets.engine.chat import ChatCalls, ChatRequest
from llm_assets.testing.batches import ScriptedBatchServer
from llm_assets_tests.batch import job
from llm_assets_tests.batch.job import IMPATIENT
from llm_assets_tests.support import failure_message, usage_metadata


def answers_usage(result) -> dict[str, dict]:
    return {e.partition: usage_metadata(e) for e in result.get_asset_materialization_events()}


def sensor_tick(instance, openai):
    with dg.build_sensor_context(instance=instance, resources={"openai": openai}) as context:
        return build_batch_sensor().evaluate_tick(context)


def test_an_error_body_of_any_shape_is_the_rows_error(batch_server, instance, tmp_path):
    batch_server.fail_line = lambda url, body: (502, {"error": "Bad gateway"}) if "Kirk" in str(body) else None
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    result = job.materialize(openai, instance, run_config={"ops": {"answers": {"config": {"on_error": "RECORD"}}}})
    frame = result.asset_value("answers").set_index("partition_key")
    assert frame.loc["Kirk", "error"].endswith("HTTP 502: Bad gateway")
    assert frame.loc["Jean-Luc Picard", "answer"]


def test_a_failed_batch_found_by_a_rerun_is_submitted_again(batch_server, instance, tmp_path):
    batch_server.store.fail_batches = True
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT)
    assert "is still running" in failure_message(job.materialize(openai, instance, raise_on_error=False))
    batch_server.store.fail_batches = False
    result = job.materialize(job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance)
    assert batch_server.creates == 2 and result.asset_value("answers")["answer"].str.len().gt(0).all()


def test_a_failed_batch_names_its_validation_errors_with_line_numbers(batch_server, instance, tmp_path):
    batch_server.store.fail_batches = True
    result = job.materialize(
        job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance, raise_on_error=False
    )
    assert "failed: line 1: Scripted." in failure_message(result)


@pytest.mark.parametrize("cache", ["OFF", "REFRESH"])
def test_batch_answers_are_cached_whatever_the_cache_mode(batch_server, instance, tmp_path, cache):
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    job.materialize(openai, instance, run_config={"ops": {"answers": {"config": {"cache": cache}}}})
    again = job.materialize(openai, instance, run_config={"ops": {"answers": {"config": {"mode": "LIVE"}}}})
    assert all(u["openai.calls"] == 0 and u["openai.cache_hits"] == 1 for u in answers_usage(again).values())


def test_an_expired_batch_fails_under_record_too_and_names_the_cache_mode(batch_server, instance, tmp_path):
    batch_server.store.expire_after = 1
    config = {"ops": {"answers": {"config": {"on_error": "RECORD", "cache": "REFRESH"}}}}
    result = job.materialize(
        job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance, run_config=config, raise_on_error=False
    )
    message = failure_message(result)
    assert "expired with 1 of 3 requests completed" in message and "(with run config cache: USE)" in message


def test_usage_of_other_partitions_is_reported_by_the_run_that_materializes_them(
    server, batch_server, instance, tmp_path
):
    impatient = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT)
    assert not job.materialize(impatient, instance, raise_on_error=False).success  # all three submitted
    patient = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    kirk = job.materialize(patient, instance, tags={"dagster/asset_partition_range_end": "Kirk"})
    rest = job.materialize(patient, instance, tags={"dagster/asset_partition_range_start": "Jean-Luc Picard"})
    assert batch_server.creates == 1
    recorded = {**answers_usage(kirk), **answers_usage(rest)}
    assert set(recorded) == set(job.CAPTAINS)
    assert all(u["openai.batch_requests"] == 1 for u in recorded.values())
    assert sum(u["openai.total_tokens"] for u in recorded.values()) == server.usage.total_tokens
    assert not list(tmp_path.glob("batches/answers/*/*.json"))  # every line collected: no record left


def test_a_renamed_model_gives_its_budget_reservation_back():
    session = OpenAIResource(base_url="http://127.0.0.1:9/v1", max_cost_usd_per_run=1.0).session
    request = ChatRequest("Kirk", 0, "Hi", ({"role": "user", "content": "Hi"},), {"model": "gpt-4o-mini"})
    calls = ChatCalls([request])
    (line,) = batch_lines(custom_ids("answers", calls), calls, [0], [None])
    outcome = BatchOutcome(session.governor, session.answers, calls, [line], {"Kirk": Usage()}, [None])
    assert session.governor.refusal("gpt-4o-mini", 1000) is None
    outcome.estimates[line.custom_id] = 1000
    body = {"model": "openai/gpt-4o-mini", "choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}]}
    outcome._answer(line.custom_id, body)
    totals = session.governor.budget.totals()
    assert totals.reserved_tokens == 0 and totals.reserved_cost == pytest.approx(0)
    outcome.release()


def test_the_sensor_reruns_when_the_server_lost_a_batch(batch_server, instance, tmp_path):
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT)
    job.materialize(openai, instance, raise_on_error=False)
    batch_server.store.batches.clear()  # e.g. a server restarted: the id is unknown (404)
    (request,) = sensor_tick(instance, openai).run_requests
    assert request.asset_selection == [dg.AssetKey("answers")]


def test_the_sensor_leaves_terminated_and_unknown_runs_alone(batch_server, instance, tmp_path):
    batch_server.store.finalizing_polls = 1000
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT)
    job.materialize(openai, instance, raise_on_error=False)
    (path,) = tmp_path.glob("batches/answers/*/*.json")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "cancel_requested": True}))
    tick = sensor_tick(instance, openai)
    assert not tick.run_requests and "was terminated" in tick.skip_message
    path.write_text(json.dumps({**record, "run_id": "not-a-run"}))
    tick = sensor_tick(instance, openai)
    assert not tick.run_requests and "not in this instance" in tick.skip_message


def test_a_record_left_by_a_kill_after_caching_is_cleared_by_the_next_run(batch_server, instance, tmp_path):
    batch_server.store.finalizing_polls = 1
    impatient = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT)
    job.materialize(impatient, instance, raise_on_error=False)
    (path,) = tmp_path.glob("batches/answers/*/*.json")
    record = path.read_bytes()
    patient = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    job.materialize(patient, instance)  # collects, caches, removes the record
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(record)  # as if killed after the answers were cached, before the record went
    again = job.materialize(patient, instance)  # all from the cache; the record goes
    assert all(u["openai.cache_hits"] == 1 for u in answers_usage(again).values())
    assert not list(tmp_path.glob("batches/answers/*/*.json")) and batch_server.creates == 1
    assert not sensor_tick(instance, patient).run_requests


def test_a_lost_create_answer_is_looked_for_before_retrying(server, instance, tmp_path):
    with ScriptedBatchServer(server, lose_creates=1) as gateway:
        result = job.materialize(job.resource(gateway.base_url, cache_dir=str(tmp_path)), instance)
        assert gateway.creates == 1 and len(gateway.store.batches) == 1  # found, not created again
    assert result.asset_value("answers")["answer"].str.len().gt(0).all()


def test_records_of_another_server_are_left_alone(server, batch_server, instance, tmp_path):
    batch_server.store.finalizing_polls = 1000
    on_a = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT)
    job.materialize(on_a, instance, raise_on_error=False)
    with ScriptedBatchServer(server) as other:
        job.materialize(job.resource(other.base_url, cache_dir=str(tmp_path)), instance)
        assert other.creates == 1
    assert len(list(tmp_path.glob("batches/answers/*/*.json"))) == 1  # A's batch is still A's
    batch_server.store.finalizing_polls = 0
    job.materialize(job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance)
    assert batch_server.creates == 1


def test_a_batch_whose_files_are_gone_is_submitted_again(batch_server, instance, tmp_path):
    impatient = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT)
    job.materialize(impatient, instance, raise_on_error=False)
    (batch,) = batch_server.store.batches.values()
    batch_server.store.files.pop(batch.output_file_id or "", None)
    batch.output_file_id = batch.output_file_id or "file-deleted"
    result = job.materialize(job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance)
    assert batch_server.creates == 2 and result.asset_value("answers")["answer"].str.len().gt(0).all()


def test_repeated_identical_requests_each_get_an_answer(batch_server, instance, tmp_path):
    from llm_assets import RequestMode
    from llm_assets.engine import ChatRequest, Engine

    request = ChatRequest(None, 0, "Again?", ({"role": "user", "content": "Again?"},), {"model": "gpt-4o-mini"})

    @dg.asset
    def repeated(context: dg.AssetExecutionContext, openai: OpenAIResource) -> list:
        rows = Engine(openai, context, mode=RequestMode.BATCH).chat([request] * 3)
        return [row.answer for row in rows]

    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    result = dg.materialize([repeated], resources={"openai": openai}, instance=instance)
    assert len(result.output_for_node("repeated")) == 3 and all(result.output_for_node("repeated"))
    assert [b.total for b in batch_server.store.batches.values()] == [3]
