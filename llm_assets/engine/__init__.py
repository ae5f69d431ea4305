"""The execution engine: what a factory asks (:mod:`~llm_assets.engine.chat`,
:mod:`~llm_assets.engine.embeddings`), sent concurrently by :class:`Engine`.

The engine-level names, for code that drives the engine itself rather than through the
factories (``from llm_assets.engine import Engine, ChatRequest``):

- :class:`Engine`: sends one asset's chat and embedding requests for one step.
- :class:`ChatRequest`: one planned chat request (partition, row, prompt, messages, body).
- :class:`AnswerRow`: one row of an answers frame, as the engine reports it.
- :class:`EmbeddingResult`, :func:`pack_batches`: a partition's vectors, and how texts are packed into requests.
- :class:`Call`, :class:`ErrorPolicy`, :class:`SendPath`: one POST, what a failed one does, and how it is sent.
- :class:`RetryPolicy`: every retry of a live request, in one place.
- :class:`OutputSchema`: a structured answer's schema (what ``response_format=`` becomes).
- :class:`RunSession`, :class:`SessionSettings`: the state of one resource initialisation (pool,
  gate, answer store, ledger), and the frozen settings it is made from.
- :class:`Usage`: token and cost counters, per model.
- :class:`LLMRequestError`, :class:`GovernanceError`: a request failed, or was refused before it was sent.
"""

from llm_assets.accounting.usage import Usage
from llm_assets.calls import Call, ErrorPolicy
from llm_assets.engine.chat import ChatRequest
from llm_assets.engine.embeddings import EmbeddingResult, pack_batches
from llm_assets.engine.engine import Engine
from llm_assets.engine.retries import RetryPolicy
from llm_assets.engine.rows import AnswerRow
from llm_assets.engine.sender import SendPath
from llm_assets.engine.structured import OutputSchema
from llm_assets.errors import GovernanceError, LLMRequestError
from llm_assets.session import RunSession, SessionSettings

__all__ = [
    "AnswerRow",
    "Call",
    "ChatRequest",
    "EmbeddingResult",
    "Engine",
    "ErrorPolicy",
    "GovernanceError",
    "LLMRequestError",
    "OutputSchema",
    "RetryPolicy",
    "RunSession",
    "SendPath",
    "SessionSettings",
    "Usage",
    "pack_batches",
]
