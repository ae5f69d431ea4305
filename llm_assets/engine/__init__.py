"""The execution engine: what a factory asks (:mod:`~llm_assets.engine.chat`,
:mod:`~llm_assets.engine.embeddings`), sent concurrently by :class:`Engine`."""

from llm_assets.calls import Call, ErrorPolicy
from llm_assets.engine.chat import ChatRequest
from llm_assets.engine.embeddings import EmbeddingResult, pack_batches
from llm_assets.engine.engine import Engine
from llm_assets.engine.rows import AnswerRow
from llm_assets.engine.sender import SendPath
from llm_assets.errors import GovernanceError, LLMRequestError

__all__ = [
    "AnswerRow",
    "Call",
    "ChatRequest",
    "EmbeddingResult",
    "Engine",
    "ErrorPolicy",
    "GovernanceError",
    "LLMRequestError",
    "SendPath",
    "pack_batches",
]
