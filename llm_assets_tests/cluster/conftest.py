"""The services of the cluster tests: Postgres once per session; a fresh database, Redis,
S3 store and scripted server per test (see :mod:`.cluster`)."""

from collections.abc import Iterator

import pytest

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets_tests.cluster.cluster import Cluster, fresh_database
from llm_assets_tests.cluster.redis_server import running_redis
from llm_assets_tests.cluster.s3 import running_s3
from llm_assets_tests.scale.postgres import running_postgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every cluster test starts processes of its own: slow."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cluster_postgres() -> Iterator[str]:
    with running_postgres() as url:
        yield url


@pytest.fixture
def cluster_redis() -> Iterator[str]:
    """A fresh broker per test: no step of another test's workers is ever delivered here."""
    with running_redis() as url:
        yield url


@pytest.fixture
def cluster_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture
def cluster(tmp_path, cluster_postgres, cluster_redis, cluster_server) -> Iterator[Cluster]:
    """Postgres (a fresh database), Redis, a fresh S3 store and scripted server; the workers
    a test starts are stopped after it."""
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (the dev group has it)")
    with running_s3() as s3:
        cluster = Cluster(tmp_path, fresh_database(cluster_postgres), cluster_redis, s3, cluster_server)
        try:
            yield cluster
        finally:
            for worker in cluster.started:
                worker.stop()
