# Copyright 2025 Dagster Labs, Inc. (formerly Elementl, Inc.) and the Dagster authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
#
# Ported from dagster-openai 0.29.27, dagster_openai_tests/test_resources.py (its 13 tests,
# same names, same order, same structure), to run against llm_assets.OpenAIResource and
# llm_assets.with_usage_metadata. Changes:
# - imports: llm_assets instead of dagster_openai; the resource gets base_url= the
#   scripted loopback server (llm_assets.testing), as every test now talks real HTTP;
# - dropped: patching dagster_openai.resources.Client (no mocked SDK client) and
#   dagster_openai.resources.OpenAIResource._wrap_with_usage_metadata (a private method
#   llm_assets does not have: it never patches a client). The assertions on them
#   (constructor arguments, wrapper call counts) are replaced by assertions on the real
#   client's settings, on the requests the server received, on the SDK's own methods being
#   left unwrapped, and on the usage metadata equalling the server's own totals;
# - the mocked responses of client.fine_tuning.jobs.create (a token count of 1 each) are
#   replaced by real chat completions (the scripted server has no fine-tuning route, and a
#   fine-tuning job carries no usage); expected token counts are the server's;
# - usage metadata is asserted on add_asset_metadata, which llm_assets uses in an asset so
#   that get_client blocks and wrapped calls share one running total (dagster-openai used
#   add_output_metadata), and it holds the library's totals and cost keys as well;
# - test_openai_resource_with_partitioned_asset: its one mocked context serves the five
#   assets of each run, so the metadata asserted is that run's running total;
# - test_openai_wrapper_with_op: dagster-openai refuses with_usage_metadata in an op
#   (DagsterInvariantViolationError); llm_assets records the usage on the op's output, so
#   the test runs a real op context and asserts that, and keeps the error for an output
#   the op does not have;
# - formatting: this project's ruff (line length 120; one nested `with` joined, SIM117).
"""dagster-openai 0.29.27's own tests, run against ``llm_assets`` over real HTTP."""

from unittest.mock import ANY, MagicMock, patch

import pytest
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    Definitions,
    OpExecutionContext,
    asset,
    define_asset_job,
    graph_asset,
    materialize_to_memory,
    multi_asset,
    op,
)
from dagster._core.definitions.partitions.definition import StaticPartitionsDefinition
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.execution.context.init import build_init_resource_context
from dagster._utils.test import wrap_op_in_graph_and_execute
from openai.resources.chat.completions import Completions

from llm_assets import OpenAIResource, with_usage_metadata
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.engine import Usage

TEST_MODEL = "test_model"
TEST_ANOTHER_MODEL = "test_another_model"

TEST_MODEL_CALLS_KEY = f"openai.{TEST_MODEL}.calls"
TEST_MODEL_TOTAL_TOKENS_KEY = f"openai.{TEST_MODEL}.total_tokens"
TEST_MODEL_PROMPT_TOKENS_KEY = f"openai.{TEST_MODEL}.prompt_tokens"
TEST_MODEL_COMPLETION_TOKENS_KEY = f"openai.{TEST_MODEL}.completion_tokens"

TEST_ANOTHER_MODEL_CALLS_KEY = f"openai.{TEST_ANOTHER_MODEL}.calls"
TEST_ANOTHER_MODEL_TOTAL_TOKENS_KEY = f"openai.{TEST_ANOTHER_MODEL}.total_tokens"
TEST_ANOTHER_MODEL_PROMPT_TOKENS_KEY = f"openai.{TEST_ANOTHER_MODEL}.prompt_tokens"
TEST_ANOTHER_MODEL_COMPLETION_TOKENS_KEY = f"openai.{TEST_ANOTHER_MODEL}.completion_tokens"

API_KEY = "xoxp-1234123412341234-12341234-1234"
MESSAGES = [{"role": "user", "content": "Say this is a test"}]


def resource(server, **fields) -> OpenAIResource:
    """dagster-openai's test resource, pointed at the scripted server."""
    return OpenAIResource(api_key=API_KEY, base_url=server.base_url, **fields)


def emitted(mock_context) -> dict:
    """The usage metadata last emitted on a mocked context."""
    return dict(mock_context.add_asset_metadata.call_args.args[0])


def per_model(server, model: str) -> dict:
    """dagster-openai's four keys for ``model``, with the server's own totals."""
    counters = server.usage.models[model]
    return {
        f"openai.{model}.calls": counters.calls,
        f"openai.{model}.total_tokens": counters.total_tokens,
        f"openai.{model}.prompt_tokens": counters.prompt_tokens,
        f"openai.{model}.completion_tokens": counters.completion_tokens,
    }


