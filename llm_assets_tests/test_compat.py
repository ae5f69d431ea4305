"""The private APIs llm_assets relies on (``llm_assets/_compat.py``) are still where it
expects them: each test fails as soon as an openai or Dagster release moves one."""

import pickle

import dagster as dg

from llm_assets import _compat
from llm_assets.http.pools import POOL_LIMITS, async_pool


def test_openai_still_vendors_an_aiohttp_transport():
    transport = _compat.aiohttp_transport(limits=POOL_LIMITS)
    assert transport is not None and type(transport).__name__ == "AiohttpTransport"
    assert type(async_pool()).__name__ == "AiohttpTransport"


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
