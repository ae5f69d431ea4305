import os
from collections.abc import Iterator

import dagster as dg
import pytest

from llm_assets import OpenAIResource
from llm_assets.testing import ScriptedOpenAIServer

SERVED = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "text-embedding-3-small": "text-embedding-3-small"}


@pytest.fixture(scope="session")
def _server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(served_models=SERVED) as server:
        yield server


@pytest.fixture
def server(_server: ScriptedOpenAIServer) -> Iterator[ScriptedOpenAIServer]:
    """The scripted loopback server, with fresh totals and default behaviour."""
    _server.reset()
    _server.usage_null = False
    _server.report_details = False
    _server.latency = 0.0
    _server.fault = None
    yield _server


@pytest.fixture
def openai_resource(server: ScriptedOpenAIServer) -> OpenAIResource:
    return OpenAIResource(api_key="sk-test-not-a-real-key", base_url=server.base_url)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def instance(tmp_path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def metadata_values(event) -> dict:
    return {k: v.value for k, v in event.materialization.metadata.items()}


def usage_metadata(event) -> dict:
    return {k: v for k, v in metadata_values(event).items() if k.startswith("openai.")}


def failure_message(result) -> str:
    """The full error text (with causes) of the failed step of a run."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.to_string()


@pytest.fixture
def env_home(tmp_path, monkeypatch) -> str:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return str(home)


__all__ = ["metadata_values", "os", "usage_metadata"]
