"""The one execution engine behind every factory: many requests, bounded concurrency,
the request cache, input order kept, usage per partition.

An :class:`Engine` works for one asset of one step, through the resource's
:class:`~llm_assets.session.RunSession`. It first looks every call up in the request
cache in one batch (a re-run of unchanged inputs costs file reads, not requests), then
POSTs the rest concurrently through one ``openai.AsyncOpenAI``, each inside a
:func:`~llm_assets.http.attribution.billed_to` scope naming its partition's usage
counter, so each partition's usage is metered from its own HTTP responses. Retries with
backoff, honouring ``Retry-After``, are the OpenAI SDK's own (``max_retries``). In
``RequestMode.BATCH`` the rest go through the Batch API instead
(:class:`~llm_assets.batch.runner.BatchRunner`): same rows, same usage keys, half the price.

Example:
    >>> engine = Engine(openai_resource.session, context)  # doctest: +SKIP
    >>> messages = ({"role": "user", "content": "Tea?"},)
    >>> rows = engine.chat([ChatRequest("Picard", 0, "Tea?", messages, {"model": "gpt-4o-mini"})])  # doctest: +SKIP
"""

import asyncio
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg
import openai
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from llm_assets.accounting.governance import REFUSAL_CODE
from llm_assets.accounting.usage import Usage
from llm_assets.batch.runner import BatchRunner
from llm_assets.batch.settings import RequestMode
from llm_assets.cache import CacheMode
from llm_assets.engine.calls import (
    MALFORMED,
    Call,
    ErrorPolicy,
    GovernanceError,
    HookError,
    LLMRequestError,
    MalformedResponseError,
)
from llm_assets.engine.chat import ChatRequest, Translate, chat_calls
from llm_assets.engine.embeddings import (
    MAX_EMBEDDING_BATCH_TOKENS,
    MAX_EMBEDDING_INPUTS,
    EmbeddingPlan,
    EmbeddingResult,
)
from llm_assets.engine.progress import Progress
from llm_assets.engine.rows import AnswerRow
from llm_assets.engine.structured import INVALID_OUTPUT, InvalidOutputError, style_hint
from llm_assets.http.attribution import billed_to
from llm_assets.http.pools import httpx, loop_factory
from llm_assets.redaction import mask_secrets, redact
from llm_assets.session import RunSession

if TYPE_CHECKING:
    from llm_assets.resource import OpenAIResource

T = TypeVar("T")