def billed_since(server, start: int) -> dict:
    """The usage metadata of the requests the server billed after its first ``start``."""
    usage = Usage()
    for model, reported, _ in server.stats.billed[start:]:
        usage.add_response(model, reported)
    return usage.to_metadata(PRICES)


def last_request(server) -> dict:
    """The usage metadata of the server's last billed request alone."""
    return billed_since(server, len(server.stats.billed) - 1)


def unwrapped(client) -> bool:
    """The client's chat method is the SDK's own: nothing wrapped it (dagster-openai did)."""
    return client.chat.completions.create.__func__ is Completions.create


def test_openai_client(server) -> None:
    openai_resource = OpenAIResource(api_key=API_KEY, base_url=server.base_url)
    openai_resource.setup_for_execution(build_init_resource_context())

    mock_context = MagicMock()
    with openai_resource.get_client(mock_context) as client:
        assert (client.api_key, client.organization, client.project) == (API_KEY, None, None)
        assert str(client.base_url) == f"{server.base_url}/"
        client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
    assert server.stats.paths == {"/v1/chat/completions": 1}
    mock_context.log.info.assert_called_once()  # not an asset's or op's context: the usage is logged
    openai_resource.teardown_after_execution(build_init_resource_context())


def test_openai_client_with_config(server) -> None:
    headers = []
    server.fault = lambda handler, body: headers.append(dict(handler.headers)) and False
    openai_resource = OpenAIResource(
        api_key=API_KEY,
        organization="foo",
        project="bar",
        base_url=server.base_url,
    )
    openai_resource.setup_for_execution(build_init_resource_context())

    mock_context = MagicMock()
    with openai_resource.get_client(mock_context) as client:
        assert (client.api_key, client.organization, client.project) == (API_KEY, "foo", "bar")
        assert str(client.base_url) == f"{server.base_url}/"
        client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
    ((sent,),) = [[{k.lower(): v for k, v in h.items()}] for h in headers]
    assert sent["authorization"] == f"Bearer {API_KEY}"
    assert (sent["openai-organization"], sent["openai-project"]) == ("foo", "bar")
    openai_resource.teardown_after_execution(build_init_resource_context())


@patch("dagster.OpExecutionContext", autospec=OpExecutionContext)
def test_openai_resource_with_op(mock_context, server):
    @op
    def openai_op(openai_resource: OpenAIResource):
        assert openai_resource

        with openai_resource.get_client(context=mock_context) as client:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)

        assert server.usage.calls == 1
        assert unwrapped(client)

    result = wrap_op_in_graph_and_execute(
        openai_op,
        resources={"openai_resource": resource(server)},
    )
    assert result.success


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_resource_with_asset(mock_context, server):
    @asset
    def openai_asset(openai_resource: OpenAIResource):
        assert openai_resource

        with openai_resource.get_client(context=mock_context) as client:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)

        assert server.usage.calls == 1
        assert unwrapped(client)
        mock_context.add_asset_metadata.assert_called_with(
            server.usage.to_metadata(PRICES), asset_key=mock_context.asset_key, partition_key=None
        )

    result = materialize_to_memory(
        [openai_asset],
        resources={"openai_resource": resource(server)},
    )

    assert result.success


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_resource_with_graph_backed_asset(mock_context, server):
    @op
    def model_version_op():
        return "gpt-3.5-turbo"

    @op
    def message_op():
        return {"role": "user", "content": "Say this is a test"}

    @op
    def openai_op(openai_resource: OpenAIResource, model_version, message):
        assert openai_resource

        with openai_resource.get_client(context=mock_context) as client:
            client.chat.completions.create(model=model_version, messages=[message])

        assert server.usage.calls == 1
        assert emitted(mock_context) == server.usage.to_metadata(PRICES)

    @graph_asset
    def openai_asset():
        return openai_op(model_version_op(), message_op())

    result = materialize_to_memory(
        [openai_asset],
        resources={"openai_resource": resource(server)},
    )

    assert result.success


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_resource_with_multi_asset(mock_context, server):
    @multi_asset(
        specs=[AssetSpec("status"), AssetSpec("result")],
    )
    def openai_multi_asset(openai_resource: OpenAIResource):
        assert openai_resource

        mock_context.assets_def.keys_by_output_name.keys.return_value = [
            AssetKey("status"),
            AssetKey("result"),
        ]
        mock_context.output_for_asset_key.return_value = "result"

        # Test success when asset_key is provided
        with openai_resource.get_client_for_asset(context=mock_context, asset_key=AssetKey("result")) as client:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)

        assert server.usage.calls == 1
        mock_context.add_asset_metadata.assert_called_with(
            server.usage.to_metadata(PRICES), asset_key=AssetKey("result"), partition_key=None
        )

        # Test failure when asset_key is not provided
        with pytest.raises(DagsterInvariantViolationError), openai_resource.get_client(context=mock_context) as client:
            client.chat.completions.create(
                model="gpt-3.5-turbo",
                messages=[{"role": "user", "content": "Say this is a test"}],
            )
        assert server.usage.calls == 1  # refused before any request
        return None, None

    result = materialize_to_memory(
        [openai_multi_asset],
        resources={"openai_resource": resource(server)},
    )

    assert result.success


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_resource_with_partitioned_asset(mock_context, server):
    openai_partitions_def = StaticPartitionsDefinition([str(j) for j in range(5)])

    openai_partitioned_assets = []

    for i in range(5):

        @asset(
            name=f"openai_partitioned_asset_{i}",
            group_name="openai_partitioned_assets",
            partitions_def=openai_partitions_def,
        )
        def openai_partitioned_asset(openai_resource: OpenAIResource):
            assert openai_resource

            mock_context.output_for_asset_key.return_value = "test"

            with openai_resource.get_client(context=mock_context) as client:
                client.chat.completions.create(
                    model="gpt-3.5-turbo",
                    messages=[{"role": "user", "content": "Say this is a test"}],
                )

            assert unwrapped(client)
            # one mocked context for the run's five assets: one running total, of this run's requests
            mock_context.add_asset_metadata.assert_called_with(
                billed_since(server, run_started_at[-1]), asset_key=mock_context.asset_key, partition_key=None
            )

        openai_partitioned_assets.append(openai_partitioned_asset)

    defs = Definitions(
        assets=openai_partitioned_assets,
        jobs=[
            define_asset_job(
                name="openai_partitioned_asset_job",
                selection=AssetSelection.groups("openai_partitioned_assets"),
                partitions_def=openai_partitions_def,
            )
        ],
        resources={"openai_resource": resource(server)},
    )

    run_started_at = []
    for partition_key in openai_partitions_def.get_partition_keys():
        run_started_at.append(len(server.stats.billed))
        result = defs.resolve_job_def("openai_partitioned_asset_job").execute_in_process(partition_key=partition_key)
        assert result.success

    expected_request_counts = len(openai_partitioned_assets) * len(openai_partitions_def.get_partition_keys())
    assert server.usage.calls == expected_request_counts


