"""A throwaway PostgreSQL server, one per test session (see :mod:`.postgres`)."""

from collections.abc import Iterator

import pytest

from llm_assets_tests.scale.postgres import running_postgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the PostgreSQL server (a process of its own) is slow."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://…@127.0.0.1:<port>/test`` of a fresh server, stopped after the session."""
    with running_postgres() as url:
        yield url
