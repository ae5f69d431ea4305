"""Faults, crashes and per-item failures lose nothing and bill nothing twice."""

import dagster as dg
import pandas as pd
import pytest

from llm_assets import OpenAIResource, build_chat_answers_asset
from llm_assets.testing import FAULTS, FaultInjector, first_attempts, inject_fault
from llm_assets_tests.support import event_of, failure_message, metadata_values, usage_metadata

N = 1000
PROMPTS = [f"Reliable question {i}" for i in range(N)]


@dg.asset
def prompts() -> pd.DataFrame:
    return pd.DataFrame({"text": PROMPTS})


answers = build_chat_answers_asset(key="answers", upstream=prompts, text_column="text", prompt="{text}")


@pytest.mark.slow
def test_thousand_requests_with_ten_percent_faults_complete_exactly_once(server, materialize):
    injector = FaultInjector(rate=0.10, seed=42, slow_seconds=2.5, retry_after="0.2")
    server.fault = injector
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=32, timeout=2.0, max_retries=8)
    result = materialize([prompts, answers], resource)
    assert result.success
    frame = result.output_for_node("answers")
    assert len(frame) == N and frame["error"].isna().all()
    assert [a.split(": ", 1)[1] for a in frame["answer"]] == PROMPTS  # every answer, in order
    assert set(injector.injected) == set(FAULTS) and 60 < sum(injector.injected.values()) < 160
    recorded = usage_metadata(event_of(result, "answers"))
    assert recorded["openai.calls"] == N == server.usage.calls  # each success counted once
    assert recorded["openai.total_tokens"] == server.usage.total_tokens
    assert recorded["openai.failed_attempts"] == sum(injector.injected.values())  # every kind counted
    for kind, counted in COUNTED_AS.items():
        assert recorded.get(f"openai.failed_attempts.{counted}", 0) >= injector.injected[kind]


#: The metadata kind (``openai.failed_attempts.<kind>``) each injected fault counts as.
COUNTED_AS = {"429": "429", "500": "500", "503": "503", "drop": "connection", "cut": "connection"}
COUNTED_AS |= {"slow": "timeout", "malformed": "malformed"}


@pytest.mark.parametrize("fault", FAULTS)
def test_every_failed_attempt_is_counted_by_its_kind(server, materialize, no_backoff, fault):
    @dg.asset
    def four() -> pd.DataFrame:
        return pd.DataFrame({"text": PROMPTS[:4]})

    few = build_chat_answers_asset(key="few", upstream=four, text_column="text", prompt="{text}")
    server.fault = first_attempts(lambda handler, body: inject_fault(handler, fault, slow_seconds=1.0, retry_after="0"))
    resource = OpenAIResource(base_url=server.base_url, timeout=0.5, max_retries=2)
    result = materialize([four, few], resource)
    assert result.output_for_node("few")["error"].isna().all()
    recorded = usage_metadata(event_of(result, "few"))
    assert recorded[f"openai.failed_attempts.{COUNTED_AS[fault]}"] == 4 == recorded["openai.failed_attempts"]
    assert recorded["openai.calls"] == 4 == server.usage.calls


def test_non_retryable_error_fails_fast_with_the_servers_message_and_the_item(server, materialize):
    def reject_one(handler, body):
        if body["messages"][0]["content"] != PROMPTS[7]:
            return False
        error = {
            "message": "This model's maximum context length is 128 tokens",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
        handler._json(400, {"error": error})
        return True

    server.fault = reject_one
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=4)
    result = materialize([prompts, answers], resource, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "row 7" in message and "maximum context length" in message and "HTTP 400" in message
    rejected = [r for r in server.stats.requests if r["body"]["messages"][0]["content"] == PROMPTS[7]]
    assert len(rejected) == 1  # a 400 is not retried
    assert len(server.stats.requests) < N  # the rest was not sent after the failure


def test_record_policy_keeps_the_good_answers(server, materialize):
    def reject_some(handler, body):
        if not body["messages"][0]["content"].endswith("3"):
            return False
        handler._json(400, {"error": {"message": "bad prompt", "type": "invalid_request_error"}})
        return True

    server.fault = reject_some
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=16)
    result = materialize(
        [prompts, answers], resource, run_config={"ops": {"answers": {"config": {"on_error": "RECORD"}}}}
    )
    assert result.success
    frame = result.output_for_node("answers")
    failed = frame[frame["error"].notna()]
    assert len(failed) == 100 and all("bad prompt" in e for e in failed["error"])
    assert frame["answer"].notna().sum() == N - 100
    meta = metadata_values(event_of(result, "answers"))
    assert meta["failed_requests"] == 100
    assert meta["openai.calls"] == N - 100 == server.usage.calls


