"""The run budget's table in Postgres: processes racing for one budget never take more
than it together (the advisory lock), the same as on SQLite (accounting/test_budgets.py)."""

import sqlalchemy as sa

from llm_assets.accounting.budgets import SharedBudget, Spending
from llm_assets_tests.accounting.test_budgets import LIMIT, RACES, race


def test_processes_racing_for_one_budget_in_postgres_never_take_more_than_it(postgres_url):
    with sa.create_engine(postgres_url).begin() as conn:  # a clean table: the database is per session
        conn.exec_driver_sql("DROP TABLE IF EXISTS llm_assets_budget")
    assert race(postgres_url) == [LIMIT // 7] * len(RACES)  # the four also create the table at once
    assert SharedBudget(postgres_url, scope=RACES[0], ttl=600).totals() == Spending(tokens=LIMIT // 7 * 7)
