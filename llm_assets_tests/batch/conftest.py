"""Batch-API servers for the batch tests: llmock in process, and helpers to run a
materialization in a process the test may kill."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_assets.testing.batches import ScriptedBatchServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def llmock(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """llmock's OpenAI server in process, its batches processed on the first poll."""
    batch = pytest.importorskip("llmock.routers.batch", reason="llmock (a dev dependency) is not installed")
    from llmock.testing import LLMockServer

    for name in [n for n in os.environ if n.startswith("LLMOCK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(batch, "_BATCH_DELAY", 0)
    batch._batches.clear()  # module-level state, shared by every server in the process
    batch._files.clear()
    with LLMockServer() as server:
        yield server
    batch._batches.clear()
    batch._files.clear()


@pytest.fixture
def batch_server(server):
    """The scripted Batch API in front of the scripted server."""
    with ScriptedBatchServer(server) as batch_server:
        yield batch_server


def llmock_batches() -> list[dict]:
    from llmock.routers import batch

    return [b for b in batch._batches.values() if b.get("provider", "openai") == "openai"]


def start_job(base_url: str, home: Path, poll: float) -> subprocess.Popen:
    """The batch job in its own process (see :mod:`llm_assets_tests.batch.job`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "llm_assets_tests.batch.job", base_url, str(home), str(poll)]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 60) -> None:
    """Wait for ``condition`` (a fact about the server, not a time) while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the job ended early:\n{process.stdout.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the job never got there")
        time.sleep(0.05)


def stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60)
    return output.decode()
