"""The YAML component builds the same pipeline and materializes it."""

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