def test_a_rerun_after_a_failure_sends_only_what_was_not_answered(server, materialize):
    def reject_one(handler, body):
        if body["messages"][0]["content"] != PROMPTS[500]:
            return False
        handler._json(400, {"error": {"message": "temporarily refused", "type": "invalid_request_error"}})
        return True

    server.fault = reject_one
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=8)
    assert not materialize([prompts, answers], resource, raise_on_error=False).success
    answered = server.usage.calls
    assert 0 < answered < N
    server.fault = None
    server.reset()
    result = materialize([prompts, answers], resource)
    assert result.success
    assert server.usage.calls == N - answered  # the first run's answers came from the cache
    recorded = usage_metadata(event_of(result, "answers"))
    assert recorded["openai.calls"] == N - answered and recorded["openai.cache_hits"] == answered
    assert recorded["openai.total_tokens"] == server.usage.total_tokens  # only the re-run's tokens


CRASHING_RUN = """
import dagster as dg
import pandas as pd
from llm_assets import OpenAIResource, PartitionedFilesystemIOManager, build_chat_answers_asset

@dg.asset
def prompts() -> pd.DataFrame:
    return pd.DataFrame({"text": [f"Crash question {i}" for i in range(200)]})

answers = build_chat_answers_asset(key="answers", upstream=prompts, text_column="text", prompt="{text}")
resources = {"openai": OpenAIResource(max_concurrency=4),  # OPENAI_BASE_URL: the scripted server
             "io_manager": PartitionedFilesystemIOManager()}
if __name__ == "__main__":
    with dg.DagsterInstance.get() as instance:
        dg.materialize([prompts, answers], resources=resources, instance=instance)
"""


@pytest.mark.slow
def test_a_killed_run_resumes_without_asking_twice(server, env_home, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    server.latency = 0.05
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    script = tmp_path / "crashing_run.py"
    script.write_text(CRASHING_RUN)
    process = subprocess.Popen(
        [sys.executable, str(script), server.base_url],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while server.usage.calls < 60 and time.monotonic() < deadline:  # let about a third complete
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = len(server.stats.requests)
    assert 60 <= first < 200

    namespace: dict = {}
    exec(compile(CRASHING_RUN, str(script), "exec"), namespace)
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [namespace["prompts"], namespace["answers"]], resources=namespace["resources"], instance=instance
        )
    assert result.success
    frame = result.output_for_node("answers")
    assert len(frame) == 200 and frame["answer"].notna().all()
    asked = [r["body"]["messages"][0]["content"] for r in server.stats.requests]
    repeated = len(asked) - len(set(asked))
    assert len(set(asked)) == 200
    assert repeated <= 4  # only requests in flight at the kill (max_concurrency) were asked again
    recorded = usage_metadata(event_of(result, "answers"))
    assert recorded["openai.calls"] == len(asked) - first  # the re-run bills only what it sent
    assert recorded["openai.cache_hits"] == 200 - recorded["openai.calls"]


def test_a_body_that_does_not_decompress_is_a_retried_malformed_attempt(server, materialize, no_backoff):
    @dg.asset
    def two() -> pd.DataFrame:
        return pd.DataFrame({"text": PROMPTS[:2]})

    few = build_chat_answers_asset(key="few", upstream=two, text_column="text", prompt="{text}")

    def garbled_gzip(handler, body):
        payload = b"\x1f\x8b\x08\x00 this is not gzip at all"
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-encoding", "gzip")
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    server.fault = first_attempts(garbled_gzip)
    result = materialize([two, few])
    assert result.output_for_node("few")["answer"].notna().all()
    recorded = usage_metadata(event_of(result, "few"))
    assert recorded["openai.failed_attempts.malformed"] == 2 == recorded["openai.failed_attempts"]


def test_token_counts_a_frame_cannot_hold_keep_the_answer(server, materialize):
    @dg.asset
    def three() -> pd.DataFrame:
        return pd.DataFrame({"text": PROMPTS[:3]})

    few = build_chat_answers_asset(key="few", upstream=three, text_column="text", prompt="{text}")
    odd_usages = [
        {"prompt_tokens": 7.5, "completion_tokens": 2, "total_tokens": 9.5, "prompt_tokens_details": 7},
        {"prompt_tokens": "many", "completion_tokens_details": [1], "total_tokens": float("nan")},
        {"prompt_tokens": 10**30, "completion_tokens": 1, "total_tokens": -100, "cached_tokens": float("inf")},
    ]
    odd_models = [["a"], 5, None]

    def odd_usage(handler, body):
        row = PROMPTS.index(body["messages"][0]["content"])
        choice = {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}
        handler._json(
            200, {"object": "chat.completion", "model": odd_models[row], "choices": [choice], "usage": odd_usages[row]}
        )
        return True

    server.fault = odd_usage
    for _ in range(2):  # live, then from the cache
        frame = materialize([three, few]).output_for_node("few")
        assert frame["answer"].tolist() == ["fine"] * 3
        assert frame["prompt_tokens"].isna().all() and frame["completion_tokens"].fillna(-1).tolist() == [2, -1, 1]
    assert len(server.stats.requests) == 3
    assert all(
        value >= 0
        for key, value in usage_metadata(event_of(materialize([three, few]), "few")).items()
        if "tokens" in key
    )
