"""Helpers of the batch tests: llmock's batches, and a materialization in a process the
test may kill (started, waited on by a fact about the server, stopped)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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
