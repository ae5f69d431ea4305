"""Batch mode against the project's scripted Batch API: what llmock and aimock can't
show (failed lines, expiry with partial output, finalizing, a crash between create and
record, waiting limits and the sensor), with usage compared to the server's own totals."""

import signal

import dagster as dg
import pandas as pd
import pytest

from llm_assets import build_batch_sensor
from llm_assets.testing.batches import ScriptedBatchServer
from llm_assets_tests.batch import job
from llm_assets_tests.batch.support import start_job, stop, wait_for
from llm_assets_tests.support import failure_message, usage_metadata


def fail_picard(url, body):
    text = str(body)
    return (400, "Picard's request is refused by the server") if "Picard" in text else None


def answers_by_partition(result):
    return {e.partition: usage_metadata(e) for e in result.get_asset_materialization_events()}


def test_usage_per_partition_equals_the_servers_totals(server, batch_server, instance, tmp_path):
    result = job.materialize(job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance)
    for captain, recorded in answers_by_partition(result).items():
        billed = server.usage_where(lambda body, c=captain: c in str(body["messages"]))
        assert recorded["openai.total_tokens"] == billed.total_tokens > 0
        assert recorded["openai.prompt_tokens"] == billed.total("prompt_tokens")
        assert recorded["openai.batch_requests"] == 1


def test_failed_lines_fail_the_materialization_and_only_they_are_resubmitted(batch_server, instance, tmp_path):
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    batch_server.fail_line = fail_picard
    result = job.materialize(openai, instance, raise_on_error=False)
    message = failure_message(result)
    assert "1 of 3 batch requests failed" in message
    assert "partition 'Jean-Luc Picard'" in message and "HTTP 400: Picard's request is refused" in message
    batch_server.fail_line = None
    result = job.materialize(openai, instance)
    assert [b.total for b in batch_server.store.batches.values()] == [3, 1]  # only the failed one again
    usage = answers_by_partition(result)
    assert usage["Jean-Luc Picard"]["openai.batch_requests"] == 1
    assert usage["Kirk"]["openai.cache_hits"] == 1 and usage["Kirk"]["openai.calls"] == 0


def test_failed_lines_are_recorded_per_row_under_on_error_record(server, instance, tmp_path):
    with ScriptedBatchServer(server, fail_line=fail_picard) as failing:
        openai = job.resource(failing.base_url, cache_dir=str(tmp_path))
        config = {"ops": {"answers": {"config": {"on_error": "RECORD"}}}}
        result = job.materialize(openai, instance, run_config=config)
    frame = result.asset_value("answers").set_index("partition_key")
    assert "HTTP 400: Picard's request is refused" in frame.loc["Jean-Luc Picard", "error"]
    assert pd.isna(frame.loc["Kirk", "error"]) and frame.loc["Kirk", "answer"]
    assert answers_by_partition(result)["Jean-Luc Picard"]["openai.failed_attempts.400"] == 1


def test_an_expired_batch_keeps_what_it_completed_and_the_rerun_submits_the_rest(batch_server, instance, tmp_path):
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    batch_server.store.expire_after = 2
    result = job.materialize(openai, instance, raise_on_error=False)
    assert "expired with 2 of 3 requests completed: those are kept (cached)" in failure_message(result)
    batch_server.store.expire_after = None
    result = job.materialize(openai, instance)
    assert [b.total for b in batch_server.store.batches.values()] == [3, 1]
    usage = answers_by_partition(result)
    assert sum(u["openai.cache_hits"] for u in usage.values()) == 2
    assert sum(u["openai.calls"] for u in usage.values()) == 1


def test_finalizing_is_waited_for(server, instance, tmp_path):
    with ScriptedBatchServer(server, finalizing_polls=3) as finalizing:
        result = job.materialize(job.resource(finalizing.base_url, cache_dir=str(tmp_path)), instance)
    assert result.asset_value("answers")["answer"].str.len().gt(0).all()


@pytest.mark.slow
def test_a_crash_between_create_and_record_is_found_through_the_fingerprint(server, instance, tmp_path):
    with ScriptedBatchServer(server, hold_create=True) as holding:
        process = start_job(holding.base_url, tmp_path, poll=0.05)
        wait_for(lambda: holding.creates == 1 and len(holding.store.batches) == 1, process)
        stop(process, signal.SIGKILL)  # the batch exists; the job never heard its id
        holding.release.set()
        result = job.materialize(job.resource(holding.base_url, cache_dir=str(tmp_path / "cache")), instance)
        assert holding.creates == 1 and len(holding.store.batches) == 1
    assert result.asset_value("answers")["answer"].str.len().gt(0).all()


def test_a_server_without_the_batch_api_is_one_clear_error(server, instance, tmp_path):
    result = job.materialize(job.resource(server.base_url, cache_dir=str(tmp_path)), instance, raise_on_error=False)
    message = failure_message(result)
    assert f"The server at {server.base_url} has no Batch API (HTTP 404 on /batches)" in message
    assert "mode: LIVE" in message


