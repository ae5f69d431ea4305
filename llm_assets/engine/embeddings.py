"""Embedding requests for the engine: texts packed into as few requests as the API allows,
vectors decoded to float32 and put back together per partition, in order.

Examples:
    >>> [(start, len(batch)) for start, batch in pack_batches(["a"] * 5, max_inputs=2, max_tokens=100)]
    [(0, 2), (2, 2), (4, 1)]
"""

import base64
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_assets.accounting.limits import estimate_tokens
from llm_assets.calls import Call
from llm_assets.errors import LLMRequestError

#: The embeddings endpoint takes at most this many inputs per request…
MAX_EMBEDDING_INPUTS = 2048
#: …and at most 300,000 tokens per request; batches are packed below this estimate.
MAX_EMBEDDING_BATCH_TOKENS = 250_000


@dataclass(frozen=True)
class EmbeddingResult:
    """One partition's embeddings: the model the server reported, the float32 matrix
    (one row per text, in order) and how many of its requests the cache answered."""

    model: str | None
    vectors: np.ndarray
    cache_hits: int = 0


@dataclass(frozen=True)
class _Batch:
    partition_key: str | None
    start: int
    texts: list[str]


def pack_batches(texts: Sequence[str], max_inputs: int, max_tokens: int) -> list[tuple[int, list[str]]]:
    """Consecutive ``(start, texts)`` batches of at most ``max_inputs`` texts and
    ``max_tokens`` estimated tokens (a longer text goes alone)."""
    max_inputs = max(1, min(max_inputs, MAX_EMBEDDING_INPUTS))
    batches: list[tuple[int, list[str]]] = []
    start, current, tokens = 0, [], 0
    for index, text in enumerate(texts):
        cost = estimate_tokens(text)
        if current and (len(current) >= max_inputs or tokens + cost > max_tokens):
            batches.append((start, current))
            start, current, tokens = index, [], 0
        current.append(text)
        tokens += cost
    if current:
        batches.append((start, current))
    return batches


def vector(embedding: str | list[float]) -> np.ndarray:
    """An embedding as float32, from base64 (what OpenAI sends when asked) or a JSON list
    of numbers (servers that ignore ``encoding_format``); anything else is ``ValueError``."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype=np.float32)
    if not isinstance(embedding, list) or not all(type(x) in (int, float) for x in embedding):
        raise ValueError("an embedding is not a list of numbers")
    return np.asarray(embedding, dtype=np.float32)


def _read(body: dict[str, Any], *, cached: bool, latency: float | None, expected: int) -> EmbeddingResult:
    """The vectors of an embeddings response to ``expected`` inputs, in input order; another
    count, or vectors of unequal length, is a malformed body (``ValueError``)."""
    ordered = sorted(body["data"], key=lambda d: d["index"])
    if [d["index"] for d in ordered] != list(range(expected)):
        raise ValueError(f"{len(ordered)} embeddings for {expected} inputs")
    matrix = np.stack([vector(d["embedding"]) for d in ordered])
    if not matrix.shape[1] or not np.isfinite(matrix).all():
        raise ValueError("empty, NaN or infinite embedding vectors")
    return EmbeddingResult(body.get("model"), matrix, int(cached))


class EmbeddingPlan:
    """The requests that embed each partition's texts, and how their answers combine."""

    def __init__(
        self, texts: Mapping[str | None, Sequence[str]], params: Mapping[str, Any], max_inputs: int, max_tokens: int
    ) -> None:
        self.batches = [
            _Batch(pk, start, batch)
            for pk, items in texts.items()
            for start, batch in pack_batches(items, max_inputs, max_tokens)
        ]
        self.params = dict(params)
        self.items = sum(len(t) for t in texts.values())

    def calls(self) -> list[Call[EmbeddingResult]]:
        return [
            Call(
                b.partition_key,
                "/embeddings",
                {"input": b.texts, "encoding_format": "base64", **self.params},
                f"partition {b.partition_key!r} texts {b.start}..{b.start + len(b.texts) - 1}",
                functools.partial(_read, expected=len(b.texts)),
                items=len(b.texts),
            )
            for b in self.batches
        ]

    def combine(self, results: Sequence[EmbeddingResult]) -> dict[str | None, EmbeddingResult]:
        """One result per partition, its batches stacked in order."""
        parts: dict[str | None, list[EmbeddingResult]] = {}
        for batch, result in zip(self.batches, results, strict=True):
            parts.setdefault(batch.partition_key, []).append(result)
        widths = {r.vectors.shape[1] for rs in parts.values() for r in rs}
        if len(widths) > 1:
            raise LLMRequestError(
                f"The server answered embeddings of different dimensions {sorted(widths)} within one run: "
                "pin the embedding model (and dimensions) so every request gets the same, or, if some came "
                "from an old or damaged request cache entry, re-run with run config cache: REFRESH."
            )
        return {
            pk: EmbeddingResult(rs[-1].model, np.vstack([r.vectors for r in rs]), sum(r.cache_hits for r in rs))
            for pk, rs in parts.items()
        }
