"""The quick start's UI journey, in Chromium against ``dagster dev`` on the captains example with
the embedded local model: materialize every captain's answers and embeddings (one backfill,
one run), then the answer map, and see its plot and the answers' checks in the UI; then add
a captain, Riker, with the dialog's own "Add a partition", answer and embed Riker (one run),
and re-draw the map, which then has a point more; last, ask which captain answered most
like the example's sentence (a search of the embeddings' LanceDB table).

Screenshots of each milestone go to ``$LLM_ASSETS_SCREENSHOTS`` (for docs/) or ``tmp_path``."""

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from llm_assets.examples.captains import CAPTAINS
from llm_assets_tests.ui import dagster_ui as ui

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from llm_assets_tests.ui.conftest import DagsterDev

LOCATION = GROUP = "captains"
ANSWERS, EMBEDDINGS, ANSWER_MAP = "captains/answers", "captains/embeddings", "captains/answer_map"
MOST_LIKE = "captains/most_like"
#: Checks the Checks tab of captains/answers lists (the chat factory's, without a response_format).
MIN_ANSWER_CHECKS = 5
#: The captain the journey adds from the UI.
NEW_CAPTAIN = "Riker"


@pytest.mark.slow
def test_readme_journey_in_the_dagster_ui(page: "Page", dagster_dev: "DagsterDev", screenshots: Path) -> None:
    # `page` first: a missing browser or playwright skips before dagster dev starts
    page.goto(dagster_dev.url)
    ui.wait_for_asset_graph(page, LOCATION, GROUP, ["answers", "embeddings", "answer_map", "most_like"])
    ui.screenshot(page, screenshots, "01-asset-graph.png")

    ui.materialize_all_partitions(page, LOCATION, GROUP, [ANSWERS, EMBEDDINGS], partitions=len(CAPTAINS))
    ui.wait_for_partitions(page, ANSWERS, materialized=len(CAPTAINS))
    ui.show_partition(page, CAPTAINS[0])
    ui.screenshot(page, screenshots, "02-answers-materialized.png")
    ui.wait_for_partitions(page, EMBEDDINGS, materialized=len(CAPTAINS))

    ui.materialize(page, ANSWER_MAP)
    src, width, height = ui.open_markdown_image(page, ANSWER_MAP, "plot")
    assert src.startswith("data:image/png;base64,")
    assert width > 0 and height > 0
    ui.screenshot(page, screenshots, "03-answer-map-plot.png")

    ui.wait_for_metadata(page, ANSWER_MAP, "points", str(len(CAPTAINS)))

    ui.assert_checks_passed(page, ANSWERS, minimum=MIN_ANSWER_CHECKS)
    ui.screenshot(page, screenshots, "04-answers-checks.png")

    # A captain of one's own: the captains are dynamic partitions
    dialog = ui.choose_partitions(page, LOCATION, GROUP, [ANSWERS, EMBEDDINGS])
    ui.add_partition(page, dialog, NEW_CAPTAIN, screenshot_to=screenshots / "05-add-partition.png")
    ui.launch_one_run(page, dialog, f"{ANSWERS} and {EMBEDDINGS} of {NEW_CAPTAIN}")
    crew = len(CAPTAINS) + 1
    ui.wait_for_partitions(page, ANSWERS, materialized=crew)
    ui.wait_for_partitions(page, EMBEDDINGS, materialized=crew)
    ui.materialize(page, ANSWER_MAP)
    ui.wait_for_metadata(page, ANSWER_MAP, "points", str(crew))
    ui.open_markdown_image(page, ANSWER_MAP, "plot")
    ui.screenshot(page, screenshots, "06-answer-map-with-riker.png")

    # Which captain answered most like the sentence? A search of the embeddings' LanceDB table
    ui.materialize(page, MOST_LIKE)
    row = ui.metadata_row(page, MOST_LIKE, "nearest")
    named = [c for c in [*CAPTAINS, NEW_CAPTAIN] if c in row.split("\t") or c in row.split()]
    assert named, f"{MOST_LIKE}'s metadata row 'nearest' names no captain: {row!r}"
    ui.screenshot(page, screenshots, "07-most-like.png")
