"""The ``defs.yaml`` blocks of ``docs/guides/component.md`` load through the component and
materialize, as ``test_component.py`` loads its own YAML: YAML blocks are not run by the
docs' Sybil harness, so this keeps the YAML the page shows from drifting away from what
the component takes."""

import re
from pathlib import Path

import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from llm_assets.components import LLMPipelineComponent

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "component.md"
COMPONENT = "llm_assets.components.LLMPipelineComponent"
#: Blocks the page shows at least: the short example and the one with every option.
MIN_BLOCKS = 2


def defs_yaml_blocks() -> list[str]:
    """The page's ```yaml blocks that declare the component (others are fragments)."""
    if not PAGE.is_file():  # the sdist carries the tests, not docs/
        return []
    blocks = re.findall(r"^```yaml\n(.*?)^```", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [block for block in blocks if re.search(rf"^type: {re.escape(COMPONENT)}$", block, flags=re.MULTILINE)]


BLOCKS = defs_yaml_blocks()


def test_the_page_shows_the_component_in_yaml():
    if not PAGE.is_file():
        pytest.skip(f"{PAGE} is not here (an sdist carries the tests but not docs/)")
    assert len(BLOCKS) >= MIN_BLOCKS, f"{PAGE.name} should show {MIN_BLOCKS} defs.yaml blocks, found {len(BLOCKS)}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_defs_yaml_block_loads_and_materializes(block, server, materialize):
    declared = yaml.safe_load(block)
    prefix = declared["attributes"].get("key_prefix")
    keys = [f"{prefix}/{name}" if prefix else name for name in ("answers", "embeddings", "answer_map")]
    partitions = declared["attributes"]["partitions"]
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "docs_pipeline"
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(block)  # the block as written: comments, templates and all
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            assert isinstance(component, LLMPipelineComponent)
            assets = list(defs.assets)
    assert sorted(a.key.to_user_string() for a in assets) == sorted(keys)
    first, last = partitions[0], partitions[-1]
    result = materialize(assets, selection=keys[:2], partitions=[first, last])
    assert result.success
    assert materialize(assets, selection=keys[2:]).success
    assert server.stats.paths["/v1/chat/completions"] == len(partitions)
