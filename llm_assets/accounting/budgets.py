"""Where a run's spending is kept: in this process, or in a database every step reaches.

Dagster runs each step in its own process (the multiprocess executor of ``dagster dev``
and ``dagster asset materialize``) or pod (k8s), and each sets the resource up again. A
``SharedBudget`` makes ``max_tokens_per_run`` and ``max_cost_usd_per_run`` hold for
the whole run anyway: every process (a *holder*) keeps what it spent and what it has in
flight in one row of a table in a database they all reach, by default the Dagster
instance's own (SQLite locally, Postgres in production). A reservation is checked against
the sum of all rows and recorded in one transaction under a lock on the run
(``BEGIN IMMEDIATE`` on SQLite, an advisory lock on Postgres), so two processes can never
both take the last of a budget.

A killed step leaves its row behind: what it spent (up to its last write, at most
``FLUSH_SECONDS`` before) still counts, but its reservations stop counting as soon as
its process is gone (same host, ``llm_assets.accounting.holders``) or its row has not
been touched for ``ttl`` seconds (another host; a live holder touches it while it has
reservations open), so they never block the budget for good.

Examples:
    >>> budget = SharedBudget("sqlite://", scope="run:1", ttl=600)  # in-memory database
    >>> budget.reserve(10, 0.0, lambda total: None)  # admitted: returns no refusal
    >>> budget.settle(10, 0.0, spent_tokens=7, spent_cost=0.0)
    >>> budget.totals().tokens
    7
"""

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import dagster as dg
import sqlalchemy as sa

from llm_assets.accounting.holders import Holder
from llm_assets.errors import ConfigurationError

#: How often a holder's settled spending is written, at the latest (reservations: at once).
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
    f"SELECT holder, tokens, cost, reserved_tokens, reserved_cost, touched FROM {_TABLE} "
    "WHERE scope = :scope AND holder != :holder"
)
#: rows of runs nobody has touched for this long are deleted when a holder starts
_FORGET_SECONDS = 30 * 86_400


