"""Vectors at a million: 1,000,000 × 384 float32 embeddings from one materialization of
100 partitions, written by ``LanceDBIOManager`` and, side by side, by the pickle
``PartitionedFilesystemIOManager``; then a top-10 search of them through the ANN index
against numpy's exact search; then one partition of the 100 re-materialized.

Each writer runs in a child process, so its peak RSS is its own. The vectors have the
structure of real embeddings (a low-rank mixture plus noise, unit length), not uniform
noise, whose neighbours are all equally far. Reported:

* the write of all 100 partitions: seconds in the I/O manager and peak RSS, with the RSS
  the process holds when the asset returns its frame;
* the index, built by the next write (one partition): seconds, parameters, peak RSS;
* search: p50 and p95 of 100 top-10 queries (and LanceDB's query alone), and recall@10
  against numpy brute force;
* one partition of 100 re-materialized: seconds in the I/O manager, against the full
  write; then searches with its new rows outside the index, and ``VectorStore.optimize``.

Run: ``.venv/bin/python benchmarks/vectors.py`` (``--quick``: 100,000 vectors).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import dagster as dg
import numpy as np
import pandas as pd
from common import report

from llm_assets import LanceDBIOManager, PartitionedFilesystemIOManager
from llm_assets.vector_store.column import vector_column

DIMENSIONS, PARTITIONS, LATENT, CLUSTERS = 384, 100, 32, 200


def partition_vectors(partition: int, per: int, seed: int = 0) -> np.ndarray:
    """Partition ``partition``'s ``per`` unit float32 vectors (``seed``: its generation)."""
    shape = np.random.default_rng(0)
    projection = shape.normal(size=(LATENT, DIMENSIONS)).astype(np.float32)
    centres = 2 * shape.normal(size=(CLUSTERS, LATENT)).astype(np.float32)
    rng = np.random.default_rng([seed, partition])
    latent = centres[rng.integers(0, CLUSTERS, per)] + rng.normal(size=(per, LATENT)).astype(np.float32)
    block = latent @ projection + 0.5 * rng.normal(size=(per, DIMENSIONS)).astype(np.float32)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def vectors(partitions: list[int], per: int, seeds: dict[int, int] | None = None) -> np.ndarray:
    """The vectors of ``partitions``, generated a partition at a time into one buffer."""
    matrix = np.empty((len(partitions) * per, DIMENSIONS), np.float32)
    for i, partition in enumerate(partitions):
        matrix[i * per : (i + 1) * per] = partition_vectors(partition, per, (seeds or {}).get(partition, 0))
    return matrix


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def embeddings_asset(rows: int, io_manager_key: str, sizes: dict, seeds: dict[int, int]) -> dg.AssetsDefinition:
    keys = [f"p{i:03d}" for i in range(PARTITIONS)]
    per = rows // PARTITIONS

    @dg.asset(
        key="embeddings",
        partitions_def=dg.StaticPartitionsDefinition(keys),
        backfill_policy=dg.BackfillPolicy.single_run(),
        io_manager_key=io_manager_key,
    )
    def embeddings(context: dg.AssetExecutionContext) -> pd.DataFrame:
        chosen = list(context.partition_keys)
        matrix = vectors([keys.index(k) for k in chosen], per, seeds)
        frame = pd.DataFrame(
            {
                "partition_key": np.repeat(chosen, per),
                "row": np.tile(np.arange(per, dtype=np.int64), len(chosen)),
                "text": [f"text {i}" for i in range(len(matrix))],
                "model": "synthetic",
                "embedding": vector_column(matrix),
            }
        )
        del matrix
        sizes["frame_rss_mb"] = rss_mb()
        return frame

    return embeddings


def handled_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    """Seconds from the asset's output to its I/O manager having stored it."""
    times = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type_value in ("STEP_OUTPUT", "HANDLED_OUTPUT"):
            times[event.event_type_value] = entry.timestamp  # the asset's one output
    return times["HANDLED_OUTPUT"] - times["STEP_OUTPUT"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec_path: str) -> None:
    """One writer's materializations; figures to ``spec['out']``: all 100 partitions (no
    index yet), then (LanceDB) one partition whose write builds the index, then one whose
    write refreshes it, then searches."""
    with open(spec_path) as handle:
        spec = json.load(handle)
    rows, kind = spec["rows"], spec["kind"]
    plain = LanceDBIOManager(uri=spec["uri"], index_min_rows=0)  # the write alone
    indexed = LanceDBIOManager(uri=spec["uri"])  # the default: an index past 100,000 rows
    pickled = PartitionedFilesystemIOManager(base_dir=spec["uri"])
    sizes: dict = {}
    figures: dict = {}
    keys = [f"p{i:03d}" for i in range(PARTITIONS)]
    seeds: dict[int, int] = {}
    asset = embeddings_asset(rows, "io_manager", sizes, seeds)
    with dg.instance_for_test() as instance:

        def materialize(io_manager, partitions: list[str]) -> float:
            tags = {"dagster/asset_partition_range_start": partitions[0]}
            tags["dagster/asset_partition_range_end"] = partitions[-1]
            result = dg.materialize([asset], resources={"io_manager": io_manager}, instance=instance, tags=tags)
            figures["metadata"] = next(iter(result.get_asset_materialization_events())).materialization.metadata
            return handled_seconds(instance, result.run_id)

        figures["write_seconds"] = materialize(plain if kind == "lancedb" else pickled, keys)
        figures["peak_rss_mb"], figures["frame_rss_mb"] = peak_mb(), sizes["frame_rss_mb"]
        seeds[50] = seeds[51] = 1  # new vectors for the partitions written again
        if kind == "lancedb":
            figures["index_write_seconds"] = materialize(indexed, keys[50:51])
            figures["index"] = figures.pop("metadata")["lancedb/index"].value
            figures["index_peak_rss_mb"] = peak_mb()
            figures["one_partition_seconds"] = materialize(indexed, keys[51:52])
            figures["refresh"] = figures.pop("metadata")["lancedb/index"].value
            store = indexed.store(instance)
            figures["pending"] = search(store, rows, seeds)  # one partition's rows searched exactly
            started = time.perf_counter()
            figures["optimized"] = store.optimize("embeddings")
            figures["optimized"]["wall"] = time.perf_counter() - started
            figures.update(search(store, rows, seeds))
        else:
            figures["one_partition_seconds"] = materialize(pickled, keys[51:52])
            figures.pop("metadata")
    with open(spec["out"], "w") as handle:
        json.dump(figures, handle)


