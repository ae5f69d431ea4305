"""The one execution engine behind every factory: many requests, bounded concurrency,
the request cache, input order kept, usage per partition.

Requests of one materialization are POSTed concurrently through one ``openai.AsyncOpenAI``
from :meth:`OpenAIResource.get_partitioned_async_client`: each request names its
partition, so each partition's usage is metered from its own HTTP responses, and the
resource's rate limits apply to what goes out. Retries with backoff, honouring
``Retry-After``, are the OpenAI SDK's own (``max_retries``). Cached answers are looked up
in one batch before anything is sent, so a re-run of unchanged inputs costs file reads.

Example:
    >>> engine = Engine(openai_resource, context)  # doctest: +SKIP
    >>> messages = ({"role": "user", "content": "Tea?"},)
    >>> request = ChatRequest("Picard", 0, "Tea?", messages, {"model": "gpt-4o-mini"})
    >>> records = engine.chat([request])  # doctest: +SKIP
"""

import asyncio
import base64
import enum
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dagster as dg
import numpy as np
import openai
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from llm_assets.accounting.governance import REFUSAL_CODE
from llm_assets.accounting.limits import estimate_tokens
from llm_assets.cache import CacheMode, payload_key
from llm_assets.http.transport import httpx
from llm_assets.redaction import mask_secrets, redact
from llm_assets.resource import OpenAIResource, PartitionedClient

T = TypeVar("T")

#: The embeddings endpoint takes at most this many inputs per request…
MAX_EMBEDDING_INPUTS = 2048
#: …and at most 300,000 tokens per request; batches are packed below this estimate.
MAX_EMBEDDING_BATCH_TOKENS = 250_000


class LLMRequestError(Exception):
    """A request failed after the SDK's retries; names the item that caused it."""


class GovernanceError(LLMRequestError):
    """A request refused by the allow-list or a budget; it was never sent. Always fatal."""


class MalformedResponseError(Exception):
    """A 2xx response whose body is not the JSON the endpoint returns (retried)."""


class ErrorPolicy(enum.Enum):
    """What a failed item (after retries) does to its materialization."""

    FAIL = "fail"  # stop sending, fail the materialization (completed answers stay cached)
    RECORD = "record"  # keep going; the item's row carries the error


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


@dataclass(frozen=True)
class _Call:
    """One POST: where it goes, what it says, and how its JSON answer becomes a result
    (``read(body, cached, latency_s)``). ``items`` counts toward progress."""

    partition_key: str | None
    path: str
    body: dict[str, Any]
    description: str
    read: Callable[[dict[str, Any], bool, float], Any]
    items: int = 1
    failed: Callable[[str], Any] | None = None  # the result for an item that failed, if recordable


