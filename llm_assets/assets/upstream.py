"""What a factory's asset reads: an upstream asset (``Upstream``: its key, partitions,
text column and partition mapping), the partitions of this run, and the upstream's texts.

Examples:
    >>> texts_of(pd.DataFrame({"answer": ["a", "b"]}), "answer", where="Upstream x")
    ['a', 'b']
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import dagster as dg
import numpy as np
import pandas as pd

from llm_assets.assets.frames import by_partition, stray_keys
from llm_assets.assets.io_manager import stores_partition_ranges
from llm_assets.assets.options import (
    PARTITION_COLUMN,
    AssetKeyLike,
    AssetOptions,
    asset_key,
    check_max_concurrency,
    check_partitions,
    resolved,
)
from llm_assets.errors import ConfigurationError
from llm_assets.http.validation import check_text

#: The factories' input metadata: Dagster's filesystem I/O managers then hand over what
#: exists, and ``load_texts`` names the partitions that don't (instead of a raw
#: ``FileNotFoundError``).
LOAD_MISSING = {"allow_missing_partitions": True}

#: The column of the upstream asset that holds the texts, unless told otherwise.
TEXT_COLUMN = "answer"


@dataclass(frozen=True)
class Upstream:
    """What a factory's ``upstream=`` reads: an ``asset`` and, optionally, how to read it.

    ``asset`` is an asset definition, a ``dg.AssetSpec`` or a key (``dg.AssetKey``, a
    ``"a/b"`` string or a list of parts); a definition or spec also gives the factory its
    partitions. ``text_column`` is the column holding the texts (``None``: ``"answer"``, a
    chat answers asset's); ``partition_mapping`` says which upstream partitions each of the
    asset's reads (``None``: Dagster's default, the same keys). ``upstream=`` takes an
    ``Upstream`` or just the asset; the factories' separate ``text_column=`` and
    ``partition_mapping=`` keywords are the same as setting them here (set each in one place).

    Examples:
        >>> from llm_assets import build_embeddings_asset
        >>> notes = dg.AssetSpec("notes", partitions_def=dg.DailyPartitionsDefinition("2025-01-01"))
        >>> weekly = build_embeddings_asset(  # each week embeds the texts of its days
        ...     key="weekly_notes",
        ...     upstream=Upstream(notes, text_column="text", partition_mapping=dg.TimeWindowPartitionMapping()),
        ...     partitions_def=dg.WeeklyPartitionsDefinition("2025-01-05"),
        ... )
        >>> weekly.keys_by_input_name["upstream"].to_user_string()
        'notes'
        >>> Upstream.of("crew/answers").text_column  # just an asset (a key, here): the defaults
        'answer'
    """

    asset: dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike
    text_column: str | None = None
    partition_mapping: dg.PartitionMapping | None = None

    @property
    def key(self) -> dg.AssetKey:
        """The upstream asset's key."""
        if isinstance(self.asset, (dg.AssetsDefinition, dg.AssetSpec)):
            return self.asset.key
        return dg.AssetKey.from_coercible(self.asset)

    @property
    def partitions_def(self) -> dg.PartitionsDefinition | None:
        """The upstream asset's partitions, when ``asset`` is a definition or spec that has them."""
        if isinstance(self.asset, (dg.AssetsDefinition, dg.AssetSpec)):
            return self.asset.partitions_def
        return None

    def asset_in(self) -> dg.AssetIn:
        """The factories' ``upstream`` input (see ``LOAD_MISSING``)."""
        return dg.AssetIn(self.key, partition_mapping=self.partition_mapping, metadata=LOAD_MISSING)

    @classmethod
    def of(
        cls,
        upstream: "Upstream | dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike",
        text_column: str | None = None,
        partition_mapping: dg.PartitionMapping | None = None,
        where: str = "the factory",
    ) -> "Upstream":
        """``upstream`` (an ``Upstream`` or just the asset) with the factory's separate
        ``text_column`` and ``partition_mapping`` keywords (``None``: not given) applied and
        the text column's default filled in; a keyword that disagrees with ``upstream`` is
        an error naming both."""
        given = upstream if isinstance(upstream, Upstream) else cls(upstream)
        if isinstance(given.asset, Upstream):
            raise ConfigurationError(f"upstream= of {where} is an Upstream of an Upstream: give the asset itself.")
        keywords = {"text_column": text_column, "partition_mapping": partition_mapping}
        conflicts = [
            f"upstream=Upstream(..., {name}={getattr(given, name)!r}) and {name}={value!r}"
            for name, value in keywords.items()
            if value is not None and getattr(given, name) is not None and not _same(getattr(given, name), value)
        ]
        if conflicts:
            raise ConfigurationError(
                f"{where} got {'; '.join(conflicts)}: set each in one place (the Upstream or the keyword)."
            )
        chosen = {name: value for name, value in keywords.items() if value is not None}
        resolved = replace(given, **chosen)
        return resolved if resolved.text_column is not None else replace(resolved, text_column=TEXT_COLUMN)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of one type: Dagster's field-less partition mappings are empty named tuples,
    all equal to each other."""
    return type(a) is type(b) and a == b


class Requesting(NamedTuple):
    """What a requesting factory (chat answers, embeddings, search) settles first: its
    options over the defaults, its key, how its errors name it, the upstream it reads
    (if any) and its partitions (given, else the upstream's), checked; unpacked in that
    order."""

    options: AssetOptions
    key: dg.AssetKey
    where: str
    source: Upstream | None
    partitions_def: dg.PartitionsDefinition | None

    @classmethod
    def of(
        cls,
        factory: str,
        default_key: str,
        key: AssetKeyLike | None,
        options: AssetOptions,
        upstream: Any,
        read: tuple[str | None, dg.PartitionMapping | None],
        partitions_def: dg.PartitionsDefinition | None,
        max_concurrency: int | None,
    ) -> "Requesting":
        """``read``: the factory's ``text_column`` and ``partition_mapping`` keywords."""
        options = resolved(options)
        name = asset_key(key, options.get("key_prefix"), default_key)
        where = f"{factory} ({name.to_user_string()})"
        source = Upstream.of(upstream, *read, where) if upstream is not None else None
        partitions_def = partitions_def or (source.partitions_def if source else None)
        check_partitions(partitions_def, name)
        check_max_concurrency(max_concurrency, name)
        return cls(options, name, where, source, partitions_def)


def run_partitions(context: dg.AssetExecutionContext, io_manager_key: str) -> list[str | None]:
    """Partition keys this run materializes (``[None]`` when unpartitioned), after checking
    that the I/O manager can store several partitions from one run."""
    if not context.has_partition_key_range and not context.has_partition_key:
        return [None]
    keys = list(context.partition_keys)
    if len(keys) > 1 and not stores_partition_ranges(getattr(context.resources, io_manager_key, None)):
        raise ConfigurationError(
            f"This run materializes {len(keys)} partitions of {context.asset_key.to_user_string()} at "
            f"once, which the I/O manager under '{io_manager_key}' cannot store: set resources="
            f"{{'{io_manager_key}': llm_assets.PartitionedFilesystemIOManager()}} in Definitions, or "
            "pass backfill_policy=dg.BackfillPolicy.multi_run() to the factory."
        )
    return keys


def texts_of(value: Any, column: str, where: str) -> list[str]:
    """The text column of an upstream value (a DataFrame, a Series, a ``{column: [...]}``
    dict, a list of strings or one string), checked to hold non-empty, sendable strings."""
    errors = None  # an answers frame's error and refusal columns: why a row has no text
    if isinstance(value, Mapping):
        if column not in value:
            raise ConfigurationError(
                f"{where} is a dict with keys {_listed(value)}, none of them {column!r}: return a DataFrame "
                f"with a {column!r} column (or a {{{column!r}: [...]}} dict), or pass text_column= naming the key."
            )
        value = value[column]
        value = [value] if isinstance(value, str) else value
    if isinstance(value, pd.DataFrame):
        if not len(value):
            return []  # no rows: an empty partition, whatever its columns
        if column not in value.columns:
            raise ConfigurationError(
                f"{where} has no column {column!r} (columns: {_listed(value.columns)}): "
                "pass text_column= naming the column that holds the text."
            )
        errors = value[[c for c in ("error", "refusal") if c in value.columns]]
        value = value[column]
        if isinstance(value, pd.DataFrame):  # duplicate names, or a level of MultiIndex columns
            raise ConfigurationError(
                f"{where} has {value.shape[1]} columns named {column!r}: rename or drop the "
                "duplicates upstream so that one column holds the text."
            )
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, (pd.Series, pd.Index, np.ndarray, list, tuple)) and np.ndim(value) == 1:
        values = list(value)
    else:
        raise ConfigurationError(
            f"{where} is a {type(value).__name__}; expected a DataFrame with a {column!r} column, "
            "a list of strings, or {partition_key: value}."
        )
    for row, text in enumerate(values):
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(
                f"{where} row {row} column {column!r} holds {_excerpt(text)}, not text: "
                f"{_failed_upstream(errors, row) or 'fill or drop that row upstream'} "
                "(only non-empty strings can be sent)."
            )
        check_text(text, f"{where} row {row} column {column!r}")
    return values