class SharedBudget:
    """A run's spending across processes, in the SQL database at ``url`` (see the module
    docstring). ``scope`` names what the budget is for (``run:<run id>:<resource>``).

    A reservation is written at once, in the transaction that checks it; settled spending
    is written by a background thread within ``FLUSH_SECONDS`` (and at ``flush``),
    which also touches the row while reservations are open, so other hosts see it live."""

    shared = True

    def __init__(self, url: str, scope: str, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.url, self.scope, self.ttl, self._clock = url, scope, ttl, clock
        self.holder = Holder.current()
        self._engine = _engine(url)
        self._mine = self._written = Spending()
        self._touched = 0.0
        self._state = threading.Lock()  # guards the figures above (held briefly, never across I/O)
        self._db = threading.Lock()  # one transaction of this holder at a time
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._warned = False
        with self._engine.begin() as conn:
            _advisory_lock(conn, _TABLE)  # Postgres: concurrent CREATE TABLE IF NOT EXISTS can collide
            conn.exec_driver_sql(_CREATE)
            conn.execute(
                sa.text(f"DELETE FROM {_TABLE} WHERE touched < :before"), {"before": clock() - _FORGET_SECONDS}
            )

    def totals(self) -> Spending:
        """This scope's spending over every holder (reservations of live ones only)."""
        with self._db, self._engine.begin() as conn:
            others = self._others(conn)
        with self._state:
            return others + self._mine

    def reserve(self, tokens: int, cost: float, admit: Admission) -> str | None:
        """Atomically across processes: reserve ``tokens`` and ``cost`` unless ``admit``
        refuses the scope's current total. If the database fails, nothing is reserved and
        the error says so: a budget that can't be checked lets nothing through."""
        reservation = Spending(reserved_tokens=tokens, reserved_cost=cost)
        with self._db:  # the figures change with the row, before the writer thread may write again
            try:
                with self._engine.begin() as conn:
                    _advisory_lock(conn, self.scope)
                    others = self._others(conn)
                    with self._state:
                        mine = self._mine
                    refusal = admit(others + mine)
                    written = mine if refusal is not None else mine + reservation
                    self._write(conn, written)
            except sa.exc.SQLAlchemyError as error:
                raise ConfigurationError(
                    f"The run's budget can't be checked: its database failed ({type(error).__name__}: "
                    f"{getattr(error, 'orig', None) or error}). Nothing more is sent; answers so far are kept (cached)."
                ) from None
            with self._state:
                if refusal is None:
                    self._mine += reservation
                self._written = written
        self._start_writer()
        return refusal

    def settle(self, reserved_tokens: int, reserved_cost: float, spent_tokens: int, spent_cost: float) -> None:
        """Give back a reservation and add what was spent (in memory: never waits on the
        database; the writer thread writes it)."""
        with self._state:
            self._mine += Spending(spent_tokens, spent_cost, -reserved_tokens, -reserved_cost)

    def flush(self) -> None:
        """Write what is not written yet (at the end of each block of work)."""
        with self._state:
            due = self._mine != self._written
        if due:
            self._write_now()

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join()
        self.flush()
        self._engine.dispose()

    # -- writing ------------------------------------------------------------------------------

    def _start_writer(self) -> None:
        with self._state:
            if self._writer is None and not self._stop.is_set():
                self._writer = threading.Thread(target=self._write_periodically, name="llm_assets-budget", daemon=True)
                self._writer.start()

    def _write_periodically(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            with self._state:
                open_ = self._mine.reserved_tokens > 0 or self._mine.reserved_cost > 0
                due = self._mine != self._written or (open_ and self._clock() - self._touched >= self.ttl / 4)
            if due:
                self._write_now()

    def _write_now(self) -> None:
        """Write this holder's row; a failure is logged once, and the next write catches up."""
        with self._db:
            try:
                with self._engine.begin() as conn:
                    with self._state:
                        mine = self._mine
                    self._write(conn, mine)
            except sa.exc.SQLAlchemyError as error:
                if not self._warned:  # once per outage
                    dg.get_dagster_logger("llm_assets").warning(
                        f"Could not write this step's spending to the run's budget database "
                        f"({type(error).__name__}); it is kept in memory and written again shortly."
                    )
                self._warned = True
                return
            with self._state:
                self._written, self._warned = mine, False

    def _write(self, conn: sa.Connection, mine: Spending) -> None:
        now = self._clock()
        values = {"scope": self.scope, "holder": self.holder.name, "host": self.holder.host}
        values |= {"pid": self.holder.pid, "touched": now, **asdict(mine)}
        conn.execute(_WRITE, values)
        self._touched = now

    def _others(self, conn: sa.Connection) -> Spending:
        """The other holders' spending (and, of those that live, reservations)."""
        total, now = Spending(), self._clock()
        for holder, tokens, cost, reserved_tokens, reserved_cost, touched in conn.execute(
            _OTHERS, {"scope": self.scope, "holder": self.holder.name}
        ):
            alive = Holder.parse(holder).alive(self.holder) if holder.count(":") >= 3 else None
            live = now - touched < self.ttl if alive is None else alive
            total += Spending(tokens, cost, *((reserved_tokens, reserved_cost) if live else (0, 0.0)))
        return total


def _advisory_lock(conn: sa.Connection, name: str) -> None:
    """Hold a lock on ``name`` until the transaction ends: Postgres's advisory lock; on
    SQLite the transaction already holds the database's write lock (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _engine(url: str) -> sa.Engine:
    """An engine for ``url``; on SQLite every transaction takes the write lock when it
    begins (``BEGIN IMMEDIATE``), which serialises reservations across processes."""
    if not url.startswith("sqlite"):  # one connection per process, as a rule: many pods share the database
        return sa.create_engine(url, pool_size=1, max_overflow=2, pool_recycle=300, pool_pre_ping=True)
    in_memory = url in ("sqlite://", "sqlite:///:memory:")  # one database for every thread, not one each
    pool = {"poolclass": sa.pool.StaticPool} if in_memory else {}
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **pool)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN would be DEFERRED
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
