"""VectorStore under crashes and concurrency: writer processes killed with SIGKILL mid-write,
reads while another process writes, and two processes writing disjoint partitions at once.

Writes run in child processes (:mod:`llm_assets_tests.vector_store.writer`), 8 partitions of
20,000 rows of 128 floats, each float of generation ``g`` being ``g + row / 1e6``: a reader
tells every row's generation, so a half-written partition or write shows.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llm_assets.vector_store.store import IndexSettings, VectorStore
from llm_assets_tests.vector_store.writer import PARTITIONS, ROWS, rows_of

REPO = Path(__file__).resolve().parents[2]
TABLE = "vectors"
DIMS = 128  # a write of half the partitions (80,000 rows), with its index refresh: about 1 s on 2 cores
HALVES = [",".join(PARTITIONS[:4]), ",".join(PARTITIONS[4:])]  # one write each, in this order
TIMEOUT = 180.0  # generous: a wait for a child process's next line that never comes fails


class Writer:
    """A writer child process, its stdout lines read as they come and its stderr in a file."""

    def __init__(self, folder: Path, name: str, db: Path, *args: str) -> None:
        self.name, self.stderr_path = name, folder / f"{name}.stderr"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env["LANCEDB_LOG"] = "error"  # no k-means warnings in the stderr file: the error, if any, is at its end
        command = ["-m", "llm_assets_tests.vector_store.writer", str(db), TABLE, "--dims", str(DIMS), *args]
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, *command], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next_line(self, timeout: float = TIMEOUT) -> str | None:
        """The child's next stdout line (``None``: it exited)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.name} printed nothing in {timeout:.0f} s; it printed {self.seen[-5:]}")
        if line is not None:
            self.seen.append(line)
        return line

    def wait_for(self, prefix: str, count: int = 1) -> str:
        """Read lines until the ``count``-th one starting with ``prefix``."""
        while True:
            line = self.next_line()
            if line is None:
                pytest.fail(f"{self.name} exited ({self.process.wait()}) before {prefix!r}: {self.error()}")
            if line.startswith(prefix) and sum(s.startswith(prefix) for s in self.seen) == count:
                return line

    def kill(self) -> None:
        """SIGKILL, then the lines it printed before dying."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(TIMEOUT)
        while self.next_line() is not None:
            pass

    def finish(self) -> int:
        """Wait for the child to exit; its exit code."""
        while self.next_line() is not None:
            pass
        return self.process.wait(TIMEOUT)

    def error(self) -> str:
        lines = [line for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "(no stderr)"

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)
        self.process.stdout.close()


def writes(lines: list[str]) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """The (generation, group) writes a writer reported done, and the one it had begun, if any."""
    done, begun = [], None
    for line in lines:
        word, *numbers = line.split()
        if word == "writing":
            begun = (int(numbers[0]), int(numbers[1]))
        elif word == "written":
            done.append((int(numbers[0]), int(numbers[1])))
            begun = None
    return done, begun


def spans(lines: list[str]) -> list[tuple[float, float]]:
    """When each write a writer reported done began and ended (``time.monotonic()``)."""
    begun = [float(line.split()[3]) for line in lines if line.startswith("writing")]
    return [(start, start + float(line.split()[4])) for start, line in zip(begun, written_lines(lines), strict=False)]


def written_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("written")]


def applied(state: dict[str, int], generation: int, group: int) -> dict[str, int]:
    return {**state, **dict.fromkeys(HALVES[group].split(","), generation)}


def generations(store: VectorStore) -> dict[str, int]:
    """The generation of each partition of the table, checking that it is whole: rows
    0..ROWS-1 once each, in order, and every value of every row from one generation."""
    data = store.read(TABLE)
    keys = np.asarray(data.column("partition_key").to_pylist())
    rows = data.column("row").to_numpy()
    matrix = data.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(data), DIMS)
    texts = data.column("text").to_pylist()
    found = {}
    for partition, start, count in zip(*np.unique(keys, return_index=True, return_counts=True), strict=True):
        where = slice(start, start + count)
        assert count == ROWS, f"partition {partition} has {count} rows, not {ROWS}"
        assert (rows[where] == np.arange(ROWS)).all(), f"partition {partition}'s rows are not 0..{ROWS - 1} once each"
        block = matrix[where]
        assert (block == block[:, :1]).all(), f"partition {partition} has vectors mixing two writes"
        found_generations, counts = np.unique(np.floor(block[:, 0]).astype(int), return_counts=True)
        mixed = dict(zip(found_generations.tolist(), counts.tolist(), strict=True))
        assert len(mixed) == 1, f"partition {partition} is half-written: its rows' generations (: counts) are {mixed}"
        generation = int(found_generations[0])
        assert np.allclose(block[:, 0], generation + rows[where] / 1e6, atol=1e-4), f"{partition}: rows mixed up"
        assert texts[where] == [f"{partition}/{row}/{generation}" for row in range(ROWS)], f"{partition}: texts"
        found[str(partition)] = generation
    return found


def check_whole(store: VectorStore) -> dict[str, int]:
    """The table's partitions' generations, after checking it has each partition once, whole."""
    found = generations(store)
    assert sorted(found) == PARTITIONS, f"partitions {sorted(found)}, not {PARTITIONS}"
    rows = store.open(TABLE).count_rows()  # of the latest version: it may be newer than the one read
    assert rows == len(PARTITIONS) * ROWS, f"count_rows() is {rows}, not {len(PARTITIONS) * ROWS}"
    return found


def create(tmp_path: Path, db: Path, min_rows: int = IndexSettings().min_rows) -> None:
    """The table, at generation 1 (0 would make row 0's vector zero: no cosine distance)."""
    options = ["--generations", "1", "2", "--overwrite", "--min-rows", str(min_rows)]
    with Writer(tmp_path, "create", db, *options) as writer:
        assert writer.finish() == 0, f"creating the table failed: {writer.error()}"


def unindexed_rows(store: VectorStore) -> int | None:
    table = store.open(TABLE)
    index = next((i.name for i in table.list_indices() if "embedding" in i.columns), None)
    stats = table.index_stats(index) if index else None
    return stats.num_unindexed_rows if stats else None


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_whole_partitions_and_a_rerun_completes(tmp_path):
    """SIGKILL at several points of a write (data, then index) leaves the previous or the new
    version of the written partitions, never part of one; a fresh writer then completes."""
    db = tmp_path / "db"
    create(tmp_path, db)
    store = VectorStore(str(db))
    state = check_whole(store)
    assert set(state.values()) == {1}
    duration, observed = 0.0, []
    for number, (write, fraction) in enumerate([(1, 0.0), (2, 0.15), (1, 0.3), (2, 0.45), (1, 0.6), (2, 0.8)]):
        start = max(state.values()) + 1
        generations_ = ["--generations", str(start), str(start + 1000)]
        with Writer(tmp_path, f"killed-{number}", db, *generations_, "--groups", *HALVES) as writer:
            writer.wait_for("writing", count=write)
            durations = [float(line.split()[-1]) for line in written_lines(writer.seen)]
            duration = durations[-1] if durations else duration  # the last write's, in this run or the last
            time.sleep(fraction * duration)  # where in the write the kill lands: not asserted on
            writer.kill()
            done, begun = writes(writer.seen)
        before = state
        for generation, group in done:
            before = applied(before, generation, group)
        after = applied(before, *begun) if begun else before
        found = check_whole(store)
        assert found in (before, after), (
            f"after the kill during write {begun}, the partitions' generations are {found}: neither the "
            f"state before it {before} nor after it {after}"
        )
        committed = found == after and begun is not None
        observed.append(f"{fraction:.1f} of {duration:.2f}s: {'committed' if committed else 'not committed'}")
        observed[-1] += f", {unindexed_rows(store)} rows unindexed" if committed else ""
        state = found
    print("kills:", "; ".join(observed))

    final = max(state.values()) + 1
    with Writer(tmp_path, "rerun", db, "--generations", str(final), str(final + 1), "--groups", *HALVES) as writer:
        assert writer.finish() == 0, f"the re-run after the kills failed: {writer.error()}"
    assert check_whole(store) == dict.fromkeys(PARTITIONS, final)
    keys = store.read(TABLE).select(["partition_key", "row"]).to_pylist()
    assert len({(k["partition_key"], k["row"]) for k in keys}) == len(keys) == len(PARTITIONS) * ROWS
    assert len(store.search(TABLE, np.ones(DIMS), k=5)) == 5
    assert unindexed_rows(store) == 0, "the re-run left rows out of the index"


@pytest.mark.slow
def test_every_read_during_writes_sees_whole_partitions_of_whole_writes(tmp_path):
    """Each of N reads while another process keeps writing sees every partition whole, and
    each write (half the partitions, one commit) wholly or not at all."""
    db = tmp_path / "db"
    create(tmp_path, db)
    store = VectorStore(str(db))
    seen = []
    with Writer(tmp_path, "writer", db, "--generations", "2", "100000", "--groups", *HALVES) as writer:
        writer.wait_for("writing")
        for _ in range(25):
            found = check_whole(store)
            first, second = found[PARTITIONS[0]], found[PARTITIONS[-1]]
            assert set(found.values()) <= {first, second} and first - second in (0, 1), (
                f"a read saw the halves at generations {found}: not whole writes of one generation after another"
            )
            assert len(store.search(TABLE, np.ones(DIMS), k=3)) == 3
            seen.append((first, second))
        assert writer.process.poll() is None, f"the writer stopped: {writer.error()}"
    assert len(set(seen)) > 1, f"the reads all saw one version {seen[0]}: none ran during a write"
    print("reads saw (first half, second half) generations:", seen)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("existing", "min_rows"),
    [
        pytest.param(True, 0, id="existing-table"),
        pytest.param(True, IndexSettings().min_rows, id="existing-table-indexed"),
        pytest.param(False, 0, id="new-table"),
    ],
)
def test_two_writers_of_disjoint_partitions_at_once_keep_both(tmp_path, existing, min_rows):
    """Two processes writing disjoint partitions of one table at the same moment (three writes
    each) both succeed, and the table has each partition once, at its writer's last write."""
    db, barrier = tmp_path / "db", tmp_path / "barrier"
    barrier.mkdir()
    if existing:
        create(tmp_path, db, min_rows)
    options = ["--generations", "2", "5", "--min-rows", str(min_rows)]
    with (
        Writer(tmp_path, "a", db, *options, "--groups", HALVES[0], "--barrier", str(barrier), "a", "2") as a,
        Writer(tmp_path, "b", db, *options, "--groups", HALVES[1], "--barrier", str(barrier), "b", "2") as b,
    ):
        codes = {writer.name: writer.finish() for writer in (a, b)}
        errors = {writer.name: f"{writer.error()} (after {writes(writer.seen)[0]})" for writer in (a, b)}
        overlapped = any(s < e and t < f for s, e in spans(a.seen) for t, f in spans(b.seen))
    failed = {name: errors[name] for name, code in codes.items() if code}
    assert not failed, f"concurrent writers failed: {failed}"
    assert overlapped, f"no two writes ran at once: {spans(a.seen)} and {spans(b.seen)}"
    store = VectorStore(str(db))
    assert check_whole(store) == dict.fromkeys(PARTITIONS, 4)


