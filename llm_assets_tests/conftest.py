"""Fixtures: one scripted loopback server (reset per test), a Dagster instance, and one
``materialize`` helper with the library's resources."""

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import openai
import pytest

from llm_assets import OpenAIResource, PartitionedFilesystemIOManager
from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.packaging.report import (  # noqa: F401 (hooks: the install matrix's times)
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
)
from llm_assets_tests.support import partition_range

# The tests make their own instances: never the developer's. The captains example seeds the
# instance DAGSTER_HOME names when it is imported, and test modules import it.
os.environ.pop("DAGSTER_HOME", None)

SERVED = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "text-embedding-3-small": "text-embedding-3-small"}


@pytest.fixture(scope="session")
def _server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(served_models=SERVED) as server:
        yield server


@pytest.fixture
def server(_server: ScriptedOpenAIServer) -> ScriptedOpenAIServer:
    """The scripted loopback server, with fresh totals and its default behaviour."""
    _server.reset()
    return _server


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenAI SDK's retry backoff, skipped: retries run at once, on no clock."""

    async def no_wait(seconds: float) -> None:
        return None

    monkeypatch.setattr(openai._base_client.anyio, "sleep", no_wait)


@pytest.fixture
def openai_resource(server: ScriptedOpenAIServer) -> OpenAIResource:
    return OpenAIResource(api_key="sk-test-not-a-real-key", base_url=server.base_url)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


#: Test instances live in memory (tmpfs) where the machine has it: SQLite's syncs are then free.
INSTANCE_DISK = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _test_storage(home: Path) -> dict:
    """A SQLite instance as users have, but for two costs a test does not need: its event
    log in one database instead of one per run (a schema and a migration stamp per run,
    once most of a test's time), and no capture of each step's stdout and stderr (two
    ``tail`` processes per step). Both are Dagster's own classes."""
    return {
        "event_log_storage": {
            "module": "dagster._core.storage.event_log",
            "class": "ConsolidatedSqliteEventLogStorage",
            "config": {"base_dir": str(home / "events")},
        },
        "compute_logs": {
            "module": "dagster._core.storage.noop_compute_log_manager",
            "class": "NoOpComputeLogManager",
        },
    }


@pytest.fixture(scope="session")
def _instance_template() -> Iterator[Path]:
    """The storage of an empty SQLite instance, created once (its schema takes ~0.5 s)."""
    template = Path(tempfile.mkdtemp(prefix="llm-assets-instance-", dir=INSTANCE_DISK))
    with dg.instance_for_test(temp_dir=str(template), overrides=_test_storage(template)):
        pass
    yield template
    shutil.rmtree(template, ignore_errors=True)


@pytest.fixture
def instance(_instance_template: Path) -> Iterator[dg.DagsterInstance]:
    """A fresh SQLite-backed Dagster instance of its own (a copy of the empty template)."""
    home = Path(tempfile.mkdtemp(prefix="llm-assets-instance-", dir=INSTANCE_DISK))
    shutil.copytree(_instance_template, home, dirs_exist_ok=True)
    try:
        with dg.instance_for_test(temp_dir=str(home), overrides=_test_storage(home)) as instance:
            yield instance
    finally:
        shutil.rmtree(home, ignore_errors=True)


Materialize = Callable[..., dg.ExecuteInProcessResult]


@pytest.fixture
def materialize(openai_resource: OpenAIResource, instance: dg.DagsterInstance) -> Materialize:
    """``materialize(assets, resource=None, *, selection=None, partitions=None, **kwargs)``:
    ``dg.materialize`` on the test instance with ``openai`` (the scripted server's resource
    unless given) and a ``PartitionedFilesystemIOManager``; ``partitions`` is a list of
    keys for a single-run range. Raises on failure unless ``raise_on_error=False``."""

    def run(
        assets: Sequence[Any],
        resource: OpenAIResource | None = None,
        *,
        partitions: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> dg.ExecuteInProcessResult:
        resources = {"openai": resource or openai_resource, "io_manager": PartitionedFilesystemIOManager()}
        if partitions:
            kwargs["tags"] = {**kwargs.get("tags", {}), **partition_range(partitions)}
        return dg.materialize(list(assets), resources=resources, instance=kwargs.pop("instance", instance), **kwargs)

    return run


@pytest.fixture
def env_home(tmp_path, monkeypatch) -> str:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return str(home)
