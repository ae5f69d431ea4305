"""A throwaway PostgreSQL server, one per test session (see :mod:`.postgres`)."""

from collections.abc import Iterator

import pytest

from llm_assets_tests.scale.postgres import running_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://…@127.0.0.1:<port>/test`` of a fresh server, stopped after the session."""
    with running_postgres() as url:
        yield url
