"""The private APIs of openai and Dagster that llm_assets relies on, in one place.

Each has no public equivalent; ``llm_assets_tests/test_compat.py`` fails as soon as one
of them moves, instead of a user finding out in production.

- ``openai.DefaultAioHttpClient(...)._transport``: the aiohttp transport the SDK vendors
  (about half the CPU per request of httpx's pool). llm_assets wraps it in its metering
  transport; the SDK exposes only the whole client.
- ``openai.AsyncOpenAI``'s request building and retry contract: ``_prepare_options``,
  ``_build_request``, ``_prepare_request`` (the headers it sends), ``_should_retry``,
  ``_sleep_for_retry`` and ``_make_status_error_from_response``, with
  ``openai._models.FinalRequestOptions``: the engine's direct path
  (``SDKContract``) asks the official client itself
  instead of re-implementing what it does.
- ``PickledObjectFilesystemIOManager`` and ``UPathIOManager``'s
  ``_get_paths_for_partitions`` / ``_handle_transition_to_partitioned_asset``: what
  ``dg.FilesystemIOManager`` builds and how it lays out partition files, which
  ``PartitionedFilesystemIOManager`` must match byte for byte.
- ``OutputContext.step_context.add_asset_metadata(..., partition_key=)``: how that I/O
  manager gives each partition of a single-run backfill its own ``path`` (output metadata
  would put one on all of them).
- ``OpExecutionContext.get_step_execution_context()`` with the step context's
  ``has_seen_output`` and ``add_asset_metadata``, and the asset layer's
  ``get_op_output_handle`` / ``get_asset_key_for_node_output``: where usage made in an op
  lands (``llm_assets.accounting.targets``): the asset its output materializes, and
  whether that output was already emitted.
"""

from typing import Any

import openai
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager
from openai._models import FinalRequestOptions

__all__ = [
    "ASSET_LAYER_METHODS",
    "SDK_CONTRACT_METHODS",
    "STEP_CONTEXT_METHODS",
    "FinalRequestOptions",
    "PickledObjectFilesystemIOManager",
    "aiohttp_transport",
]

#: The official client's own methods ``SDKContract`` calls.
SDK_CONTRACT_METHODS = (
    "_prepare_options",
    "_build_request",
    "_prepare_request",
    "_should_retry",
    "_sleep_for_retry",
    "_make_status_error_from_response",
)


#: What ``llm_assets.accounting.targets`` calls on a step's execution context.
STEP_CONTEXT_METHODS = ("has_seen_output", "add_asset_metadata")
#: What it calls on the job's asset layer.
ASSET_LAYER_METHODS = ("get_op_output_handle", "get_asset_key_for_node_output")


def aiohttp_transport(**client_kwargs: Any) -> Any:
    """The SDK's aiohttp transport (``openai[aiohttp]``), or ``None`` when unavailable."""
    try:
        return openai.DefaultAioHttpClient(**client_kwargs)._transport
    except (RuntimeError, AttributeError, ImportError):  # aiohttp missing, or openai changed
        return None
