"""Throughput engine: concurrency, rate limits, Retry-After, the request cache, batching."""

import asyncio
import random
import threading
import time

import dagster as dg
import pandas as pd
import pytest

from llm_assets import OpenAIResource, PartitionedFilesystemIOManager, build_chat_answers_asset
from llm_assets import build_embeddings_asset as embeddings_factory
from llm_assets.accounting.limits import RateLimits
from llm_assets.cache import RequestCache, request_key
from llm_assets.engine.core import pack_batches
from llm_assets_tests.conftest import metadata_values, usage_metadata

QUESTIONS = [f"question number {i} " + "padding " * (i % 7) for i in range(60)]


@dg.asset
def questions() -> pd.DataFrame:
    return pd.DataFrame({"question": QUESTIONS})


answers = build_chat_answers_asset(key="answers", upstream=questions, text_column="question", prompt="{text}")


def materialize(resource, instance, run_config=None, assets=(questions, answers)):
    result = dg.materialize(
        list(assets),
        resources={"openai": resource, "io_manager": PartitionedFilesystemIOManager()},
        instance=instance,
        run_config=run_config,
    )
    assert result.success
    return result


def answers_event(result):
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["answers"]]
    return event


def test_order_is_kept_and_concurrency_is_bounded(server, instance):
    rng = random.Random(7)
    server.latency = lambda body: rng.uniform(0.0, 0.03)
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=5)
    frame = materialize(resource, instance).output_for_node("answers")
    assert frame["prompt"].tolist() == QUESTIONS
    assert [a.split(": ", 1)[1] for a in frame["answer"]] == [q.strip() for q in QUESTIONS]
    assert server.stats.max_in_flight == 5  # reached, never exceeded


def test_requests_per_minute_is_never_exceeded(server, instance):
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=16, requests_per_minute=1200)  # 20/s
    materialize(resource, instance, assets=(questions, answers))
    arrivals = sorted(server.stats.arrivals)
    assert len(arrivals) == len(QUESTIONS)
    for i, start in enumerate(arrivals):  # any 1-second window holds at most 20 (+1 at its edge)
        assert sum(1 for t in arrivals[i:] if t - start < 1.0) <= 21
    assert arrivals[-1] - arrivals[0] >= (len(QUESTIONS) - 1) / 20 * 0.95


def test_tokens_per_minute_paces_by_estimated_tokens():
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=6000)  # bucket 1,000, +100/s

    async def spend() -> float:
        await limits.acquire(1000)  # a full bucket goes at once
        started = time.monotonic()
        await limits.acquire(100)  # the bucket refills 100 tokens a second
        return time.monotonic() - started

    assert 0.9 < asyncio.run(spend()) < 2.0


def test_429_with_retry_after_is_waited_out(server, instance):
    refused = set()

    def rate_limit_once(handler, body):
        prompt = body["messages"][0]["content"]
        if prompt in refused:
            return False
        refused.add(prompt)
        handler.send_response(429)
        payload = b'{"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}'
        handler.send_header("retry-after", "1")
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        return True

    server.fault = rate_limit_once
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=64, max_retries=3)
    started = time.monotonic()
    result = materialize(resource, instance)
    assert time.monotonic() - started >= 1.0  # the Retry-After was honoured
    assert len(result.output_for_node("answers")) == len(QUESTIONS)
    recorded = usage_metadata(answers_event(result))
    assert recorded["openai.failed_attempts"] == len(QUESTIONS)
    assert recorded["openai.calls"] == len(QUESTIONS) == server.usage.calls  # each success once
    assert recorded["openai.total_tokens"] == server.usage.total_tokens


def test_cache_answers_reruns_without_requests_or_tokens(server, instance):
    resource = OpenAIResource(base_url=server.base_url)
    first = materialize(resource, instance)
    sent = len(server.stats.requests)
    assert sent == len(QUESTIONS)
    second = materialize(resource, instance)
    assert len(server.stats.requests) == sent  # nothing new reached the server
    pd.testing.assert_series_equal(
        first.output_for_node("answers")["answer"], second.output_for_node("answers")["answer"]
    )
    event = answers_event(second)
    recorded = usage_metadata(event)
    assert recorded["openai.cache_hits"] == len(QUESTIONS)
    assert recorded["openai.total_tokens"] == 0 and recorded["openai.calls"] == 0
    assert metadata_values(event)["answers_from_cache"] == len(QUESTIONS)
    assert second.output_for_node("answers")["cached"].all()


