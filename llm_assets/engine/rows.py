"""Typed rows that also describe their columns: one dataclass per frame.

A field declared with ``column`` carries its schema type, pandas dtype and
description, so the ``dagster/column_schema`` shown in the UI, the DataFrame's dtypes and
the row itself come from one definition.

Examples:
    >>> list(column_specs(AnswerRow))[:3]
    ['partition_key', 'row', 'prompt']
"""

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

ColumnSpec = tuple[str, str, str]  # (schema type, pandas dtype, description)


def column(kind: str, description: str, dtype: str = "object", **field_options: Any) -> Any:
    """A dataclass field documented as a column of schema type ``kind``."""
    return dataclasses.field(metadata={"column": (kind, dtype, description)}, **field_options)


@functools.cache
def column_specs(row_class: type) -> dict[str, ColumnSpec]:
    """The columns of a row dataclass, in field order (computed once per class: rows call
    it for every record). Do not mutate the result."""
    return {f.name: f.metadata["column"] for f in dataclasses.fields(row_class) if "column" in f.metadata}


@dataclass
class AnswerRow:
    """One chat answer (or failed request) of an answers frame."""

    partition_key: str | None = column("string", "Partition the row belongs to (empty when unpartitioned).")
    row: int = column("int", "Position of the request within its partition.", "int64")
    prompt: str = column("string", "User message sent to the model.")
    answer: str | None = column("string", "Text the model answered.", default=None)
    model: str | None = column("string", "Model that answered, as the server reported it.", default=None)
    finish_reason: str | None = column("string", "Why generation stopped: stop, length, content_filter…", default=None)
    refusal: str | None = column(
        "string", "The model's refusal (message.refusal), when it declined to answer.", default=None
    )
    prompt_tokens: int | None = column(
        "int", "Prompt tokens the server reported for this request.", "Int64", default=None
    )
    completion_tokens: int | None = column(
        "int", "Completion tokens the server reported for this request.", "Int64", default=None
    )
    total_tokens: int | None = column(
        "int", "Total tokens the server reported for this request.", "Int64", default=None
    )
    latency_s: float | None = column(
        "float", "Seconds from sending the request to the whole answer.", "float64", default=None
    )
    cached: bool = column("bool", "True when answered from the request cache (no tokens spent).", "bool", default=False)
    error: str | None = column(
        "string", "Why the request failed (on_error=RECORD); empty when it was answered.", default=None
    )
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # columns a translator added

    def to_record(self) -> dict[str, Any]:
        """The row as one flat record: the documented columns, then the extra ones."""
        record = {name: getattr(self, name) for name in column_specs(AnswerRow)}
        return {**record, **self.extra}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "AnswerRow":
        names = column_specs(cls)
        return cls(
            **{k: v for k, v in record.items() if k in names}, extra={k: v for k, v in record.items() if k not in names}
        )
