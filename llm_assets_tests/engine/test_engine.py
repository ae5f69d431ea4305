"""The engine: order kept, concurrency bounded, Retry-After honoured, embeddings batched,
every request billed to its own partition."""

import asyncio
import random

import dagster as dg
import openai
import pandas as pd
import pytest

from llm_assets import OpenAIResource, build_chat_answers_asset, build_embeddings_asset
from llm_assets.engine import ChatRequest, Engine, pack_batches
from llm_assets.http.attribution import UnattributedRequestError
from llm_assets.testing import first_attempts, inject_fault
from llm_assets_tests.support import event_of, usage_metadata

QUESTIONS = [f"question number {i} " + "padding " * (i % 7) for i in range(60)]


@dg.asset
def questions() -> pd.DataFrame:
    return pd.DataFrame({"question": QUESTIONS})


answers = build_chat_answers_asset(key="answers", upstream=questions, text_column="question", prompt="{text}")


def test_order_is_kept_and_concurrency_is_bounded(server, materialize):
    rng = random.Random(7)
    server.latency = lambda body: rng.uniform(0.0, 0.03)
    frame = materialize([questions, answers], OpenAIResource(base_url=server.base_url, max_concurrency=5))
    frame = frame.output_for_node("answers")
    assert frame["prompt"].tolist() == QUESTIONS
    assert [a.split(": ", 1)[1] for a in frame["answer"]] == [q.strip() for q in QUESTIONS]
    assert server.stats.max_in_flight == 5  # reached, never exceeded


def test_429_retry_after_is_honoured_and_each_success_billed_once(server, materialize, monkeypatch):
    waits = []
    rate_limit_once = first_attempts(lambda handler, body: inject_fault(handler, "429", retry_after="7"))

    async def record_wait(seconds: float) -> None:  # the SDK's retry sleep, on a fake clock
        waits.append(seconds)

    monkeypatch.setattr(openai._base_client.anyio, "sleep", record_wait)
    server.fault = rate_limit_once
    # The SDK's own retry waits, recorded; the pacer's pause for the key, which follows the
    # same Retry-After on the real clock, is left out here (accounting/test_provider_pacing.py).
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=64, follow_provider_limits=False)
    result = materialize([questions, answers], resource)
    assert waits == [7.0] * len(QUESTIONS)  # every retry waited the server's Retry-After
    assert len(result.output_for_node("answers")) == len(QUESTIONS)
    recorded = usage_metadata(event_of(result, "answers"))
    assert recorded["openai.failed_attempts"] == len(QUESTIONS)
    assert recorded["openai.calls"] == len(QUESTIONS) == server.usage.calls  # each success once
    assert recorded["openai.total_tokens"] == server.usage.total_tokens


def test_each_partition_is_billed_its_own_requests(server, materialize):
    """One shared client, many partitions: the billing scope of each engine task decides."""
    keys = [f"p{i}" for i in range(6)]

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(keys), backfill_policy=dg.BackfillPolicy.single_run())
    def texts(context: dg.AssetExecutionContext) -> pd.DataFrame:
        rows = [(k, f"{k} " + "word " * (i + int(k[1:]) * 3)) for k in context.partition_keys for i in range(8)]
        return pd.DataFrame(rows, columns=["partition_key", "answer"])

    chat = build_chat_answers_asset(key="chat", upstream=texts, prompt="{text}")
    result = materialize([texts, chat], partitions=keys)
    for key in keys:
        event = next(
            e for e in result.get_asset_materialization_events() if e.partition == key and e.asset_key.path == ["chat"]
        )
        expected = server.usage_where(lambda b, k=key: b["messages"][0]["content"].startswith(f"{k} "))
        assert expected.calls == 8 and usage_metadata(event)["openai.total_tokens"] == expected.total_tokens


def test_a_shared_client_refuses_a_request_nobody_is_billed_for(openai_resource, server):
    async def send() -> None:
        async with openai_resource.session.async_client(None) as client:  # shared: no usage of its own
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "whose?"}])

    with pytest.raises(UnattributedRequestError, match="billed_to"):
        asyncio.run(send())
    assert server.stats.requests == []  # refused before it left the machine


def test_embedding_batches_respect_input_and_token_limits(server, materialize):
    texts = ["word " * 300] * 7 + ["short"] * 5  # ~500 estimated tokens each for the long ones

    @dg.asset
    def docs() -> pd.DataFrame:
        return pd.DataFrame({"answer": texts})

    vectors = build_embeddings_asset(key="vectors", upstream=docs)
    config = {"ops": {"vectors": {"config": {"max_batch_tokens": 1200, "batch_size": 4}}}}
    result = materialize([docs, vectors], run_config=config)
    sizes = [len(r["body"]["input"]) for r in server.stats.requests]
    assert sorted(sizes) == [2, 2, 2, 2, 4]  # two long texts per 1,200 tokens; 4 inputs at most
    assert result.output_for_node("vectors")["text"].tolist() == texts
    assert pack_batches(["a"] * 5000, 5000, 10**9)[0][1] == ["a"] * 2048  # API's input cap


def test_the_engine_in_your_own_asset(server, materialize):
    """``Engine`` takes the resource (or its session) and bills the asset it runs in."""

    @dg.asset
    def own(context: dg.AssetExecutionContext, openai: OpenAIResource) -> list[str]:
        messages = ({"role": "user", "content": "engine question"},)
        requests = [
            ChatRequest(None, i, "engine question", messages, {"model": "gpt-4o-mini", "seed": i}) for i in range(3)
        ]
        return [row.answer for row in Engine(openai, context).chat(requests)]

    result = materialize([own])
    assert len(result.output_for_node("own")) == 3
    assert usage_metadata(event_of(result, "own"))["openai.calls"] == 3 == server.usage.calls
