"""PCA plot benchmark: time and peak memory of projecting 100,000 × 1,536 vectors, in a
fresh process each (run from ``throughput.py``, which prints all figures in one table)."""

import json
import subprocess
import sys
import tempfile
import textwrap

from common import report

PLOT_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import dagster as dg, numpy as np, pandas as pd
    from llm_assets import PartitionedFilesystemIOManager, build_pca_plot_asset
    from llm_assets.assets.frames import embeddings_frame

    home, phase = sys.argv[1], sys.argv[5]
    rows, dims, parts = (int(a) for a in sys.argv[2:5])
    keys = [f"part{i}" for i in range(parts)]

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(keys))
    def vectors(context):
        matrix = np.random.default_rng(keys.index(context.partition_key)).standard_normal(
            (rows // parts, dims), dtype=np.float32)
        records = [{"partition_key": context.partition_key, "row": i, "text": "t", "model": "m"}
                   for i in range(len(matrix))]
        return embeddings_frame(records, matrix)

    plot = build_pca_plot_asset(key="vector_map", upstream=vectors)
    io = {"io_manager": PartitionedFilesystemIOManager(base_dir=home)}
    with dg.instance_for_test() as instance:
        if phase == "write":
            for key in keys:
                assert dg.materialize([vectors], resources=io, instance=instance, partition_key=key).success
        else:
            baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            result = dg.materialize([vectors, plot], selection=[plot.key], resources=io, instance=instance)
            wall = time.perf_counter() - started
            assert result.success
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(json.dumps({"wall": wall, "extra_mb": (peak - baseline) / 1024}))
""")


def plot_benchmark(rows: int, dims: int, parts: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        args = [sys.executable, "-c", PLOT_SCRIPT, home, str(rows), str(dims), str(parts)]
        subprocess.run([*args, "write"], check=True, capture_output=True)
        done = subprocess.run([*args, "plot"], check=True, capture_output=True, text=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
    matrix_mb = rows * dims * 4 / 2**20
    report(
        f"PCA plot: {rows:,} × {dims:,} float32 vectors in {parts} partitions, whole materialization",
        f"{measured['wall']:.1f} s",
        "target ≤ 10 s",
    )
    report(
        "PCA plot: peak memory the run adds (loading, PCA, plot)",
        f"{measured['extra_mb']:.0f} MB = {measured['extra_mb'] / matrix_mb:.2f}× the {matrix_mb:.0f} MB matrix",
        "target ≤ 2×",
    )
