"""Where a run's spending is kept: in this process, or in a database every step reaches.

Dagster runs each step in its own process (the multiprocess executor of ``dagster dev``
and ``dagster asset materialize``) or pod (k8s), and each sets the resource up again. A
:class:`SharedBudget` makes ``max_tokens_per_run`` and ``max_cost_usd_per_run`` hold for
the whole run anyway: every process (a *holder*) keeps what it spent and what it has in
flight in one row of a table in a database they all reach, by default the Dagster
instance's own (SQLite locally, Postgres in production). A reservation is checked against
the sum of all rows and recorded in one transaction under a lock on the run
(``BEGIN IMMEDIATE`` on SQLite, an advisory lock on Postgres), so two processes can never
both take the last of a budget.

A killed step leaves its row behind: what it spent still counts, but its reservations
stop counting as soon as its process is gone (same host) or its row has not been touched
for ``ttl`` seconds (another host), so they never block the budget for good.

Example:
    >>> budget = SharedBudget("sqlite://", scope="run:1", ttl=600)  # in-memory database
    >>> budget.reserve(10, 0.0, lambda total: None)  # admitted: returns no refusal
    >>> budget.settle(10, 0.0, spent_tokens=7, spent_cost=0.0)
    >>> budget.totals().tokens
    7
"""

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import sqlalchemy as sa

#: How often a holder writes settled spending at the latest (reservations are written at once).
FLUSH_SECONDS = 0.25


@dataclass(frozen=True)
class Spending:
    """Tokens and USD spent (reported by the server) and reserved (requests in flight)."""

    tokens: int = 0
    cost: float = 0.0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0

    def __add__(self, other: "Spending") -> "Spending":
        return Spending(
            self.tokens + other.tokens,
            self.cost + other.cost,
            self.reserved_tokens + other.reserved_tokens,
            self.reserved_cost + other.reserved_cost,
        )


#: ``admit(total)``: why a reservation may not be added to ``total``, or ``None``.
Admission = Callable[[Spending], str | None]


class LocalBudget:
    """A run's spending in this process only (the in-process executor, or no shared database)."""

    shared = False

    def __init__(self) -> None:
        self._mine = Spending()
        self._lock = threading.Lock()

    def totals(self) -> Spending:
        return self._mine

    def reserve(self, tokens: int, cost: float, admit: Admission) -> str | None:
        """Reserve ``tokens`` and ``cost`` unless ``admit`` refuses the current total."""
        with self._lock:
            if (refusal := admit(self._mine)) is None:
                self._mine += Spending(reserved_tokens=tokens, reserved_cost=cost)
            return refusal

    def settle(self, reserved_tokens: int, reserved_cost: float, spent_tokens: int, spent_cost: float) -> None:
        """Give back a reservation and add what was really spent."""
        with self._lock:
            self._mine += Spending(spent_tokens, spent_cost, -reserved_tokens, -reserved_cost)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


