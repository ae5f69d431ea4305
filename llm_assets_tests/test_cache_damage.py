"""Damaged cache state heals by itself: damaged entries are misses (logged once, then
overwritten), writes are durable, a bad location fails at set-up, a failing store loses
nothing."""

import base64
import errno
import json
import os
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from llm_assets import LLMAssetsError, OpenAIResource, build_chat_answers_asset, build_embeddings_asset
from llm_assets.cache import CacheKeys, RequestCache
from llm_assets.cache.answers import answer_problem
from llm_assets.testing import first_attempts
from llm_assets_tests.support import event_of, failure_message, metadata_values, usage_metadata

QUESTIONS = [f"question {i} about damage" for i in range(24)]


@dg.asset
def questions() -> pd.DataFrame:
    return pd.DataFrame({"question": QUESTIONS})


answers = build_chat_answers_asset(key="answers", upstream=questions, text_column="question", prompt="{text}")
embeddings = build_embeddings_asset(key="embeddings", upstream=questions, text_column="question", batch_size=2)


def damage_chat(body: bytes) -> list[bytes]:
    """Every way a chat entry was seen to break a re-run, and a few more."""
    payload = json.loads(body)
    no_message = {**payload, "choices": [{"finish_reason": "stop", "message": None}]}
    return [
        body[: len(body) // 2],  # truncated
        b"",  # empty
        b"\0" * len(body),  # zero-filled (power loss)
        os.urandom(64),  # random bytes
        b'{"choices": []}',
        b"null",
        b"[]",
        json.dumps(no_message).encode(),
        json.dumps({**payload, "choices": [{"message": {"content": ["not", "text"]}}]}).encode(),
    ]


def damage_embeddings(body: bytes) -> list[bytes]:
    payload = json.loads(body)
    return [
        b"",
        b'{"data": []}',
        json.dumps({**payload, "data": payload["data"][:1]}).encode(),  # one vector for two texts
        json.dumps({**payload, "data": [{**d, "embedding": "%%%"} for d in payload["data"]]}).encode(),
        json.dumps({**payload, "data": [{**d, "embedding": []} for d in payload["data"]]}).encode(),
        json.dumps({**payload, "data": [{**d, "embedding": [None] * 16} for d in payload["data"]]}).encode(),
        json.dumps({**payload, "data": [{**d, "embedding": [True] * 16} for d in payload["data"]]}).encode(),
        json.dumps({**payload, "data": [{**d, "embedding": ["1.0"] * 16} for d in payload["data"]]}).encode(),
        json.dumps({**payload, "data": [{**d, "embedding": [[0.1] * 16]} for d in payload["data"]]}).encode(),
        json.dumps({**payload, "data": [{**d, "index": 7} for d in payload["data"]]}).encode(),
        json.dumps({**payload, "data": [{**d, "embedding": [10**400] * 16} for d in payload["data"]]}).encode(),
    ]


def entries(root) -> list:
    return sorted(RequestCache(root).root.glob("*/*.json"), key=str)


def warnings_about(instance, run_id, text: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if text in e.user_message]


@pytest.mark.parametrize(("asset", "damage"), [(answers, damage_chat), (embeddings, damage_embeddings)])
def test_damaged_entries_are_misses_logged_once_then_overwritten(
    server, materialize, instance, tmp_path, asset, damage
):
    resource = OpenAIResource(base_url=server.base_url, cache_dir=str(tmp_path / "cache"))
    first = materialize([questions, asset], resource).output_for_node(asset.key.path[-1])
    sent = len(server.stats.requests)
    files = entries(tmp_path / "cache")
    forms = damage(files[0].read_bytes())
    assert len(files) > len(forms)
    for path, broken in zip(files, forms, strict=False):
        path.write_bytes(broken)
    files[len(forms)].unlink()  # and one entry that became a directory
    files[len(forms)].mkdir()
    forms.append(b"a directory")

    second = materialize([questions, asset], resource)
    assert len(server.stats.requests) == sent + len(forms)  # exactly the damaged ones asked again
    pd.testing.assert_frame_equal(
        first.drop(columns=["latency_s", "cached"], errors="ignore"),
        second.output_for_node(asset.key.path[-1]).drop(columns=["latency_s", "cached"], errors="ignore"),
    )
    for path in files[: len(forms) - 1]:
        assert warnings_about(instance, second.run_id, str(path)) != []  # logged, with its path…
    for path in files[: len(forms)]:
        json.loads(path.read_bytes())  # …and healed by the fresh answer
    damaged = warnings_about(instance, second.run_id, "Ignoring the damaged request cache entry")
    assert len(damaged) == len(forms) - 1  # the directory reads as absent: a miss, then replaced

    third = materialize([questions, asset], resource)
    assert len(server.stats.requests) == sent + len(forms)  # all answered from the cache again
    assert warnings_about(instance, third.run_id, "Ignoring the damaged") == []


@pytest.mark.parametrize(
    ("endpoint", "damaged"),
    [
        ("chat", {"choices": []}),
        ("chat", {"choices": [{"message": None}]}),
        ("chat", {"choices": [{}]}),
        ("embeddings", {"data": [{}]}),
        ("embeddings", {"data": [{"index": 0, "embedding": [0.5, 0.5]}]}),  # one vector for two inputs
        ("embeddings", {"data": [{"index": 0, "embedding": "AAA"}, {"index": 1, "embedding": "AAA"}]}),
        ("embeddings", {"data": [{"index": 0, "embedding": "%%%"}, {"index": 1, "embedding": "%%%"}]}),
        ("responses", {"output": []}),
        ("responses", {"output": [1]}),
    ],
)
def test_a_damaged_entry_read_by_a_client_is_a_miss_too(server, materialize, tmp_path, endpoint, damaged):
    @dg.asset
    def ask(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context, cache=True) as client:
            if endpoint == "chat":
                return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).id
            if endpoint == "embeddings":
                return str(len(client.embeddings.create(model="e", input=["a", "b"]).data))
            return client.responses.create(model="m", input="hi").output_text

    resource = OpenAIResource(base_url=server.base_url, cache_dir=str(tmp_path))
    first = materialize([ask], resource).output_for_node("ask")
    (entry,) = entries(tmp_path)
    entry.write_bytes(json.dumps(damaged).encode())
    assert materialize([ask], resource).output_for_node("ask") == first  # asked again, same answer
    assert len(server.stats.requests) == 2
    path = {"chat": "/chat/completions", "embeddings": "/embeddings", "responses": "/responses"}[endpoint]
    assert answer_problem(path, json.loads(entry.read_bytes()), {"input": ["a", "b"]}) is None  # healed


