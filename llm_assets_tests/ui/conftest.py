"""Fixtures of the UI tests: Debian's Chromium (installed with apt-get as root, else the
test skips), a Playwright page that reaches only 127.0.0.1, and ``dagster dev`` on the
captains example with a fresh ``DAGSTER_HOME`` and the embedded local model.

Playwright is imported only inside the fixtures, so this folder imports (and its test
skips, saying why) when the ``playwright`` package is missing."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from llm_assets_tests.scale.runs import DAGSTER, REPO, dagster_environment

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
            page.set_default_timeout(30_000)  # a busy 2-core machine: deadlines, never assertions on time
            sync_api.expect.set_options(timeout=30_000)
            yield page
            if _failed(request):
                with contextlib.suppress(Exception):
                    page.screenshot(path=screenshots / "failure.png", full_page=True)
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL_HOST, 0))
        return sock.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    """Polls ``url/server_info`` (up to 2 minutes on a busy machine) while the process lives."""
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/server_info", timeout=2).close()
            return
        assert process.poll() is None, f"dagster dev exited early:\n{log.read_text(errors='replace')[-6000:]}"
        assert time.monotonic() < deadline, f"dagster dev did not serve:\n{log.read_text(errors='replace')[-6000:]}"
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    """SIGINT to the process group, up to 15 s to stop, then SIGKILL for what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def dagster_dev(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DagsterDev]:
    """``dagster dev`` in the repository root (its ``workspace.yaml``: the captains example)
    on a free port, with no ``OPENAI_*`` variables (so the embedded local model answers) and a
    fresh ``DAGSTER_HOME``; its output in ``dagster-dev.log``, whose tail is printed on a failure.
    The code server needs no port of ours: ``dagster dev`` picks its own."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    port, log_path = free_port(), tmp_path / "dagster-dev.log"
    command = [str(DAGSTER), "dev", "-h", LOCAL_HOST, "-p", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=dagster_environment(home, {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            dev = DagsterDev(f"http://{LOCAL_HOST}:{port}", log_path)
            _wait_until_serving(process, dev.url, log_path)
            yield dev
            if _failed(request):
                print(f"--- dagster dev output (last lines of {log_path}) ---\n{dev.log_tail()}")
        finally:
            _stop(process)
