"""The YAML component builds the same pipeline and materializes it."""

import datetime

import dagster as dg
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from llm_assets.components import LLMPipelineComponent

DEFS_YAML = {
    "type": "llm_assets.components.LLMPipelineComponent",
    "attributes": {
        "key_prefix": "crew",
        "partitions": ["Kirk", "Picard", "Janeway"],
        "system_prompt": "You are Captain {partition_key}.",
        "prompt": "{question}",
        "question": "Why explore?",
        "max_tokens": 9,
        "pool": "openai",
    },
}


def test_yaml_component_loads_and_materializes(server, materialize):
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "crew"
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(yaml.safe_dump(DEFS_YAML))
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            assert isinstance(component, LLMPipelineComponent)
            pools = {a.key.to_user_string(): a.op.pool for a in defs.assets}
            assert pools == {"crew/answers": "openai", "crew/embeddings": "openai", "crew/answer_map": None}
            assets = list(defs.assets)
    materialize(assets, selection=["crew/answers", "crew/embeddings"], partitions=["Kirk", "Janeway"])
    assert materialize(assets, selection=["crew/answer_map"]).success
    assert {r["body"]["max_tokens"] for r in server.stats.requests if "messages" in r["body"]} == {9}
    assert server.stats.paths["/v1/embeddings"] == 3


def test_yaml_component_in_batch_mode(server, materialize, tmp_path):
    from llm_assets.testing.batches import ScriptedBatchServer
    from llm_assets_tests.batch import job

    attributes = {**DEFS_YAML["attributes"], "mode": "BATCH"}
    with create_defs_folder_sandbox() as sandbox, ScriptedBatchServer(server) as batch_server:
        folder = sandbox.defs_folder_path / "crew"
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(yaml.safe_dump({**DEFS_YAML, "attributes": attributes}))
        with sandbox.load_component_and_build_defs(defs_path=folder) as (_, defs):
            assets = list(defs.assets)
        openai = job.resource(batch_server.base_url, cache_dir=str(tmp_path))
        result = materialize(
            assets, openai, selection=["crew/answers", "crew/embeddings"], partitions=["Kirk", "Janeway"]
        )
        assert [b.endpoint for b in batch_server.store.batches.values()] == ["/v1/chat/completions", "/v1/embeddings"]
    for event in result.get_asset_materialization_events():
        assert event.materialization.metadata["openai.batch_requests"].value == 1


def test_yaml_component_takes_dagsters_asset_options():
    attributes = {
        **DEFS_YAML["attributes"],
        "automation_condition": "{{ dg.AutomationCondition.eager() }}",
        "freshness_policy": "{{ dg.FreshnessPolicy.time_window(fail_window=datetime.timedelta(hours=24)) }}",
        "deps": ["raw/crew_list"],
        "op_tags": {"dagster/priority": "3"},
    }
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "crew"
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(yaml.safe_dump({**DEFS_YAML, "attributes": attributes}))
        with sandbox.load_component_and_build_defs(defs_path=folder) as (_, defs):
            assets = {a.key.to_user_string(): a for a in defs.assets}
    assert set(assets) == {"crew/answers", "crew/embeddings", "crew/answer_map"}
    for key, asset in assets.items():
        spec = asset.specs_by_key[asset.key]
        assert spec.automation_condition == dg.AutomationCondition.eager(), key
        assert spec.freshness_policy is not None
        assert spec.freshness_policy.fail_window.to_timedelta() == datetime.timedelta(hours=24)  # as configured
        assert dg.AssetKey(["raw", "crew_list"]) in {dep.asset_key for dep in spec.deps}
        assert asset.op.tags["dagster/priority"] == "3"
        assert spec.code_version is not None and len(spec.code_version) == 12  # derived: none was given
