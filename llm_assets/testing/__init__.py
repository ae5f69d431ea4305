"""A scripted OpenAI-compatible server on loopback, for tests and benchmarks.

It answers ``/v1/chat/completions`` (plain and streamed), ``/v1/completions``,
``/v1/embeddings`` (float and base64) and ``/v1/responses`` with deterministic text,
vectors and token counts, and keeps its own totals of the usage it reported, so tests
can compare what a pipeline recorded with what the server billed.

Examples:
    >>> import openai
    >>> with ScriptedOpenAIServer() as server:
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    ...     _ = client.embeddings.create(model="text-embedding-3-small", input=["hello world"])
    ...     server.usage.total_tokens
    2

Modules: ``llm_assets.testing.server`` (the server and ``main``),
``llm_assets.testing.endpoints`` (what each endpoint answers),
``llm_assets.testing.stats`` (what the server saw and billed),
``llm_assets.testing.script`` (the scripted tokenizer, answers and vectors),
``llm_assets.testing.encoding`` (gzip and deflate replies, event-stream framing),
``llm_assets.testing.faults`` (fault injection) and
``llm_assets.testing.ratelimits`` (RPM / TPM per API key, enforced like OpenAI's).
"""

from llm_assets.testing.faults import FAULTS, FaultInjector, first_attempts, inject_fault
from llm_assets.testing.ratelimits import ProviderLimits
from llm_assets.testing.script import Refusal, count_tokens, scripted_answer, scripted_vector
from llm_assets.testing.server import ScriptedOpenAIServer, main
from llm_assets.testing.stats import ServerStats

__all__ = [
    "FAULTS",
    "FaultInjector",
    "ProviderLimits",
    "Refusal",
    "ScriptedOpenAIServer",
    "ServerStats",
    "count_tokens",
    "first_attempts",
    "inject_fault",
    "main",
    "scripted_answer",
    "scripted_vector",
]
