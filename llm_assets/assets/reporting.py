"""What a materialization reports beyond its rows: each partition's own figures, and the
run's request phase where it belongs.

A single-run backfill materializes many partitions in one step, and metadata added
without a partition lands on every one of them. So a partition reports only its own
figures (rows, cache hits, latency percentiles of its answers); the run's request phase
goes to the log and to the run-wide check, and to the materialization only when the run
has one partition.

Examples:
    >>> latency_metadata([0.2, 0.4, 1.0, None])
    {'latency_p50_s': 0.4, 'latency_p95_s': 0.94}
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from llm_assets.assets.frames import ANSWER_COLUMNS, answers_frame, preview
from llm_assets.assets.upstream import empty_metadata
from llm_assets.engine.rows import AnswerRow, ColumnSpec
from llm_assets.redaction import redact

#: Partitions whose latest materialization a report looks up (one instance query each).
MAX_LOOKUPS = 100


def latest_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition_key: str | None, before_storage_id: int | None = None
) -> tuple[int | None, Mapping[str, Any]]:
    """The storage id and metadata of the latest materialization of ``key`` (of its
    ``partition_key``; before ``before_storage_id`` if given), or ``(None, {})``."""
    partitions = [partition_key] if partition_key is not None else None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(key, partitions, before_storage_id=before_storage_id), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None, {}
    return records[0].storage_id, records[0].asset_materialization.metadata


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


def report_partition(
    context: dg.AssetExecutionContext,
    partition_key: str | None,
    rows: Sequence[AnswerRow],
    redacted: bool,
    columns: Mapping[str, ColumnSpec] = ANSWER_COLUMNS,
    question: str | None = None,
) -> pd.DataFrame:
    """One partition's answers frame, and its own figures: rows, cache hits, failures,
    latency percentiles, the question it answered and a preview."""
    records = [row.to_record() for row in rows]
    context.add_asset_metadata(
        {
            "dagster/row_count": len(records),
            "answers_from_cache": sum(1 for r in records if r["cached"]),
            "failed_requests": sum(1 for r in records if r["error"]),
            **latency_metadata([r["latency_s"] for r in records if not r["cached"]]),
            **({"question": redact(question) if redacted else question} if question is not None else {}),
            "preview": dg.MetadataValue.md(preview(records, ["prompt", "answer"], redacted)),
            **empty_metadata(len(records)),
        },
        partition_key=partition_key,
    )
    return answers_frame(records, columns)


def concat_answers(frames: Iterable[pd.DataFrame], columns: Mapping[str, ColumnSpec] = ANSWER_COLUMNS) -> pd.DataFrame:
    """Partitions' answers frames as one, in the given order, column types kept."""
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else answers_frame([], columns)
