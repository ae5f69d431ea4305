"""LLM pipelines as first-class Dagster assets.

``OpenAIResource`` (a superset of dagster-openai's, with exact usage metadata), asset
factories for partitioned chat answers, embeddings and a PCA map of them, and an I/O
manager that stores single-run backfills one file per partition.
"""

from importlib.metadata import PackageNotFoundError, version

from llm_assets.accounting.usage import Usage
from llm_assets.assets import (
    AssetOptions,
    ChatConfig,
    ChatTranslator,
    CheckRule,
    EmbeddingConfig,
    LLMPipeline,
    PlotConfig,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_llm_pipeline_assets,
    build_pca_plot_asset,
    vectors,
)
from llm_assets.assets.io_manager import PartitionedFilesystemIOManager
from llm_assets.batch import BatchSettings, RequestMode
from llm_assets.cache import CacheMode
from llm_assets.engine import ChatRequest, Engine, LLMRequestError
from llm_assets.engine.structured import OutputSchema, ResponseFormatStyle
from llm_assets.errors import LLMAssetsError
from llm_assets.resource import OpenAIResource
from llm_assets.sensors import build_batch_sensor
from llm_assets.session import RunSession
from llm_assets.usage_metadata import with_usage_metadata

try:
    __version__ = version("llm-assets")  # the installed distribution's, from pyproject.toml
except PackageNotFoundError:  # pragma: no cover - a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "AssetOptions",
    "BatchSettings",
    "CacheMode",
    "ChatConfig",
    "ChatRequest",
    "ChatTranslator",
    "CheckRule",
    "EmbeddingConfig",
    "Engine",
    "LLMAssetsError",
    "LLMPipeline",
    "LLMRequestError",
    "OpenAIResource",
    "OutputSchema",
    "PartitionedFilesystemIOManager",
    "PlotConfig",
    "RequestMode",
    "ResponseFormatStyle",
    "RunSession",
    "Usage",
    "build_batch_sensor",
    "build_chat_answers_asset",
    "build_embeddings_asset",
    "build_llm_pipeline_assets",
    "build_pca_plot_asset",
    "vectors",
    "with_usage_metadata",
]
