"""PCA plot benchmark: time and peak memory of projecting 100,000 × 1,536 vectors, in a
fresh process each (run from ``throughput.py``, which prints all figures in one table), and
the cost of drawing the map's labels, adjustText's placement included.

    python benchmarks/pca_plot.py   # the labels only; add --uncapped for adjustText beyond its cap
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

from common import print_table, report

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


LABEL_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, time
    from pathlib import Path
    import numpy as np
    from llm_assets.assets import pca

    count, adjusted_max = int(sys.argv[1]), int(sys.argv[2])
    points = np.random.default_rng(0).normal(size=(count, 2))  # denser than a real map: a worst case
    labels = [f"Captain {i}" for i in range(count)]
    with tempfile.TemporaryDirectory() as folder:
        pca.scatter_png(points[:3], labels[:3], Path(folder) / "warm.png", "warm-up")  # imports, fonts
        times = []
        for _ in range(3):
            started = time.perf_counter()
            with pca.labelled_scatter(points, labels, "labels", adjusted_max=adjusted_max) as fig:
                fig.savefig(Path(folder) / "map.png", format="png", bbox_inches="tight")
            times.append(time.perf_counter() - started)
    print(json.dumps({"seconds": sorted(times)[1]}))
""")


def label_benchmark(counts: tuple[int, ...] = (7, 50, 100, 1000), uncapped: tuple[int, ...] = ()) -> None:
    """Drawing and saving a map of ``counts`` labelled points (median of 3, in a fresh
    process each): labels moved apart by adjustText up to ``pca.ADJUSTED_LABELS_MAX``, beside
    their points up to ``pca.LABELS_MAX``, none beyond; ``uncapped`` counts are drawn with
    adjustText whatever their number (never 1,000: adjustText 1.4 builds an array of the
    pairs of overlapping intervals, ~10^11 elements per iteration there)."""
    from llm_assets.assets import pca

    for count, adjusted_max in [(c, pca.ADJUSTED_LABELS_MAX) for c in counts] + [(c, c) for c in uncapped]:
        done = subprocess.run(
            [sys.executable, "-c", LABEL_SCRIPT, str(count), str(adjusted_max)],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        if count > pca.LABELS_MAX:
            how = "no labels"
        elif count <= adjusted_max:
            how = "adjustText"
        else:
            how = "labels beside points"
        target = "target ≤ 1.5 s" if adjusted_max == pca.ADJUSTED_LABELS_MAX else "beyond the cap: why it is one"
        report(f"PCA map: draw and save {count:,} labelled points ({how})", f"{seconds:.2f} s", target)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uncapped", action="store_true", help="adjustText also on 100 labels (~10 s or more)")
    label_benchmark(uncapped=(100,) if parser.parse_args().uncapped else ())
    print_table()
