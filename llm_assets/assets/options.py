"""The Dagster options every factory takes, and the one ``@dg.asset`` they all build.

Factories take ``@dg.asset``'s own option names as keyword arguments (typed by
``AssetOptions``); each default is defined here, once.

Examples:
    >>> options: AssetOptions = {"group_name": "llm", "pool": "openai"}
    >>> asset_key(None, "captains", default="answers").to_user_string()
    'captains/answers'
"""

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypedDict

import dagster as dg

from llm_assets.engine.rows import ColumnSpec
from llm_assets.errors import ConfigurationError

#: Partitioned factories default to one run for many partitions: requests of all the
#: partitions are then sent concurrently instead of one Dagster run after another.
SINGLE_RUN = dg.BackfillPolicy.single_run()
PARTITION_COLUMN = "partition_key"

AssetKeyLike = dg.AssetKey | str | Sequence[str]


class AssetOptions(TypedDict, total=False):
    """Dagster's options, with ``@dg.asset``'s names; any factory takes any of them."""

    key_prefix: Sequence[str] | str | None  #: prefix of the asset key
    group_name: str | None
    description: str | None  #: defaults to a description of what the asset holds
    retry_policy: dg.RetryPolicy | None
    pool: str | None  #: Dagster concurrency pool of the step
    backfill_policy: dg.BackfillPolicy | None  #: partitioned assets; default: single run
    resource_key: str  #: key of the OpenAIResource; default "openai"
    io_manager_key: str  #: default "io_manager"
    kinds: set[str] | None
    tags: Mapping[str, str] | None
    owners: Sequence[str] | None
    metadata: Mapping[str, Any] | None  #: added to the column schema and partition_expr
    code_version: str | None  #: overrides the one derived from the factory's arguments
    automation_condition: dg.AutomationCondition | None  #: e.g. ``dg.AutomationCondition.eager()``
    freshness_policy: dg.FreshnessPolicy | None
    deps: Sequence[dg.AssetDep | dg.AssetKey | str | dg.AssetsDefinition | dg.AssetSpec] | None  #: not loaded
    op_tags: Mapping[str, Any] | None  #: tags of the step, e.g. for the executor
    hooks: Sequence[dg.HookDefinition] | None


DEFAULTS: AssetOptions = {"resource_key": "openai", "io_manager_key": "io_manager", "backfill_policy": SINGLE_RUN}


def resolved(options: AssetOptions) -> AssetOptions:
    """``options`` over the defaults (``None`` keeps a default); an unknown name is an
    error naming the valid ones."""
    unknown = sorted(set(options) - set(AssetOptions.__annotations__))
    if unknown:
        raise ConfigurationError(
            f"Unknown asset option(s) {', '.join(unknown)}: the factories take "
            f"{', '.join(sorted(AssetOptions.__annotations__))} (Dagster's own names)."
        )
    return {**DEFAULTS, **{name: value for name, value in options.items() if value is not None}}  # type: ignore[typeddict-item]


def asset_key(key: AssetKeyLike | None, key_prefix: Sequence[str] | str | None, default: str) -> dg.AssetKey:
    result = dg.AssetKey.from_coercible(key if key is not None else default)
    if key_prefix:
        result = result.with_prefix([key_prefix] if isinstance(key_prefix, str) else list(key_prefix))
    return result


def check_max_concurrency(max_concurrency: Any, name: dg.AssetKey) -> None:
    """``max_concurrency`` of a factory: ``None`` (the resource's) or a whole number ≥ 1."""
    if max_concurrency is not None and (type(max_concurrency) is not int or max_concurrency < 1):
        raise ConfigurationError(
            f"max_concurrency of {name.to_user_string()} is {max_concurrency!r}: give a whole number of "
            "requests in flight (at least 1), or None for the resource's."
        )


def check_partitions(partitions_def: dg.PartitionsDefinition | None, name: dg.AssetKey) -> None:
    """Refuse a static partitions definition (or a dimension of a multi-partition one) with
    no partitions: the asset could never be materialized per partition."""
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        dimensions = {d.name: d.partitions_def for d in partitions_def.partitions_defs}
    else:
        dimensions = {"": partitions_def}
    for dimension, definition in dimensions.items():
        if isinstance(definition, dg.StaticPartitionsDefinition) and not definition.get_partition_keys():
            where = f"dimension {dimension!r} of " if dimension else ""
            raise ConfigurationError(
                f"The {where}partitions_def of {name.to_user_string()} (given, or the upstream asset's) has no "
                "partitions: list at least one key in dg.StaticPartitionsDefinition([...])."
            )


def column_schema(columns: Mapping[str, ColumnSpec]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description) for name, (kind, _, description) in columns.items()]
    )


def define_asset(
    compute: Callable[..., Any],
    *,
    key: dg.AssetKey,
    config_class: type[dg.Config],
    columns: Mapping[str, ColumnSpec],
    ins: Mapping[str, dg.AssetIn],
    partitions_def: dg.PartitionsDefinition | None,
    options: AssetOptions,
    description: str,
    kinds: set[str],
    code_version: str,
    uses_resource: bool = True,
    check_specs: Sequence[dg.AssetCheckSpec] = (),
    extra_resource_keys: Collection[str] = (),
) -> dg.AssetsDefinition:
    """The ``@dg.asset`` of a factory: ``compute(context, config, **inputs)`` with the
    factory's run config class, column schema, ``options``, generated checks and
    ``code_version`` (``llm_assets.assets.versions``; the ``code_version`` option wins);
    ``extra_resource_keys``: resources its body reads besides the OpenAI one (a vector store)."""
    compute.__annotations__["config"] = config_class
    compute.__annotations__.pop("return", None)  # Dagster would type the output (and checks) by it
    compute.__name__ = key.to_python_identifier()
    metadata = {"dagster/column_schema": column_schema(columns), "partition_expr": PARTITION_COLUMN}
    metadata.update(options.get("metadata") or {})
    with warnings.catch_warnings():  # backfill_policy is beta; the factories use it on purpose (one run)
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            key=key,
            ins=dict(ins),
            description=options.get("description") or description,
            partitions_def=partitions_def,
            backfill_policy=options["backfill_policy"] if partitions_def is not None else None,
            group_name=options.get("group_name"),
            retry_policy=options.get("retry_policy"),
            pool=options.get("pool"),
            kinds=set(options.get("kinds") or kinds),
            tags=options.get("tags"),
            owners=options.get("owners"),
            metadata=metadata,
            required_resource_keys=({options["resource_key"]} if uses_resource else set()) | set(extra_resource_keys),
            io_manager_key=options["io_manager_key"],
            check_specs=list(check_specs) or None,
            code_version=options.get("code_version") or code_version,
            automation_condition=options.get("automation_condition"),
            freshness_policy=options.get("freshness_policy"),
            deps=options.get("deps"),
            op_tags=options.get("op_tags"),
            hooks=set(options.get("hooks") or ()) or None,
        )(compute)
