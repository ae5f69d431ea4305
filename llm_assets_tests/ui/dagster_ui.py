"""Steps of the quick start's journey in Dagster's web UI (dagster-webserver 1.13), as a person
takes them: the buttons, tabs and texts the UI shows, never its GraphQL API.

Each step starts from the server the page is on (open any of its pages first). Waits are
on what the page shows, with a deadline; a page that has not changed is reloaded now and
then, in case a view does not refresh by itself."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

#: Hang guards, not timings: a passing journey never waits them out, however busy the machine
#: (a run takes ~25 s here, plus up to 30 s for the backfill daemon's cycle).
PAGE_TIMEOUT_S = 120.0  # something the page shows
RUN_TIMEOUT_S = 600.0  # a run to finish
_RUN_DONE = re.compile(r"^(Success|Failure|Canceled)$")


def goto(page: Page, path: str) -> None:
    """Opens ``path`` on the server the page is on."""
    origin = urlsplit(page.url)
    page.goto(f"{origin.scheme}://{origin.netloc}{path}")


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """A full-page PNG of the page, ``folder/name``."""
    path = folder / name
    page.screenshot(path=path, full_page=True)
    return path


def wait_visible(page: Page, target: Locator, timeout_s: float = RUN_TIMEOUT_S, reload_every_s: float = 20) -> str:
    """Waits until ``target`` is visible, reloading the page every ``reload_every_s``; returns its text."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            target.first.wait_for(timeout=max(1.0, min(reload_every_s, remaining)) * 1000)
            return target.first.inner_text()
        except PlaywrightTimeoutError:
            if time.monotonic() >= deadline:
                raise
            page.reload()


#: True once ``element`` and every element around it are opaque and still: a dialog's fade-in done.
_SETTLED_JS = """element => {
    for (let e = element; e; e = e.parentElement) {
        if (getComputedStyle(e).opacity !== "1" || e.getAnimations().some(a => a.playState === "running")) {
            return false;
        }
    }
    return true;
}"""


def wait_settled(page: Page, target: Locator) -> None:
    """Waits until ``target`` (a dialog…) has finished appearing, so a screenshot shows it whole."""
    page.wait_for_function(_SETTLED_JS, arg=target.element_handle())


def toast_id(page: Page, message: str) -> str:
    """The id at the end of the toast ``message <id>`` (a launch's confirmation), once it shows."""
    from playwright.sync_api import expect

    toast = page.get_by_text(re.compile(rf"^{message} \w+$")).first
    expect(toast).to_be_visible(timeout=PAGE_TIMEOUT_S * 1000)
    return toast.inner_text().split()[-1]


def open_asset_tab(page: Page, asset_path: str, tab: str) -> None:
    """The asset's page (``asset_path`` like ``captains/answers``), on tab ``tab``."""
    goto(page, f"/assets/{asset_path}")
    page.get_by_role("tab", name=tab, exact=True).click()


def wait_for_asset_graph(page: Page, location: str, group: str, assets: list[str]) -> None:
    """The group's lineage graph, with each of ``assets`` (names) drawn and its live data loaded."""
    from playwright.sync_api import expect

    goto(page, f"/locations/{location}/asset-groups/{group}")
    for name in assets:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_text("Loading...")).to_have_count(0)


def choose_partitions(page: Page, location: str, group: str, assets: list[str]) -> Locator:
    """Selects ``assets`` (paths) in the group's list and clicks Materialize selected;
    returns the dialog that opens ("Launch runs to materialize …", no partition chosen)."""
    from playwright.sync_api import expect

    goto(page, f"/locations/{location}/asset-groups/{group}/list")
    for asset_path in assets:  # the checkbox input is hidden behind its label's drawing
        page.locator("label").filter(has=page.get_by_test_id(f"checkbox-{asset_path}")).click()
        expect(page.get_by_test_id(f"checkbox-{asset_path}")).to_be_checked()
    page.get_by_role("button", name=re.compile(r"Materialize selected")).click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    expect(dialog).to_be_visible()
    return dialog


