"""Code versions and data versions of the factories' assets, for Dagster's change tracking.

* A **code version** is a short hash of everything a factory was given that decides what
  its asset holds (prompts, model, the defaults of the parameters sent, response schema,
  translator…), and of nothing else: names, tags, owners, pools and concurrency leave it
  unchanged. After a reload, an edited prompt shows as "code version changed" in the UI,
  and the assets below it as unsynced.
* A **data version** is a hash of what one materialization holds: re-running to identical
  answers (from the request cache, say) keeps the assets below up to date.

Both are stable across processes, Python versions and dict orders: canonical JSON, then
SHA-256.

Examples:
    >>> code_version("chat_answers", {"prompt": "Hi {name}", "model": None})
    '1241f621cc44'
    >>> code_version("chat_answers", {"model": None, "prompt": "Hi {name}"})  # order is no edit
    '1241f621cc44'
"""

import enum
import hashlib
import json
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pydantic

from llm_assets.assets.reporting import MAX_LOOKUPS
from llm_assets.vector_store.column import dimensions_of, matrix_of

#: Bumped if what a hash covers changes meaning, so old versions never collide with new ones.
_FORMAT = 1
#: Rows of a text column encoded at a time.
_SLICE = 50_000
#: The tag Dagster keeps a materialization's data version in.
DATA_VERSION_TAG = "dagster/data_version"
#: Metadata key of each partition's own content hash.
CONTENT_VERSION = "content_version"
#: Hex digits kept: 48 bits, no collision in any realistic edit history of one asset.
_LENGTH = 12


def code_version(kind: str, parts: Mapping[str, Any]) -> str:
    """The code version of a ``kind`` of asset defined by ``parts`` (JSON-like values,
    enums, Pydantic models and classes are accepted)."""
    return _digest(_canonical({"format": _FORMAT, "kind": kind, **parts}))


def translator_identity(translator: object) -> dict[str, Any]:
    """What a translator contributes to a code version: its class's qualified name (not
    its module, which depends on how the code location is loaded) and its own ``version``
    attribute, if it sets one: its code is not visible to the hash, so bump ``version``
    when you change what it does.

    Examples:
        >>> class FewShot:
        ...     version = "2"
        >>> translator_identity(FewShot())["version"]
        '2'
    """
    version = getattr(translator, "version", None)
    return {"class": type(translator).__qualname__, "version": None if version is None else str(version)}


def frame_version(frame: pd.DataFrame, exclude: Collection[str] = frozenset()) -> str:
    """The data version of ``frame``: a hash of its columns' names, types and values, but
    those in ``exclude`` (e.g. latencies). Numeric columns are hashed as their bytes, and
    an Arrow vector column (``embedding``) as the bytes of its float32 matrix (no copy of
    it); others as JSON.

    Examples:
        >>> a = pd.DataFrame({"answer": ["Yes"], "latency_s": [0.2]})
        >>> frame_version(a, {"latency_s"}) == frame_version(a.assign(latency_s=9.0), {"latency_s"})
        True
    """
    digest = hashlib.sha256(f"{_FORMAT}:{len(frame)}".encode())
    for name in frame.columns:
        if name in exclude:
            continue
        column = frame[name]
        digest.update(_canonical([str(name), str(column.dtype)]).encode())
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf":
            digest.update(np.ascontiguousarray(column.to_numpy()).tobytes())
        elif dimensions_of(column) is not None:  # vectors: their float32 bytes, not a JSON text of them
            digest.update(np.ascontiguousarray(matrix_of(column)).data)
        else:  # in slices: no JSON copy of a million-row column at once
            for start in range(0, len(column), _SLICE):
                text = column.iloc[start : start + _SLICE].to_json(
                    orient="values", date_format="iso", default_handler=str
                )
                digest.update(text.encode())
    return digest.hexdigest()[:_LENGTH]


def data_version(
    context: dg.AssetExecutionContext, frames: Mapping[str | None, pd.DataFrame], exclude: Collection[str] = frozenset()
) -> str:
    """The data version of a run's output, from each partition's frame (``None``: the
    asset is not partitioned), each partition's own hash recorded as its
    ``content_version`` metadata.

    Dagster gives every partition of a run one data version (dagster#34013). So the one
    that most of the run's unchanged partitions last had is kept, unless another partition
    of the run ever had it (with other content): their dependants stay up to date, and a
    data version still stands for one content of each partition. Otherwise it is the hash
    of the run's partitions' hashes (one partition: its own). A partition given a version
    other than its last is conservatively new to its dependants.
    """
    contents = {pk: frame_version(frame, exclude) for pk, frame in frames.items()}
    if None in contents:
        return contents[None]
    for pk, version in contents.items():
        context.add_asset_metadata({CONTENT_VERSION: version}, partition_key=pk)
    if len(contents) <= MAX_LOOKUPS:
        instance, key = context.instance, context.asset_key
        previous = {pk: _latest_versions(instance, key, pk) for pk in contents}
        unchanged = Counter(data for pk, (data, content) in previous.items() if data and content == contents[pk])
        histories: dict[str, set[str] | None] = {}  # each partition's past data versions, read once
        for candidate, _ in unchanged.most_common(3):
            others = [pk for pk in contents if previous[pk] != (candidate, contents[pk])]
            for pk in others:
                if pk not in histories:
                    histories[pk] = _past_data_versions(instance, key, pk)
            if not any(histories[pk] is None or candidate in histories[pk] for pk in others):
                return candidate
    if len(contents) == 1:
        return next(iter(contents.values()))
    return _digest(_canonical(list(contents.items())))


def _materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, limit: int
) -> list[dg.AssetMaterialization]:
    """The partition's latest ``limit`` materializations, newest first."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(key, [partition]), limit=limit).records
    return [record.asset_materialization for record in records if record.asset_materialization is not None]


def _past_data_versions(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> set[str] | None:
    """The data versions the partition's materializations ever had (``None``: a history
    longer than ``MAX_LOOKUPS``, which may hold any, to be safe)."""
    events = _materializations(instance, key, partition, MAX_LOOKUPS)
    if len(events) >= MAX_LOOKUPS:
        return None
    return {version for event in events if (version := (event.tags or {}).get(DATA_VERSION_TAG))}


def _latest_versions(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> tuple[str | None, str | None]:
    """The data version and content version of the partition's latest materialization."""
    events = _materializations(instance, key, partition, 1)
    if not events:
        return None, None
    content = events[0].metadata.get(CONTENT_VERSION)
    recorded = content.value if isinstance(content, dg.TextMetadataValue) else None
    return (events[0].tags or {}).get(DATA_VERSION_TAG), recorded


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    """JSON for what ``json`` can't encode on its own, the same in every process."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
        return value.model_json_schema()
    if isinstance(value, dg.PartitionMapping):
        return json.loads(dg.serialize_value(value))
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=_canonical)
    raise TypeError(f"{type(value).__name__} can't be part of a code version: {value!r}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_LENGTH]
