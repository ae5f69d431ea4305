"""Dagster Components of llm_assets, registered for ``dg list components``."""

from llm_assets.components.llm_pipeline import LLMPipelineComponent

__all__ = ["LLMPipelineComponent"]
