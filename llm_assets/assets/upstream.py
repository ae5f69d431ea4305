"""What a factory's asset reads: an upstream asset (its key and partitions), the partitions
of this run, and the upstream's texts.

Example:
    >>> texts_of(pd.DataFrame({"answer": ["a", "b"]}), "answer", where="Upstream x")
    ['a', 'b']
"""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import pandas as pd

from llm_assets.assets.frames import by_partition
from llm_assets.assets.options import AssetKeyLike
from llm_assets.errors import LLMAssetsError
from llm_assets.io_manager import stores_partition_ranges

UpstreamAsset = dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike


def upstream_key(upstream: UpstreamAsset) -> dg.AssetKey:
    if isinstance(upstream, (dg.AssetsDefinition, dg.AssetSpec)):
        return upstream.key
    return dg.AssetKey.from_coercible(upstream)


def upstream_partitions(upstream: UpstreamAsset | None) -> dg.PartitionsDefinition | None:
    if isinstance(upstream, (dg.AssetsDefinition, dg.AssetSpec)):
        return upstream.partitions_def
    return None


def run_partitions(context: dg.AssetExecutionContext, io_manager_key: str) -> list[str | None]:
    """Partition keys this run materializes (``[None]`` when unpartitioned), after checking
    that the I/O manager can store several partitions from one run."""
    if not context.has_partition_key_range and not context.has_partition_key:
        return [None]
    keys = list(context.partition_keys)
    if len(keys) > 1 and not stores_partition_ranges(getattr(context.resources, io_manager_key, None)):
        raise LLMAssetsError(
            f"This run materializes {len(keys)} partitions of {context.asset_key.to_user_string()} at "
            f"once, which the I/O manager under '{io_manager_key}' cannot store: set resources="
            f"{{'{io_manager_key}': llm_assets.PartitionedFilesystemIOManager()}} in Definitions, or "
            "pass backfill_policy=dg.BackfillPolicy.multi_run() to the factory."
        )
    return keys


def texts_of(value: Any, column: str, where: str) -> list[str]:
    """The text column of an upstream value, checked to hold non-empty strings."""
    if isinstance(value, pd.Series):
        values = value.tolist()
    elif isinstance(value, pd.DataFrame):
        if column not in value.columns:
            raise LLMAssetsError(
                f"{where} has no column {column!r} (columns: {list(value.columns)}): "
                "pass text_column= naming the column that holds the text."
            )
        values = value[column].tolist()
    elif isinstance(value, (list, tuple)):
        values = list(value)
    elif isinstance(value, str):
        values = [value]
    else:
        raise LLMAssetsError(f"{where} is a {type(value).__name__}; expected a DataFrame with a {column!r} column.")
    for row, text in enumerate(values):
        if not isinstance(text, str) or not text.strip():
            raise LLMAssetsError(
                f"{where} row {row} column {column!r} holds {text!r}, not text: "
                "fill or drop that row upstream (only non-empty strings can be sent)."
            )
    return values


def log_missing(
    context: dg.AssetExecutionContext, loaded: Mapping[Any, Any], expected: Sequence[str], key: dg.AssetKey
) -> None:
    missing = [k for k in expected if k not in loaded]
    if missing:
        context.log.warning(
            f"Skipping {len(missing)} partition(s) of {key.to_user_string()} that are not "
            f"materialized: {', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}"
        )


def load_texts(
    context: dg.AssetExecutionContext,
    value: Any,
    partition_keys: Sequence[str | None],
    column: str,
    key: dg.AssetKey,
) -> dict[str | None, list[str]]:
    """The texts of each of this run's partitions of the upstream asset ``key`` (partitions
    not materialized upstream are skipped, with a warning)."""
    loaded = by_partition(value, partition_keys)
    log_missing(context, loaded, [k for k in partition_keys if k is not None], key)
    where = f"Upstream {key.to_user_string()}"
    return {pk: texts_of(part, column, f"{where} partition {pk!r}") for pk, part in loaded.items()}
