"""Token usage as the server reported it, summed per model, asset and partition.

Usage is read from the HTTP responses themselves (see ``llm_assets.http.transport``),
so every call shape of the OpenAI SDK is counted the same way: plain, streamed,
``with_raw_response``, ``parse()``, the Responses API and embeddings.

Examples:
    >>> usage = Usage()
    >>> reported = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    >>> usage.add_response("gpt-4o-mini-2024-07-18", reported)
    >>> usage.to_metadata()["openai.gpt-4o-mini-2024-07-18.total_tokens"]
    17
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Endpoints whose successful (non-streamed) responses are billed and carry ``usage``.
BILLED_PATH_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/responses")

#: Counters kept per model; ``completion_tokens`` is omitted for models that only embedded.
COUNTERS = (
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)


@dataclass
class ModelUsage:
    """Counters for one model, as returned in ``response.model``."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    calls_without_usage: int = 0
    cache_hits: int = 0
    # the share of the counters above answered through the Batch API (priced apart)
    batch_calls: int = 0
    batch_prompt_tokens: int = 0
    batch_cached_tokens: int = 0
    batch_completion_tokens: int = 0
    has_completions: bool = False
    has_cached: bool = False
    has_reasoning: bool = False

    def merge(self, other: ModelUsage) -> None:
        for name in (*COUNTERS, *_OTHER_COUNTERS):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.has_completions |= other.has_completions
        self.has_cached |= other.has_cached
        self.has_reasoning |= other.has_reasoning


_OTHER_COUNTERS = (
    "calls_without_usage",
    "cache_hits",
    "batch_calls",
    "batch_prompt_tokens",
    "batch_cached_tokens",
    "batch_completion_tokens",
)


def _int(value: Any) -> int:
    """A reported count as an int: a finite, non-negative number, else 0 (servers send odd
    values; accounting must not fail on them)."""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return max(0, int(value))
    return 0


def _model_name(model: Any) -> str:
    """The model a count belongs to: its name as served, or ``unknown`` when the server sent none (or no text)."""
    return model if isinstance(model, str) and model else "unknown"


