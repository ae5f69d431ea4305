"""Where dagster-openai code behaves the same with ``llm_assets`` (the client outlives its
block, the multi-asset error type, ``with_usage_metadata``) and where the usage it misses
(after the block, ops, graph-backed assets, stacked wrappers, streams, ``usage: null``)
lands exactly, on real Dagster contexts, compared with the scripted server's own totals."""

import asyncio
import inspect
import logging

import dagster as dg
import dagster_openai
import openai
import pytest

import llm_assets
from llm_assets import LLMAssetsError, OpenAIResource, with_usage_metadata
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets_tests.http import MODEL, SERVED, ask, materialize_one
from llm_assets_tests.support import event_of, usage_metadata

KEY = "sk-test-not-a-real-key"


def prompt_has(text: str):
    """A predicate on request bodies: the chat prompt contains ``text``."""
    return lambda body: text in str(body.get("messages") or body.get("input") or body.get("prompt"))


def prompt_starts(text: str):
    """A predicate on chat request bodies: the prompt starts with ``text``."""
    return lambda body: body["messages"][0]["content"].startswith(text)


def output_metadata(result: dg.ExecuteInProcessResult, step: str, output: str = "result") -> dict:
    """The usage metadata of an op's output event."""
    (event,) = [
        e
        for e in result.all_events
        if e.is_successful_output
        and e.step_key == step
        and e.event_specific_data.step_output_handle.output_name == output
    ]
    return {k: v.value for k, v in event.event_specific_data.metadata.items() if k.startswith("openai.")}


def read(stream) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


# -- 1. the client outlives its block; what it spends later lands on the same asset -----------


def test_client_stays_usable_after_its_block_and_later_usage_lands_on_the_asset(server, materialize):
    @dg.asset
    def after(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            ask(client, "inside the block")
            started = ask(client, "streamed inside, read after", stream=True, stream_options={"include_usage": True})
        ask(client, "after the block")  # dagster-openai's client works here: so must ours
        assert read(started)
        read(ask(client, "streamed after the block", stream=True, stream_options={"include_usage": True}))
        client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "raw after the block"}]
        ).parse()

    recorded = materialize_one(materialize, after)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 5 and recorded["openai.total_tokens"] == server.usage.total_tokens


