"""The error types users see for bad configuration or input.

Each message names the offending field and how to fix it.

Example:
    >>> import dagster as dg
    >>> error = UsageTargetError("asset_key is required in a multi_asset")
    >>> isinstance(error, LLMAssetsError), isinstance(error, dg.DagsterInvariantViolationError)
    (True, True)
"""

from __future__ import annotations

from dagster import DagsterInvariantViolationError


class LLMAssetsError(ValueError):
    """Bad configuration or input; raised before any request that it would affect is sent."""


class UsageTargetError(LLMAssetsError, DagsterInvariantViolationError):
    """Usage would have no single asset or output to land on (a multi-asset without
    ``asset_key``, an ``output_name`` the op does not have). Also a
    ``dagster.DagsterInvariantViolationError``, which dagster-openai raises in these cases,
    so code written for it catches this too."""
