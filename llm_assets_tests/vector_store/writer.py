"""A vector-store writer process for the kill and concurrency tests (``test_kill.py``).

Run as ``python -m llm_assets_tests.vector_store.writer DB TABLE --generations 1 4 --groups p0,p1 p2,p3``:
for each generation ``g``, and each group of partitions in turn, it writes the group's rows
(``ROWS`` a partition) in one :meth:`VectorStore.write`, every float of a row's vector being
``g + row / 1e6`` (and its text ``partition/row/g``), so a reader can tell each row's
generation. It prints ``writing g i started`` before the i-th group's write and
``written g i version seconds`` after it (flushed; ``started`` on the system-wide
``time.monotonic()`` clock), then ``done``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from llm_assets.vector_store.column import vector_array
from llm_assets.vector_store.store import IndexSettings, VectorStore

PARTITIONS = [f"p{i}" for i in range(8)]
ROWS = 20_000
DIMS = 64


def rows_of(partitions: list[str], generation: int, rows: int = ROWS, dims: int = DIMS) -> pa.Table:
    """``rows`` rows of each of ``partitions``, of ``generation``."""
    keys = np.repeat(np.asarray(partitions, dtype=object), rows)
    row = np.tile(np.arange(rows, dtype=np.int64), len(partitions))
    values = (generation + row / 1e6).astype(np.float32)
    return pa.table(
        {
            "partition_key": pa.array(keys, pa.string()),
            "row": pa.array(row, pa.int64()),
            "text": pa.array([f"{k}/{r}/{generation}" for k, r in zip(keys, row, strict=True)], pa.string()),
            "model": pa.array(["test-model"] * len(row), pa.string()),
            "embedding": vector_array(np.repeat(values[:, None], dims, axis=1)),
        }
    )


def wait_for_barrier(folder: Path, name: str, count: int, timeout: float = 120.0) -> None:
    """Mark ``name`` ready in ``folder``, then wait until ``count`` writers are."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ready").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*.ready"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the other writers never reached the barrier in {folder}")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db")
    parser.add_argument("table")
    parser.add_argument("--generations", nargs=2, type=int, default=[0, 1], metavar=("START", "STOP"))
    parser.add_argument("--groups", nargs="+", default=[",".join(PARTITIONS)], help="comma-separated partitions")
    parser.add_argument("--overwrite", action="store_true", help="write with partitions=None (the whole table)")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--dims", type=int, default=DIMS)
    parser.add_argument("--min-rows", type=int, default=IndexSettings().min_rows, help="index past this many rows")
    parser.add_argument("--barrier", nargs=3, metavar=("FOLDER", "NAME", "COUNT"))
    parser.add_argument("--rounds", type=int, help="create tables TABLE0..: each a new table, after its own barrier")
    args = parser.parse_args(argv)

    store = VectorStore(args.db, index=IndexSettings(min_rows=args.min_rows))
    store.db  # connect before the barrier  # noqa: B018
    groups = [group.split(",") for group in args.groups]
    first = args.generations[0]
    data = [rows_of(group, first, args.rows, args.dims) for group in groups]
    if args.rounds:
        folder, name, count = args.barrier
        for number in range(args.rounds):  # every writer creates table{number} at the same moment
            wait_for_barrier(Path(folder) / str(number), name, int(count))
            written = store.write(f"{args.table}{number}", data[0], groups[0])
            print(f"created {number} {written.version}", flush=True)
        print("done", flush=True)
        return
    if args.barrier:
        folder, name, count = args.barrier
        wait_for_barrier(Path(folder), name, int(count))
    for generation in range(*args.generations):
        for number, group in enumerate(groups):
            if generation != first:
                data[number] = rows_of(group, generation, args.rows, args.dims)
            started = time.monotonic()
            print(f"writing {generation} {number} {started:.6f}", flush=True)
            written = store.write(args.table, data[number], None if args.overwrite else group)
            print(f"written {generation} {number} {written.version} {time.monotonic() - started:.6f}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
