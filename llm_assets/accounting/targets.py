"""Where usage lands in Dagster: the asset (and partition) a step materializes, or an
op's output, and the running total emitted there as metadata.

dagster-openai records usage only in assets. Here an op of a graph-backed asset records
it on that asset's materialization, and any other op on its output, under the same keys.

Examples:
    >>> import dagster as dg
    >>> usage_target(dg.build_op_context()) is None  # no run: the usage is only logged
    True
"""

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# bound once, at import: tests patch ``dagster.AssetExecutionContext`` with autospec'd mocks
from dagster import AssetCheckExecutionContext, AssetExecutionContext, AssetKey, DagsterError, OpExecutionContext

from llm_assets.accounting.ledger import LedgerKey, UsageLedger
from llm_assets.accounting.usage import Usage
from llm_assets.errors import ConfigurationError, UsageTargetError

AnyContext = AssetExecutionContext | OpExecutionContext | AssetCheckExecutionContext


@dataclass(frozen=True, eq=False)
class UsageTarget:
    """Where usage lands: the materialization of ``asset_key`` (and ``partition_key``) made
    by this step (``output_name``: its output, where known), or else the metadata of the op
    output ``output_name``. ``key`` names its running total in a ledger (an output's: its
    step and name, and no asset)."""

    key: LedgerKey
    context: Any
    asset_key: AssetKey | None = None
    partition_key: str | None = None
    output_name: str | None = None

    def emit(self, metadata: Mapping[str, Any]) -> None:
        """Set ``metadata`` on the target (the running total: later calls overwrite it)."""
        if self.asset_key is None:
            self.context.add_output_metadata(metadata, output_name=self.output_name)
        elif isinstance(self.context, AssetExecutionContext):
            self.context.add_asset_metadata(metadata, asset_key=self.asset_key, partition_key=self.partition_key)
        else:  # an op of a graph-backed asset: the same channel, so totals never compete
            step = self.context.get_step_execution_context()
            step.add_asset_metadata(metadata, asset_key=self.asset_key, partition_key=self.partition_key)

    def emitted(self) -> bool:
        """Whether the target's output was already yielded: metadata can no longer reach it."""
        try:
            if isinstance(self.context, AssetExecutionContext):
                step = self.context.op_execution_context.get_step_execution_context()
            else:
                step = self.context.get_step_execution_context()
            output = self.output_name
            if output is None and self.asset_key is not None:
                handle = step.job_def.asset_layer.get_op_output_handle(self.asset_key)
                output = None if handle is None else handle.output_name
            return output is not None and step.has_seen_output(output) is True
        except (DagsterError, AttributeError):  # no run, or Dagster moved it (llm_assets/_compat.py)
            return False

    def describe(self) -> str:
        if self.asset_key is None:
            return f"output {self.output_name!r} of op {self.key.step.rsplit(':', 1)[0]}"
        partition = "" if self.partition_key is None else f" (partition {self.partition_key!r})"
        return f"asset {self.asset_key.to_user_string()}{partition}"


_MULTI_ASSET = (
    "asset_key is required in a multi_asset: use openai.get_client_for_asset(context, asset_key) "
    "to say which asset the usage is for."
)


def usage_target(
    context: AnyContext,
    asset_key: AssetKey | None = None,
    partition_key: str | None = None,
    *,
    output_name: str | None = None,
) -> UsageTarget | None:
    """Where usage made in ``context`` lands: an asset (``asset_key`` picks one of a
    multi-asset, ``output_name`` names it by its output) and maybe one ``partition_key``
    of the run; in an op of a graph-backed asset, the asset its output materializes; in
    any other op, its output (``output_name``, needed when it has several). ``None`` (the
    usage is only logged) for an asset check, an op without (non-dynamic) outputs, one
    with several and none named, and a context made for a direct call outside any run.

    Raises ``UsageTargetError`` when the choice is ambiguous.

    Examples:
        >>> from dagster import build_op_context
        >>> usage_target(build_op_context()) is None  # no run: the usage is logged
        True
    """
    if isinstance(context, AssetExecutionContext):
        return _asset_target(context, asset_key, partition_key, output_name)
    if isinstance(context, OpExecutionContext):
        return _op_target(context, asset_key, partition_key, output_name)
    return None


