"""Every error llm_assets raises on purpose, under one root, ``LLMAssetsError``.

- ``ConfigurationError`` (also a ``ValueError``): bad configuration or input, raised
  before any request it would affect is sent; the message names the field and the fix.
  ``UsageTargetError`` is one (and a ``dagster.DagsterInvariantViolationError``).
- ``LLMRequestError``: a request failed after its retries; ``GovernanceError``
  is one that the allow-list or a budget refused before it was sent.
- ``HookError``: user code on the request path (a translator) failed on a good answer.

Examples:
    >>> import dagster as dg
    >>> error = UsageTargetError("asset_key is required in a multi_asset")
    >>> isinstance(error, ConfigurationError), isinstance(error, dg.DagsterInvariantViolationError)
    (True, True)
    >>> issubclass(GovernanceError, LLMAssetsError) and issubclass(ConfigurationError, ValueError)
    True
"""

from __future__ import annotations

from dagster import DagsterInvariantViolationError

#: How an answer that fails its schema is described, in errors and in rows' ``error``.
INVALID_OUTPUT = "Invalid output"


class LLMAssetsError(Exception):
    """The root of every error llm_assets raises on purpose: ``except LLMAssetsError``
    catches them all."""


class ConfigurationError(LLMAssetsError, ValueError):
    """Bad configuration or input; raised before any request that it would affect is sent."""


class UsageTargetError(ConfigurationError, DagsterInvariantViolationError):
    """Usage would have no single asset or output to land on (a multi-asset without
    ``asset_key``, an ``output_name`` the op does not have). Also a
    ``dagster.DagsterInvariantViolationError``, which dagster-openai raises in these cases,
    so code written for it catches this too."""


class LLMRequestError(LLMAssetsError):
    """A request failed after its retries; names the item that caused it. ``recorded`` is
    what its row's ``error`` says under ``on_error=RECORD`` (the message itself unless
    given: the row already names its partition and prompt)."""

    def __init__(self, message: str, recorded: str | None = None) -> None:
        super().__init__(message)
        self.recorded = recorded or message


class GovernanceError(LLMRequestError):
    """A request refused by the allow-list or a budget; it was never sent. Always fatal."""


class HookError(LLMAssetsError):
    """User code on the request path (a translator hook) failed on a good answer: never
    retried, never blamed on the server."""


class InvalidOutputError(LLMAssetsError, ValueError):
    """An answer that is not JSON matching the schema: the engine asks again, unless
    ``retry`` is false (an answer cut at max_tokens would be cut again)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class StorageError(LLMAssetsError, OSError):
    """State that other steps need (a batch record) could not be written to its store (a
    disk or an object store that refused it); names the location and the fault."""


class MalformedResponseError(LLMAssetsError):
    """A 2xx response whose body is not the JSON its endpoint returns (retried)."""