def test_a_write_that_found_only_its_partitions_keeps_one_committed_meanwhile(tmp_path, monkeypatch):
    """A write whose table held only its own partitions when it opened it keeps another
    writer's partition committed before its own commit (no lost update)."""
    a, b = (VectorStore(str(tmp_path / "db"), index=IndexSettings(min_rows=0)) for _ in range(2))
    a.write(TABLE, rows_of(["p0"], 1, rows=10, dims=4), ["p0"])
    opened = VectorStore.open

    def open_then_other_writer_commits(store: VectorStore, name: str):
        table = opened(store, name)
        if store is a and table is not None:
            b.write(TABLE, rows_of(["p1"], 1, rows=10, dims=4), ["p1"])  # another process's commit, meanwhile
        return table

    monkeypatch.setattr(VectorStore, "open", open_then_other_writer_commits)
    a.write(TABLE, rows_of(["p0"], 2, rows=10, dims=4), ["p0"])
    monkeypatch.undo()
    data = a.read(TABLE)
    assert sorted(set(data.column("partition_key").to_pylist())) == ["p0", "p1"], "p1's committed rows were lost"
    assert len(data) == 20


def racing_create(store: VectorStore, monkeypatch) -> None:
    """Make ``store``'s next write create its table as Lance commits a create that raced
    another writer's: it found no table, and its create became an overwrite of that one."""
    create_table = type(store.db).create_table

    def create_over(db, name, data, mode="create", **kwargs):
        return create_table(db, name, data, mode="overwrite", **kwargs)

    monkeypatch.setattr(store, "open", lambda name: None)
    monkeypatch.setattr(type(store.db), "create_table", create_over)


