"""A run's budget shared by processes: atomic reservations, exact totals, dead holders released."""

import multiprocessing
import os
import signal
import time

import pytest
import sqlalchemy as sa

from llm_assets.accounting.budgets import LocalBudget, SharedBudget, Spending
from llm_assets.accounting.governance import Governor
from llm_assets.accounting.holders import Holder
from llm_assets.errors import LLMAssetsError

LIMIT = 1_000
RACES = [f"run:race{n}" for n in range(5)]  # an overshoot can only happen at each race's end: run several


def fits(total: Spending, tokens: int = 7) -> str | None:
    return None if total.tokens + total.reserved_tokens + tokens <= LIMIT else "over"


def grab(url: str, results: "multiprocessing.Queue[list[int]]") -> None:
    """In each race, reserve 7 tokens at a time until refused, settling each as 7 spent;
    report the counts."""
    granted = []
    for scope in RACES:
        budget = SharedBudget(url, scope=scope, ttl=600)
        granted.append(0)
        while budget.reserve(7, 0.0, fits) is None:
            granted[-1] += 1
            budget.settle(7, 0.0, spent_tokens=7, spent_cost=0.0)
        budget.close()
    results.put(granted)


def race(url: str, processes: int = 4) -> list[int]:
    """Grants per race, summed over ``processes`` racing processes."""
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    workers = [spawn.Process(target=grab, args=(url, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    granted = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    return [sum(counts) for counts in zip(*granted, strict=True)]


@pytest.mark.slow  # spawns processes
def test_processes_racing_for_one_budget_never_take_more_than_it_together(tmp_path):
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    assert race(url) == [LIMIT // 7] * len(RACES)  # every grant fit, and the last one was taken: 142 of 7 tokens
    assert SharedBudget(url, scope=RACES[0], ttl=600).totals() == Spending(tokens=LIMIT // 7 * 7)


@pytest.mark.slow  # spawns a process and kills it
def test_a_killed_holders_reservations_stop_counting_but_its_spending_stays(tmp_path):
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    holder = spawn.Process(target=hold, args=(url, ready))
    holder.start()
    assert ready.wait(60)
    budget = SharedBudget(url, scope="run:1", ttl=10**9)  # a TTL that never ends: only the process decides
    assert budget.totals() == Spending(tokens=100, reserved_tokens=800)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert budget.totals() == Spending(tokens=100)  # the killed step's reservations are free again
    assert budget.reserve(900, 0.0, lambda total: fits(total, 900)) is None


def hold(url: str, ready) -> None:
    budget = SharedBudget(url, scope="run:1", ttl=600)
    budget.reserve(900, 0.0, fits)
    budget.settle(100, 0.0, spent_tokens=100, spent_cost=0.0)
    budget.flush()
    ready.set()
    signal.pause()


def test_another_hosts_reservations_expire_after_the_ttl(tmp_path):
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    now = [1_000.0]
    budget = SharedBudget(url, scope="run:1", ttl=300, clock=lambda: now[0])
    with sa.create_engine(url).begin() as conn:  # a step on another machine: alive is unknowable from here
        conn.execute(
            sa.text("INSERT INTO llm_assets_budget VALUES ('run:1', 'h2:1:x', 'elsewhere', 1, 50, 0.5, 400, 4.0, 990)")
        )
    assert budget.totals() == Spending(50, 0.5, 400, 4.0)
    now[0] = 1_291.0
    assert budget.totals() == Spending(50, 0.5, 0, 0.0)


def test_runs_and_scopes_do_not_see_each_other(tmp_path):
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    first, second = SharedBudget(url, "run:a", ttl=600), SharedBudget(url, "run:b", ttl=600)
    first.reserve(600, 0.0, fits)
    assert second.reserve(600, 0.0, fits) is None
    assert first.totals().reserved_tokens == second.totals().reserved_tokens == 600


@pytest.mark.parametrize("make", [LocalBudget, lambda: SharedBudget("sqlite://", "run:1", ttl=600)])
def test_the_governor_counts_the_same_with_either_budget(make):
    governor = Governor(None, max_tokens=100, max_cost_usd=None, prices={}, budget=make())
    assert governor.refusal("m", 60) is None
    assert "max_tokens_per_run 100 would be exceeded: 0 tokens spent" in governor.refusal("m", 60)
    governor.settle("m", 60, {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}, "m")
    assert governor.refusal("m", 60) is None
    assert governor.tokens == 25 and governor.budget.totals().reserved_tokens == 60


def test_a_failing_database_lets_nothing_through_and_loses_nothing(tmp_path, caplog):
    budget = SharedBudget(f"sqlite:///{tmp_path / 'budgets.db'}", "run:1", ttl=600)
    assert budget.reserve(100, 0.0, fits) is None
    good = budget._engine
    budget._engine = sa.create_engine(f"sqlite:///{tmp_path / 'gone' / 'budgets.db'}")  # the database goes away
    with pytest.raises(LLMAssetsError, match="The run's budget can't be checked: its database failed"):
        budget.reserve(50, 0.0, fits)
    budget.settle(100, 0.0, spent_tokens=40, spent_cost=0.0)  # in memory: never waits on the database
    budget.flush()  # logged, not raised: the figures stay in memory
    assert "Could not write this step's spending" in caplog.text
    budget._engine = good
    budget.flush()
    assert budget.totals() == Spending(tokens=40)  # the failed reservation left nothing behind
    budget.close()


def test_a_live_holder_keeps_its_row_fresh_while_reservations_are_open(tmp_path):
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    now = [1_000.0]
    holder = SharedBudget(url, "run:1", ttl=100, clock=lambda: now[0])
    holder.reserve(500, 0.0, fits)  # a batch in flight, for hours
    now[0] += 1_000  # far past the TTL: only the writer's touches keep it counting
    for _ in range(200):  # wait for the writer thread's next tick (a poll, not a timing assert)
        with sa.create_engine(url).begin() as conn:
            touched = conn.exec_driver_sql("SELECT touched FROM llm_assets_budget").scalar_one()
        if touched == now[0]:
            break
        time.sleep(0.05)
    assert touched == now[0]
    other = SharedBudget(url, "run:1", ttl=100, clock=lambda: now[0])
    other.holder = Holder("another-host", 1, "", "x")  # on another machine: only the row's age tells
    assert other.totals().reserved_tokens == 500
    holder.close()


def test_resources_with_other_budgets_in_one_run_keep_their_own(tmp_path):
    from llm_assets.accounting.run_budget import run_budget

    class Instance:  # a SQLite instance's shape
        is_ephemeral = False
        run_storage = type("SqliteRunStorage", (), {})()

        def storage_directory(self) -> str:
            return str(tmp_path)

    common = {"budget_url": None, "instance": Instance(), "run_id": "r1", "backend": "b", "ttl": 60}
    small, large = run_budget(limits=(100, None), **common), run_budget(limits=(10_000, None), **common)
    same = run_budget(limits=(100, None), **common)
    assert small.url == f"sqlite:///{tmp_path / 'llm_assets' / 'budgets.db'}"
    assert small.scope == same.scope != large.scope and small.scope.startswith("run:r1:")