def materialize_all_partitions(
    page: Page, location: str, group: str, assets: list[str], partitions: int | list[str]
) -> str:
    """Selects ``assets`` (paths) in the group's list, Materialize selected, All partitions,
    Launch backfill; returns the backfill's id from the toast. ``partitions``: how many
    (the dialog says "N partitions selected"), or a few by name (it lists them instead)."""
    from playwright.sync_api import expect

    dialog = choose_partitions(page, location, group, assets)
    dialog.get_by_role("button", name="All", exact=True).click()  # it opens on "Custom", no partition
    if isinstance(partitions, int):
        expect(dialog).to_contain_text(f"{partitions} partitions selected")
    else:
        expect(dialog).to_contain_text(f"Partition selection{len(partitions)} partitions")
        for partition in partitions:
            expect(dialog.get_by_text(partition, exact=True).first).to_be_visible()
    dialog.get_by_role("button", name="Launch backfill").click()
    return toast_id(page, "Created backfill")


def add_partition(page: Page, dialog: Locator, name: str, screenshot_to: Path | None = None) -> None:
    """In the partitions ``dialog`` of assets with dynamic partitions: the "Add a partition"
    link, ``name`` typed in its dialog (a full-page screenshot ``screenshot_to`` then, if
    given), Save; waits until the new partition is the one selected."""
    from playwright.sync_api import expect

    dialog.get_by_text("Add a partition", exact=True).click()
    adding = page.get_by_role("dialog").filter(has_text="Add a partition for")
    adding.get_by_placeholder("name").fill(name)
    if screenshot_to is not None:
        wait_settled(page, adding)
        page.screenshot(path=screenshot_to, full_page=True)
    adding.get_by_role("button", name="Save", exact=True).click()
    expect(adding).to_have_count(0)  # saved: a refused name keeps the dialog and shows an alert
    expect(dialog.get_by_text(name, exact=True).first).to_be_visible()  # the selector's new tag
    expect(dialog.get_by_role("button", name="Launch 1 run")).to_be_enabled()


def launch_one_run(page: Page, dialog: Locator, what: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The partitions ``dialog``'s Launch 1 run, then the run's page until it ends; asserts
    it succeeded (``what`` names it in the message) and returns its id."""
    dialog.get_by_role("button", name="Launch 1 run").click()
    return follow_run(page, toast_id(page, "Launched run"), what, timeout_s)


def follow_run(page: Page, short_id: str, what: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """Opens the run of the toast's View link (``short_id``) and waits until it ends; asserts
    it succeeded and returns its id."""
    view = page.locator(f"a[href^='/runs/{short_id}']", has_text="View").first
    run_id = (view.get_attribute("href") or "").rsplit("/", 1)[-1]
    view.click()
    status = wait_visible(page, page.get_by_text(_RUN_DONE), timeout_s)
    assert status == "Success", f"run {run_id} of {what}: {status}"
    return run_id


def wait_for_partitions(page: Page, asset_path: str, materialized: int, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """The asset's Partitions tab until it counts ``materialized`` partitions; fails at once
    if any partition failed."""
    open_asset_tab(page, asset_path, "Partitions")
    counts = page.get_by_text(re.compile(rf"^(Materialized \({materialized}\)|Failed \([1-9]\d*\))$"))
    shown = wait_visible(page, counts, timeout_s)
    assert shown.startswith("Materialized"), f"{asset_path}: {shown}"


def show_partition(page: Page, partition: str) -> None:
    """On an asset's Partitions tab: selects ``partition`` and waits for its latest materialization."""
    page.get_by_text(partition, exact=True).first.click()
    wait_visible(
        page,
        page.get_by_role("button", name=re.compile(r"View all historical events \([1-9]")),
        timeout_s=PAGE_TIMEOUT_S,
    )


def materialize(page: Page, asset_path: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The Materialize button of an unpartitioned asset, then its run's page until the run
    ends; asserts it succeeded and returns the run's id."""
    open_asset_tab(page, asset_path, "Overview")
    page.get_by_role("button", name=re.compile(r"\bMaterialize$")).click()
    return follow_run(page, toast_id(page, "Launched run"), asset_path, timeout_s)


def wait_for_metadata(page: Page, asset_path: str, entry: str, value: str, timeout_s: float = PAGE_TIMEOUT_S) -> None:
    """The asset's Overview until the metadata ``entry`` of its latest materialization shows
    ``value``; fails naming what it shows instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    open_asset_tab(page, asset_path, "Overview")
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=entry, exact=True))
    try:
        wait_visible(page, row.filter(has=page.get_by_role("cell", name=value, exact=True)), timeout_s)
    except PlaywrightTimeoutError:
        shown = row.first.inner_text() if row.count() else "no such row"
        raise AssertionError(f"{asset_path}: metadata {entry!r} shows {shown!r}, expected {value!r}") from None


def metadata_row(page: Page, asset_path: str, entry: str, timeout_s: float = PAGE_TIMEOUT_S) -> str:
    """The text of the row the asset's Overview shows for the metadata ``entry`` of its
    latest materialization (its cells, tab-separated), once the entry is there."""
    open_asset_tab(page, asset_path, "Overview")
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=entry, exact=True)).first
    wait_visible(page, row, timeout_s)
    return row.inner_text()


def open_markdown_image(page: Page, asset_path: str, entry: str) -> tuple[str, int, int]:
    """Opens the Markdown metadata ``entry`` of the asset's latest materialization ("[Show
    Markdown]" in its metadata table: a dialog renders it) and waits for its image to load and
    its dialog to finish appearing; returns the image's ``src`` and natural width and height."""
    from playwright.sync_api import expect

    open_asset_tab(page, asset_path, "Overview")
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=entry, exact=True))
    wait_visible(page, row.get_by_text("[Show Markdown]"), timeout_s=PAGE_TIMEOUT_S)
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").get_by_role("img", name=asset_path)  # the plot's alt text
    expect(image).to_be_visible()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    wait_settled(page, page.get_by_role("dialog").filter(has=page.get_by_role("img", name=asset_path)))
    width, height = image.evaluate("image => [image.naturalWidth, image.naturalHeight]")
    return image.get_attribute("src") or "", width, height


