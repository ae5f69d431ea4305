"""Steps of the README's journey in Dagster's web UI (dagster-webserver 1.13), as a person
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


def materialize_all_partitions(page: Page, location: str, group: str, assets: list[str], partitions: int) -> str:
    """Selects ``assets`` (paths) in the group's list, Materialize selected, All partitions,
    Launch backfill; returns the backfill's id from the toast."""
    from playwright.sync_api import expect

    goto(page, f"/locations/{location}/asset-groups/{group}/list")
    for asset_path in assets:  # the checkbox input is hidden behind its label's drawing
        page.locator("label").filter(has=page.get_by_test_id(f"checkbox-{asset_path}")).click()
        expect(page.get_by_test_id(f"checkbox-{asset_path}")).to_be_checked()
    page.get_by_role("button", name=re.compile(r"Materialize selected")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="All", exact=True).click()  # it opens on "Custom", no partition
    expect(dialog).to_contain_text(f"{partitions} partitions selected")
    dialog.get_by_role("button", name="Launch backfill").click()
    return toast_id(page, "Created backfill")


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
    short_id = toast_id(page, "Launched run")
    view = page.locator(f"a[href^='/runs/{short_id}']", has_text="View").first
    run_id = (view.get_attribute("href") or "").rsplit("/", 1)[-1]
    view.click()
    status = wait_visible(page, page.get_by_text(_RUN_DONE), timeout_s)
    assert status == "Success", f"run {run_id} of {asset_path}: {status}"
    return run_id


def open_markdown_image(page: Page, asset_path: str, entry: str) -> tuple[str, int, int]:
    """Opens the Markdown metadata ``entry`` of the asset's latest materialization ("[Show
    Markdown]" in its metadata table: a dialog renders it) and waits for its image to load;
    returns the image's ``src`` and natural width and height."""
    from playwright.sync_api import expect

    open_asset_tab(page, asset_path, "Overview")
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=entry, exact=True))
    wait_visible(page, row.get_by_text("[Show Markdown]"), timeout_s=PAGE_TIMEOUT_S)
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").get_by_role("img", name=asset_path)  # the plot's alt text
    expect(image).to_be_visible()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
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
