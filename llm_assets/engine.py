"""The one execution engine behind every factory: many requests, bounded concurrency,
input order kept, usage recorded per partition.

Requests of one materialization run concurrently on ``openai.AsyncOpenAI`` clients from
:meth:`OpenAIResource.get_async_clients` (one per partition, sharing a connection pool),
so the usage of each partition is metered from its own HTTP responses.

Example:
    >>> engine = Engine(openai_resource, context)  # doctest: +SKIP
    >>> messages = ({"role": "user", "content": "Tea?"},)
    >>> request = ChatRequest("Picard", 0, "Tea?", messages, {"model": "gpt-4o-mini"})
    >>> records = engine.chat([request])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dagster as dg
import numpy as np
import openai

from llm_assets.resource import OpenAIResource

T = TypeVar("T")

#: The embeddings endpoint takes at most this many inputs per request.
MAX_EMBEDDING_INPUTS = 2048


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
    """Logs done / total and tokens so far at most every ``every`` seconds and at 100%."""

    context: Any
    what: str
    total: int
    every: float = 10.0
    done: int = 0
    tokens: int = 0
    _last: float = field(default_factory=time.monotonic)

    def step(self, tokens: int = 0, count: int = 1) -> None:
        self.done += count
        self.tokens += tokens
        now = time.monotonic()
        if self.done == self.total or now - self._last >= self.every:
            self._last = now
            self.context.log.info(f"{self.what}: {self.done}/{self.total} done, {self.tokens} tokens so far")


class Engine:
    """Runs chat and embedding requests for one asset of one step.

    Args:
        resource: the configured :class:`OpenAIResource`.
        context: the asset's execution context; usage lands on ``asset_key`` of it.
        max_concurrency: requests in flight at once (defaults to the resource's).
    """

    def __init__(
        self,
        resource: OpenAIResource,
        context: dg.AssetExecutionContext,
        *,
        asset_key: dg.AssetKey | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        self.resource = resource
        self.context = context
        self.asset_key = asset_key
        self.max_concurrency = max_concurrency or resource.max_concurrency

    def _run(
        self,
        partition_keys: Sequence[str | None],
        jobs: Sequence[tuple[str | None, Callable[[openai.AsyncOpenAI], Awaitable[T]], str]],
    ) -> list[T]:
        """Run ``(partition_key, job, description)`` jobs concurrently; results in input order."""

        async def main() -> list[T]:
            limit = asyncio.Semaphore(self.max_concurrency)
            async with self.resource.get_async_clients(
                self.context, list(dict.fromkeys(partition_keys)), self.asset_key
            ) as clients:

                async def one(partition_key: str | None, job: Callable, description: str) -> T:
                    async with limit:
                        try:
                            return await job(clients[partition_key])
                        except openai.OpenAIError as error:
                            raise LLMRequestError(f"Request for {description} failed: {error}") from error

                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(one(pk, job, text)) for pk, job, text in jobs]
                return [task.result() for task in tasks]

        try:
            return asyncio.run(main())
        except ExceptionGroup as group:
            raise _first_error(group) from None

    # -- chat -------------------------------------------------------------------------------

    def chat(self, requests: Sequence[ChatRequest]) -> list[dict[str, Any]]:
        """Answer every request; returns one answers-frame record per request, in order."""
        progress = _Progress(self.context, "chat requests", len(requests))

        def job(request: ChatRequest) -> Callable[[openai.AsyncOpenAI], Awaitable[dict[str, Any]]]:
            async def send(client: openai.AsyncOpenAI) -> dict[str, Any]:
                started = time.perf_counter()
                response = await client.chat.completions.create(
                    messages=list(request.messages), **request.params
                )
                latency = time.perf_counter() - started
                choice = response.choices[0] if response.choices else None
                usage = response.usage
                progress.step(usage.total_tokens if usage else 0)
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
                }

            return send

        if not requests:
            return []
        pks = [r.partition_key for r in requests]
        return self._run(pks, [(r.partition_key, job(r), r.describe()) for r in requests])

    # -- embeddings -------------------------------------------------------------------------

    def embed(
        self,
        texts: Mapping[str | None, Sequence[str]],
        params: Mapping[str, Any],
        batch_size: int = MAX_EMBEDDING_INPUTS,
    ) -> dict[str | None, tuple[str, np.ndarray]]:
        """Embed each partition's texts, ``batch_size`` inputs per request, order kept.
        Returns ``{partition_key: (model reported by the server, float32 matrix)}``."""
        batch_size = max(1, min(batch_size, MAX_EMBEDDING_INPUTS))
        batches = [
            (pk, start, list(items[start : start + batch_size]))
            for pk, items in texts.items()
            for start in range(0, len(items), batch_size)
        ]
        progress = _Progress(self.context, "embedded texts", sum(len(t) for t in texts.values()))

        def job(batch: list[str]) -> Callable[[openai.AsyncOpenAI], Awaitable[tuple[str, np.ndarray]]]:
            async def send(client: openai.AsyncOpenAI) -> tuple[str, np.ndarray]:
                response = await client.embeddings.create(input=batch, **params)
                ordered = sorted(response.data, key=lambda d: d.index)
                matrix = np.asarray([d.embedding for d in ordered], dtype=np.float32)
                progress.step(response.usage.total_tokens if response.usage else 0, count=len(batch))
                return response.model, matrix

            return send

        results = self._run(
            [pk for pk, _, _ in batches],
            [
                (pk, job(batch), f"partition {pk!r} texts {start}..{start + len(batch) - 1}")
                for pk, start, batch in batches
            ],
        )
        out: dict[str | None, tuple[str, np.ndarray]] = {}
        for (pk, _, _), (model, matrix) in zip(batches, results, strict=True):
            if pk in out:
                out[pk] = (model, np.vstack([out[pk][1], matrix]))
            else:
                out[pk] = (model, matrix)
        return out


def _first_error(error: BaseException) -> BaseException:
    """The first underlying error of a (nested) task group failure."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