def check_statuses(page: Page) -> dict[str, str]:
    """Each check listed on the open Checks tab and the status under its name, with
    ``" (check_circle)"``… appended: the name of its icon."""
    statuses = {}
    for row in page.locator("[class*='checkRow']").all():  # the list's rows (no ARIA roles)
        name = row.locator("[title]").first.get_attribute("title") or "?"
        status = row.inner_text().strip().splitlines()[-1].strip()
        icon = row.get_by_role("img").first.get_attribute("aria-label") if row.get_by_role("img").count() else None
        statuses[name] = f"{status} ({icon})"
    return statuses


def assert_checks_passed(
    page: Page, asset_path: str, minimum: int = 1, timeout_s: float = PAGE_TIMEOUT_S
) -> dict[str, str]:
    """Opens the asset's Checks tab and asserts that it lists at least ``minimum`` checks and
    that every one shows as passed: "Succeeded" under its name, with a green ``check_circle``
    (Dagster 1.13; a failed check shows "Failed" with ``cancel``, or ``warning_outline`` at WARN
    severity, and "Not evaluated", "In progress" or "Skipped" otherwise). Waits up to
    ``timeout_s`` for checks still running; returns each check's status."""
    open_asset_tab(page, asset_path, "Checks")
    no_checks = page.get_by_text("No checks defined for this asset")
    heading = page.get_by_text(re.compile(r"^Checks \(\d+\)$")).or_(no_checks)
    shown = wait_visible(page, heading, timeout_s=PAGE_TIMEOUT_S)
    listed = int(match.group(1)) if (match := re.search(r"\((\d+)\)", shown)) else 0
    assert listed >= minimum, f"{asset_path}: {listed} checks listed, expected at least {minimum}"
    passed = "Succeeded (check_circle)"
    deadline = time.monotonic() + timeout_s
    while True:  # until every listed check is shown passed, or the deadline
        statuses = check_statuses(page)
        settled = len(statuses) == listed and all(status == passed for status in statuses.values())
        if settled or time.monotonic() > deadline:
            break
        page.wait_for_timeout(1000)
    assert len(statuses) == listed, f"{asset_path}: the Checks tab says {listed}, its list shows {statuses}"
    failing = {name: status for name, status in statuses.items() if status != passed}
    assert not failing, f"{asset_path}: checks not passed: {failing}"
    return statuses
