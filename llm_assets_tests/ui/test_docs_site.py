"""The docs site in Chromium: ``mkdocs build --strict`` (as ``scripts/test`` runs it), served
on loopback as ``scripts/docs`` would, opened at its home page and one guide. Each must
render with its navigation, and the site's search must find a guide by a word in it.

Screenshots of the home page and of an API reference page go to ``$LLM_ASSETS_SCREENSHOTS``
or ``tmp_path``."""

import functools
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from llm_assets_tests.ui import dagster_ui as ui

if TYPE_CHECKING:
    from playwright.sync_api import Page

REPO = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def docs_site(tmp_path: Path) -> Iterator[str]:
    """The site built strictly into ``tmp_path``, served on 127.0.0.1: its base URL."""
    if not MKDOCS.exists():
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    if not (REPO / "mkdocs.yml").is_file():
        pytest.skip("mkdocs.yml and docs/ are not here (an sdist carries the tests, not the docs)")
    site = tmp_path / "site"
    build = [str(MKDOCS), "build", "--strict", "--quiet", "--site-dir", str(site)]
    result = subprocess.run(
        build, cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_docs_site_renders_with_navigation_and_search(page: "Page", docs_site: str, screenshots: Path) -> None:
    from playwright.sync_api import expect

    page.goto(f"{docs_site}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("llm_assets")
    navigation = page.locator("nav.md-nav--primary")
    for section, first_page in [
        ("Guides", "Quick start and the UI"),
        ("API reference", "Resources"),
        ("Development", "Benchmarks"),
    ]:
        title = navigation.locator("label.md-nav__link").filter(has_text=section)
        title.scroll_into_view_if_needed()
        expect(title).to_be_visible()
        expect(navigation.get_by_role("link", name=first_page, exact=True)).to_be_attached()
    ui.screenshot(page, screenshots, "docs-home.png")

    navigation.get_by_role("link", name="Batch mode", exact=True).click()
    expect(page).to_have_url(f"{docs_site}/guides/batch-mode/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Batch")
    active = page.locator("nav.md-nav--primary .md-nav__link--active")
    expect(active.first).to_have_text("Batch mode")
    expect(page.locator(".md-sidebar--secondary .md-nav__link").first).to_be_visible()  # its table of contents

    page.locator("input.md-search__input").fill("budget")
    result = page.locator(".md-search-result__item a").filter(has_text="Budgets").first
    expect(result).to_be_visible()
    result.click()
    expect(page).to_have_url(re.compile(re.escape(f"{docs_site}/guides/budgets-and-rate-limits/") + r"(\?h=budget)?$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Budgets")

    page.goto(f"{docs_site}/reference/resources/")
    expect(page.locator("h2#llm_assets.OpenAIResource, [id='llm_assets.OpenAIResource']").first).to_be_visible()
    ui.screenshot(page, screenshots, "docs-api-resources.png")