def test_a_malformed_live_answer_is_never_stored(server, materialize, instance, tmp_path):
    empty_choices = {"object": "chat.completion", "model": "m", "choices": []}
    server.fault = first_attempts(lambda handler, body: handler._json(200, empty_choices))
    resource = OpenAIResource(base_url=server.base_url, cache_dir=str(tmp_path))
    first = materialize([questions, answers], resource)
    assert usage_metadata(event_of(first, "answers"))["openai.failed_attempts.malformed"] == len(QUESTIONS)
    assert len(entries(tmp_path)) == len(QUESTIONS)  # only the good answers were stored
    second = materialize([questions, answers], resource)
    assert warnings_about(instance, second.run_id, "Ignoring the damaged") == []
    assert usage_metadata(event_of(second, "answers"))["openai.cache_hits"] == len(QUESTIONS)


def test_a_file_where_a_shard_directory_goes_is_replaced(server, materialize, tmp_path):
    resource = OpenAIResource(base_url=server.base_url, cache_dir=str(tmp_path))
    materialize([questions, answers], resource)
    shard = entries(tmp_path)[0].parent
    shutil.rmtree(shard)
    shard.write_text("in the way")
    materialize([questions, answers], resource)
    materialize([questions, answers], resource)
    assert shard.is_dir() and len(entries(tmp_path)) == len(QUESTIONS)
    assert len(server.stats.requests) < 2 * len(QUESTIONS)  # healed: the third run sent nothing new