class Engine:
    """Runs chat and embedding requests for one asset of one step.

    Args:
        session: the resource's session (clients, cache, limits, ledger), or the
            :class:`~llm_assets.OpenAIResource` itself.
        context: the asset's execution context; usage lands on its asset, per partition.
        max_concurrency: requests in flight at once (defaults to the resource's).
        cache: how to use the request cache (default: answer from it, store new answers).
        on_error: what a request that still fails after retries does.
        mode: LIVE (send each request) or BATCH (through the Batch API; see the resource's
            ``batch`` settings).
        max_parse_retries: times a structured answer that does not validate is asked for
            again (live mode; each attempt metered, counted as ``openai.parse_retries``).
    """

    def __init__(
        self,
        session: "RunSession | OpenAIResource",
        context: dg.AssetExecutionContext,
        *,
        max_concurrency: int | None = None,
        cache: CacheMode = CacheMode.USE,
        on_error: ErrorPolicy = ErrorPolicy.FAIL,
        mode: RequestMode = RequestMode.LIVE,
        max_parse_retries: int = 2,
    ) -> None:
        self.session = session if isinstance(session, RunSession) else session.session
        self.context = context
        self.max_concurrency = max_concurrency or self.session.max_concurrency
        self.cache = self.session.cache_mode(cache)
        self.on_error = on_error
        self.mode = RequestMode(mode)
        self.max_parse_retries = max_parse_retries
        self.seconds = 0.0  # wall time of the last batch of requests

    def chat(self, requests: Sequence[ChatRequest], translate: Translate | None = None) -> list[AnswerRow]:
        """Answer every request; one row per request, in order (``translate`` may rewrite
        each row from the response body: a translator's ``get_record``)."""
        return self.run("chat requests", chat_calls(requests, translate), len(requests))

    def embed(
        self,
        texts: Mapping[str | None, Sequence[str]],
        params: Mapping[str, Any],
        batch_size: int = MAX_EMBEDDING_INPUTS,
        max_batch_tokens: int = MAX_EMBEDDING_BATCH_TOKENS,
    ) -> dict[str | None, EmbeddingResult]:
        """Embed each partition's texts in as few requests as the limits allow (at most
        ``batch_size`` inputs and ``max_batch_tokens`` estimated tokens each), order kept."""
        plan = EmbeddingPlan(texts, params, batch_size, max_batch_tokens)
        return plan.combine(self.run("embedded texts", plan.calls(), plan.items))

    def run(self, what: str, calls: Sequence[Call[T]], items: int) -> list[T]:
        """Send ``calls`` (cache hits first, without sending); results in order."""
        if not calls:
            return []
        started = time.perf_counter()
        try:
            with ExitStack() as blocks, asyncio.Runner(loop_factory=loop_factory()) as runner:
                usages = {
                    pk: blocks.enter_context(self.session.metered(self.context, partition_key=pk))
                    for pk in dict.fromkeys(call.partition_key for call in calls)
                }
                progress = Progress(self.context, what, items, list(usages.values()))
                results: list[Any] = [None] * len(calls)
                keys = self._cache_keys(calls)
                pending = runner.run(self._answer_from_cache(calls, keys, usages, results, progress))
                if self.mode is RequestMode.BATCH:  # polls in this thread: a termination reaches it
                    batch = BatchRunner(
                        self.session, self.context, self.session.batch, self.on_error, self._text, self.cache.reads
                    )
                    batch.run(calls, pending, keys, usages, results)
                elif pending:
                    runner.run(self._send(calls, pending, usages, results, progress))
                return results
        finally:
            self.seconds = time.perf_counter() - started

    def _cache_keys(self, calls: Sequence[Call[Any]]) -> list[str | None]:
        """The cache keys of ``calls`` where the run reads them; in batch mode always (a
        batch's answers are paid for: they are stored whatever the cache mode)."""
        if self.cache.reads or self.mode is RequestMode.BATCH:
            return [self.session.cache_keys.key(call.endpoint, call.body) for call in calls]
        return [None] * len(calls)

    async def _send(
        self,
        calls: Sequence[Call[T]],
        pending: Sequence[int],
        usages: dict[str | None, Usage],
        results: list[Any],
        progress: Progress,
    ) -> None:
        """Send ``calls[i]`` for ``i`` in ``pending`` concurrently, results into ``results``."""
        errors: list[LLMRequestError] = []
        in_flight = asyncio.Semaphore(self.max_concurrency)
        async with self.session.async_client(None, self.cache) as client:

            async def send(index: int) -> None:
                call = calls[index]
                async with in_flight:
                    if errors:  # after a failure nothing new is sent; what is in flight finishes
                        return
                    usage = usages[call.partition_key]
                    with billed_to(usage, looked_up=self.cache.reads):
                        try:
                            outcome = await self._outcome(client, call, usage)
                        except Exception as error:  # user code on the path (a translator): stop, don't cancel
                            outcome = error
                if isinstance(outcome, Exception):  # what is in flight finishes (and is cached) first
                    errors.append(outcome)
                    return
                results[index] = outcome
                progress.step(call.items)

            await asyncio.gather(*(send(index) for index in pending))
        if errors:
            raise errors[0]

    async def _answer_from_cache(
        self,
        calls: Sequence[Call[T]],
        keys: Sequence[str | None],
        usages: dict[str | None, Usage],
        results: list[Any],
        progress: Progress,
    ) -> list[int]:
        """Fill ``results`` from the cache (one batch read); returns the indices to send."""
        if not self.cache.reads:
            return list(range(len(calls)))
        answers = await asyncio.to_thread(self.session.cached, keys, [(call.endpoint, call.body) for call in calls])
        pending = []
        for index, (call, key, answer) in enumerate(zip(calls, keys, answers, strict=True)):
            if answer is not None:
                try:
                    results[index] = call.read(answer.payload, True, 0.0)
                except HookError:
                    raise
                except MALFORMED as error:  # damaged in a way only the reader sees: ask again
                    self.session.discard(key, f"{type(error).__name__}: {error}")
                else:
                    usages[call.partition_key].add_cache_hit(answer.model)
                    progress.step(call.items)
                    continue
            pending.append(index)
        return pending

    async def _outcome(self, client: openai.AsyncOpenAI, call: Call[T], usage: Usage) -> T | LLMRequestError:
        """The call's result, a recorded failure, or the error that stops the run."""
        try:
            return await self._send_one(client, call, usage)
        except LLMRequestError as error:
            if self.on_error is ErrorPolicy.FAIL or call.failed is None or isinstance(error, GovernanceError):
                return error
            self.context.log.warning(str(error))
            return call.failed(error.recorded)

    async def _send_one(self, client: openai.AsyncOpenAI, call: Call[T], usage: Usage) -> T:
        """One call, asked again while its structured answer does not validate."""
        for attempt in range(self.max_parse_retries + 1):
            try:
                return await self._send_once(client, call, usage)
            except InvalidOutputError as error:
                if attempt == self.max_parse_retries or not error.retry:
                    why = f"{INVALID_OUTPUT} after {attempt + 1} attempt(s): the answer {self._text(str(error))}"
                    raise LLMRequestError(f"Request for {self._text(call.description)} failed: {why}", why) from None
                usage.add_parse_retry()
        raise AssertionError("unreachable")

    async def _send_once(self, client: openai.AsyncOpenAI, call: Call[T], usage: Usage) -> T:
        """One call, with the SDK's retries for HTTP and connection errors and tenacity's
        (same count, exponential backoff with jitter) for malformed 2xx bodies."""

        async def attempt() -> T:
            sent = time.perf_counter()
            response = await client.post(call.endpoint, cast_to=httpx.Response, body=call.body)
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):  # the transport counted this failed attempt
                raise MalformedResponseError("malformed response body (not a JSON object)")
            try:
                return call.read(body, False, time.perf_counter() - sent)
            except (HookError, InvalidOutputError):
                raise
            except MALFORMED as error:
                usage.add_failed_attempt("malformed")
                raise MalformedResponseError(f"malformed response body ({type(error).__name__}: {error})") from error

        try:
            try:
                return await attempt()
            except MalformedResponseError:
                if self.session.max_retries == 0:
                    raise
            retrying = AsyncRetrying(  # only built on the rare malformed body
                retry=retry_if_exception_type(MalformedResponseError),
                stop=stop_after_attempt(self.session.max_retries),
                wait=wait_exponential_jitter(multiplier=0.5, max=8),
                reraise=True,
            )
            return await retrying(attempt)
        except openai.APIStatusError as error:
            if isinstance(error.body, dict) and error.body.get("code") == REFUSAL_CODE:
                raise GovernanceError(
                    f"Request for {self._text(call.description)} was not sent: {error.body['message']}"
                ) from None
            raise LLMRequestError(self._failure(call, error, client)) from None
        except (openai.OpenAIError, MalformedResponseError) as error:
            raise LLMRequestError(self._failure(call, error, client)) from None
        except UnicodeEncodeError as error:  # the factories check their texts; a translator may not
            raise LLMRequestError(
                f"Request for {self._text(call.description)} holds text that can't be sent "
                f"({error.reason} at {error.start}): clean it, e.g. with .encode('utf-8', 'replace').decode()."
            ) from None

    def _failure(self, call: Call[Any], error: BaseException, client: openai.AsyncOpenAI) -> str:
        """The server's own message for an API error, else the error; secrets masked (a
        server may echo the key it was sent)."""
        message = (
            f"HTTP {error.status_code}: {error.message}" if isinstance(error, openai.APIStatusError) else str(error)
        )
        hint = style_hint(call.body, message) if isinstance(error, openai.APIStatusError) else ""
        return f"Request for {self._text(call.description)} failed: {mask_secrets(message, client.api_key)}{hint}"

    def _text(self, text: str) -> str:
        """Text about prompts as the library may log it (redacted when asked)."""
        return redact(text) if self.session.redact_text else text
