"""What a materialization reports beyond its rows: each partition's own figures, and the
run's request phase where it belongs.

A single-run backfill materializes many partitions in one step, and metadata added
without a partition lands on every one of them. So a partition reports only its own
figures (rows, cache hits, latency percentiles of its answers); the run's request phase
goes to the log and to the run-wide check, and to the materialization only when the run
has one partition.

Example:
    >>> latency_metadata([0.2, 0.4, 1.0, None])
    {'latency_p50_s': 0.4, 'latency_p95_s': 0.94}
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np


def latency_metadata(latencies: Sequence[float | None]) -> dict[str, float]:
    """p50 and p95 seconds of the answers that were sent (cache hits have none), rounded."""
    sent = [s for s in latencies if s is not None and s > 0]
    if not sent:
        return {}
    p50, p95 = np.percentile(sent, [50, 95])
    return {"latency_p50_s": round(float(p50), 3), "latency_p95_s": round(float(p95), 3)}


def report_run(
    context: dg.AssetExecutionContext, what: str, items: int, partitions: int, seconds: float
) -> dict[str, Any]:
    """Log the run's request phase (``items`` of ``what`` for ``partitions`` partitions in
    ``seconds``); on the materialization only when it is one partition's own. Returns the
    figures for the run-wide check."""
    figures = {"partitions": partitions, "request_seconds": round(seconds, 3)}
    context.log.info(f"{items} {what} for {partitions} partition(s): request phase {seconds:.2f} s.")
    if partitions == 1:
        context.add_asset_metadata({"request_seconds": figures["request_seconds"]})
    return figures