def search(store, rows: int, seeds: dict[int, int], queries: int = 100) -> dict:
    """p50/p95 of top-10 searches through the index (``VectorStore.search``, and LanceDB's
    own query alone), and recall@10 against numpy's exact cosine neighbours."""
    per = rows // PARTITIONS
    matrix = vectors(list(range(PARTITIONS)), per, seeds)
    rng = np.random.default_rng(1)
    picks = matrix[rng.integers(0, rows, queries)] + 0.02 * rng.normal(size=(queries, DIMENSIONS)).astype(np.float32)
    table, settings = store.open("embeddings"), store.index
    store.search("embeddings", picks[0], k=10)  # loads the index once
    latencies, raw, recalls = [], [], []
    for query in picks:
        started = time.perf_counter()
        found = store.search("embeddings", query, k=10)
        latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        lance = table.search(query, vector_column_name="embedding").distance_type(settings.distance).limit(10)
        lance.nprobes(settings.nprobes).refine_factor(settings.refine_factor).select(["row"]).to_arrow()
        raw.append(time.perf_counter() - started)
        scores = matrix @ (query / np.linalg.norm(query))
        exact = np.argpartition(-scores, 10)[:10]
        exact_ids = {(f"p{i // per:03d}", i % per) for i in exact}
        recalls.append(len(exact_ids & set(zip(found["partition_key"], found["row"], strict=True))) / 10)
    return {
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "raw_p50_ms": 1000 * float(np.percentile(raw, 50)),
        "recall_at_10": float(np.mean(recalls)),
    }


def run(kind: str, rows: int, directory: str) -> dict:
    spec = {"kind": kind, "rows": rows, "uri": os.path.join(directory, kind)}
    spec["out"] = os.path.join(directory, f"{kind}.json")
    spec_path = os.path.join(directory, f"{kind}-spec.json")
    with open(spec_path, "w") as handle:
        json.dump(spec, handle)
    subprocess.run([sys.executable, __file__, "--child", spec_path], check=True)
    with open(spec["out"]) as handle:
        return json.load(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 vectors instead of 1,000,000")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    rows = 100_000 if args.quick else 1_000_000
    vector_mb = rows * DIMENSIONS * 4 / 2**20
    with tempfile.TemporaryDirectory(prefix="llm-assets-vectors-") as directory:
        lance = run("lancedb", rows, directory)
        pickled = run("pickle", rows, directory)
    name = f"{rows:,} × {DIMENSIONS} float32 ({vector_mb:,.0f} MiB of vectors), {PARTITIONS} partitions, one run"
    report(
        f"write, {name}",
        f"LanceDB {lance['write_seconds']:.1f} s, peak RSS {lance['peak_rss_mb']:,.0f} MiB; pickle "
        f"{pickled['write_seconds']:.1f} s, peak RSS {pickled['peak_rss_mb']:,.0f} MiB (the process holds "
        f"{lance['frame_rss_mb']:,.0f} MiB when the asset returns the frame)",
        "target ≤ 60 s, ≤ 1.5 GB",
    )
    index, refresh, pending, optimized = lance["index"], lance["refresh"], lance["pending"], lance["optimized"]
    report(
        "ANN index, built by the next write (one partition)",
        f"{index['index_type']} {index['distance']}, {index['num_sub_vectors']} sub-vectors, "
        f"{index['indexed_rows']:,} rows in {index['seconds']:.1f} s; peak RSS {lance['index_peak_rss_mb']:,.0f} MiB",
    )
    report(
        "top-10 search through the index (every row in it), 100 queries",
        f"p50 {lance['p50_ms']:.1f} ms (LanceDB's query alone {lance['raw_p50_ms']:.1f} ms), p95 "
        f"{lance['p95_ms']:.1f} ms, recall@10 {lance['recall_at_10']:.3f} (nprobes {index['nprobes']}, "
        f"refine_factor {index['refine_factor']})",
        "target p50 ≤ 20 ms, recall ≥ 0.95",
    )
    report(
        "the same, with one partition's new rows not yet in the index (searched exactly)",
        f"p50 {pending['p50_ms']:.1f} ms, p95 {pending['p95_ms']:.1f} ms, recall@10 {pending['recall_at_10']:.3f}; "
        f"VectorStore.optimize() adds them in {optimized['wall']:.1f} s",
    )
    one = lance["one_partition_seconds"]
    report(
        "one partition of 100 re-materialized",
        f"LanceDB {one:.2f} s = {one / lance['write_seconds']:.3f}× its full write (index: {refresh['action']}); "
        f"pickle {pickled['one_partition_seconds']:.2f} s",
        "proportional to the partition",
    )


if __name__ == "__main__":
    main()
