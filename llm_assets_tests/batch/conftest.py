"""Batch-API servers for the batch tests: llmock in process, and helpers to run a
materialization in a process the test may kill."""

import os
from collections.abc import Iterator

import pytest

from llm_assets.testing.batches import ScriptedBatchServer


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
