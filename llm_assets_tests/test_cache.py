"""The request cache: one key function, one reader, atomic writes, any fsspec location."""

import threading

import dagster as dg
import pandas as pd
import pytest

from llm_assets import OpenAIResource, build_chat_answers_asset
from llm_assets.cache import CacheKeys, RequestCache
from llm_assets.engine.chat import ChatCalls, ChatRequest
from llm_assets_tests.support import event_of, metadata_values, usage_metadata

QUESTIONS = [f"cached question {i}" for i in range(60)]


@dg.asset
def questions() -> pd.DataFrame:
    return pd.DataFrame({"question": QUESTIONS})


answers = build_chat_answers_asset(key="answers", upstream=questions, text_column="question", prompt="{text}")


def test_a_rerun_is_answered_from_the_cache_without_requests_or_tokens(server, materialize):
    first = materialize([questions, answers])
    assert len(server.stats.requests) == len(QUESTIONS)
    second = materialize([questions, answers])
    assert len(server.stats.requests) == len(QUESTIONS)  # nothing new reached the server
    pd.testing.assert_series_equal(
        first.output_for_node("answers")["answer"], second.output_for_node("answers")["answer"]
    )
    event = event_of(second, "answers")
    recorded = usage_metadata(event)
    assert recorded["openai.cache_hits"] == len(QUESTIONS)
    assert recorded["openai.total_tokens"] == 0 and recorded["openai.calls"] == 0
    assert metadata_values(event)["answers_from_cache"] == len(QUESTIONS)
    assert second.output_for_node("answers")["cached"].all()


def test_changed_parameters_miss_the_cache(server, materialize):
    materialize([questions, answers])
    hotter = {"ops": {"answers": {"config": {"temperature": 1.0}}}}
    recorded = usage_metadata(event_of(materialize([questions, answers], run_config=hotter), "answers"))
    assert recorded["openai.cache_hits"] == 0 and recorded["openai.calls"] == len(QUESTIONS)


@pytest.mark.parametrize("mode", ["REFRESH", "OFF"])
def test_cache_can_be_refreshed_or_bypassed_per_run(server, materialize, mode):
    materialize([questions, answers])
    materialize([questions, answers], run_config={"ops": {"answers": {"config": {"cache": mode}}}})
    assert len(server.stats.requests) == 2 * len(QUESTIONS)
    materialize([questions, answers])  # back to USE: answered from the cache either way
    assert len(server.stats.requests) == 2 * len(QUESTIONS)


def test_cache_disabled_on_the_resource(server, materialize):
    resource = OpenAIResource(base_url=server.base_url, cache=False)
    materialize([questions, answers], resource)
    materialize([questions, answers], resource)
    assert len(server.stats.requests) == 2 * len(QUESTIONS)


def test_cache_on_any_fsspec_location(server, materialize):
    shared = "memory://llm-assets-test-cache"
    materialize([questions, answers], OpenAIResource(base_url=server.base_url, cache_dir=shared))
    with dg.instance_for_test() as other_instance:  # another instance, same shared cache
        resource = OpenAIResource(base_url=server.base_url, cache_dir=shared)
        result = materialize([questions, answers], resource, instance=other_instance)
    assert len(server.stats.requests) == len(QUESTIONS)
    assert usage_metadata(event_of(result, "answers"))["openai.cache_hits"] == len(QUESTIONS)
    assert len(list(RequestCache(shared).root.glob("*/*.json"))) == len(QUESTIONS)


def test_a_relative_cache_dir_is_hit_on_the_rerun(server, materialize, tmp_path, monkeypatch):
    # fsspec keys a local cat of many paths by their absolute form: a relative root once
    # wrote entries that no lookup found, and every re-run paid again
    monkeypatch.chdir(tmp_path)
    resource = OpenAIResource(base_url=server.base_url, cache_dir="state/cache")
    materialize([questions, answers], resource)
    result = materialize([questions, answers], resource)
    assert len(server.stats.requests) == len(QUESTIONS)
    assert usage_metadata(event_of(result, "answers"))["openai.cache_hits"] == len(QUESTIONS)


def test_get_client_caches_only_when_asked(server, materialize):
    @dg.asset
    def twice(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        for cache in (False, False, True, True):
            with openai.get_client(context, cache=cache) as client:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "same"}])

    result = materialize([twice])
    assert len(server.stats.requests) == 3  # two uncached, then one miss that fills the cache, one hit
    assert usage_metadata(event_of(result, "twice"))["openai.cache_hits"] == 1


def test_the_engine_and_the_clients_share_one_key_function(server, materialize):
    """What the engine stored is what a client of the same session finds, and back."""
    request = ChatRequest(None, 0, "shared key", ({"role": "user", "content": "shared key"},), {"model": "m"})
    (call,) = ChatCalls([request])

    @dg.asset
    def both(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context, cache=True) as client:  # a client stores it…
            client.chat.completions.create(**call.body)
        session = openai.session
        key = session.answers.key(call.endpoint, call.body)
        assert session.answers.cached([key], [(call.endpoint, call.body)])[0] is not None  # …under the engine's key

    materialize([both])
    assert len(server.stats.requests) == 1


def test_keys_ignore_order_and_differ_by_backend_endpoint_and_stream():
    keys = CacheKeys("http://x/v1")
    same = keys.key("/chat/completions", {"model": "m", "temperature": 0})
    assert same == keys.key("/chat/completions", {"temperature": 0, "model": "m"})
    assert same != CacheKeys("http://y/v1").key("/chat/completions", {"model": "m", "temperature": 0})
    assert same != keys.key("/completions", {"model": "m", "temperature": 0})
    assert keys.key("/chat/completions", {"stream": True, "model": "m"}) is None
    assert keys.key("/models", {"model": "m"}) is None
    assert CacheKeys("HTTP://X/v1/").base_url == "http://x/v1"  # normalised like the client's URLs


def test_get_many_reads_present_and_absent_entries(tmp_path):
    cache = RequestCache(tmp_path)
    cache.put("a" * 64, b"{}")
    assert cache.get_many(["a" * 64, "b" * 64, None]) == [b"{}", None, None]


def test_cache_writes_are_atomic_under_concurrent_writers(tmp_path):
    cache = RequestCache(tmp_path)
    key = CacheKeys("http://x/v1").key("/embeddings", {"input": "a"})
    bodies = [(b'{"writer": %d, "pad": "%s"}' % (i, b"x" * 200_000)) for i in range(8)]
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            (body,) = cache.get_many([key])
            if body is not None:
                seen.append(body)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=lambda b=b: [cache.put(key, b) for _ in range(20)]) for b in bodies]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert seen and all(body in bodies for body in seen)  # never a torn or partial entry
    assert not list(tmp_path.rglob("*.tmp"))