def test_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_replace = os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    key = CacheKeys("http://x/v1").key("/embeddings", {"input": "a"})
    RequestCache(tmp_path).put(key, b"{}")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]  # file, rename, directory
    assert events[0][1] == events[1][1] and events[0][1].endswith(".tmp")
    assert events[2][1] == str(tmp_path / key[:2])


@pytest.mark.parametrize(
    "where", ["file", "under_a_file", "unknown://x/cache", "nul\0byte", "   ", "http://127.0.0.1:9/cache"]
)
def test_a_cache_location_that_cannot_hold_entries_fails_at_set_up(server, materialize, tmp_path, where):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file")
    cache_dir = {"file": str(blocker), "under_a_file": str(blocker / "cache")}.get(where, where)
    resource = OpenAIResource(base_url=server.base_url, cache_dir=cache_dir)
    with pytest.raises(LLMAssetsError, match=r"request cache can't be written at .*: set OpenAIResource\(cache_dir="):
        resource.setup_for_execution(dg.build_init_resource_context())
    result = materialize([questions, answers], resource, raise_on_error=False)
    assert not result.success and server.stats.requests == []  # nothing sent, nothing billed


def test_a_cache_dir_under_home_expands(server, materialize, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    materialize([questions, answers], OpenAIResource(base_url=server.base_url, cache_dir="~/llm-cache"))
    assert len(entries(tmp_path / "llm-cache")) == len(QUESTIONS)


def test_a_store_that_fails_mid_run_loses_no_billed_answer(server, materialize, instance, tmp_path, monkeypatch):
    resource = OpenAIResource(base_url=server.base_url, cache_dir=str(tmp_path / "cache"))

    def disk_full(self, key, body):  # the location passed its set-up probe; then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RequestCache, "put", disk_full)
    result = materialize([questions, answers], resource)
    frame = result.output_for_node("answers")
    assert frame["answer"].notna().all() and len(frame) == len(QUESTIONS) == server.usage.calls
    event = event_of(result, "answers")
    assert usage_metadata(event)["openai.cache_store_failures"] == len(QUESTIONS)
    assert usage_metadata(event)["openai.calls"] == len(QUESTIONS)
    assert len(warnings_about(instance, result.run_id, "Could not store an answer in the request cache")) == 1
    assert metadata_values(event)["answers_from_cache"] == 0


@pytest.mark.parametrize(
    "vectors",
    [
        [base64.b64encode(np.full(4, np.nan, np.float32).tobytes()).decode()] * 2,  # NaN, as base64
        [[0.1, 0.2], [0.1, 0.2, 0.3]],  # unequal lengths in one answer
    ],
)
def test_a_malformed_live_embeddings_answer_is_never_stored(server, materialize, tmp_path, vectors):
    def malformed(handler, body):
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        handler._json(
            200, {"object": "list", "model": "e", "data": data, "usage": {"prompt_tokens": 2, "total_tokens": 2}}
        )
        return True

    @dg.asset
    def two() -> pd.DataFrame:
        return pd.DataFrame({"question": ["a", "b"]})

    vectors_of_two = build_embeddings_asset(key="embeddings", upstream=two, text_column="question")
    server.fault = malformed
    resource = OpenAIResource(base_url=server.base_url, cache_dir=str(tmp_path), max_retries=1)
    result = materialize([two, vectors_of_two], resource, raise_on_error=False)
    assert not result.success and "malformed response body" in failure_message(result)
    assert entries(tmp_path) == []


def test_a_base_url_with_trailing_slashes_still_hits_the_cache(server, materialize, tmp_path):
    resource = OpenAIResource(base_url=server.base_url + "//", cache_dir=str(tmp_path))
    for _ in range(2):
        materialize([questions, answers], resource)
    assert len(server.stats.requests) == len(QUESTIONS)
