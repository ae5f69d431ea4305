"""Batch mode against llmock, a real OpenAI-compatible server with Files and Batches:
the whole cycle, outputs equal to live mode, exact usage, the cache, and processes that
die or are terminated while their batch runs."""

import json
import signal

import dagster as dg
import numpy as np
import pytest

from llm_assets import embedding_matrix
from llm_assets.accounting.prices import DEFAULT_PRICES
from llm_assets_tests.batch import job
from llm_assets_tests.batch.support import llmock_batches, start_job, stop, wait_for
from llm_assets_tests.support import failure_message, usage_metadata


def output_usage_by_partition(answers) -> dict[str, dict[str, int]]:
    """What llmock billed: each output line's usage, by the captain its request is for
    (named in the prompt, or, for an embedding, whose answer it embeds)."""
    pairs = zip(answers["partition_key"], answers["answer"], strict=True)
    owners = {json.dumps(answer)[1:-1]: captain for captain, answer in pairs}
    from llmock.routers import batch

    prompts = {}
    for file in batch._files.values():
        if file["purpose"] == "batch":
            for line in file["content"].splitlines():
                request = json.loads(line)
                prompts[request["custom_id"]] = json.dumps(request["body"])
    totals: dict[str, dict[str, int]] = {}
    for file in batch._files.values():
        if file["purpose"] == "batch_output":
            for line in file["content"].splitlines():
                output = json.loads(line)
                request = prompts[output["custom_id"]]
                captain = next(c for t, c in [*owners.items(), *((c, c) for c in job.CAPTAINS)] if t in request)
                usage = output["response"]["body"]["usage"]
                total = totals.setdefault(captain, {"prompt_tokens": 0, "total_tokens": 0})
                total["prompt_tokens"] += usage["prompt_tokens"]
                total["total_tokens"] += usage["total_tokens"]
    return totals


def by_partition(result: dg.ExecuteInProcessResult, key: str) -> dict[str, dict]:
    return {
        e.partition: usage_metadata(e)
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == key
    }


def test_batch_mode_equals_live_mode_with_exact_usage_at_batch_price(llmock, instance, tmp_path):
    openai = job.resource(llmock.base_url("openai"), cache_dir=str(tmp_path / "cache"))
    assets = (job.answers, job.embeddings)

    def config(mode: str, cache: str) -> dict:
        settings = {"config": {"mode": mode, "cache": cache}}
        return {"ops": {"answers": settings, "embeddings": settings}}

    live = job.materialize(openai, instance, assets, run_config=config("LIVE", "OFF"))
    batch = job.materialize(openai, instance, assets, run_config=config("BATCH", "USE"))
    assert len(llmock_batches()) == 2  # one per asset

    columns = ["partition_key", "row", "prompt", "answer", "model", "finish_reason", "total_tokens", "error"]
    live_answers, batch_answers = (r.asset_value("answers") for r in (live, batch))
    assert batch_answers[columns].equals(live_answers[columns])
    assert list(batch_answers["partition_key"]) == job.CAPTAINS
    np.testing.assert_array_equal(
        embedding_matrix(batch.asset_value("embeddings")), embedding_matrix(live.asset_value("embeddings"))
    )

    billed = output_usage_by_partition(batch_answers)  # chat and embedding lines, summed per captain
    live_usage, batch_usage = by_partition(live, "answers"), by_partition(batch, "answers")
    embedded = by_partition(batch, "embeddings")
    for captain in job.CAPTAINS:
        recorded = batch_usage[captain]
        assert recorded["openai.batch_requests"] == recorded["openai.calls"] == 1
        both = recorded["openai.total_tokens"] + embedded[captain]["openai.total_tokens"]
        assert both == billed[captain]["total_tokens"]
        assert recorded["openai.total_tokens"] == live_usage[captain]["openai.total_tokens"]
        assert recorded["openai.cost_usd"] == pytest.approx(live_usage[captain]["openai.cost_usd"] / 2, abs=1e-8)
        model_price = DEFAULT_PRICES["gpt-4o-mini"].batch()
        expected = model_price.cost(recorded["openai.prompt_tokens"], 0, recorded["openai.completion_tokens"])
        assert recorded["openai.cost_usd"] == pytest.approx(expected, abs=1e-8)

    # the batch's answers are in the request cache: a live run of the same requests costs nothing
    again = job.materialize(openai, instance, assets, run_config=config("LIVE", "USE"))
    for key in ("answers", "embeddings"):
        for recorded in by_partition(again, key).values():
            assert recorded["openai.calls"] == 0 and recorded["openai.cache_hits"] == 1
    assert again.asset_value("answers")[columns[:-2]].equals(batch_answers[columns[:-2]])
    assert len(llmock_batches()) == 2


def test_a_materialization_split_into_several_batches(llmock, instance, tmp_path):
    openai = job.resource(llmock.base_url("openai"), cache_dir=str(tmp_path / "c"), batch={"max_requests_per_file": 2})
    result = job.materialize(openai, instance)
    assert [b["request_counts"]["total"] for b in llmock_batches()] == [2, 1]
    frame = result.asset_value("answers")
    assert list(frame["partition_key"]) == job.CAPTAINS and frame["answer"].str.len().gt(0).all()
    metadata = [b["metadata"] for b in llmock_batches()]
    assert [m["llm_assets_part"] for m in metadata] == ["1/2", "2/2"]
    assert {m["llm_assets_asset"] for m in metadata} == {"answers"}
    assert len({m["llm_assets_fingerprint"] for m in metadata}) == 2


@pytest.mark.slow
def test_kill_9_after_create_then_rerun_creates_no_second_batch(llmock, instance, tmp_path, monkeypatch):
    from llmock.routers import batch

    monkeypatch.setattr(batch, "_BATCH_DELAY", 3600)  # the batch stays "validating" while the job polls
    process = start_job(llmock.base_url("openai"), tmp_path, poll=0.05)
    wait_for(lambda: len(llmock_batches()) == 1, process)
    stop(process, signal.SIGKILL)
    for record in batch._batches.values():
        record["ready_at"] = 0  # the server finishes the batch meanwhile
    openai = job.resource(llmock.base_url("openai"), cache_dir=str(tmp_path / "cache"))
    result = job.materialize(openai, instance)
    assert len(llmock_batches()) == 1  # re-attached: never billed twice
    frame = result.asset_value("answers")
    assert list(frame["partition_key"]) == job.CAPTAINS and frame["answer"].str.len().gt(0).all()
    logs = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "Re-attached to batch" in logs


@pytest.mark.slow
def test_a_terminated_run_cancels_its_batch_and_the_rerun_submits_again(llmock, instance, tmp_path, monkeypatch):
    from llmock.routers import batch

    monkeypatch.setattr(batch, "_BATCH_DELAY", 3600)
    process = start_job(llmock.base_url("openai"), tmp_path, poll=0.05)
    wait_for(lambda: len(llmock_batches()) == 1, process)
    output = stop(process, signal.SIGINT)
    assert "Cancelled batch" in output, output[-3000:]
    assert [b["status"] for b in llmock_batches()] == ["cancelled"]
    monkeypatch.setattr(batch, "_BATCH_DELAY", 0)
    openai = job.resource(llmock.base_url("openai"), cache_dir=str(tmp_path / "cache"))
    result = job.materialize(openai, instance, raise_on_error=False)
    assert result.success, failure_message(result)
    assert [b["status"] for b in llmock_batches()] == ["cancelled", "completed"]
    assert result.asset_value("answers")["answer"].str.len().gt(0).all()