def test_a_budget_refuses_the_batch_before_anything_is_submitted(batch_server, instance, tmp_path):
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path), max_tokens_per_run=50)
    result = job.materialize(openai, instance, raise_on_error=False)
    assert "The batch was not submitted: max_tokens_per_run 50 would be exceeded" in failure_message(result)
    assert batch_server.creates == 0


def test_max_wait_then_the_sensor_requests_the_run_that_collects_it(server, instance, tmp_path):
    with ScriptedBatchServer(server, finalizing_polls=2) as slow:
        openai = job.resource(slow.base_url, cache_dir=str(tmp_path), batch={"max_wait_seconds": 0})
        config = {"ops": {"answers": {"config": {"question": "Tea or coffee?"}}}}
        first = job.materialize(openai, instance, run_config=config, raise_on_error=False)
        message = failure_message(first)
        assert "is still running after 0 s" in message and "collects it without submitting again" in message

        sensor = build_batch_sensor()
        requests = []
        for _ in range(5):  # each evaluation polls once: finalizing, finalizing, completed
            with dg.build_sensor_context(instance=instance, resources={"openai": openai}) as context:
                requests = sensor.evaluate_tick(context).run_requests
            if requests:
                break
        (request,) = requests
        assert request.asset_selection == [dg.AssetKey("answers")]
        assert request.run_config == first.dagster_run.run_config
        assert job.EVERYONE.items() <= request.tags.items()

        patient = job.resource(slow.base_url, cache_dir=str(tmp_path))
        again = job.materialize(patient, instance, run_config=request.run_config, tags=job.EVERYONE)
        assert slow.creates == 1  # collected, not submitted again
        assert "Tea or coffee?" in again.asset_value("answers")["prompt"].iloc[0]
        with dg.build_sensor_context(instance=instance, resources={"openai": openai}) as context:
            assert not sensor.evaluate_tick(context).run_requests  # nothing left to watch


def test_a_damaged_record_is_matched_to_its_batch_through_the_fingerprint(batch_server, instance, tmp_path):
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch={"max_wait_seconds": 0})
    batch_server.store.finalizing_polls = 1000  # the batch stays open across both runs
    assert not job.materialize(openai, instance, raise_on_error=False).success
    (record,) = tmp_path.glob("batches/answers/*/*.json")
    record.write_bytes(b"\x00" * 40)  # damaged: its batch id is lost
    again = job.materialize(openai, instance, raise_on_error=False)
    assert "is still running" in failure_message(again)
    assert batch_server.creates == 1  # found through batches.list and the fingerprint, not created again
    batch_server.store.finalizing_polls = 0
    patient = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    assert job.materialize(patient, instance).asset_value("answers")["answer"].str.len().gt(0).all()
    assert batch_server.creates == 1


def test_embedding_requests_split_at_the_inputs_per_file_limit():
    from llm_assets.batch.lines import batch_lines, custom_ids, split_lines
    from llm_assets.batch.settings import BatchSettings
    from llm_assets.engine.embeddings import EmbeddingPlan

    plan = EmbeddingPlan({"a": ["x"] * 10, "b": ["y"] * 5}, {"model": "m"}, max_inputs=4, max_tokens=10**6)
    calls = plan.calls()  # a: 4 + 4 + 2 inputs, b: 4 + 1
    lines = batch_lines(custom_ids("emb", calls), calls, range(len(calls)), [None] * len(calls))
    chunks = split_lines(lines, BatchSettings(max_inputs_per_file=8))
    assert [[line.items for line in chunk] for chunk in chunks] == [[4, 4], [2, 4, 1]]


def test_batch_rates_can_be_set_per_model(server, batch_server, instance, tmp_path):
    prices = {"gpt-4o-mini": {"input": 1.0, "output": 2.0, "batch_input": 0.1, "batch_output": 0.3}}
    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path), prices=prices)
    result = job.materialize(openai, instance)
    for recorded in answers_by_partition(result).values():
        expected = (recorded["openai.prompt_tokens"] * 0.1 + recorded["openai.completion_tokens"] * 0.3) / 1e6
        assert recorded["openai.cost_usd"] == pytest.approx(expected, abs=1e-9)


def test_a_batch_record_that_cant_be_written_stops_the_submission_before_upload(
    batch_server, instance, tmp_path, monkeypatch
):
    """The store refuses the record (after its client's retries): nothing is uploaded or
    created, and the failure names the record's location and the store's fault."""
    from llm_assets.cache import RequestCache

    put = RequestCache.put

    def refused(cache, key, body, **kwargs):
        if "/batches/" in str(cache.root):
            raise OSError(16, "Please reduce your request rate.")  # s3fs's error for a 503 SlowDown
        return put(cache, key, body, **kwargs)

    monkeypatch.setattr(RequestCache, "put", refused)
    result = job.materialize(
        job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance, raise_on_error=False
    )
    message = failure_message(result)
    assert f"The batch record {tmp_path}/batches/answers/" in message
    assert "(OSError: [Errno 16] Please reduce your request rate.), before anything was submitted" in message
    assert batch_server.creates == 0 and not batch_server.store.files