def test_changed_parameters_miss_the_cache(server, instance):
    resource = OpenAIResource(base_url=server.base_url)
    materialize(resource, instance)
    hotter = {"ops": {"answers": {"config": {"temperature": 1.0}}}}
    recorded = usage_metadata(answers_event(materialize(resource, instance, run_config=hotter)))
    assert recorded["openai.cache_hits"] == 0 and recorded["openai.calls"] == len(QUESTIONS)


@pytest.mark.parametrize(("mode", "second_sends", "third_sends"), [("REFRESH", 60, 0), ("OFF", 60, 0)])
def test_cache_can_be_refreshed_or_bypassed_per_run(server, instance, mode, second_sends, third_sends):
    resource = OpenAIResource(base_url=server.base_url)
    materialize(resource, instance)
    before = len(server.stats.requests)
    materialize(resource, instance, run_config={"ops": {"answers": {"config": {"cache": mode}}}})
    assert len(server.stats.requests) - before == second_sends
    before = len(server.stats.requests)
    materialize(resource, instance)  # back to USE: answered from the cache either way
    assert len(server.stats.requests) - before == third_sends


def test_cache_disabled_on_the_resource(server, instance):
    resource = OpenAIResource(base_url=server.base_url, cache=False)
    materialize(resource, instance)
    materialize(resource, instance)
    assert len(server.stats.requests) == 2 * len(QUESTIONS)


def test_cache_on_any_fsspec_location(server, instance):
    shared = "memory://llm-assets-test-cache"
    materialize(OpenAIResource(base_url=server.base_url, cache_dir=shared), instance)
    with dg.instance_for_test() as other_instance:  # another instance, same shared cache
        result = materialize(OpenAIResource(base_url=server.base_url, cache_dir=shared), other_instance)
    assert len(server.stats.requests) == len(QUESTIONS)
    assert usage_metadata(answers_event(result))["openai.cache_hits"] == len(QUESTIONS)
    assert RequestCache(shared).count() == len(QUESTIONS)


def test_get_client_caches_only_when_asked(server, instance):
    @dg.asset
    def twice(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        for cache in (False, False, True, True):
            with openai.get_client(context, cache=cache) as client:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "same"}])

    result = dg.materialize([twice], resources={"openai": OpenAIResource(base_url=server.base_url)}, instance=instance)
    assert len(server.stats.requests) == 3  # two uncached, then one miss that fills the cache, one hit
    assert usage_metadata(result.get_asset_materialization_events()[0])["openai.cache_hits"] == 1


def test_cache_writes_are_atomic_under_concurrent_writers(tmp_path):
    cache = RequestCache(tmp_path)
    key = request_key("POST", "http://x/v1/embeddings", b'{"input": "a"}')
    bodies = [(b'{"writer": %d, "pad": "%s"}' % (i, b"x" * 200_000)) for i in range(8)]
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            body = cache.get(key)
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


def test_streamed_requests_are_never_cached():
    assert request_key("POST", "http://x/v1/chat/completions", b'{"stream": true, "model": "m"}') is None
    assert request_key("GET", "http://x/v1/models", b"") is None
    same = request_key("POST", "http://x/v1/chat/completions", b'{"model": "m", "temperature": 0}')
    assert same == request_key("POST", "http://x/v1/chat/completions", b'{"temperature": 0, "model": "m"}')
    assert same != request_key("POST", "http://y/v1/chat/completions", b'{"model": "m", "temperature": 0}')


def test_embedding_batches_respect_input_and_token_limits(server, instance):
    texts = ["word " * 300] * 7 + ["short"] * 5  # ~500 estimated tokens each for the long ones

    @dg.asset
    def docs() -> pd.DataFrame:
        return pd.DataFrame({"answer": texts})

    vectors = embeddings_factory(key="vectors", upstream=docs)
    config = {"ops": {"vectors": {"config": {"max_batch_tokens": 1200, "batch_size": 4}}}}
    result = materialize(OpenAIResource(base_url=server.base_url), instance, run_config=config, assets=(docs, vectors))
    sizes = [len(r["body"]["input"]) for r in server.stats.requests]
    assert sorted(sizes) == [2, 2, 2, 2, 4]  # two long texts per 1,200 tokens; 4 inputs at most
    assert result.output_for_node("vectors")["text"].tolist() == texts
    assert pack_batches(["a"] * 5000, 5000, 10**9)[0][1] == ["a"] * 2048  # API's input cap
