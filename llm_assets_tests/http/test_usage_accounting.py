"""Usage metadata equals what the scripted server reported, in every call shape."""

import asyncio

import dagster as dg
import pydantic
import pytest

from llm_assets import OpenAIResource
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets_tests.conftest import usage_metadata

MODEL = "gpt-4o-mini"
SERVED = "gpt-4o-mini-2024-07-18"


def ask(client, text: str, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **kwargs)


def materialize_one(asset, openai_resource, instance, **kwargs) -> dict:
    result = dg.materialize([asset], resources={"openai": openai_resource}, instance=instance, **kwargs)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return usage_metadata(event)


def test_two_get_client_blocks_in_one_asset(server, openai_resource, instance):
    @dg.asset
    def two_blocks(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client(context) as client:
            ask(client, "first question here")
        with openai.get_client(context) as client:
            ask(client, "a second and longer question here")

    recorded = materialize_one(two_blocks, openai_resource, instance)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 2
    assert recorded["openai.total_tokens"] == server.usage.total_tokens > 0


def test_model_key_is_the_model_the_server_returned(server, openai_resource, instance):
    @dg.asset
    def one(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client(context) as client:
            ask(client, "hello")

    recorded = materialize_one(one, openai_resource, instance)
    assert f"openai.{SERVED}.prompt_tokens" in recorded
    assert f"openai.{MODEL}.prompt_tokens" not in recorded


def test_multi_asset_usage_lands_on_each_asset(server, openai_resource, instance):
    @dg.multi_asset(specs=[dg.AssetSpec("m1"), dg.AssetSpec("m2")])
    def pair(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client_for_asset(context, dg.AssetKey("m1")) as client:
            ask(client, "for m1 only")
        with openai.get_client_for_asset(context, dg.AssetKey("m2")) as client:
            ask(client, "for m2, which is a longer prompt")
            ask(client, "for m2 again")
        return dg.MaterializeResult(asset_key="m1"), dg.MaterializeResult(asset_key="m2")

    result = dg.materialize([pair], resources={"openai": openai_resource}, instance=instance)
    by_key = {e.asset_key.to_user_string(): usage_metadata(e) for e in result.get_asset_materialization_events()}
    m1 = server.usage_where(lambda b: "m1" in b["messages"][0]["content"])
    m2 = server.usage_where(lambda b: "m2" in b["messages"][0]["content"])
    assert by_key["m1"] == m1.to_metadata(PRICES) and m1.calls == 1
    assert by_key["m2"] == m2.to_metadata(PRICES) and m2.calls == 2


def test_multi_asset_without_asset_key_is_a_clear_error(openai_resource, instance):
    @dg.multi_asset(specs=[dg.AssetSpec("x1"), dg.AssetSpec("x2")])
    def pair(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client(context):
            pass

    with pytest.raises(Exception, match="get_client_for_asset"):
        dg.materialize([pair], resources={"openai": openai_resource}, instance=instance)


def test_several_assets_in_one_in_process_run(server, openai_resource, instance):
    @dg.asset
    def first(context: dg.AssetExecutionContext, openai: OpenAIResource) -> int:
        with openai.get_client(context) as client:
            ask(client, "first asset")
        return 1

    @dg.asset
    def second(context: dg.AssetExecutionContext, openai: OpenAIResource, first: int) -> int:
        with openai.get_client(context) as client:
            ask(client, "second asset asks more words than the first")
            ask(client, "second asset again")
        return 2

    result = dg.materialize([first, second], resources={"openai": openai_resource}, instance=instance)
    assert result.success
    by_key = {e.asset_key.path[-1]: usage_metadata(e) for e in result.get_asset_materialization_events()}
    assert by_key["first"] == server.usage_where(lambda b: "first asset" in str(b)).to_metadata(PRICES)
    assert by_key["second"] == server.usage_where(lambda b: "second asset" in str(b)).to_metadata(PRICES)
    assert by_key["second"][f"openai.{SERVED}.calls"] == 2


def test_one_run_many_partitions_each_gets_its_own_usage(server, openai_resource, instance):
    partitions = dg.StaticPartitionsDefinition(["a", "bb", "ccc"])

    @dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def per_partition(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        for key in context.partition_keys:
            with openai.get_client(context, partition_key=key) as client:
                for _ in range(len(key)):  # partition "ccc" makes 3 calls
                    ask(client, f"partition {key} " + "word " * len(key))

    result = dg.materialize(
        [per_partition],
        resources={"openai": openai_resource},
        instance=instance,
        tags={"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "ccc"},
    )
    events = {e.partition: usage_metadata(e) for e in result.get_asset_materialization_events()}
    assert set(events) == {"a", "bb", "ccc"}
    for key, recorded in events.items():
        expected = server.usage_where(lambda b, k=key: f"partition {k} " in b["messages"][0]["content"])
        assert recorded == expected.to_metadata(PRICES)
        assert recorded[f"openai.{SERVED}.calls"] == len(key)
    assert sum(e["openai.total_tokens"] for e in events.values()) == server.usage.total_tokens


def test_stream_with_include_usage(server, openai_resource, instance):
    @dg.asset
    def streamed(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            stream = ask(client, "stream this answer", stream=True, stream_options={"include_usage": True})
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    recorded = materialize_one(streamed, openai_resource, instance)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.completion_tokens"] > 0


def test_stream_without_usage_counts_the_call_and_no_tokens(server, openai_resource, instance):
    @dg.asset
    def streamed(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            for _ in ask(client, "stream without usage", stream=True):
                pass

    recorded = materialize_one(streamed, openai_resource, instance)
    assert recorded[f"openai.{SERVED}.calls"] == 1
    assert recorded[f"openai.{SERVED}.calls_without_usage"] == 1
    assert recorded["openai.total_tokens"] == 0 == server.usage.total_tokens


def test_response_with_null_usage(server, openai_resource, instance):
    server.usage_null = True

    @dg.asset
    def nulls(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            assert ask(client, "no usage please").usage is None
            client.embeddings.create(model="text-embedding-3-small", input=["x"])

    recorded = materialize_one(nulls, openai_resource, instance)
    assert recorded["openai.calls"] == 2
    assert recorded["openai.calls_without_usage"] == 2
    assert recorded["openai.total_tokens"] == 0


def test_with_raw_response(server, openai_resource, instance):
    @dg.asset
    def raw(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            response = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "raw response please"}]
            )
            assert response.parse().usage.total_tokens > 0

    assert materialize_one(raw, openai_resource, instance) == server.usage.to_metadata(PRICES)


def test_chat_completions_parse(server, openai_resource, instance):
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

    recorded = materialize_one(parsed, openai_resource, instance)
    assert recorded == server.usage.to_metadata(PRICES) and recorded["openai.calls"] == 1


def test_responses_api_plain_and_streamed(server, openai_resource, instance):
    @dg.asset
    def responses(context: dg.AssetExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            first = client.responses.create(model=MODEL, input="responses api question")
            with client.responses.stream(model=MODEL, input="streamed responses question") as stream:
                for _ in stream:
                    pass
            return first.output_text

    recorded = materialize_one(responses, openai_resource, instance)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 2
    assert recorded[f"openai.{SERVED}.completion_tokens"] > 0


def test_embeddings_have_no_completion_tokens(server, openai_resource, instance):
    @dg.asset
    def embedded(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            client.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])

    recorded = materialize_one(embedded, openai_resource, instance)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded["openai.text-embedding-3-small.prompt_tokens"] == 3
    assert "openai.text-embedding-3-small.completion_tokens" not in recorded


def test_legacy_completions(server, openai_resource, instance):
    @dg.asset
    def legacy(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            client.completions.create(model=MODEL, prompt="complete this sentence", max_tokens=5)

    assert materialize_one(legacy, openai_resource, instance) == server.usage.to_metadata(PRICES)


def test_async_client(server, openai_resource, instance):
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

    recorded = materialize_one(concurrent, openai_resource, instance)
    assert recorded == server.usage.to_metadata(PRICES) and recorded["openai.calls"] == 5


def test_cached_and_reasoning_tokens_are_recorded_where_reported(server, openai_resource, instance):
    server.report_details = True

    @dg.asset
    def detailed(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            ask(client, "a question long enough to have cached tokens in it")
            client.responses.create(model=MODEL, input="another long question with cached tokens")

    recorded = materialize_one(detailed, openai_resource, instance)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.cached_tokens"] > 0
    assert recorded[f"openai.{SERVED}.reasoning_tokens"] > 0
    assert recorded["openai.cached_tokens"] == recorded[f"openai.{SERVED}.cached_tokens"]


def test_failed_requests_bill_nothing(server, openai_resource, instance):
    def reject(handler, body):
        handler._json(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
        return True

    server.fault = reject

    @dg.asset
    def rejected(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client, pytest.raises(Exception, match="bad request"):
            ask(client, "refused")

    recorded = materialize_one(rejected, openai_resource, instance)
    assert recorded["openai.calls"] == 0 and recorded["openai.total_tokens"] == 0


def test_shared_client_is_never_patched(openai_resource, instance):
    seen = []

    @dg.asset
    def inspect(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        for _ in range(2):
            with openai.get_client(context) as client:
                seen.append(client.chat.completions.create)

    materialize_one(inspect, openai_resource, instance)
    from openai.resources.chat.completions import Completions

    assert all(m.__func__ is Completions.create for m in seen)  # the SDK's own method, unwrapped


def test_op_context_gets_a_working_client(server, openai_resource):
    @dg.op
    def ask_op(context: dg.OpExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            return ask(client, "from an op").choices[0].message.content

    @dg.job
    def ask_job():
        ask_op()

    result = ask_job.execute_in_process(resources={"openai": openai_resource})
    assert result.success and result.output_for_node("ask_op").startswith("Answer")
    assert server.usage.calls == 1
