"""Fixtures of the UI tests: Debian's Chromium (installed with apt-get as root, else the
test skips), a Playwright page that reaches only 127.0.0.1, and ``dagster dev`` on the
captains example with a fresh ``DAGSTER_HOME`` and the embedded local model.

Playwright is imported only inside the fixtures, so this folder imports (and its test
skips, saying why) when the ``playwright`` package is missing."""

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from llm_assets_tests.scale.runs import dagster_dev as running_dagster_dev
from llm_assets_tests.ui import dagster_ui as ui

if TYPE_CHECKING:
    from playwright.sync_api import Page, WebSocketRoute

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAGSTER_YAML = "nux:\n  enabled: false\ntelemetry:\n  enabled: false\n"
LOCAL_HOST = "127.0.0.1"


@dataclass(frozen=True)
class DagsterDev:
    """A running ``dagster dev``: its UI's address and its output."""

    url: str
    log: Path

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Keeps each phase's report on the test item (``item.rep_call``…) for the fixtures' teardown."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


def _install_chromium() -> None:
    """``apt-get install -y chromium``, after ``apt-get update`` if the first try fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed first when running as root with apt-get; else a skip."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_chromium()
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's Chromium (`apt-get install chromium`, as root)")
    return CHROMIUM


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the milestones' screenshots go: ``$LLM_ASSETS_SCREENSHOTS`` if set, else ``tmp_path``."""
    folder = Path(os.environ.get("LLM_ASSETS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _abort_websocket(route: "WebSocketRoute") -> None:
    route.close()


@pytest.fixture(scope="session")
def sync_api() -> ModuleType:
    """Playwright's sync API, or a skip when the ``playwright`` package is missing."""
    return pytest.importorskip("playwright.sync_api", reason="the `playwright` package is not installed")


@pytest.fixture
def page(sync_api: ModuleType, chromium: Path, screenshots: Path, request: pytest.FixtureRequest) -> Iterator["Page"]:
    """A Chromium page whose requests to any host but 127.0.0.1 are aborted. On a failure,
    its last state is saved as ``failure.png`` beside the screenshots.

    Playwright's sync API handles routed requests only inside its own calls: wait with
    ``page.wait_for_timeout`` or a locator, never ``time.sleep`` (the page would stall)."""
    remote = lambda url: urlsplit(url).hostname != LOCAL_HOST  # noqa: E731
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.route(remote, lambda route: route.abort())
            context.route_web_socket(remote, _abort_websocket)
            page = context.new_page()
            page.set_default_timeout(ui.PAGE_TIMEOUT_S * 1000)  # hang guards, never assertions on time
            sync_api.expect.set_options(timeout=ui.PAGE_TIMEOUT_S * 1000)
            yield page
            if _failed(request):
                with contextlib.suppress(Exception):
                    page.screenshot(path=screenshots / "failure.png", full_page=True)
        finally:
            browser.close()


@pytest.fixture
def dagster_dev(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DagsterDev]:
    """``dagster dev`` in the repository root (its ``workspace.yaml``: the captains example)
    with no ``OPENAI_*`` variables (so the embedded local model answers) and a fresh
    ``DAGSTER_HOME``; its output in ``dagster-dev.log``, whose tail is printed on a failure.
    The code server needs no port of ours: ``dagster dev`` picks its own."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    log = tmp_path / "dagster-dev.log"
    with running_dagster_dev(home, {}, log) as url:
        dev = DagsterDev(url, log)
        yield dev
        if _failed(request):
            print(f"--- dagster dev output (last lines of {log}) ---\n{dev.log_tail()}")