def test_a_create_that_overwrote_a_racing_create_puts_its_rows_back(tmp_path, monkeypatch, caplog):
    """Two steps creating one table at once: Lance commits the second as an overwrite of the
    first (seen in CI, about one race in 15), and the second restores the first's rows."""
    a, b = (VectorStore(str(tmp_path / "db"), index=IndexSettings(min_rows=0)) for _ in range(2))
    b.write(TABLE, rows_of(["p1", "p2"], 1, rows=10, dims=4), ["p1", "p2"])
    racing_create(a, monkeypatch)
    written = a.write(TABLE, rows_of(["p0", "p1"], 2, rows=10, dims=4), ["p0", "p1"])
    monkeypatch.undo()
    data = a.read(TABLE)
    texts = data.column("text").to_pylist()
    assert written.rows == len(data) == 30, "each (partition, row) once"
    assert {t.split("/")[0]: t.split("/")[2] for t in texts} == {"p0": "2", "p1": "2", "p2": "1"}
    assert "created by two writers at once; the 10 rows" in caplog.text


def test_a_write_over_a_version_a_racing_create_overwrote_is_retried_on_the_latest(tmp_path, monkeypatch):
    """A step whose table was overwritten by a racing create after it opened it: Lance finds
    its merge incompatible, and it is merged again on the latest version."""
    a, b = (VectorStore(str(tmp_path / "db"), index=IndexSettings(min_rows=0)) for _ in range(2))
    a.write(TABLE, rows_of(["p0"], 1, rows=10, dims=4), ["p0"])
    stale = a.open(TABLE)
    b.db.create_table(TABLE, rows_of(["p1"], 1, rows=10, dims=4), mode="overwrite")  # the racing create
    monkeypatch.setattr(a, "open", lambda name: stale)
    a.write(TABLE, rows_of(["p0"], 2, rows=10, dims=4), ["p0"])
    monkeypatch.undo()
    texts = a.read(TABLE).column("text").to_pylist()
    assert sorted({t.rsplit("/", 2)[0] + "/" + t.rsplit("/", 1)[1] for t in texts}) == ["p0/2", "p1/1"]
    assert len(texts) == 20


