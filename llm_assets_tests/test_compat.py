"""The private APIs llm_assets relies on (``llm_assets/_compat.py``) are still where it
expects them: each test fails as soon as an openai or Dagster release moves one."""

import pickle

import dagster as dg
import openai

from llm_assets import _compat
from llm_assets.http.pools import POOL_LIMITS, async_pool


def test_openai_still_vendors_an_aiohttp_transport():
    transport = _compat.aiohttp_transport(limits=POOL_LIMITS)
    assert transport is not None and type(transport).__name__ == "AiohttpTransport"
    assert type(async_pool()).__name__ == "AiohttpTransport"


def test_openai_still_has_the_contract_the_direct_path_asks_it():
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    for name in _compat.SDK_CONTRACT_METHODS:
        assert callable(getattr(client, name)), name
    options = _compat.FinalRequestOptions.construct(method="post", url="/chat/completions", json_data={})
    assert client._build_request(options, retries_taken=0).url.path == "/v1/chat/completions"


def test_dagster_filesystem_io_manager_is_still_the_pickled_upath_one(tmp_path):
    manager = dg.FilesystemIOManager(base_dir=str(tmp_path)).create_io_manager(dg.build_init_resource_context())
    assert type(manager) is _compat.PickledObjectFilesystemIOManager
    assert isinstance(manager, dg.UPathIOManager)
    for private in ("_get_paths_for_partitions", "_handle_transition_to_partitioned_asset"):
        assert callable(getattr(dg.UPathIOManager, private))


def test_what_dagster_writes_is_a_plain_pickle(tmp_path, instance):
    @dg.asset
    def value() -> dict:
        return {"a": 1}

    resources = {"io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path))}
    assert dg.materialize([value], resources=resources, instance=instance).success
    assert pickle.loads((tmp_path / "value").read_bytes()) == {"a": 1}


def test_dagster_still_has_what_usage_in_ops_relies_on():
    from dagster._core.definitions.assets.job.asset_layer import AssetLayer
    from dagster._core.execution.context.system import StepExecutionContext

    assert callable(dg.OpExecutionContext.get_step_execution_context)
    for name in _compat.STEP_CONTEXT_METHODS:
        assert callable(getattr(StepExecutionContext, name)), name
    for name in _compat.ASSET_LAYER_METHODS:
        assert callable(getattr(AssetLayer, name)), name