def test_later_usage_lands_on_the_blocks_own_partition(server, materialize):
    partitions = dg.StaticPartitionsDefinition(["a", "bb", "ccc"])

    @dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def per_partition(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        clients = {}
        for key in context.partition_keys:
            with openai.get_client(context, partition_key=key) as clients[key]:
                ask(clients[key], f"partition {key} in its block")
        for key, client in clients.items():  # every block is over
            for _ in range(len(key)):
                ask(client, f"partition {key} after " + "word " * len(key))

    result = materialize([per_partition], partitions=["a", "ccc"])
    events = {e.partition: usage_metadata(e) for e in result.get_asset_materialization_events()}
    for key, recorded in events.items():
        assert recorded == server.usage_where(prompt_has(f"partition {key} ")).to_metadata(PRICES)
        assert recorded[f"openai.{SERVED}.calls"] == 1 + len(key)
    assert sum(e["openai.total_tokens"] for e in events.values()) == server.usage.total_tokens


def test_later_usage_of_a_multi_asset_client_stays_on_its_asset(server, materialize):
    @dg.multi_asset(specs=[dg.AssetSpec("m1"), dg.AssetSpec("m2")])
    def pair(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client_for_asset(context, dg.AssetKey("m1")) as first:
            ask(first, "for m1 in its block")
        with openai.get_client_for_asset(context, dg.AssetKey("m2")) as second:
            ask(second, "for m2 in its block")
        ask(first, "for m1 after both blocks, a longer prompt")
        return dg.MaterializeResult(asset_key="m1"), dg.MaterializeResult(asset_key="m2")

    result = materialize([pair])
    for key in ("m1", "m2"):
        assert usage_metadata(event_of(result, key)) == server.usage_where(prompt_has(f"for {key} ")).to_metadata(
            PRICES
        )
    assert usage_metadata(event_of(result, "m1"))[f"openai.{SERVED}.calls"] == 2


def test_usage_after_the_asset_was_emitted_is_logged_not_lost_silently(server, materialize, instance):
    @dg.multi_asset(specs=[dg.AssetSpec("early"), dg.AssetSpec("late")])
    def staged(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client_for_asset(context, dg.AssetKey("early")) as client:
            ask(client, "early, in time")
        yield dg.MaterializeResult(asset_key="early")
        ask(client, "early, after its materialization")  # cannot reach it any more
        yield dg.MaterializeResult(asset_key="late")

    result = materialize([staged])
    assert usage_metadata(event_of(result, "early")) == server.usage_where(prompt_has("in time")).to_metadata(PRICES)
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("arrived after asset early was emitted" in message for message in logs)


def test_client_refuses_requests_once_the_resource_is_torn_down_and_its_pool_is_closed(server):
    resource = OpenAIResource(api_key=KEY, base_url=server.base_url)
    with dg.build_resources({"openai": resource}) as built:
        with built.openai.get_client(dg.build_op_context()) as client:
            ask(client, "inside the block")
        ask(client, "after the block")
        pool = built.openai.session.sync_pool()
        assert pool._inner._pool.connections  # a keep-alive connection to the server
    assert pool._inner._pool.connections == []  # the session closed its pool at teardown
    with pytest.raises(RuntimeError, match="client has been closed"):  # as httpx says of a closed client
        ask(client, "after teardown")
    assert server.usage.calls == 2 and pool._inner._pool.connections == []


# -- 2. the multi-asset error is dagster-openai's type too -------------------------------------


def test_multi_asset_without_asset_key_raises_dagsters_invariant_error_too(server, materialize):
    caught = []

    @dg.multi_asset(specs=[dg.AssetSpec("x1"), dg.AssetSpec("x2")])
    def pair(context: dg.AssetExecutionContext, openai: OpenAIResource):
        try:
            with openai.get_client(context) as client:
                ask(client, "never sent")
        except dg.DagsterInvariantViolationError as error:  # what code written for dagster-openai catches
            caught.append(error)
        return dg.MaterializeResult(asset_key="x1"), dg.MaterializeResult(asset_key="x2")

    assert materialize([pair]).success
    (error,) = caught
    assert isinstance(error, LLMAssetsError) and isinstance(error, ValueError)
    assert "get_client_for_asset(context, asset_key)" in str(error)
    assert server.stats.requests == []


# -- 3. with_usage_metadata: dagster-openai's signature, exact usage ---------------------------


def test_with_usage_metadata_has_dagster_openais_signature():
    assert "with_usage_metadata" in llm_assets.__all__
    ours = inspect.signature(with_usage_metadata).parameters
    theirs = inspect.signature(dagster_openai.with_usage_metadata).parameters
    assert list(ours) == list(theirs) == ["context", "output_name", "func"]


def test_stacked_wrappers_count_each_call_once(server, materialize):
    @dg.asset
    def stacked(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            create = with_usage_metadata(context, None, client.chat.completions.create)
            create = with_usage_metadata(context, None, create)  # dagster-openai counts this twice
            for text in ("first stacked call", "second stacked call"):
                create(model=MODEL, messages=[{"role": "user", "content": text}])
        with openai.get_client(context) as client:
            ask(client, "a plain call in a second block")

    recorded = materialize_one(materialize, stacked)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 3


@pytest.mark.parametrize("shape", ["usage_null", "stream", "raw", "responses", "embeddings", "completions"])
def test_wrapped_call_shapes_are_exact(server, materialize, shape):
    server.usage_null = shape == "usage_null"

    @dg.asset
    def shaped(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            if shape == "stream":
                create = with_usage_metadata(context, "result", client.chat.completions.create)
                read(create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))
                stream_options = {"include_usage": True}
                read(
                    create(
                        model=MODEL,
                        messages=[{"role": "user", "content": "hi"}],
                        stream=True,
                        stream_options=stream_options,
                    )
                )
            elif shape == "raw":
                create = with_usage_metadata(context, "result", client.chat.completions.with_raw_response.create)
                create(model=MODEL, messages=[{"role": "user", "content": "raw"}]).parse()
            elif shape == "responses":
                with_usage_metadata(context, "result", client.responses.create)(model=MODEL, input="a response")
            elif shape == "embeddings":
                create = with_usage_metadata(context, "result", client.embeddings.create)
                create(model="text-embedding-3-small", input=["one", "two words"])
            elif shape == "completions":
                create = with_usage_metadata(context, "result", client.completions.create)
                create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
            else:
                with_usage_metadata(context, "result", client.chat.completions.create)(
                    model=MODEL, messages=[{"role": "user", "content": "no usage reported"}]
                )

    recorded = materialize_one(materialize, shaped)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded["openai.calls"] == server.usage.calls > 0
    if shape in ("usage_null", "stream"):
        assert recorded["openai.calls_without_usage"] == 1  # counted as a call, not guessed


def test_wrapper_bills_its_output_not_the_block_it_was_made_in(server, materialize):
    @dg.multi_asset(specs=[dg.AssetSpec("m1"), dg.AssetSpec("m2")])
    def pair(context: dg.AssetExecutionContext, openai: OpenAIResource):
        with openai.get_client_for_asset(context, dg.AssetKey("m1")) as client:
            ask(client, "for m1 through the block")
            for_m2 = with_usage_metadata(context, "m2", client.chat.completions.create)
            for_m2(model=MODEL, messages=[{"role": "user", "content": "for m2 through the wrapper"}])
        for_m2(model=MODEL, messages=[{"role": "user", "content": "for m2 after the block"}])
        return dg.MaterializeResult(asset_key="m1"), dg.MaterializeResult(asset_key="m2")

    result = materialize([pair])
    for key, calls in (("m1", 1), ("m2", 2)):
        recorded = usage_metadata(event_of(result, key))
        assert recorded == server.usage_where(prompt_has(f"for {key} ")).to_metadata(PRICES)
        assert recorded[f"openai.{SERVED}.calls"] == calls


def test_wrapping_a_client_the_library_did_not_make_reads_its_responses(server, materialize, instance):
    @dg.asset
    def foreign(context: dg.AssetExecutionContext) -> None:
        client = openai.OpenAI(api_key=KEY, base_url=server.base_url)
        create = with_usage_metadata(context, None, with_usage_metadata(context, None, client.chat.completions.create))
        create(model=MODEL, messages=[{"role": "user", "content": "from a foreign client"}])
        server.usage_null = True
        create(model=MODEL, messages=[{"role": "user", "content": "no usage this time"}])
        server.usage_null = False
        stream = create(model=MODEL, messages=[{"role": "user", "content": "streamed"}], stream=True)
        read(stream)  # its usage cannot be read from the returned object: logged, not guessed
        client.close()

    result = materialize([foreign])
    billed = server.usage_where(lambda body: not body.get("stream"))
    assert usage_metadata(event_of(result, "foreign")) == billed.to_metadata(PRICES)
    assert billed.calls == 2 and billed.total("calls_without_usage") == 1
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("can't read the usage of a stream" in message for message in logs)


def test_wrapped_async_method_is_exact(server, materialize):
    @dg.asset
    def concurrent(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        async def main() -> None:
            async with openai.get_async_client(context) as client:
                create = with_usage_metadata(context, None, client.chat.completions.create)
                texts = [f"async question {i} " + "word " * i for i in range(4)]
                await asyncio.gather(*(create(model=MODEL, messages=[{"role": "user", "content": t}]) for t in texts))

        asyncio.run(main())

    recorded = materialize_one(materialize, concurrent)
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 4


def test_dagster_openais_documented_fine_tuning_example_runs_and_reads_nothing_returned(server, materialize):
    def fine_tuning(handler, body):
        if not handler.path.endswith("/fine_tuning/jobs"):
            return False
        job = {"id": "ftjob-1", "object": "fine_tuning.job", "model": body["model"], "created_at": 0}
        job |= {"status": "queued", "training_file": body["training_file"], "seed": 1, "organization_id": "org"}
        job["usage"] = {"prompt_tokens": 99, "total_tokens": 99}  # read from the object, it would count
        handler._json(200, job)
        return True

    server.fault = fine_tuning

    @dg.asset
    def openai_asset(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            client.fine_tuning.jobs.create = with_usage_metadata(
                context=context, output_name="result", func=client.fine_tuning.jobs.create
            )
            client.fine_tuning.jobs.create(model="gpt-3.5-turbo", training_file="some_training_file")
            ask(client, "and a billed call")

    recorded = materialize_one(materialize, openai_asset)
    assert server.stats.paths["/v1/fine_tuning/jobs"] == 1
    assert recorded == server.usage.to_metadata(PRICES)  # the chat call only: a job creation bills no tokens
    assert recorded["openai.calls"] == 1


def test_with_usage_metadata_refuses_a_context_that_is_neither_asset_nor_op():
    with pytest.raises(dg.DagsterInvariantViolationError, match="AssetExecutionContext or OpExecutionContext"):
        with_usage_metadata(object(), None, print)


# -- 5. ops and graph-backed assets --------------------------------------------------------------


def test_usage_in_an_op_of_a_graph_backed_asset_lands_on_the_asset(server, materialize):
    @dg.op
    def prompt_op() -> str:
        return "a question from the graph"

    @dg.op
    def answer_op(context: dg.OpExecutionContext, openai: OpenAIResource, prompt: str) -> str:
        with openai.get_client(context) as client:
            answer = ask(client, prompt).choices[0].message.content
        ask(client, prompt + " and after the block")
        return answer

    @dg.graph_asset
    def graph_answer():
        return answer_op(prompt_op())

    result = materialize([graph_answer])
    recorded = usage_metadata(event_of(result, "graph_answer"))
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 2


def test_usage_in_an_inner_op_of_a_graph_backed_asset_lands_on_its_own_output(server, materialize):
    @dg.op
    def inner_op(context: dg.OpExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            return ask(client, "from the inner op").choices[0].message.content

    @dg.op
    def outer_op(context: dg.OpExecutionContext, openai: OpenAIResource, text: str) -> str:
        with openai.get_client(context) as client:
            return ask(client, f"from the outer op: {text}").choices[0].message.content

    @dg.graph_asset
    def two_steps():
        return outer_op(inner_op())

    result = materialize([two_steps])
    inner, outer = (
        server.usage_where(prompt_starts("from the inner")),
        server.usage_where(prompt_starts("from the outer")),
    )
    assert output_metadata(result, "two_steps.inner_op") == inner.to_metadata(PRICES) and inner.calls == 1
    assert usage_metadata(event_of(result, "two_steps")) == outer.to_metadata(PRICES) and outer.calls == 1


def test_usage_in_a_plain_op_lands_on_its_output(server, openai_resource, instance):
    @dg.op
    def ask_op(context: dg.OpExecutionContext, openai: OpenAIResource) -> str:
        with openai.get_client(context) as client:
            ask(client, "from an op")
        with openai.get_client(context) as client:
            return ask(client, "from an op, second block").choices[0].message.content

    @dg.job
    def ask_job():
        ask_op()

    result = ask_job.execute_in_process(resources={"openai": openai_resource}, instance=instance)
    recorded = output_metadata(result, "ask_op")
    assert recorded == server.usage.to_metadata(PRICES)
    assert recorded[f"openai.{SERVED}.calls"] == 2


def test_an_op_with_several_outputs_names_one_with_with_usage_metadata(server, openai_resource, instance):
    @dg.op(out={"a": dg.Out(), "b": dg.Out()})
    def two_outputs(context: dg.OpExecutionContext, openai: OpenAIResource):
        with openai.get_client(context) as client:
            ask(client, "not attributed: two outputs and none named")
            create = with_usage_metadata(context, "b", client.chat.completions.create)
            create(model=MODEL, messages=[{"role": "user", "content": "for output b"}])
        return 1, 2

    @dg.job
    def job():
        two_outputs()

    result = job.execute_in_process(resources={"openai": openai_resource}, instance=instance)
    assert output_metadata(result, "two_outputs", "a") == {}
    assert output_metadata(result, "two_outputs", "b") == server.usage_where(prompt_has("output b")).to_metadata(PRICES)
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("not attributed to an asset or output" in message for message in logs)


def test_an_op_with_a_dynamic_output_logs_its_usage(server, openai_resource, instance):
    @dg.op(out=dg.DynamicOut())
    def fan_out(context: dg.OpExecutionContext, openai: OpenAIResource):
        with openai.get_client(context) as client:
            ask(client, "before fanning out")
        yield dg.DynamicOutput(1, mapping_key="one")

    @dg.job
    def job():
        fan_out()

    result = job.execute_in_process(resources={"openai": openai_resource}, instance=instance)
    assert result.success and server.usage.calls == 1
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("not attributed to an asset or output" in message for message in logs)