@pytest.mark.slow
def test_steps_creating_one_table_at_the_same_moment_keep_each_others_rows(tmp_path):
    """Two processes create each of 20 new tables at the same moment, with disjoint partitions:
    every table ends with every partition's rows once, whichever create Lance committed last."""
    db, barrier, rounds, rows = tmp_path / "db", tmp_path / "barrier", 20, 200
    options = ["--rounds", str(rounds), "--rows", str(rows), "--min-rows", "0"]
    with (
        Writer(tmp_path, "a", db, *options, "--groups", HALVES[0], "--barrier", str(barrier), "a", "2") as a,
        Writer(tmp_path, "b", db, *options, "--groups", HALVES[1], "--barrier", str(barrier), "b", "2") as b,
    ):
        codes = {writer.name: (writer.finish(), writer.error()) for writer in (a, b)}
    raced = sum(w.stderr_path.read_text().count("created by two writers at once") for w in (a, b))
    assert all(code == 0 for code, _ in codes.values()), f"a create failed: {codes}"
    store = VectorStore(str(db))
    for number in range(rounds):
        data = store.read(f"{TABLE}{number}")
        keys = list(zip(data.column("partition_key").to_pylist(), data.column("row").to_pylist(), strict=True))
        assert sorted(set(keys)) == sorted((p, r) for p in PARTITIONS for r in range(rows)), f"table {number}"
        assert len(keys) == len(set(keys)), f"table {number} has a row twice"
    print(f"in {raced} of {rounds} rounds, Lance committed one create over the other, and its rows were restored")


def write_at_once(stores: list[VectorStore], data: list) -> None:
    """Each store writes its table (partition ``p1``) in a thread of its own, at one moment."""
    barrier, failures = threading.Barrier(len(stores)), []

    def write(store: VectorStore, rows) -> None:
        barrier.wait()
        try:
            store.write(TABLE, rows, ["p1"])
        except Exception as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=write, args=pair) for pair in zip(stores, data, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def test_two_writes_of_one_new_partition_at_once_leave_one_copy_of_each_row(tmp_path):
    """Two steps writing the same new partition at the same moment (e.g. a run launched
    twice): both merges insert the same new keys, which Lance detects only for a declared
    primary key; the table ends with each (partition, row) once, every time."""
    for attempt in range(5):
        stores = [VectorStore(str(tmp_path / f"db{attempt}"), index=IndexSettings(min_rows=0)) for _ in range(2)]
        stores[0].write(TABLE, rows_of(["p0"], 1, rows=10, dims=4), ["p0"])
        write_at_once(stores, [rows_of(["p1"], generation, rows=5_000, dims=4) for generation in (2, 3)])
        data = stores[0].read(TABLE, ["p1"])
        assert data.column("row").to_pylist() == list(range(5_000)), f"attempt {attempt}: not each row once"
        assert len({t.rsplit("/", 1)[1] for t in data.column("text").to_pylist()}) == 1, "the two writes mixed"
