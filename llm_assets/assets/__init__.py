"""The asset factories: chat answers, embeddings, a PCA map, and the three together.

Each returns an ordinary ``dg.AssetsDefinition`` any code location can import; each is
plan → ``Engine`` → report.
"""

import warnings
from typing import Any

from llm_assets.assets.chat import ChatPrompts, build_chat_answers_asset, plan_chat_requests
from llm_assets.assets.checks import CheckRule
from llm_assets.assets.config import ChatConfig, EmbeddingConfig, PlotConfig
from llm_assets.assets.embeddings import build_embeddings_asset
from llm_assets.assets.frames import embedding_matrix
from llm_assets.assets.options import AssetOptions
from llm_assets.assets.pipeline import LLMPipeline, build_llm_pipeline_assets
from llm_assets.assets.plot import build_pca_plot_asset
from llm_assets.assets.translator import ChatTranslator
from llm_assets.assets.upstream import Upstream

__all__ = [
    "AssetOptions",
    "ChatConfig",
    "ChatPrompts",
    "ChatTranslator",
    "CheckRule",
    "EmbeddingConfig",
    "LLMPipeline",
    "PlotConfig",
    "Upstream",
    "build_chat_answers_asset",
    "build_embeddings_asset",
    "build_llm_pipeline_assets",
    "build_pca_plot_asset",
    "embedding_matrix",
    "plan_chat_requests",
]


def __getattr__(name: str) -> Any:
    """``vectors``, the old name of ``embedding_matrix``, still imports, with a warning."""
    if name == "vectors":
        warnings.warn(
            "llm_assets.assets.vectors is deprecated: use embedding_matrix (from llm_assets import embedding_matrix).",
            DeprecationWarning,
            stacklevel=2,
        )
        return embedding_matrix
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
