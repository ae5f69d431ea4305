"""The execution engine: what a factory asks (``llm_assets.engine.chat``,
``llm_assets.engine.embeddings``), sent concurrently by ``Engine``.

The engine-level names, for code that drives the engine itself rather than through the
factories (``from llm_assets.engine import Engine, ChatRequest``):

- ``Engine``: sends one asset's chat and embedding requests for one step.
- ``ChatRequest``: one planned chat request (partition, row, prompt, messages, body).
- ``AnswerRow``: one row of an answers frame, as the engine reports it.
- ``EmbeddingResult``, ``pack_batches``: a partition's vectors, and how texts are packed into requests.
- ``Call``, ``ErrorPolicy``, ``SendPath``: one POST, what a failed one does, and how it is sent.
- ``RetryPolicy``: every retry of a live request, in one place.
- ``OutputSchema``: a structured answer's schema (what ``response_format=`` becomes).
- ``RunSession``, ``SessionSettings``: the state of one resource initialisation (pool,
  gate, answer store, ledger), and the frozen settings it is made from.
- ``Usage``: token and cost counters, per model.
- ``LLMRequestError``, ``GovernanceError``: a request failed, or was refused before it was sent.
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
