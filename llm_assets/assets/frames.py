"""The DataFrames the assets produce, built from typed rows with documented columns.

* answers: one ``AnswerRow`` per request, then any columns
  a translator added.
* embeddings: ``partition_key, row, text, model, embedding``, the ``embedding`` column
  one float32 vector per row (Arrow ``fixed_size_list<float>[n]``, see
  ``llm_assets.vector_store.column``). Frames stored before it, with one float32 column
  per dimension (``e0 … e{n-1}``), still read as embeddings.
* plot: ``partition_key, row, label, x, y``.

Examples:
    >>> records = [{"partition_key": "a", "row": 0, "text": "t", "model": "m"}]
    >>> frame = embeddings_frame(records, np.ones((1, 3)))
    >>> embedding_matrix(frame).shape
    (1, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from llm_assets.assets.options import PARTITION_COLUMN
from llm_assets.engine.rows import AnswerRow, ColumnSpec, column, column_specs
from llm_assets.errors import ConfigurationError
from llm_assets.redaction import redact
from llm_assets.vector_store.column import VECTOR_COLUMN, dimensions_of, matrix_of, vector_column, vector_type


def _partition_column() -> Any:
    return column("string", "Partition the row belongs to (empty when unpartitioned).")


@dataclass
class EmbeddingRow:
    """The text columns of an embeddings frame (its ``embedding`` column follows)."""

    partition_key: str | None = _partition_column()
    row: int = column("int", "Position of the text within its partition.", "int64")
    text: str = column("string", "Text that was embedded.")
    model: str | None = column("string", "Embedding model, as the server reported it.")


@dataclass
class PlotRow:
    """One point of a PCA map."""

    partition_key: str | None = _partition_column()
    row: int = column("int", "Position of the point within its partition.", "int64")
    label: str = column("string", "Label drawn next to the point.")
    x: float = column("float", "First principal component.", "float64")
    y: float = column("float", "Second principal component.", "float64")


ANSWER_COLUMNS: dict[str, ColumnSpec] = column_specs(AnswerRow)
EMBEDDING_COLUMNS: dict[str, ColumnSpec] = {
    **column_specs(EmbeddingRow),
    # dtype "object": typed_columns leaves the Arrow column as it is
    VECTOR_COLUMN: (
        "float32[n]",
        "object",
        "The embedding: one float32 vector per row (Arrow fixed_size_list, DuckDB FLOAT[n]).",
    ),
}
PLOT_COLUMNS: dict[str, ColumnSpec] = column_specs(PlotRow)


def typed_frame(records: Sequence[Mapping[str, Any]], columns: Mapping[str, ColumnSpec]) -> pd.DataFrame:
    """``records`` as a DataFrame: the documented ``columns`` first, with their dtypes,
    then any others the records have."""
    extra = list(dict.fromkeys(k for r in records for k in r if k not in columns))
    return typed_columns(pd.DataFrame.from_records(list(records), columns=[*columns, *extra]), columns)


def typed_columns(frame: pd.DataFrame, columns: Mapping[str, ColumnSpec]) -> pd.DataFrame:
    """``frame`` with the dtypes its documented ``columns`` declare."""
    return frame.astype({name: dtype for name, (_, dtype, _) in columns.items() if dtype != "object"})


def answers_frame(
    records: Sequence[Mapping[str, Any]], columns: Mapping[str, ColumnSpec] = ANSWER_COLUMNS
) -> pd.DataFrame:
    """The answers frame of ``AnswerRow.to_record`` records (``columns``: the
    documented ones, then a structured answer's typed fields)."""
    try:
        return typed_frame(records, columns)
    except (ValueError, TypeError, OverflowError) as error:  # a translator's get_record (answers are checked)
        raise ConfigurationError(
            f"A column of the answers has values of the wrong type ({error}): check what the translator's "
            "get_record puts in the documented columns and the response_format's fields."
        ) from None


def embeddings_frame(records: Sequence[Mapping[str, Any]], matrix: np.ndarray) -> pd.DataFrame:
    """The embeddings frame of ``records`` and their vectors, one row of ``matrix`` each
    in the ``embedding`` column (no records: no rows, and vectors of the dimension
    ``matrix`` has, possibly none)."""
    meta = typed_frame(records, column_specs(EmbeddingRow))
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        matrix = matrix.reshape(len(meta), -1) if len(meta) else np.empty((0, 0), np.float32)
    if len(matrix) != len(meta):
        raise ValueError(f"{len(matrix)} vectors for {len(meta)} rows of embeddings")
    if matrix.shape[1]:
        vectors = vector_column(matrix)
    else:  # Arrow makes no vectors of 0 values from a buffer
        vectors = pd.arrays.ArrowExtensionArray(pa.array([[]] * len(matrix), type=vector_type(0)))
    return meta.assign(**{VECTOR_COLUMN: vectors})


def _legacy_columns(frame: pd.DataFrame) -> list[str]:
    """The vector columns ``e0 … e{n-1}`` of an embeddings frame stored before the
    ``embedding`` column."""
    return [c for c in frame.columns if isinstance(c, str) and c[:1] == "e" and c[1:].isdigit()]


def vector_columns(frame: pd.DataFrame) -> list[str]:
    """The columns holding the vectors of an embeddings frame: ``["embedding"]``, or an old
    frame's ``e0 … e{n-1}``; none: it is not an embeddings frame.

    Examples:
        >>> vector_columns(pd.DataFrame({"text": ["t"], "e0": [0.5], "e1": [1.5]}))
        ['e0', 'e1']
    """
    return [VECTOR_COLUMN] if VECTOR_COLUMN in frame.columns else _legacy_columns(frame)


def vector_width(frame: pd.DataFrame) -> int:
    """The dimension of the vectors of an embeddings frame (that of its first row when
    its ``embedding`` column is not Arrow-typed, as DuckDB gives it back; 0 without rows).

    Examples:
        >>> vector_width(pd.DataFrame({"embedding": [np.zeros(3, np.float32)]}))
        3
    """
    if VECTOR_COLUMN not in frame.columns:
        return len(_legacy_columns(frame))
    values = frame[VECTOR_COLUMN]
    width = dimensions_of(values) if isinstance(values, pd.Series) else None
    if width is None and len(values):
        first = values.iloc[0]
        width = len(first) if isinstance(first, list | tuple | np.ndarray) else 0
    return width or 0


def embedding_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The embedding matrix (rows × dimensions, float32) of an embeddings frame: its
    ``embedding`` column as one array, rows in the frame's order. A frame stored with one
    column per dimension (``e0 … e{n-1}``, before the ``embedding`` column) reads the same.

    Examples:
        >>> frame = embeddings_frame([{"partition_key": None, "row": 0, "text": "t", "model": "m"}], [[0.5, 1.5]])
        >>> embedding_matrix(frame)
        array([[0.5, 1.5]], dtype=float32)
        >>> embedding_matrix(pd.DataFrame({"text": ["t"], "e0": [0.5], "e1": [1.5]}))
        array([[0.5, 1.5]], dtype=float32)
    """
    if VECTOR_COLUMN not in frame.columns:
        return frame[_legacy_columns(frame)].to_numpy(dtype=np.float32)
    values = frame[VECTOR_COLUMN]
    if isinstance(values, pd.DataFrame):
        raise ConfigurationError(
            f"The embeddings frame has {values.shape[1]} columns named '{VECTOR_COLUMN}': keep one."
        )
    return matrix_of(values)


def by_partition(
    value: Any, partition_keys: Sequence[str | None], where: str = "The value", split_column: bool = True
) -> dict[str | None, Any]:
    """Split a value into one value per partition key it has (absent keys are left out).

    Accepts what I/O managers hand over: ``{partition_key: value}`` from a multi-partition
    load, a DataFrame (or columnar dict) with a ``partition_key`` column, or a single value
    for one partition. Unpartitioned (``[None]``), the value is taken whole; so is a
    single partition's value when ``split_column`` is false (Dagster already selected it
    from a partitioned upstream, whose own keys may differ under a partition mapping).
    """
    if len(partition_keys) == 1 and partition_keys[0] is None:
        return {None: value}
    if isinstance(value, Mapping):
        present = {k: value[k] for k in partition_keys if k in value}
        if present:
            return present
        if PARTITION_COLUMN in value:
            value = _columnar_frame(value, where)
        elif len(partition_keys) == 1:
            return {partition_keys[0]: value}
        else:
            raise ConfigurationError(
                f"{where} is a dict with keys {[str(k) for k in value][:10]}, none of them a partition of this "
                f"run {list(partition_keys)[:10]}: key it by partition, or give it a '{PARTITION_COLUMN}' column."
            )
    if (
        isinstance(value, pd.DataFrame)
        and PARTITION_COLUMN in value.columns
        and (split_column or len(partition_keys) > 1)
    ):
        keys = partition_column(value, where)
        groups = {k: part.reset_index(drop=True) for k, part in value.groupby(keys, sort=False)}
        return {k: groups[k] for k in partition_keys if k in groups}
    if len(partition_keys) == 1:
        return {partition_keys[0]: value}
    raise ConfigurationError(
        f"{where} is a {type(value).__name__} that can't be split across partitions {list(partition_keys)[:10]}: "
        f"give it a '{PARTITION_COLUMN}' column, or make it a {{partition_key: value}} dict."
    )


def partition_column(frame: pd.DataFrame, where: str) -> pd.Series:
    """The ``partition_key`` column of ``frame``, checked to be one column of hashable keys."""
    keys = frame[PARTITION_COLUMN]
    if isinstance(keys, pd.DataFrame):
        raise ConfigurationError(f"{where} has {keys.shape[1]} columns named '{PARTITION_COLUMN}': keep one.")
    try:
        keys.map(hash)
    except TypeError as error:
        raise ConfigurationError(f"{where} has a '{PARTITION_COLUMN}' that is not a partition key ({error}).") from None
    return keys


def stray_keys(frame: pd.DataFrame, partition_keys: Sequence[str | None], where: str) -> list[Any]:
    """The values of ``frame``'s ``partition_key`` column that are not ``partition_keys``
    (an empty key is ``None``), each once."""
    keys = partition_column(frame, where)
    strays = set(keys.dropna().unique()) - set(partition_keys)
    return sorted((str(k) for k in strays), key=str) + ([None] if keys.isna().any() else [])


def split_output(value: Any, partition_keys: Sequence[str], where: str) -> dict[str, Any]:
    """One value per partition of an output covering ``partition_keys`` (see
    ``by_partition``). A partition without rows in a DataFrame gets an empty frame with
    the same columns; rows or keys for other partitions are refused: they would be lost."""
    if isinstance(value, Mapping) and PARTITION_COLUMN in value and not any(k in value for k in partition_keys):
        value = _columnar_frame(value, where)
    strays: list[Any] = []
    if isinstance(value, pd.DataFrame) and PARTITION_COLUMN in value.columns:
        strays = stray_keys(value, partition_keys, where)
    elif isinstance(value, Mapping):
        strays = sorted(str(k) for k in value if k not in partition_keys)
    if strays:
        raise ConfigurationError(
            f"{where} has values for {strays[:10]}, which are not partitions of this run; they would be "
            f"lost: give every row (or key) one of context.partition_keys as its '{PARTITION_COLUMN}'."
        )
    parts = by_partition(value, partition_keys, where)
    missing = [k for k in partition_keys if k not in parts]
    if missing and not isinstance(value, pd.DataFrame):
        raise ConfigurationError(
            f"{where} has no value for partitions {missing[:10]}: each partition of a single-run backfill "
            "needs one (a DataFrame may have no rows for some)."
        )
    return {k: parts[k] if k in parts else value.iloc[:0] for k in partition_keys}


def _columnar_frame(value: Mapping[str, Any], where: str) -> pd.DataFrame:
    try:
        return pd.DataFrame(dict(value))
    except (ValueError, TypeError) as error:
        raise ConfigurationError(f"{where} is a dict that is not a table of columns ({error}).") from None


def preview(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], redacted: bool = False, count: int = 5, width: int = 120
) -> str:
    """A small markdown table of the first ``count`` rows, cells cut at ``width`` characters
    (personal data and secrets masked when ``redacted``)."""

    def cell(value: Any) -> str:
        text = (redact(str(value)) if redacted else str(value)).replace("|", "\\|").replace("\n", " ")
        return text[:width] + "…" if len(text) > width else text

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows[:count]]
    return "\n".join(lines)
