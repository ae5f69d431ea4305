"""The one error type users see for bad configuration or input.

Each message names the offending field and how to fix it.
"""

from __future__ import annotations


class LLMAssetsError(ValueError):
    """Bad configuration or input; raised before any request that it would affect is sent."""