@dataclass
class _Progress:
    """Logs done / total, tokens, cache hits and failed attempts at most every ``every``
    seconds, and at the end."""

    context: Any
    what: str
    total: int
    clients: PartitionedClient
    every: float = 10.0
    done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.done == self.total or now - self._last >= self.every:
            self._last = now
            usage = list(self.clients.usage.values())
            self.context.log.info(
                f"{self.what}: {self.done}/{self.total} done, {sum(u.total_tokens for u in usage)} tokens, "
                f"{sum(u.total('cache_hits') for u in usage)} from cache, "
                f"{sum(u.failed_attempts for u in usage)} failed attempts retried"
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
        on_error: ErrorPolicy = ErrorPolicy.FAIL,
    ) -> None:
        self.resource = resource
        self.context = context
        self.asset_key = asset_key
        self.max_concurrency = max_concurrency or resource.max_concurrency
        self.cache = resource.cache_mode(cache)
        self.on_error = on_error
        self.seconds = 0.0  # wall time of the last batch of requests
        self.failures = 0  # items recorded as failed in the last batch

    def _run(self, what: str, calls: Sequence[_Call], total: int) -> list[Any]:
        """Send ``calls`` concurrently (cache hits first, without sending); results in order."""
        started = time.perf_counter()
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                return runner.run(self._send_all(what, calls, total))
        finally:
            self.seconds = time.perf_counter() - started

    async def _send_all(self, what: str, calls: Sequence[_Call], total: int) -> list[Any]:
        keys = list(dict.fromkeys(call.partition_key for call in calls))
        # The engine reads the cache itself; its clients only store what they fetch.
        send_mode = CacheMode.REFRESH if self.cache is CacheMode.USE else self.cache
        async with self.resource.get_partitioned_async_client(self.context, keys, self.asset_key, send_mode) as clients:
            progress = _Progress(self.context, what, total, clients)
            results: list[Any] = [None] * len(calls)
            pending = list(range(len(calls)))
            if self.cache.reads:
                pending = await self._answer_from_cache(calls, clients, results, progress)
            in_flight = asyncio.Semaphore(self.max_concurrency)
            errors: list[LLMRequestError] = []

            async def send(index: int) -> None:
                call = calls[index]
                options = {"headers": clients.headers(call.partition_key)}
                async with in_flight:
                    if errors:  # after a failure nothing new is sent; what is in flight finishes
                        return
                    try:
                        results[index] = await self._send_one(clients, call, options)
                    except LLMRequestError as error:
                        if (
                            self.on_error is ErrorPolicy.FAIL
                            or call.failed is None
                            or isinstance(error, GovernanceError)
                        ):
                            errors.append(error)
                            return
                        self.failures += 1
                        self.context.log.warning(str(error))
                        results[index] = call.failed(str(error))
                progress.step(call.items)

            await asyncio.gather(*(send(index) for index in pending))
            if errors:
                raise errors[0]
            return results

    async def _send_one(self, clients: PartitionedClient, call: _Call, options: dict[str, Any]) -> Any:
        """One call, with the SDK's retries for HTTP and connection errors and tenacity's
        (same count, exponential backoff with jitter) for malformed 2xx bodies."""

        async def attempt() -> Any:
            sent = time.perf_counter()
            response = await clients.client.post(call.path, cast_to=httpx.Response, body=call.body, options=options)
            try:
                return call.read(response.json(), False, time.perf_counter() - sent)
            except (ValueError, KeyError, TypeError, IndexError) as error:
                raise MalformedResponseError(f"malformed response body ({error})") from error

        try:
            try:
                return await attempt()
            except MalformedResponseError:
                if self.resource.max_retries == 0:
                    raise
            retrying = AsyncRetrying(  # only built on the rare malformed body
                retry=retry_if_exception_type(MalformedResponseError),
                stop=stop_after_attempt(self.resource.max_retries),
                wait=wait_exponential_jitter(multiplier=0.5, max=8),
                reraise=True,
            )
            return await retrying(attempt)
        except openai.APIStatusError as error:
            if isinstance(error.body, dict) and error.body.get("code") == REFUSAL_CODE:
                raise GovernanceError(
                    f"Request for {self._text(call.description)} was not sent: {error.body['message']}"
                ) from None
            raise LLMRequestError(self._failure(call, error, clients)) from None
        except (openai.OpenAIError, MalformedResponseError) as error:
            raise LLMRequestError(self._failure(call, error, clients)) from None

    def _failure(self, call: _Call, error: BaseException, clients: PartitionedClient) -> str:
        return f"Request for {self._text(call.description)} failed: {_describe(error, clients.client.api_key)}"

    def _text(self, text: str) -> str:
        """Text about prompts as the library may log it (redacted when asked)."""
        return redact(text) if self.resource.redact_text else text

    async def _answer_from_cache(
        self, calls: Sequence[_Call], clients: PartitionedClient, results: list[Any], progress: _Progress
    ) -> list[int]:
        """Fill ``results`` from the cache; returns the indices still to send."""
        urls = {call.path: str(clients.client.base_url).rstrip("/") + call.path for call in calls}
        keys = [payload_key(urls[call.path], call.body) for call in calls]
        bodies = await asyncio.to_thread(self.resource.request_cache.get_many, keys)
        pending = []
        for index, (call, cached) in enumerate(zip(calls, bodies, strict=True)):
            if cached is None:
                pending.append(index)
                continue
            payload = json.loads(cached)
            clients.usage[call.partition_key].add_cache_hit(payload.get("model"))
            results[index] = call.read(payload, True, 0.0)
            progress.step(call.items)
        return pending

    # -- chat -------------------------------------------------------------------------------

    def chat(
        self,
        requests: Sequence[ChatRequest],
        to_record: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]] = lambda record, body: record,
    ) -> list[dict[str, Any]]:
        """Answer every request; returns one answers-frame record per request, in order
        (``to_record(record, response_body)`` may add columns)."""

        def reader(request: ChatRequest) -> Callable[[dict[str, Any], bool, float], dict[str, Any]]:
            def read(body: dict[str, Any], cached: bool, latency: float) -> dict[str, Any]:
                choice = body["choices"][0]  # a body without choices is malformed: retried
                usage = body.get("usage") or {}
                return to_record(
                    {
                        "partition_key": request.partition_key,
                        "row": request.row,
                        "prompt": request.prompt,
                        "answer": choice["message"].get("content") or "",
                        "model": body.get("model"),
                        "finish_reason": choice.get("finish_reason"),
                        "prompt_tokens": usage.get("prompt_tokens"),
                        "completion_tokens": usage.get("completion_tokens"),
                        "total_tokens": usage.get("total_tokens"),
                        "latency_s": latency,
                        "cached": cached,
                        "error": None,
                    },
                    body,
                )

            return read

        def failure(request: ChatRequest) -> Callable[[str], dict[str, Any]]:
            def failed(message: str) -> dict[str, Any]:
                record = {
                    "partition_key": request.partition_key,
                    "row": request.row,
                    "prompt": request.prompt,
                    "answer": None,
                    "cached": False,
                    "error": message,
                }
                return to_record(record, {})

            return failed

        calls = [
            _Call(
                r.partition_key,
                "/chat/completions",
                {"messages": list(r.messages), **r.params},
                r.describe(),
                reader(r),
                failed=failure(r),
            )
            for r in requests
        ]
        return self._run("chat requests", calls, len(calls)) if calls else []

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

        def read(body: dict[str, Any], cached: bool, latency: float) -> tuple[str, np.ndarray, bool]:
            ordered = sorted(body["data"], key=lambda d: d["index"])
            return body.get("model"), np.stack([_vector(d["embedding"]) for d in ordered]), cached

        batches = [
            (pk, start, batch)
            for pk, items in texts.items()
            for start, batch in pack_batches(items, batch_size, max_batch_tokens)
        ]
        calls = [
            _Call(
                pk,
                "/embeddings",
                {"input": batch, "encoding_format": "base64", **params},
                f"partition {pk!r} texts {start}..{start + len(batch) - 1}",
                read,
                items=len(batch),
            )
            for pk, start, batch in batches
        ]
        results = self._run("embedded texts", calls, sum(len(t) for t in texts.values())) if calls else []
        out: dict[str | None, tuple[str, np.ndarray, int]] = {}
        for (pk, _, _), (model, matrix, hit) in zip(batches, results, strict=True):
            if pk in out:
                _, previous, hits = out[pk]
                out[pk] = (model, np.vstack([previous, matrix]), hits + hit)
            else:
                out[pk] = (model, matrix, int(hit))
        return out


def _describe(error: BaseException, api_key: str | None = None) -> str:
    """The server's own message for an API error, else the error; secrets masked (a server
    may echo the key it was sent)."""
    message = f"HTTP {error.status_code}: {error.message}" if isinstance(error, openai.APIStatusError) else str(error)
    return mask_secrets(message, api_key)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where installed (less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _vector(embedding: str | list[float]) -> np.ndarray:
    """An embedding as float32, from base64 (what OpenAI sends when asked) or a JSON list
    (servers that ignore ``encoding_format``)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype=np.float32)
    return np.asarray(embedding, dtype=np.float32)


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
