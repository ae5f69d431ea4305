"""The vector column of an embeddings frame: one fixed-length float32 array per row.

It is a pandas column of Arrow ``fixed_size_list<float>[n]`` (``pd.ArrowDtype``): the
vectors sit in one contiguous float32 buffer, pickle as such, go to LanceDB without a copy
and reach DuckDB as ``FLOAT[n]``. A row reads back as a list of floats;
``matrix_of`` gives the whole column as one ``rows × n`` numpy matrix.

Examples:
    >>> column = vector_column(np.ones((2, 3)))
    >>> column.dtype
    fixed_size_list<item: float>[3][pyarrow]
    >>> matrix_of(pd.Series(column)).shape
    (2, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

#: The name of the vector column of an embeddings frame.
VECTOR_COLUMN = "embedding"


def vector_type(dimensions: int) -> pa.DataType:
    """The Arrow type of a vector of ``dimensions`` float32 values."""
    return pa.list_(pa.float32(), dimensions)


def vector_array(matrix: Any) -> pa.FixedSizeListArray:
    """The rows of ``matrix`` (rows × dimensions) as an Arrow vector array, sharing its
    float32 buffer when it has one."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"a matrix of vectors has 2 dimensions, not {matrix.ndim}")
    values = pa.array(matrix.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


def vector_column(matrix: Any) -> pd.api.extensions.ExtensionArray:
    """The rows of ``matrix`` as a pandas vector column (see the module docstring)."""
    return pd.arrays.ArrowExtensionArray(vector_array(matrix))


def dimensions_of(values: pd.Series | pa.ChunkedArray | pa.Array) -> int | None:
    """The vector length of an Arrow-typed vector column (``None``: it is not one)."""
    return vector_length(values.type if isinstance(values, pa.ChunkedArray | pa.Array) else _arrow_type(values))


def vector_length(arrow_type: pa.DataType | None) -> int | None:
    """The length of a vector of Arrow type ``arrow_type`` (``None``: not a vector type)."""
    return arrow_type.list_size if arrow_type is not None and pa.types.is_fixed_size_list(arrow_type) else None


def schema_dimensions(schema: pa.Schema) -> int | None:
    """The vector length of a table of ``schema`` (``None``: it has no vector column)."""
    return vector_length(schema.field(VECTOR_COLUMN).type) if VECTOR_COLUMN in schema.names else None


def matrix_of(values: pd.Series | pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A vector column as one float32 matrix (rows × dimensions), rows in order.

    Takes the Arrow column of ``vector_column``, Arrow lists, or an object column of
    arrays or lists (each row one vector); rows of unequal length are a ``ValueError``.

    Examples:
        >>> matrix_of(pd.Series([[1.0, 2.0], np.array([3.0, 4.0])]))
        array([[1., 2.],
               [3., 4.]], dtype=float32)
    """
    arrow = _arrow(values)
    if arrow is not None:
        if pa.types.is_fixed_size_list(arrow.type):
            size = arrow.type.list_size
            if arrow.null_count:
                raise ValueError(f"{arrow.null_count} of the vectors are missing (null)")
            flat = (
                arrow.flatten()
                if isinstance(arrow, pa.Array)
                else pa.chunked_array([chunk.flatten() for chunk in arrow.chunks], arrow.type.value_type)
            )
            matrix = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32)
            return matrix.reshape(len(arrow), size)
        values = arrow.to_pylist()
    rows = list(values)
    if not rows:
        return np.empty((0, 0), np.float32)
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise ValueError(f"the vectors have unequal lengths {sorted(lengths)[:5]}")
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), lengths.pop())


def frame_of(data: pa.Table) -> pd.DataFrame:
    """An Arrow table as a DataFrame, its vector columns kept Arrow-typed (as
    ``vector_column`` builds them) and its other columns as pandas restores them."""
    arrow_lists = {f.type for f in data.schema if pa.types.is_fixed_size_list(f.type)}
    frame = data.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if t in arrow_lists else None)
    return frame.reset_index(drop=True)


def _arrow_type(values: pd.Series) -> pa.DataType | None:
    dtype = values.dtype
    return dtype.pyarrow_dtype if isinstance(dtype, pd.ArrowDtype) else None


def _arrow(values: pd.Series | pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array | None:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values
    if _arrow_type(values) is not None:
        return values.array.__arrow_array__()  # the column's own Arrow data, no copy
    return None
