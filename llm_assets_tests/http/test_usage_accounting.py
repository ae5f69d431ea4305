"""Usage lands on the right asset and partition, once: blocks, multi-assets, several assets
in one run, single-run backfills, failures, and a client that is never patched."""

import dagster as dg
import pytest

from llm_assets import OpenAIResource
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets_tests.http import MODEL, SERVED, ask, materialize_one
from llm_assets_tests.support import usage_metadata


def test_two_get_client_blocks_in_one_asset(server, materialize):
    @dg.asset
    def two_blocks(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client(context) as client:
            ask(client, "first question here")
        with openai.get_client(context) as client:
            ask(client, "a second and longer question here")

    recorded = materialize_one(materialize, two_blocks)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 2
    assert recorded["openai.total_tokens"] == server.usage.total_tokens > 0


def test_model_key_is_the_model_the_server_returned(server, materialize):
    @dg.asset
    def one(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client(context) as client:
            ask(client, "hello")

    recorded = materialize_one(materialize, one)
    assert f"openai.{SERVED}.prompt_tokens" in recorded
    assert f"openai.{MODEL}.prompt_tokens" not in recorded


def test_multi_asset_usage_lands_on_each_asset(server, materialize):
    @dg.multi_asset(specs=[dg.AssetSpec("m1"), dg.AssetSpec("m2")])
    def pair(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client_for_asset(context, dg.AssetKey("m1")) as client:
            ask(client, "for m1 only")
        with openai.get_client_for_asset(context, dg.AssetKey("m2")) as client:
            ask(client, "for m2, which is a longer prompt")
            ask(client, "for m2 again")
        return dg.MaterializeResult(asset_key="m1"), dg.MaterializeResult(asset_key="m2")

    result = materialize([pair])
    by_key = {e.asset_key.to_user_string(): usage_metadata(e) for e in result.get_asset_materialization_events()}
    m1 = server.usage_where(lambda b: "m1" in b["messages"][0]["content"])
    m2 = server.usage_where(lambda b: "m2" in b["messages"][0]["content"])
    assert by_key["m1"] == m1.to_metadata(PRICES) and m1.calls == 1
    assert by_key["m2"] == m2.to_metadata(PRICES) and m2.calls == 2


def test_multi_asset_without_asset_key_is_a_clear_error(materialize):
    @dg.multi_asset(specs=[dg.AssetSpec("x1"), dg.AssetSpec("x2")])
    def pair(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client(context):
            pass

    with pytest.raises(Exception, match="get_client_for_asset"):
        materialize([pair])


def test_several_assets_in_one_in_process_run(server, materialize):
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

    result = materialize([first, second])
    assert result.success
    by_key = {e.asset_key.path[-1]: usage_metadata(e) for e in result.get_asset_materialization_events()}
    assert by_key["first"] == server.usage_where(lambda b: "first asset" in str(b)).to_metadata(PRICES)
    assert by_key["second"] == server.usage_where(lambda b: "second asset" in str(b)).to_metadata(PRICES)
    assert by_key["second"][f"openai.{SERVED}.calls"] == 2


def test_one_run_many_partitions_each_gets_its_own_usage(server, materialize):
    partitions = dg.StaticPartitionsDefinition(["a", "bb", "ccc"])

    @dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def per_partition(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        for key in context.partition_keys:
            with openai.get_client(context, partition_key=key) as client:
                for _ in range(len(key)):  # partition "ccc" makes 3 calls
                    ask(client, f"partition {key} " + "word " * len(key))

    result = materialize([per_partition], partitions=["a", "ccc"])
    events = {e.partition: usage_metadata(e) for e in result.get_asset_materialization_events()}
    assert set(events) == {"a", "bb", "ccc"}
    for key, recorded in events.items():
        expected = server.usage_where(lambda b, k=key: f"partition {k} " in b["messages"][0]["content"])
        assert recorded == expected.to_metadata(PRICES)
        assert recorded[f"openai.{SERVED}.calls"] == len(key)
    assert sum(e["openai.total_tokens"] for e in events.values()) == server.usage.total_tokens


def test_failed_requests_bill_nothing(server, materialize):
    def reject(handler, body):
        handler._json(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
        return True

    server.fault = reject

    @dg.asset
    def rejected(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client, pytest.raises(Exception, match="bad request"):
            ask(client, "refused")

    recorded = materialize_one(materialize, rejected)
    assert recorded["openai.calls"] == 0 and recorded["openai.total_tokens"] == 0


def test_shared_client_is_never_patched(materialize):
    seen = []

    @dg.asset
    def inspect(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        for _ in range(2):
            with openai.get_client(context) as client:
                seen.append(client.chat.completions.create)

    materialize_one(materialize, inspect)
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
