"""Every call shape of the OpenAI SDK is metered exactly: streams (with and without usage),
``usage: null``, ``with_raw_response``, ``parse()``, the Responses API, embeddings, legacy
completions, the async client, cached and reasoning tokens."""

import asyncio

import dagster as dg
import pydantic

from llm_assets import OpenAIResource
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets_tests.http import MODEL, SERVED, ask, materialize_one


def test_stream_with_include_usage(server, materialize):
    @dg.asset
    def streamed(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            stream = ask(client, "stream this answer", stream=True, stream_options={"include_usage": True})
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    recorded = materialize_one(materialize, streamed)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.completion_tokens"] > 0


def test_stream_without_usage_counts_the_call_and_no_tokens(server, materialize):
    @dg.asset
    def streamed(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            for _ in ask(client, "stream without usage", stream=True):
                pass

    recorded = materialize_one(materialize, streamed)
    assert recorded[f"openai.{SERVED}.calls"] == 1
    assert recorded[f"openai.{SERVED}.calls_without_usage"] == 1
    assert recorded["openai.total_tokens"] == 0 == server.usage.total_tokens


def test_response_with_null_usage(server, materialize):
    server.usage_null = True

    @dg.asset
    def nulls(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            assert ask(client, "no usage please").usage is None
            client.embeddings.create(model="text-embedding-3-small", input=["x"])

    recorded = materialize_one(materialize, nulls)
    assert recorded["openai.calls"] == 2
    assert recorded["openai.calls_without_usage"] == 2
    assert recorded["openai.total_tokens"] == 0


def test_with_raw_response(server, materialize):
    @dg.asset
    def raw(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            response = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "raw response please"}]
            )
            assert response.parse().usage.total_tokens > 0

    assert materialize_one(materialize, raw) == server.usage.to_metadata(PRICES)


def test_chat_completions_parse(server, materialize):
    class Verdict(pydantic.BaseModel):
        answer: str

    @dg.asset
    def parsed(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            completion = client.chat.completions.parse(
                model=MODEL,
                messages=[{"role": "user", "content": "structured please"}],
                response_format=Verdict,
            )
            return completion.choices[0].message.parsed.answer

    recorded = materialize_one(materialize, parsed)
    assert recorded == server.usage.to_metadata(PRICES) and recorded["openai.calls"] == 1


def test_responses_api_plain_and_streamed(server, materialize):
    @dg.asset
    def responses(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            first = client.responses.create(model=MODEL, input="responses api question")
            with client.responses.stream(model=MODEL, input="streamed responses question") as stream:
                for _ in stream:
                    pass
            return first.output_text

    recorded = materialize_one(materialize, responses)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 2
    assert recorded[f"openai.{SERVED}.completion_tokens"] > 0


def test_embeddings_have_no_completion_tokens(server, materialize):
    @dg.asset
    def embedded(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            client.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])

    recorded = materialize_one(materialize, embedded)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded["openai.text-embedding-3-small.prompt_tokens"] == 3
    assert "openai.text-embedding-3-small.completion_tokens" not in recorded


def test_legacy_completions(server, materialize):
    @dg.asset
    def legacy(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            client.completions.create(model=MODEL, prompt="complete this sentence", max_tokens=5)

    assert materialize_one(materialize, legacy) == server.usage.to_metadata(PRICES)


def test_async_client(server, materialize):
    @dg.asset
    def concurrent(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        async def main():
            async with openai.get_async_client(context) as client:
                await asyncio.gather(
                    *[
                        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q {i}"}])
                        for i in range(5)
                    ]
                )

        asyncio.run(main())

    recorded = materialize_one(materialize, concurrent)
    assert recorded == server.usage.to_metadata(PRICES) and recorded["openai.calls"] == 5


def test_cached_and_reasoning_tokens_are_recorded_where_reported(server, materialize):
    server.report_details = True

    @dg.asset
    def detailed(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            ask(client, "a question long enough to have cached tokens in it")
            client.responses.create(model=MODEL, input="another long question with cached tokens")

    recorded = materialize_one(materialize, detailed)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.cached_tokens"] > 0
    assert recorded[f"openai.{SERVED}.reasoning_tokens"] > 0
    assert recorded["openai.cached_tokens"] == recorded[f"openai.{SERVED}.cached_tokens"]