def _details(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def normalize_usage(usage: Mapping[str, Any]) -> dict[str, int | None]:
    """Map a Chat Completions, Completions, Embeddings or Responses ``usage`` object
    onto one set of counters (``input_tokens`` counts as prompt tokens, ``output_tokens``
    as completion tokens). Counters the server did not send are ``None``."""
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    total = usage.get("total_tokens")
    if total is None:
        total = _int(prompt) + _int(completion)
    prompt_details = _details(usage.get("prompt_tokens_details") or usage.get("input_tokens_details"))
    completion_details = _details(usage.get("completion_tokens_details") or usage.get("output_tokens_details"))
    return {
        "prompt_tokens": _int(prompt),
        "completion_tokens": None if completion is None else _int(completion),
        "total_tokens": _int(total),
        "cached_tokens": None if prompt_details.get("cached_tokens") is None else _int(prompt_details["cached_tokens"]),
        "reasoning_tokens": None
        if completion_details.get("reasoning_tokens") is None
        else _int(completion_details["reasoning_tokens"]),
    }


@dataclass
class Usage:
    """Usage summed over calls, per model, plus cache hits (answered without a call, so
    zero tokens), failed attempts by kind (see ``add_failed_attempt``; the SDK or the
    engine may retry them) and answers the request cache failed to store.
    Thread-safe; merge-able."""

    models: dict[str, ModelUsage] = field(default_factory=lambda: defaultdict(ModelUsage))
    failures: Counter[str] = field(default_factory=Counter)
    cache_store_failures: int = 0
    parse_retries: int = 0  # structured answers asked again because they did not validate
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_cache_hit(self, model: str | None) -> None:
        with self._lock:
            self.models[_model_name(model)].cache_hits += 1

    def add_failed_attempt(self, kind: str) -> None:
        """Count one attempt that failed: ``kind`` is the HTTP status (``"429"``),
        ``"connection"`` (refused, dropped), ``"timeout"`` or ``"malformed"`` (a 2xx whose
        body is not the endpoint's JSON)."""
        with self._lock:
            self.failures[kind] += 1

    def add_parse_retry(self) -> None:
        """Count one structured answer asked again (its attempts are metered as usual)."""
        with self._lock:
            self.parse_retries += 1

    def add_cache_store_failure(self) -> None:
        with self._lock:
            self.cache_store_failures += 1

    @property
    def failed_attempts(self) -> int:
        return sum(self.failures.values())

    def add_response(self, model: str | None, usage: Mapping[str, Any] | None, *, batch: bool = False) -> None:
        """Count one response of ``model`` carrying ``usage`` (``None`` when the server sent
        none); ``batch``: answered through the Batch API (priced at its rates)."""
        with self._lock:
            counters = self.models[_model_name(model)]
            counters.calls += 1
            counters.batch_calls += batch
            if not isinstance(usage, Mapping) or not usage:
                counters.calls_without_usage += 1
                return
            normalized = normalize_usage(usage)
            if batch:
                counters.batch_prompt_tokens += normalized["prompt_tokens"] or 0
                counters.batch_cached_tokens += normalized["cached_tokens"] or 0
                counters.batch_completion_tokens += normalized["completion_tokens"] or 0
            counters.prompt_tokens += normalized["prompt_tokens"] or 0
            counters.total_tokens += normalized["total_tokens"] or 0
            if normalized["completion_tokens"] is not None:
                counters.has_completions = True
                counters.completion_tokens += normalized["completion_tokens"]
            if normalized["cached_tokens"] is not None:
                counters.has_cached = True
                counters.cached_tokens += _int(normalized["cached_tokens"])
            if normalized["reasoning_tokens"] is not None:
                counters.has_reasoning = True
                counters.reasoning_tokens += _int(normalized["reasoning_tokens"])

    def merge(self, other: Usage) -> None:
        with self._lock:
            self.failures.update(other.failures)
            self.cache_store_failures += other.cache_store_failures
            self.parse_retries += other.parse_retries
            for model, counters in other.models.items():
                self.models[model].merge(counters)

    def total(self, counter: str) -> int:
        return sum(getattr(m, counter) for m in self.models.values())

    @property
    def calls(self) -> int:
        return self.total("calls")

    @property
    def total_tokens(self) -> int:
        return self.total("total_tokens")

    def cost_usd(self, prices: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
        """Estimated USD cost per priced model, and the models with no price."""
        from llm_assets.accounting.prices import price_for

        costs, unknown = {}, []
        for model, m in sorted(self.models.items()):
            if not m.calls:
                continue
            price = price_for(model, prices)
            if price is None:
                unknown.append(model)
                continue
            live = price.cost(
                m.prompt_tokens - m.batch_prompt_tokens,
                m.cached_tokens - m.batch_cached_tokens,
                m.completion_tokens - m.batch_completion_tokens,
            )
            batch = price.batch().cost(m.batch_prompt_tokens, m.batch_cached_tokens, m.batch_completion_tokens)
            costs[model] = live + batch
        return costs, unknown

    def to_metadata(self, prices: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Metadata in dagster-openai's scheme (``openai.<model>.<counter>``) plus totals
        over all models (``openai.<counter>``) and, given ``prices``, the estimated cost:
        ``openai.<model>.cost_usd``, and ``openai.cost_usd`` when every model is priced
        (else ``openai.cost_unknown_models`` names the others: their cost is not guessed)."""
        metadata: dict[str, Any] = {}
        for model, m in sorted(self.models.items()):
            metadata[f"openai.{model}.calls"] = m.calls
            metadata[f"openai.{model}.prompt_tokens"] = m.prompt_tokens
            if m.has_completions:
                metadata[f"openai.{model}.completion_tokens"] = m.completion_tokens
            metadata[f"openai.{model}.total_tokens"] = m.total_tokens
            if m.has_cached:
                metadata[f"openai.{model}.cached_tokens"] = m.cached_tokens
            if m.has_reasoning:
                metadata[f"openai.{model}.reasoning_tokens"] = m.reasoning_tokens
            if m.calls_without_usage:
                metadata[f"openai.{model}.calls_without_usage"] = m.calls_without_usage
            if m.cache_hits:
                metadata[f"openai.{model}.cache_hits"] = m.cache_hits
            if m.batch_calls:
                metadata[f"openai.{model}.batch_requests"] = m.batch_calls
        reported = {
            "cached_tokens": any(m.has_cached for m in self.models.values()),
            "reasoning_tokens": any(m.has_reasoning for m in self.models.values()),
        }
        for counter in COUNTERS:
            if reported.get(counter, True):
                metadata[f"openai.{counter}"] = self.total(counter)
        if self.total("calls_without_usage"):
            metadata["openai.calls_without_usage"] = self.total("calls_without_usage")
        metadata["openai.cache_hits"] = self.total("cache_hits")
        if self.total("batch_calls"):
            metadata["openai.batch_requests"] = self.total("batch_calls")
        metadata["openai.failed_attempts"] = self.failed_attempts
        for kind, count in sorted(self.failures.items()):
            metadata[f"openai.failed_attempts.{kind}"] = count
        if self.parse_retries:
            metadata["openai.parse_retries"] = self.parse_retries
        if self.cache_store_failures:
            metadata["openai.cache_store_failures"] = self.cache_store_failures
        if prices is not None:
            costs, unknown = self.cost_usd(prices)
            for model, cost in costs.items():
                metadata[f"openai.{model}.cost_usd"] = round(cost, 8)
            if unknown:
                metadata["openai.cost_unknown_models"] = ", ".join(unknown)
            else:
                metadata["openai.cost_usd"] = round(sum(costs.values()), 8)
        return metadata


class LiveUsage(Usage):
    """The usage of one block of work: summed while the block is open; once the block
    is closed (``close``), each change is handed to its reporter as it happens.

    Examples:
        >>> late = []
        >>> usage = LiveUsage()
        >>> usage.add_response("m", {"prompt_tokens": 2, "total_tokens": 2})
        >>> usage.close(late.append)
        >>> usage.add_response("m", {"prompt_tokens": 3, "total_tokens": 3})
        >>> usage.total_tokens, [change.total_tokens for change in late]
        (2, [3])
    """

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Lock()
        self._late: Callable[[Usage], None] | None = None

    def close(self, late: Callable[[Usage], None]) -> None:
        """End the block: this counter stays as it is; later changes go to ``late``, each
        as a ``Usage`` of its own."""
        with self._gate:
            self._late = late

    def _change(self, change: Callable[[Usage], None]) -> None:
        with self._gate:
            late = self._late
            if late is None:
                change(self)
                return
        delta = Usage()
        change(delta)
        late(delta)

    def add_cache_hit(self, model: str | None) -> None:
        self._change(lambda usage: Usage.add_cache_hit(usage, model))

    def add_failed_attempt(self, kind: str) -> None:
        self._change(lambda usage: Usage.add_failed_attempt(usage, kind))

    def add_parse_retry(self) -> None:
        self._change(Usage.add_parse_retry)

    def add_cache_store_failure(self) -> None:
        self._change(Usage.add_cache_store_failure)

    def add_response(self, model: str | None, usage: Mapping[str, Any] | None, *, batch: bool = False) -> None:
        self._change(lambda counters: Usage.add_response(counters, model, usage, batch=batch))

    def merge(self, other: Usage) -> None:
        self._change(lambda usage: Usage.merge(usage, other))
