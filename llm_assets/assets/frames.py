"""The DataFrames the assets produce, with their documented columns.

* answers: one row per request: ``partition_key, row, prompt, answer, model,
  finish_reason, prompt_tokens, completion_tokens, total_tokens, latency_s, cached, error``.
* embeddings: ``partition_key, row, text, model`` then one float32 column per
  dimension (``e0 … e{n-1}``), stored columnar rather than as lists of floats.
* plot: ``partition_key, row, label, x, y``.

Example:
    >>> records = [{"partition_key": "a", "row": 0, "text": "t", "model": "m"}]
    >>> frame = embeddings_frame(records, np.ones((1, 3)))
    >>> vectors(frame).shape
    (1, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

PARTITION_COLUMN = "partition_key"

ANSWER_COLUMNS: dict[str, tuple[str, str]] = {
    "partition_key": ("string", "Partition the row belongs to (empty when unpartitioned)."),
    "row": ("int", "Position of the request within its partition."),
    "prompt": ("string", "User message sent to the model."),
    "answer": ("string", "Text the model answered."),
    "model": ("string", "Model that answered, as the server reported it."),
    "finish_reason": ("string", "Why generation stopped: stop, length, content_filter…"),
    "prompt_tokens": ("int", "Prompt tokens the server reported for this request."),
    "completion_tokens": ("int", "Completion tokens the server reported for this request."),
    "total_tokens": ("int", "Total tokens the server reported for this request."),
    "latency_s": ("float", "Seconds from sending the request to the whole answer."),
    "cached": ("bool", "True when answered from the request cache (no tokens spent)."),
    "error": ("string", "Why the request failed (on_error=RECORD); empty when it was answered."),
}
EMBEDDING_COLUMNS: dict[str, tuple[str, str]] = {
    "partition_key": ANSWER_COLUMNS["partition_key"],
    "row": ("int", "Position of the text within its partition."),
    "text": ("string", "Text that was embedded."),
    "model": ("string", "Embedding model, as the server reported it."),
    "e0 … e{n-1}": ("float32", "One column per embedding dimension."),
}
PLOT_COLUMNS: dict[str, tuple[str, str]] = {
    "partition_key": ANSWER_COLUMNS["partition_key"],
    "row": ("int", "Position of the point within its partition."),
    "label": ("string", "Label drawn next to the point."),
    "x": ("float", "First principal component."),
    "y": ("float", "Second principal component."),
}


def column_schema(columns: Mapping[str, tuple[str, str]]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description) for name, (kind, description) in columns.items()]
    )


def answers_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The answers DataFrame: the documented columns first, then any a translator added."""
    extra = list(dict.fromkeys(k for r in records for k in r if k not in ANSWER_COLUMNS))
    frame = pd.DataFrame.from_records(list(records), columns=[*ANSWER_COLUMNS, *extra])
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        frame[name] = frame[name].astype("Int64")
    frame["row"] = frame["row"].astype("int64")
    frame["latency_s"] = frame["latency_s"].astype("float64")
    frame["cached"] = frame["cached"].astype("bool")
    return frame


def embeddings_frame(records: Sequence[Mapping[str, Any]], matrix: np.ndarray) -> pd.DataFrame:
    meta = pd.DataFrame.from_records(list(records), columns=["partition_key", "row", "text", "model"])
    matrix = np.asarray(matrix, dtype=np.float32).reshape(len(meta), -1)
    values = pd.DataFrame(matrix, columns=[f"e{i}" for i in range(matrix.shape[1])], index=meta.index)
    return pd.concat([meta, values], axis=1)


def vector_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if isinstance(c, str) and c[:1] == "e" and c[1:].isdigit()]


def vectors(frame: pd.DataFrame) -> np.ndarray:
    """The embedding matrix (rows × dimensions, float32) of an embeddings frame."""
    return frame[vector_columns(frame)].to_numpy(dtype=np.float32)


def by_partition(value: Any, partition_keys: Sequence[str | None]) -> dict[str | None, Any]:
    """Split an upstream value into one value per partition key.

    Accepts what I/O managers hand over: ``{partition_key: value}`` from a multi-partition
    load, a DataFrame with a ``partition_key`` column, or a single value for one partition.
    """
    if isinstance(value, Mapping):
        return {k: value[k] for k in partition_keys if k in value}
    if len(partition_keys) == 1:
        return {partition_keys[0]: value}
    if isinstance(value, pd.DataFrame) and PARTITION_COLUMN in value.columns:
        groups = {k: part.reset_index(drop=True) for k, part in value.groupby(PARTITION_COLUMN, sort=False)}
        return {k: groups[k] for k in partition_keys if k in groups}
    raise TypeError(
        f"Cannot split a {type(value).__name__} across partitions {list(partition_keys)}: "
        f"give it a '{PARTITION_COLUMN}' column."
    )