def _failed_upstream(errors: Any, row: int) -> str | None:
    """The hint for an empty text whose upstream request failed or was refused (an answers
    frame's ``error`` column, under on_error=RECORD, or its ``refusal`` column)."""
    if not isinstance(errors, pd.DataFrame) or row >= len(errors):
        return None
    failed, refused = (errors[c].iloc[row] if c in errors.columns else None for c in ("error", "refusal"))
    if isinstance(failed, str):
        return (
            f"its upstream request failed ({_excerpt(failed, 100)}); re-materialize the upstream once the "
            "cause is fixed, or filter failed rows out in an asset between the two"
        )
    if isinstance(refused, str):
        return (
            f"its upstream answer is a refusal ({_excerpt(refused, 100)}); rephrase the prompt, or filter refusals "
            "out in an asset between the two (the no_refusals check, blocking, stops the run before this step)"
        )
    return None


def _listed(names: Any, count: int = 10) -> str:
    names = [str(n) for n in names]
    return repr(names[:count])[:-1] + (", …]" if len(names) > count else "]")


def _excerpt(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + "…"


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
    """The texts of each of this run's partitions of the upstream asset ``key``, every
    partition present: one with no rows is empty (logged). Upstream partitions that were
    never materialized, and an upstream that has values but none for this run's
    partitions, are errors."""
    where = f"Upstream {key.to_user_string()}"
    upstream_keys = _upstream_partition_keys(context)
    value = _from_partitions(value, upstream_keys, partition_keys, where)
    split_column = upstream_keys is None and partition_keys != [None]  # else Dagster selected them
    is_table = isinstance(value, pd.DataFrame) and PARTITION_COLUMN in value.columns
    if split_column and is_table and (strays := stray_keys(value, partition_keys, where)):
        context.log.warning(
            f"{where}: skipping its rows whose {PARTITION_COLUMN!r} is not a partition of this run ({_listed(strays)})."
        )
    loaded = by_partition(value, partition_keys, where, split_column)
    if not loaded and _has_rows(value):
        raise ConfigurationError(
            f"{where} has values, but none for this run's partitions {_listed(partition_keys)}: its "
            f"{PARTITION_COLUMN!r} column or dict keys must be partition keys of this asset."
        )
    texts = {pk: texts_of(loaded[pk], column, _where(where, pk)) if pk in loaded else [] for pk in partition_keys}
    empty = [str(pk) for pk, items in texts.items() if not items]
    if empty:
        what = f"partition(s) {_listed(empty)} have" if partition_keys != [None] else "it has"
        context.log.info(f"{where}: {what} no rows, so nothing is sent for them and they are stored empty.")
    return texts


def _upstream_partition_keys(context: dg.AssetExecutionContext) -> list[str] | None:
    """The upstream partitions Dagster loaded for this run, or ``None`` when the factory's
    ``upstream`` input is unpartitioned."""
    try:
        return list(context.asset_partition_keys_for_input("upstream"))
    except Exception:  # unpartitioned: Dagster raises its own CheckError (or a DagsterError)
        return None


def _from_partitions(
    value: Any, upstream_keys: list[str] | None, partition_keys: Sequence[str | None], where: str
) -> Any:
    """What Dagster loaded of a partitioned upstream, as this run's value: partitions never
    materialized are an error; the ``{upstream_key: value}`` dict of several upstream
    partitions mapped to one of this asset's (daily → weekly), or to the whole unpartitioned
    asset, is combined in upstream order; a run of several partitions needs the identity
    mapping."""
    if upstream_keys is None:
        return value
    several = isinstance(value, Mapping) and len(upstream_keys) > 1 and set(value) < set(upstream_keys)
    if upstream_keys and (value is None or several):  # Dagster skipped what was never materialized
        missing = [k for k in upstream_keys if value is None or k not in value]
        raise ConfigurationError(
            f"{where} partitions {_listed(missing)} are not materialized: materialize them first (or select "
            "only materialized partitions of this asset)."
        )
    if not isinstance(value, Mapping):
        return value
    if len(partition_keys) > 1:
        if set(upstream_keys) != set(partition_keys):
            raise ConfigurationError(
                f"{where}: this run's {len(partition_keys)} partitions map to other upstream partitions "
                f"({_listed(upstream_keys)}), which one run can't split: pass "
                "backfill_policy=dg.BackfillPolicy.multi_run() to the factory (one partition per run)."
            )
        return value
    if not value or not set(value) <= set(upstream_keys) or set(value) == {partition_keys[0]}:
        return value
    parts = [value[k] for k in upstream_keys if k in value]
    if all(isinstance(part, pd.DataFrame) for part in parts):
        return pd.concat(parts, ignore_index=True)
    if all(isinstance(part, list | tuple | str) for part in parts):
        return [text for part in parts for text in ([part] if isinstance(part, str) else part)]
    raise ConfigurationError(
        f"{where} maps {len(parts)} upstream partitions to each of this asset's, and their values are "
        f"{sorted({type(p).__name__ for p in parts})}: return DataFrames or lists of strings to combine them."
    )


def _where(where: str, partition_key: str | None) -> str:
    return where if partition_key is None else f"{where} partition {partition_key!r}"


def _has_rows(value: Any) -> bool:
    try:
        return len(value) > 0
    except TypeError:
        return value is not None


def empty_metadata(rows: int) -> dict[str, Any]:
    """The metadata saying a partition is empty on purpose (nothing to send)."""
    return {"empty": "No upstream rows: nothing was sent; stored as an empty frame."} if not rows else {}
