"""LLM pipelines as first-class Dagster assets.

``OpenAIResource`` (a superset of dagster-openai's, with exact usage metadata), asset
factories for partitioned chat answers, embeddings and a PCA map of them, and an I/O
manager that stores single-run backfills one file per partition.

The public names (``__all__``); engine-level ones are in ``llm_assets.engine``.

Factories, and what they take and return:

- ``build_chat_answers_asset``: an asset of chat answers, one request per partition or upstream row.
- ``build_embeddings_asset``: an asset embedding an upstream text column, per partition.
- ``build_pca_plot_asset``: an asset mapping every partition of an embeddings asset in 2-D (PCA scatter PNG).
- ``build_llm_pipeline_assets``: answers → embeddings → PCA map, in one call.
- ``build_search_asset``: an asset of the nearest stored rows of a vector store to each query.
- ``Retrieval``: where a search or a chat factory's ``retrieval=`` (its ``{context}``) looks, and how much.
- ``LLMPipeline``: what ``build_llm_pipeline_assets`` returns: the three assets, iterable.
- ``build_batch_sensor``: a sensor that collects OpenAI Batch API results when they are ready.
- ``Upstream``: what ``upstream=`` reads: an asset, with its text column and partition mapping.
- ``AssetOptions``: the Dagster options every factory takes (``@dg.asset``'s names).
- ``CheckRule``: how one generated asset check judges (a factory's ``checks=``).

Resources:

- ``OpenAIResource``: dagster-openai's resource, with exact usage metadata, limits, cache and budgets.
- ``BatchSettings``: the resource's ``batch`` settings (OpenAI Batch API limits and polling).
- ``with_usage_metadata``: dagster-openai's wrapper recording a call's usage as asset metadata.

Run configs (each a factory's ``defaults=``) and the enums of their fields:

- ``ChatConfig``: run config of a chat answers asset (question, max_tokens, temperature…).
- ``EmbeddingConfig``: run config of an embeddings asset (model, dimensions, batch size…).
- ``PlotConfig``: run config of a PCA plot asset (its title).
- ``SearchConfig``: run config of a search asset (queries, k, partitions searched…).
- ``CacheMode``: the request cache: USE, REFRESH or OFF.
- ``RequestMode``: LIVE requests, or the OpenAI Batch API (BATCH).
- ``ErrorPolicy``: what a request that still fails does: FAIL the materialization, or RECORD it.
- ``ResponseFormatStyle``: how a structured answer's schema is sent (the resource's ``response_format_style``).

Translator, I/O manager and outputs:

- ``ChatTranslator``: the hook that builds each request and each row of an answers frame.
- ``PartitionedFilesystemIOManager``: Dagster's filesystem I/O manager, able to store single-run backfills.
- ``embedding_matrix``: the vectors of an embeddings frame (its ``embedding`` column), as one float32 matrix.

Vector store:

- ``LanceDBIOManager``: an I/O manager keeping each DataFrame asset as a LanceDB table, partition by partition.
- ``VectorStore``: a LanceDB database: read, search and drop its tables.
- ``IndexSettings``: when a table gets an ANN index, and how searches use it.

Errors, one tree:

- ``LLMAssetsError``: the root of every error llm_assets raises on purpose.
- ``ConfigurationError``: bad configuration or input, raised before any request it would affect is sent.
- ``UsageTargetError``: usage with no single asset or output to land on (a ``ConfigurationError``).
- ``LLMRequestError``: a request failed after its retries.
- ``GovernanceError``: a request the allow-list or a budget refused before it was sent (an ``LLMRequestError``).
- ``HookError``: user code on the request path (a translator) failed on a good answer.
- ``InvalidOutputError``: an answer that is not JSON matching its schema.

Old names (``Engine``, ``ChatRequest``, ``OutputSchema``, ``RunSession``, ``Usage``,
``vectors``) still import from here, with a ``DeprecationWarning`` naming the new place.

Examples:
    >>> import llm_assets
    >>> issubclass(llm_assets.GovernanceError, llm_assets.LLMAssetsError)
    True
"""

import importlib
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from llm_assets.assets import (
    AssetOptions,
    ChatConfig,
    ChatTranslator,
    CheckRule,
    EmbeddingConfig,
    LLMPipeline,
    PlotConfig,
    Upstream,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_llm_pipeline_assets,
    build_pca_plot_asset,
    embedding_matrix,
)
from llm_assets.assets.io_manager import PartitionedFilesystemIOManager
from llm_assets.assets.retrieval import Retrieval
from llm_assets.assets.search import SearchConfig, build_search_asset
from llm_assets.batch import BatchSettings, RequestMode
from llm_assets.cache import CacheMode
from llm_assets.calls import ErrorPolicy
from llm_assets.engine.structured import ResponseFormatStyle
from llm_assets.errors import (
    ConfigurationError,
    GovernanceError,
    HookError,
    InvalidOutputError,
    LLMAssetsError,
    LLMRequestError,
    UsageTargetError,
)
from llm_assets.resource import OpenAIResource
from llm_assets.sensors import build_batch_sensor
from llm_assets.usage_metadata import with_usage_metadata
from llm_assets.vector_store.io_manager import LanceDBIOManager
from llm_assets.vector_store.store import IndexSettings, VectorStore

try:
    __version__ = version("llm-assets")  # the installed distribution's, from pyproject.toml
except PackageNotFoundError:  # pragma: no cover - a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "AssetOptions",
    "BatchSettings",
    "CacheMode",
    "ChatConfig",
    "ChatTranslator",
    "CheckRule",
    "ConfigurationError",
    "EmbeddingConfig",
    "ErrorPolicy",
    "GovernanceError",
    "HookError",
    "IndexSettings",
    "InvalidOutputError",
    "LLMAssetsError",
    "LLMPipeline",
    "LLMRequestError",
    "LanceDBIOManager",
    "OpenAIResource",
    "PartitionedFilesystemIOManager",
    "PlotConfig",
    "RequestMode",
    "ResponseFormatStyle",
    "Retrieval",
    "SearchConfig",
    "Upstream",
    "UsageTargetError",
    "VectorStore",
    "build_batch_sensor",
    "build_chat_answers_asset",
    "build_embeddings_asset",
    "build_llm_pipeline_assets",
    "build_pca_plot_asset",
    "build_search_asset",
    "embedding_matrix",
    "with_usage_metadata",
]

#: Names that moved: old name → (module, name) to import instead.
_MOVED = {
    "ChatRequest": ("llm_assets.engine", "ChatRequest"),
    "Engine": ("llm_assets.engine", "Engine"),
    "OutputSchema": ("llm_assets.engine", "OutputSchema"),
    "RunSession": ("llm_assets.engine", "RunSession"),
    "Usage": ("llm_assets.engine", "Usage"),
    "vectors": ("llm_assets", "embedding_matrix"),
}


def __getattr__(name: str) -> Any:
    """A deprecated name (``_MOVED``) still imports, with a ``DeprecationWarning``
    naming the new import (PEP 562)."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, new = _MOVED[name]
    warnings.warn(
        f"llm_assets.{name} is deprecated: use `from {module} import {new}`.", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(module), new)