_TABLE = "llm_assets_budget"
_CREATE = f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
    scope VARCHAR(255) NOT NULL, holder VARCHAR(255) NOT NULL, host VARCHAR(255) NOT NULL,
    pid INTEGER NOT NULL, tokens BIGINT NOT NULL, cost DOUBLE PRECISION NOT NULL,
    reserved_tokens BIGINT NOT NULL, reserved_cost DOUBLE PRECISION NOT NULL,
    touched DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, holder))"""
_WRITE = sa.text(
    f"INSERT INTO {_TABLE} VALUES (:scope, :holder, :host, :pid, :tokens, :cost, :reserved_tokens, "
    ":reserved_cost, :touched) ON CONFLICT (scope, holder) DO UPDATE SET tokens = excluded.tokens, "
    "cost = excluded.cost, reserved_tokens = excluded.reserved_tokens, reserved_cost = excluded.reserved_cost, "
    "touched = excluded.touched"
)
_OTHERS = sa.text(
    f"SELECT host, pid, tokens, cost, reserved_tokens, reserved_cost, touched FROM {_TABLE} "
    "WHERE scope = :scope AND holder != :holder"
)
#: rows of runs nobody has touched for this long are deleted when a holder starts
_FORGET_SECONDS = 30 * 86_400


class SharedBudget:
    """A run's spending across processes, in the SQL database at ``url`` (see the module
    docstring). ``scope`` names what the budget is for (``run:<run id>``)."""

    shared = True

    def __init__(self, url: str, scope: str, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.url, self.scope, self.ttl, self._clock = url, scope, ttl, clock
        self._host, self._pid = socket.gethostname(), os.getpid()
        self.holder = f"{self._host}:{self._pid}:{uuid.uuid4().hex[:8]}"
        self._engine = _engine(url)
        self._mine = Spending()
        self._written = self._mine
        self._flushed_at = 0.0
        self._lock = threading.Lock()
        with self._engine.begin() as conn:
            _advisory_lock(conn, _TABLE)  # Postgres: concurrent CREATE TABLE IF NOT EXISTS can collide
            conn.exec_driver_sql(_CREATE)
            conn.execute(
                sa.text(f"DELETE FROM {_TABLE} WHERE touched < :before"), {"before": clock() - _FORGET_SECONDS}
            )

    def totals(self) -> Spending:
        """This scope's spending over every holder (reservations of live ones only)."""
        with self._lock, self._engine.begin() as conn:
            return self._others(conn) + self._mine

    def reserve(self, tokens: int, cost: float, admit: Admission) -> str | None:
        """Atomically across processes: reserve ``tokens`` and ``cost`` unless ``admit``
        refuses the scope's current total."""
        with self._lock, self._engine.begin() as conn:
            _advisory_lock(conn, self.scope)
            refusal = admit(self._others(conn) + self._mine)
            if refusal is None:
                self._mine += Spending(reserved_tokens=tokens, reserved_cost=cost)
            self._write(conn)
            return refusal

    def settle(self, reserved_tokens: int, reserved_cost: float, spent_tokens: int, spent_cost: float) -> None:
        """Give back a reservation and add what was spent; written within :data:`FLUSH_SECONDS`
        (until then the row still shows the reservation, the more cautious figure)."""
        with self._lock:
            self._mine += Spending(spent_tokens, spent_cost, -reserved_tokens, -reserved_cost)
            if self._clock() - self._flushed_at >= FLUSH_SECONDS:
                with self._engine.begin() as conn:
                    self._write(conn)

    def flush(self) -> None:
        """Write what is not written yet (at the end of each block of work)."""
        with self._lock:
            if self._mine != self._written:
                with self._engine.begin() as conn:
                    self._write(conn)

    def close(self) -> None:
        self.flush()
        self._engine.dispose()

    # -- SQL --------------------------------------------------------------------------------

    def _others(self, conn: sa.Connection) -> Spending:
        total, now = Spending(), self._clock()
        for host, pid, tokens, cost, reserved_tokens, reserved_cost, touched in conn.execute(
            _OTHERS, {"scope": self.scope, "holder": self.holder}
        ):
            live = _process_alive(pid) if host == self._host else now - touched < self.ttl
            total += Spending(tokens, cost, *((reserved_tokens, reserved_cost) if live else (0, 0.0)))
        return total

    def _write(self, conn: sa.Connection) -> None:
        mine = self._mine
        conn.execute(
            _WRITE,
            {
                "scope": self.scope,
                "holder": self.holder,
                "host": self._host,
                "pid": self._pid,
                "tokens": mine.tokens,
                "cost": mine.cost,
                "reserved_tokens": mine.reserved_tokens,
                "reserved_cost": mine.reserved_cost,
                "touched": self._clock(),
            },
        )
        self._written, self._flushed_at = replace(mine), self._clock()


def instance_budget_url(instance: object | None) -> str | None:
    """The database a Dagster instance's steps all reach: its Postgres storage, or a SQLite
    file next to its SQLite storage; ``None`` for an in-memory (ephemeral) instance or a
    storage without SQL access (Dagster+), where a budget can only be per process."""
    if instance is None or getattr(instance, "is_ephemeral", True):
        return None
    storage = getattr(instance, "run_storage", None)
    if (postgres_url := getattr(storage, "postgres_url", None)) is not None:
        return postgres_url
    if type(storage).__name__ == "SqliteRunStorage":
        folder = os.path.join(instance.storage_directory(), "llm_assets")  # type: ignore[attr-defined]
        os.makedirs(folder, exist_ok=True)
        return f"sqlite:///{os.path.join(folder, 'budgets.db')}"
    return None


def _advisory_lock(conn: sa.Connection, name: str) -> None:
    """Hold a lock on ``name`` until the transaction ends: Postgres's advisory lock; on
    SQLite the transaction already holds the database's write lock (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _engine(url: str) -> sa.Engine:
    """An engine for ``url``; on SQLite every transaction takes the write lock when it
    begins (``BEGIN IMMEDIATE``), which serialises reservations across processes."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN would be DEFERRED
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
