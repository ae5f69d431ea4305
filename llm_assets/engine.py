"""The one execution engine behind every factory: many requests, bounded concurrency,
input order kept, usage per partition (rate limits and the request cache apply in the
clients' transports).

Requests of one materialization run concurrently on ``openai.AsyncOpenAI`` clients from
:meth:`OpenAIResource.get_async_clients` (one per partition, sharing a connection pool),
so the usage of each partition is metered from its own HTTP responses. Retries with
backoff (honouring ``Retry-After`` on 429) are the OpenAI SDK's own (``max_retries``).

Example:
    >>> engine = Engine(openai_resource, context)  # doctest: +SKIP
    >>> messages = ({"role": "user", "content": "Tea?"},)
    >>> request = ChatRequest("Picard", 0, "Tea?", messages, {"model": "gpt-4o-mini"})
    >>> records = engine.chat([request])  # doctest: +SKIP
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dagster as dg
import numpy as np
import openai

from llm_assets.cache import CacheMode
from llm_assets.limits import estimate_tokens
from llm_assets.metering import CACHE_HEADER
from llm_assets.resource import MeteredClients, OpenAIResource

T = TypeVar("T")

#: The embeddings endpoint takes at most this many inputs per request…
MAX_EMBEDDING_INPUTS = 2048
#: …and at most 300,000 tokens per request; batches are packed below this estimate.
MAX_EMBEDDING_BATCH_TOKENS = 250_000


class LLMRequestError(Exception):
    """A request failed after the SDK's retries; names the item that caused it."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to send, and where its answer goes."""

    partition_key: str | None
    row: int
    prompt: str
    messages: tuple[Mapping[str, str], ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"partition {self.partition_key!r} " if self.partition_key is not None else ""
        return f"{where}row {self.row} (prompt {self.prompt[:60]!r})"


@dataclass
class _Progress:
    """Logs done / total, tokens, cache hits and failed attempts at most every ``every``
    seconds, and at the end."""

    context: Any
    what: str
    total: int
    clients: MeteredClients | None = None
    every: float = 10.0
    done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.done == self.total or now - self._last >= self.every:
            self._last = now
            usage = list(self.clients.usage.values()) if self.clients else []
            tokens = sum(u.total_tokens for u in usage)
            hits = sum(u.total("cache_hits") for u in usage)
            failed = sum(u.failed_attempts for u in usage)
            self.context.log.info(
                f"{self.what}: {self.done}/{self.total} done, {tokens} tokens, {hits} from cache, "
                f"{failed} failed attempts retried"
            )


class Engine:
    """Runs chat and embedding requests for one asset of one step.

    Args:
        resource: the configured :class:`OpenAIResource` (concurrency and rate limits).
        context: the asset's execution context; usage lands on ``asset_key`` of it.
        max_concurrency: requests in flight at once (defaults to the resource's).
        cache: how to use the request cache (default: answer from it, store new answers).
    """

    def __init__(
        self,
        resource: OpenAIResource,
        context: dg.AssetExecutionContext,
        *,
        asset_key: dg.AssetKey | None = None,
        max_concurrency: int | None = None,
        cache: CacheMode = CacheMode.USE,
    ) -> None:
        self.resource = resource
        self.context = context
        self.asset_key = asset_key
        self.max_concurrency = max_concurrency or resource.max_concurrency
        self.cache = cache

    def _run(
        self,
        what: str,
        jobs: Sequence[tuple[str | None, int, Callable[[openai.AsyncOpenAI], Awaitable[T]], str]],
        total: int,
    ) -> list[T]:
        """Run ``(partition_key, count, job, description)`` jobs concurrently; results in
        input order. ``count`` items of ``total`` are done when a job returns."""

        async def main() -> list[T]:
            in_flight = asyncio.Semaphore(self.max_concurrency)
            keys = list(dict.fromkeys(pk for pk, *_ in jobs))
            async with self.resource.get_async_clients(
                self.context, keys, self.asset_key, self.cache
            ) as clients:
                progress = _Progress(self.context, what, total, clients)

                async def one(pk: str | None, count: int, job: Callable, description: str) -> T:
                    async with in_flight:
                        try:
                            result = await job(clients[pk])
                        except openai.OpenAIError as error:
                            raise LLMRequestError(f"Request for {description} failed: {error}") from error
                    progress.step(count)
                    return result

                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(one(*job)) for job in jobs]
                return [task.result() for task in tasks]

        try:
            return asyncio.run(main())
        except ExceptionGroup as group:
            raise _first_error(group) from None

    # -- chat -------------------------------------------------------------------------------

    def chat(self, requests: Sequence[ChatRequest]) -> list[dict[str, Any]]:
        """Answer every request; returns one answers-frame record per request, in order."""

        def job(request: ChatRequest) -> Callable[[openai.AsyncOpenAI], Awaitable[dict[str, Any]]]:
            async def send(client: openai.AsyncOpenAI) -> dict[str, Any]:
                started = time.perf_counter()
                raw = await client.chat.completions.with_raw_response.create(
                    messages=list(request.messages), **request.params
                )
                response = raw.parse()
                latency = time.perf_counter() - started
                choice = response.choices[0] if response.choices else None
                usage = response.usage
                return {
                    "partition_key": request.partition_key,
                    "row": request.row,
                    "prompt": request.prompt,
                    "answer": (choice.message.content or "") if choice else "",
                    "model": response.model,
                    "finish_reason": choice.finish_reason if choice else None,
                    "prompt_tokens": usage.prompt_tokens if usage else None,
                    "completion_tokens": usage.completion_tokens if usage else None,
                    "total_tokens": usage.total_tokens if usage else None,
                    "latency_s": latency,
                    "cached": raw.headers.get(CACHE_HEADER) == "hit",
                }

            return send

        if not requests:
            return []
        jobs = [(r.partition_key, 1, job(r), r.describe()) for r in requests]
        return self._run("chat requests", jobs, len(requests))

    # -- embeddings -------------------------------------------------------------------------

    def embed(
        self,
        texts: Mapping[str | None, Sequence[str]],
        params: Mapping[str, Any],
        batch_size: int = MAX_EMBEDDING_INPUTS,
        max_batch_tokens: int = MAX_EMBEDDING_BATCH_TOKENS,
    ) -> dict[str | None, tuple[str, np.ndarray, int]]:
        """Embed each partition's texts in as few requests as the limits allow (at most
        ``batch_size`` inputs and ``max_batch_tokens`` estimated tokens each), order kept.
        Returns ``{partition_key: (model reported by the server, float32 matrix, cache hits)}``."""
        batches = [
            (pk, start, batch)
            for pk, items in texts.items()
            for start, batch in pack_batches(items, batch_size, max_batch_tokens)
        ]

        def job(batch: list[str]) -> Callable[[openai.AsyncOpenAI], Awaitable[tuple[str, np.ndarray, bool]]]:
            async def send(client: openai.AsyncOpenAI) -> tuple[str, np.ndarray, bool]:
                raw = await client.embeddings.with_raw_response.create(input=batch, **params)
                response = raw.parse()
                ordered = sorted(response.data, key=lambda d: d.index)
                matrix = np.asarray([d.embedding for d in ordered], dtype=np.float32)
                return response.model, matrix, raw.headers.get(CACHE_HEADER) == "hit"

            return send

        jobs = [
            (pk, len(batch), job(batch), f"partition {pk!r} texts {start}..{start + len(batch) - 1}")
            for pk, start, batch in batches
        ]
        results = self._run("embedded texts", jobs, sum(len(t) for t in texts.values()))
        out: dict[str | None, tuple[str, np.ndarray, int]] = {}
        for (pk, _, _), (model, matrix, hit) in zip(batches, results, strict=True):
            if pk in out:
                _, previous, hits = out[pk]
                out[pk] = (model, np.vstack([previous, matrix]), hits + hit)
            else:
                out[pk] = (model, matrix, int(hit))
        return out


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


def _first_error(error: BaseException) -> BaseException:
    """The first underlying error of a (nested) task group failure."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
