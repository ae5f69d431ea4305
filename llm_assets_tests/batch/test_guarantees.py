"""The ordering and matching guarantees of batch mode, each shown to fail when its code is
removed (a mutation check): the record before the upload, the answers durable before the
record goes, lines never run left open, the fingerprint matched, a cancelling batch
waited for."""

import json
import time
from types import SimpleNamespace

import dagster as dg
import pytest

from llm_assets import OpenAIResource, RequestMode
from llm_assets.accounting.usage import Usage
from llm_assets.batch.lines import batch_lines, custom_ids
from llm_assets.batch.outcome import BatchOutcome
from llm_assets.batch.records import FINGERPRINT, Submission, SubmissionStore
from llm_assets.calls import ErrorPolicy
from llm_assets.engine import Engine
from llm_assets.engine.chat import ChatCalls, ChatRequest
from llm_assets_tests.batch import job
from llm_assets_tests.batch.job import IMPATIENT
from llm_assets_tests.support import failure_message


def test_the_record_is_written_before_the_upload(batch_server, instance, tmp_path, monkeypatch):
    saved, save = [], SubmissionStore.save
    monkeypatch.setattr(SubmissionStore, "save", lambda self, r: (saved.append(r.input_file_id), save(self, r))[1])
    job.materialize(job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance)
    assert saved[0] is None and saved[1] is not None


def test_answers_are_cached_before_the_record_goes(batch_server, instance, tmp_path, monkeypatch):
    seen, remove = [], SubmissionStore.remove

    def spy(self, record):
        seen.append([p for p in cache.rglob("*") if p.is_file() and "batches" not in p.parts])
        remove(self, record)

    cache = tmp_path / "cache"
    monkeypatch.setattr(SubmissionStore, "remove", spy)
    job.materialize(job.resource(batch_server.base_url, cache_dir=str(cache)), instance)
    assert len(seen) == 1 and len(seen[0]) >= 3, seen


def test_lines_a_batch_never_ran_stay_open():
    session = OpenAIResource(base_url="http://127.0.0.1:9/v1").session
    request = ChatRequest("Kirk", 0, "Hi", ({"role": "user", "content": "Hi"},), {"model": "gpt-4o-mini"})
    calls = ChatCalls([request])
    (line,) = batch_lines(custom_ids("answers", calls), calls, [0], [None])
    outcome = BatchOutcome(session.governor, session.answers, calls, [line], {"Kirk": Usage()}, [None])
    error = {"custom_id": line.custom_id, "response": None, "error": {"code": "batch_expired", "message": "x"}}
    outcome.read_errors([json.dumps(error)], Submission("f", "answers", "/v1/chat/completions", {}, "run"))
    assert outcome.open == [line] and not outcome.failures
    outcome.release()


def test_a_rerun_finding_an_expired_batch_submits_what_it_never_ran(batch_server, instance, tmp_path):
    batch_server.store.expire_after = 2
    job.materialize(
        job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT), instance, raise_on_error=False
    )
    batch_server.store.expire_after = None
    result = job.materialize(
        job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance, raise_on_error=False
    )
    assert result.success, failure_message(result)
    assert batch_server.creates == 2


def test_find_batch_matches_the_fingerprint(tmp_path):
    store = SubmissionStore(str(tmp_path))
    record = Submission("mine", "answers", "/v1/chat/completions", {}, "run")
    now = time.time()
    other = SimpleNamespace(id="b-other", created_at=now, metadata={FINGERPRINT: "theirs"})
    mine = SimpleNamespace(id="b-mine", created_at=now - 1, metadata={FINGERPRINT: "mine"})
    assert (
        store.find_batch(SimpleNamespace(batches=SimpleNamespace(list=lambda limit: [other, mine])), record).id
        == "b-mine"
    )
    record.batch_id = None
    assert store.find_batch(SimpleNamespace(batches=SimpleNamespace(list=lambda limit: [other])), record) is None


def test_a_rerun_waits_for_a_cancelling_batch_then_submits_its_requests(batch_server, instance, tmp_path):
    batch_server.store.finalizing_polls = 1000
    job.materialize(
        job.resource(batch_server.base_url, cache_dir=str(tmp_path), batch=IMPATIENT), instance, raise_on_error=False
    )
    (path,) = tmp_path.glob("batches/answers/*/*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "cancel_requested": True}))
    (batch,) = batch_server.store.batches.values()
    batch.status, batch.output_file_id, batch.completed = "cancelling", None, 0  # cancelled before any answer
    retrieve = batch_server.store.retrieve
    polls = []

    def cancel_later(b):
        if b is batch:
            polls.append(b.id)
            if len(polls) > 1:
                b.status = "cancelled"
        return retrieve(b)

    batch_server.store.retrieve = cancel_later
    batch_server.store.finalizing_polls = 0
    result = job.materialize(
        job.resource(batch_server.base_url, cache_dir=str(tmp_path)), instance, raise_on_error=False
    )
    assert result.success, failure_message(result)
    assert batch_server.creates == 2


@pytest.mark.parametrize("mode", [RequestMode.LIVE, RequestMode.BATCH])
@pytest.mark.parametrize("on_error", [ErrorPolicy.FAIL, ErrorPolicy.RECORD])
def test_a_partition_that_cant_be_handed_over_fails_the_run_as_itself(batch_server, instance, tmp_path, mode, on_error):
    """A failure building a finished partition's frame is that failure, never a
    "malformed answer" recorded in a row, in either mode."""
    requests = [
        ChatRequest(None, i, f"Q {i}?", ({"role": "user", "content": f"Q {i}?"},), {"model": "m"}) for i in (0, 1)
    ]

    def on_partition(pk, rows):
        raise ValueError(f"the frame of {pk} could not be built")

    @dg.asset
    def probe(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        Engine(openai, context, mode=mode, on_error=on_error).chat(requests, on_partition=on_partition)

    openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
    result = dg.materialize([probe], resources={"openai": openai}, instance=instance, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "the frame of None could not be built" in message and "malformed" not in message