def test_openai_wrapper_with_op(server):
    @op
    def openai_op(context: OpExecutionContext, openai_resource: OpenAIResource):
        assert openai_resource

        with openai_resource.get_client(context=context) as client:
            with pytest.raises(DagsterInvariantViolationError):
                with_usage_metadata(
                    context=context,
                    output_name="some_output_name",
                    func=client.chat.completions.create,
                )
            client.chat.completions.create = with_usage_metadata(
                context=context,
                output_name="result",
                func=client.chat.completions.create,
            )
            client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES)

    result = wrap_op_in_graph_and_execute(
        openai_op,
        resources={"openai_resource": resource(server)},
    )
    assert result.success
    (output,) = [event for event in result.all_events if event.is_successful_output]
    recorded = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    assert recorded == server.usage.to_metadata(PRICES)
    assert per_model(server, TEST_MODEL)[TEST_MODEL_CALLS_KEY] == 1


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_wrapper_with_asset(mock_context, server):
    @asset
    def openai_asset(openai_resource: OpenAIResource):
        assert openai_resource

        with openai_resource.get_client(context=mock_context) as client:
            client.chat.completions.create = with_usage_metadata(
                context=mock_context,
                output_name="openai_asset",
                func=client.chat.completions.create,
            )
            client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES)

            mock_context.add_asset_metadata.assert_called_with(
                server.usage.to_metadata(PRICES), asset_key=ANY, partition_key=None
            )
            assert {key: emitted(mock_context)[key] for key in per_model(server, TEST_MODEL)} == {
                TEST_MODEL_CALLS_KEY: 1,
                TEST_MODEL_TOTAL_TOKENS_KEY: server.usage.total_tokens,
                TEST_MODEL_PROMPT_TOKENS_KEY: server.usage.total("prompt_tokens"),
                TEST_MODEL_COMPLETION_TOKENS_KEY: server.usage.total("completion_tokens"),
            }

    result = materialize_to_memory(
        [openai_asset],
        resources={"openai_resource": resource(server)},
    )

    assert result.success


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_wrapper_with_multiple_models_per_output(mock_context, server):
    @asset
    def openai_asset(openai_resource: OpenAIResource):
        assert openai_resource

        with openai_resource.get_client(context=mock_context) as client:
            client.chat.completions.create = with_usage_metadata(
                context=mock_context,
                output_name="openai_asset",
                func=client.chat.completions.create,
            )
            client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES)
            client.chat.completions.create(model=TEST_ANOTHER_MODEL, messages=MESSAGES)

            recorded = emitted(mock_context)
            assert recorded == server.usage.to_metadata(PRICES)
            assert {key: recorded[key] for key in per_model(server, TEST_MODEL)} | {
                key: recorded[key] for key in per_model(server, TEST_ANOTHER_MODEL)
            } == {
                TEST_MODEL_CALLS_KEY: 1,
                TEST_MODEL_TOTAL_TOKENS_KEY: server.usage.models[TEST_MODEL].total_tokens,
                TEST_MODEL_PROMPT_TOKENS_KEY: server.usage.models[TEST_MODEL].prompt_tokens,
                TEST_MODEL_COMPLETION_TOKENS_KEY: server.usage.models[TEST_MODEL].completion_tokens,
                TEST_ANOTHER_MODEL_CALLS_KEY: 1,
                TEST_ANOTHER_MODEL_TOTAL_TOKENS_KEY: server.usage.models[TEST_ANOTHER_MODEL].total_tokens,
                TEST_ANOTHER_MODEL_PROMPT_TOKENS_KEY: server.usage.models[TEST_ANOTHER_MODEL].prompt_tokens,
                TEST_ANOTHER_MODEL_COMPLETION_TOKENS_KEY: server.usage.models[TEST_ANOTHER_MODEL].completion_tokens,
            }

    result = materialize_to_memory(
        [openai_asset],
        resources={"openai_resource": resource(server)},
    )

    assert result.success


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_wrapper_with_graph_backed_asset(mock_context, server):
    @op
    def model_version_op():
        return TEST_MODEL

    @op
    def message_op():
        return {"role": "user", "content": "Say this is a test"}

    @op
    def openai_op(openai_resource: OpenAIResource, model_version, message):
        assert openai_resource

        with openai_resource.get_client(context=mock_context) as client:
            client.chat.completions.create = with_usage_metadata(
                context=mock_context,
                output_name="openai_asset",
                func=client.chat.completions.create,
            )
            client.chat.completions.create(model=model_version, messages=[message])

            assert emitted(mock_context) == server.usage.to_metadata(PRICES)
            assert per_model(server, TEST_MODEL)[TEST_MODEL_CALLS_KEY] == 1

    @graph_asset
    def openai_asset():
        return openai_op(model_version_op(), message_op())

    result = materialize_to_memory(
        [openai_asset],
        resources={"openai_resource": resource(server)},
    )

    assert result.success


