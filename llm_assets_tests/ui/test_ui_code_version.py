"""An edited prompt, in Chromium against ``dagster dev``: a code location of its own (three
captains' answers, embeddings and map, answered by the scripted server on loopback) is
materialized, its prompt edited on disk and the location reloaded from the UI; the answers
then show as unsynced with a code version change, the embeddings (not edited) do not.

Dagster 1.13 keeps a partitioned asset's staleness per partition: the partition's panel on
the Partitions tab shows the tag "Unsynced (1)", and hovering it, the popover "1 change
since last materialization", "1 code version change", "crew / answers has a new code
version" (Stale.tsx in dagster-ui; the reason is the stale resolver's own text).

The screenshot ``05-code-version-changed.png`` goes to ``$LLM_ASSETS_SCREENSHOTS`` (for
docs/) or ``tmp_path``."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.scale.runs import dagster_dev as running_dagster_dev
from llm_assets_tests.ui import dagster_ui as ui
from llm_assets_tests.ui.conftest import DAGSTER_YAML, DagsterDev

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

LOCATION = GROUP = "crew"
ANSWERS, EMBEDDINGS = "crew/answers", "crew/embeddings"
CAPTAINS = ["Kirk", "Picard", "Janeway"]
PROMPT = "{question} Answer in at most three sentences."
EDITED_PROMPT = "{question} Answer in one word."
#: Resolves once every finite animation of the page has finished (a popover's fade-in).
ANIMATIONS_FINISHED = """() => Promise.all(document.getAnimations()
    .filter(animation => animation.effect && animation.effect.getTiming().iterations !== Infinity)
    .map(animation => animation.finished.catch(() => null)))"""

MODULE = '''"""The code location of test_ui_code_version: a pipeline on the scripted server."""

import dagster as dg

from llm_assets import OpenAIResource, PartitionedFilesystemIOManager, build_llm_pipeline_assets

pipeline = build_llm_pipeline_assets(
    key_prefix="crew",
    partitions_def=dg.StaticPartitionsDefinition({captains!r}),
    system_prompt="You are Captain {{partition_key}} of Star Trek. Stay in character.",
    prompt={prompt!r},
    question="What is the most important quality of a starship captain, and why?",
    max_tokens=64,
    group_name="crew",
)

defs = dg.Definitions(
    assets=list(pipeline),
    resources={{
        "openai": OpenAIResource(base_url={base_url!r}, api_key="sk-test"),
        "io_manager": PartitionedFilesystemIOManager(),
    }},
)
'''

WORKSPACE = """load_from:
  - python_file:
      relative_path: crew.py
      working_directory: .
      location_name: crew
"""


def write_location(folder: Path, base_url: str, prompt: str) -> Path:
    """The code location's module, ``folder/crew.py``, asking with ``prompt``."""
    module = folder / "crew.py"
    module.write_text(MODULE.format(captains=CAPTAINS, prompt=prompt, base_url=base_url))
    return module


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as scripted:
        yield scripted


@pytest.fixture
def location(tmp_path: Path, server: ScriptedOpenAIServer) -> Path:
    """The code location's folder: ``crew.py`` and the ``workspace.yaml`` that loads it."""
    folder = tmp_path / "location"
    folder.mkdir()
    write_location(folder, server.base_url, PROMPT)
    (folder / "workspace.yaml").write_text(WORKSPACE)
    return folder


@pytest.fixture
def crew_dagster_dev(tmp_path: Path, location: Path, request: pytest.FixtureRequest) -> Iterator[DagsterDev]:
    """``dagster dev -w location/workspace.yaml`` with a fresh ``DAGSTER_HOME``, like the
    ``dagster_dev`` fixture (its output's tail printed on a failure)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    log = tmp_path / "dagster-dev.log"
    with running_dagster_dev(home, {}, log, "-w", str(location / "workspace.yaml")) as url:
        dev = DagsterDev(url, log)
        yield dev
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(f"--- dagster dev output (last lines of {log}) ---\n{dev.log_tail()}")


def reload_location(page: "Page", location: str) -> None:
    """The code location's page, its Reload button, until the toast says it reloaded."""
    from playwright.sync_api import expect

    ui.goto(page, f"/locations/{location}")
    page.get_by_role("button", name=re.compile(r"\bReload$")).click()  # its name: icon, then "Reload"
    expect(page.get_by_text("Code location reloaded!")).to_be_visible(timeout=ui.RUN_TIMEOUT_S * 1000)


def partition_header(page: "Page", asset_path: str, partition: str) -> "Locator":
    """The asset's Partitions tab with ``partition`` selected; returns the panel's header (the
    partition's name, its "Materialized" tag and its "Unsynced (n)" tag, if any), once its
    stale status has loaded."""
    from playwright.sync_api import expect

    ui.open_asset_tab(page, asset_path, "Partitions")
    ui.show_partition(page, partition)
    header = page.locator(f"[data-tooltip='{partition}']")
    expect(header.get_by_text("Materialized", exact=True)).to_be_visible()
    expect(header.get_by_role("progressbar")).to_have_count(0)  # the stale status's spinner
    return header


def unsynced_tag(header: "Locator") -> "Locator":
    return header.get_by_text(re.compile(r"^Unsynced \(\d+\)$"))


@pytest.mark.slow
def test_an_edited_prompt_shows_as_a_code_version_change_in_the_dagster_ui(
    page: "Page", crew_dagster_dev: DagsterDev, location: Path, server: ScriptedOpenAIServer, screenshots: Path
) -> None:
    # `page` first: a missing browser or playwright skips before dagster dev starts
    from playwright.sync_api import expect

    page.goto(crew_dagster_dev.url)
    ui.wait_for_asset_graph(page, LOCATION, GROUP, ["answers", "embeddings", "answer_map"])
    ui.materialize_all_partitions(page, LOCATION, GROUP, [ANSWERS, EMBEDDINGS], CAPTAINS)
    ui.wait_for_partitions(page, ANSWERS, materialized=len(CAPTAINS))
    ui.wait_for_partitions(page, EMBEDDINGS, materialized=len(CAPTAINS))
    assert server.stats.paths["/v1/chat/completions"] == len(CAPTAINS)
    expect(unsynced_tag(partition_header(page, ANSWERS, CAPTAINS[0]))).to_have_count(0)  # synced before the edit

    write_location(location, server.base_url, EDITED_PROMPT)
    reload_location(page, LOCATION)

    for captain in [*CAPTAINS[1:], CAPTAINS[0]]:  # every partition of the answers, Kirk last (the screenshot's)
        tag = unsynced_tag(partition_header(page, ANSWERS, captain))
        expect(tag).to_have_text("Unsynced (1)")
    tag.hover()
    popover = page.locator(".dagster-popover").filter(has_text="since last materialization")
    expect(popover).to_be_visible()
    shown = " ".join(popover.inner_text().split())
    assert shown == (
        "1 change since last materialization 1 code version change crew / answers has a new code version"
    ), shown
    page.evaluate(ANIMATIONS_FINISHED)  # the popover opaque in the screenshot
    ui.screenshot(page, screenshots, "05-code-version-changed.png")

    for captain in CAPTAINS:  # the embeddings were not edited, and their input is unchanged
        expect(unsynced_tag(partition_header(page, EMBEDDINGS, captain))).to_have_count(0)
