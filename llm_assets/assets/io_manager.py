"""Dagster's filesystem I/O manager, able to store a single-run backfill.

Same files, paths and pickle format as ``dg.FilesystemIOManager`` (so assets on the
default I/O manager read what it wrote, and vice versa), with one addition: an output
that covers several partitions, as one run of a ``BackfillPolicy.single_run()`` asset
produces, is split on its ``partition_key`` column (or ``{partition_key: value}`` dict)
into one file per partition; a partition with no rows in a DataFrame output is stored as
an empty frame with the same columns.

Examples:
    >>> resources = {"io_manager": PartitionedFilesystemIOManager()}
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from llm_assets._compat import PickledObjectFilesystemIOManager


class _SplittingPickleIOManager(PickledObjectFilesystemIOManager):
    #: Read by ``stores_partition_ranges``.
    stores_partition_ranges = True

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not context.has_asset_partitions or len(context.asset_partition_keys) <= 1:
            return super().handle_output(context, obj)
        from llm_assets.assets.frames import split_output

        paths = self._get_paths_for_partitions(context)
        parts = split_output(obj, list(paths), f"Output of {context.asset_key.to_user_string()}")
        for partition_key, path in paths.items():
            self._handle_transition_to_partitioned_asset(context, path.parent)
            self.make_directory(path.parent)
            self.dump_to_path(context=context, obj=parts[partition_key], path=path)
        report_paths(context, paths)


def report_paths(context: dg.OutputContext, paths: dict[str, Any]) -> None:
    """Each partition's materialization names its own file: output metadata would put one
    path on all of them, so it goes through the step's per-partition asset metadata."""
    try:
        step = context.step_context
    except (dg.DagsterInvariantViolationError, AttributeError, TypeError, ValueError):
        step = None  # an OutputContext built outside a run (tests): one folder path
    if step is None:
        context.add_output_metadata({"path": dg.MetadataValue.path(str(next(iter(paths.values())).parent))})
        return
    for partition_key, path in paths.items():
        step.add_asset_metadata(
            {"path": dg.MetadataValue.path(str(path))}, asset_key=context.asset_key, partition_key=partition_key
        )


class PartitionedFilesystemIOManager(dg.FilesystemIOManager):
    """``dg.FilesystemIOManager`` that also stores outputs spanning several partitions,
    one file per partition. Defaults to the Dagster instance's storage directory;
    ``base_dir`` may be any fsspec / UPath location (e.g. ``s3://bucket/dagster``)."""

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.UPathIOManager:
        base_dir = self.base_dir or context.instance.storage_directory()  # type: ignore[union-attr]
        return _SplittingPickleIOManager(base_dir=base_dir)


def stores_partition_ranges(io_manager: Any) -> bool:
    """Whether ``io_manager`` can store one output covering several partitions: Dagster's
    UPath I/O managers (the default filesystem one among them) refuse; this module's
    splits it; others (DuckDB, Snowflake… with ``partition_expr``) are trusted to."""
    if isinstance(io_manager, dg.UPathIOManager):
        return getattr(io_manager, "stores_partition_ranges", False)
    return True