@patch("dagster.AssetExecutionContext", autospec=AssetExecutionContext)
def test_openai_wrapper_with_multi_asset(mock_context, server):
    @multi_asset(
        specs=[AssetSpec("status"), AssetSpec("result")],
    )
    def openai_multi_asset(openai_resource: OpenAIResource):
        assert openai_resource

        with openai_resource.get_client_for_asset(context=mock_context, asset_key=AssetKey("result")) as client:
            client.chat.completions.create = with_usage_metadata(
                context=mock_context,
                output_name="result",
                func=client.chat.completions.create,
            )
            client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES)

            assert emitted(mock_context) == server.usage.to_metadata(PRICES)
            assert per_model(server, TEST_MODEL)[TEST_MODEL_CALLS_KEY] == 1
        return None, None

    result = materialize_to_memory(
        [openai_multi_asset],
        resources={"openai_resource": resource(server)},
    )

    assert result.success


def test_openai_wrapper_with_partitioned_asset(server):
    openai_partitions_def = StaticPartitionsDefinition([str(j) for j in range(5)])

    openai_partitioned_assets = []

    for i in range(5):

        @asset(
            name=f"openai_partitioned_asset_{i}",
            group_name="openai_partitioned_assets",
            partitions_def=openai_partitions_def,
        )
        def openai_partitioned_asset(openai_resource: OpenAIResource):
            assert openai_resource

            mock_context = MagicMock()
            mock_context.__class__ = AssetExecutionContext

            with openai_resource.get_client(context=mock_context) as client:
                client.chat.completions.create = with_usage_metadata(
                    context=mock_context,
                    output_name=None,
                    func=client.chat.completions.create,
                )
                client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES)
                mock_context.add_asset_metadata.assert_called_with(
                    last_request(server), asset_key=mock_context.asset_key, partition_key=None
                )
                assert last_request(server)[TEST_MODEL_CALLS_KEY] == 1

        openai_partitioned_assets.append(openai_partitioned_asset)

    defs = Definitions(
        assets=openai_partitioned_assets,
        jobs=[
            define_asset_job(
                name="openai_partitioned_asset_job",
                selection=AssetSelection.groups("openai_partitioned_assets"),
                partitions_def=openai_partitions_def,
            )
        ],
        resources={"openai_resource": resource(server)},
    )

    for partition_key in openai_partitions_def.get_partition_keys():
        result = defs.resolve_job_def("openai_partitioned_asset_job").execute_in_process(partition_key=partition_key)
        assert result.success
    assert server.usage.calls == 25
