"""Batch mode against aimock (npm), whose batches move one step per poll and whose
whole-batch outcomes (failed, expired, cancelled) are forced by a request header."""

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from llm_assets_tests.batch import job
from llm_assets_tests.batch.support import REPO, start_job, stop, wait_for
from llm_assets_tests.support import failure_message, usage_metadata

OUTCOME = "X-AIMock-Batch-Outcome"


@pytest.fixture(scope="module")
def aimock_binary() -> str:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("aimock needs Node >= 20.15 and npm, which this machine lacks")
    installed = subprocess.run(
        [str(REPO / "llm_assets_tests/batch/aimock.sh")], capture_output=True, text=True, timeout=600
    )
    if installed.returncode != 0:
        pytest.skip(f"@copilotkit/aimock could not be installed from npm: {installed.stderr[-500:]}")
    return installed.stdout.strip()


@pytest.fixture
def aimock(aimock_binary, tmp_path):
    """aimock on a free loopback port, answering every chat request."""
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    catch_all = {"fixtures": [{"match": {"endpoint": "chat"}, "response": {"content": "Live answer"}}]}
    (fixtures / "chat.json").write_text(json.dumps(catch_all))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [aimock_binary, "-p", str(port), "-h", "127.0.0.1", "-f", str(fixtures), "--log-level", "warn"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{root}/__aimock/health", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("aimock did not start")
            time.sleep(0.05)
    yield root
    process.terminate()
    process.wait(10)


def creates(root: str) -> int:
    journal = httpx.get(f"{root}/__aimock/journal", params={"method": "POST", "path": "/v1/batches"}).json()
    entries = journal if isinstance(journal, list) else journal.get("entries", journal.get("data", []))
    return sum(1 for entry in entries if entry.get("path") == "/v1/batches")


def recorded(cache: Path) -> str:
    return "".join(path.read_text() for path in cache.glob("batches/*/*/*.json"))


def test_the_full_cycle(aimock, instance, tmp_path):
    result = job.materialize(job.resource(f"{aimock}/v1", cache_dir=str(tmp_path)), instance)
    frame = result.asset_value("answers")
    assert list(frame["answer"]) == ["Mock batch completion"] * 3  # what aimock's batches answer
    for event in result.get_asset_materialization_events():
        recorded = usage_metadata(event)
        assert recorded["openai.batch_requests"] == 1 and recorded["openai.total_tokens"] == 2
    assert creates(aimock) == 1


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("failed", "failed: Mock batch failure (X-AIMock-Batch-Outcome: failed)"),
        ("expired", "expired with 0 of 3 requests completed: those are kept (cached)"),
        ("cancelled", "cancelled with 0 of 3 requests completed"),
    ],
)
def test_a_batch_that_does_not_complete_fails_the_materialization(aimock, instance, tmp_path, outcome, expected):
    forced = job.resource(f"{aimock}/v1", cache_dir=str(tmp_path), default_headers={OUTCOME: outcome})
    result = job.materialize(forced, instance, raise_on_error=False)
    assert not result.success and expected in failure_message(result)
    # nothing was answered, nothing is kept: the re-run submits all three again, and completes
    again = job.materialize(job.resource(f"{aimock}/v1", cache_dir=str(tmp_path)), instance)
    assert again.asset_value("answers")["answer"].eq("Mock batch completion").all()
    assert creates(aimock) == 2


@pytest.mark.slow
def test_a_terminated_run_cancels_and_the_rerun_waits_for_cancelling(aimock, instance, tmp_path):
    process = start_job(f"{aimock}/v1", tmp_path, poll=600)  # submits, then sleeps before its first poll
    wait_for(lambda: '"batch_id": "batch' in recorded(tmp_path / "cache"), process)  # created and recorded
    output = stop(process, signal.SIGINT)
    assert "Cancelled batch" in output, output[-3000:]
    result = job.materialize(job.resource(f"{aimock}/v1", cache_dir=str(Path(tmp_path) / "cache")), instance)
    assert creates(aimock) == 2  # the cancelled batch was collected, then its requests sent again
    assert result.asset_value("answers")["answer"].eq("Mock batch completion").all()