def _asset_target(
    context: AssetExecutionContext, asset_key: AssetKey | None, partition_key: str | None, output_name: str | None
) -> UsageTarget | None:
    try:
        outputs = context.assets_def.keys_by_output_name
        run_id, step, attempt = context.run.run_id, str(context.op_execution_context.op_handle), context.retry_number
    except DagsterError:  # a context built for a direct call, outside any run
        return None
    if output_name is not None:
        asset_key = outputs.get(output_name)
        if asset_key is None:
            raise UsageTargetError(
                f"output_name {output_name!r} is not an output this step materializes: pass one of {sorted(outputs)}."
            )
    if asset_key is None:
        if len(outputs.keys()) > 1:
            raise UsageTargetError(_MULTI_ASSET)
        asset_key = context.asset_key
    _check_partition(context, partition_key)
    key = LedgerKey(run_id, step, attempt, tuple(asset_key.path), partition_key)
    return UsageTarget(key, context, asset_key=asset_key, partition_key=partition_key)


def _op_target(
    context: OpExecutionContext, asset_key: AssetKey | None, partition_key: str | None, output_name: str | None
) -> UsageTarget | None:
    try:
        # a dynamic output's metadata needs a mapping key per value: usage can't land there
        names = [output.name for output in context.op_def.output_defs if not output.is_dynamic]
        layer = context.job_def.asset_layer
        assets = {name: key for name in names if (key := layer.get_asset_key_for_node_output(context.op_handle, name))}
        run_id, step, attempt = context.run_id, str(context.op_handle), context.retry_number
    except DagsterError:  # a context built for a direct call, outside any run
        return None
    op = f"op {step}"
    if output_name is not None:
        if output_name not in names:
            raise UsageTargetError(
                f"output_name {output_name!r} is not a (non-dynamic) output of {op}: pass one of {names}."
            )
        asset_key = assets.get(output_name)
    elif asset_key is not None:
        if asset_key not in assets.values():
            materialized = [key.to_user_string() for key in assets.values()]
            raise UsageTargetError(
                f"asset_key {asset_key.to_user_string()} is not materialized by {op} (it materializes "
                f"{materialized or 'no asset'}): usage can only land on this step's own assets."
            )
    elif len(assets) > 1:
        raise UsageTargetError(_MULTI_ASSET)
    elif assets:
        (asset_key,) = assets.values()
    elif len(names) == 1:
        output_name = names[0]
    else:
        return None  # no output, or several and none named: logged
    _check_partition(context, partition_key)
    if asset_key is None:
        key = LedgerKey(run_id, f"{step}:{output_name}", attempt, (), None)  # an output: no asset
        return UsageTarget(key, context, output_name=output_name)
    key = LedgerKey(run_id, step, attempt, tuple(asset_key.path), partition_key)
    output_name = next(name for name, materialized in assets.items() if materialized == asset_key)
    return UsageTarget(key, context, asset_key=asset_key, partition_key=partition_key, output_name=output_name)


def _check_partition(context: AssetExecutionContext | OpExecutionContext, partition_key: str | None) -> None:
    if partition_key is None:
        return
    run_keys = context.partition_keys if context.has_partition_key_range or context.has_partition_key else []
    if partition_key not in run_keys:
        raise ConfigurationError(
            f"partition_key {partition_key!r} is not a partition of this run ({list(run_keys)[:10]}): pass one of "
            "context.partition_keys to get_client, or none."
        )


class UsageReporter:
    """Usage totals per ``UsageTarget`` (a ledger), each emitted as its target's
    metadata whenever it grows; thread-safe, so the last emission is the latest total."""

    def __init__(self, prices: Mapping[str, Any]) -> None:
        self.ledger = UsageLedger()
        self.prices = prices
        self._lock = threading.Lock()

    def report(self, context: AnyContext, target: UsageTarget | None, usage: Usage) -> None:
        """Add ``usage`` to ``target``'s total and emit the total (``None``: log the usage)."""
        if target is None:
            if usage.calls:
                context.log.info(f"OpenAI usage (not attributed to an asset or output): {usage.to_metadata()}")
            return
        with self._lock:
            total = self.ledger.add(target.key, usage)
            if target.emitted():
                context.log.warning(
                    f"OpenAI usage arrived after {target.describe()} was emitted, so it is not in its metadata: "
                    f"{usage.to_metadata()}"
                )
                return
            target.emit(total.to_metadata(self.prices))
