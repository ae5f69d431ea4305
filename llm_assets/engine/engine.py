"""The one execution engine behind every factory: many requests, bounded concurrency,
the request cache, input order kept, usage per partition.

An ``Engine`` works for one asset of one step, through the resource's
``RunSession``. It first looks every call up in the request
cache in one batch (a re-run of unchanged inputs costs file reads, not requests), then
POSTs the rest, ``max_concurrency`` workers each taking the next call as theirs finishes,
through ``llm_assets.engine.sender`` (aiohttp directly by default, with the official
client's retry contract: same retried statuses, ``Retry-After``, backoff, ``max_retries``
and errors; every retry is in ``llm_assets.engine.retries``). The engine hands each
part only the session's pieces it uses: the gate, the answer store, the settings. Each
request is billed to its partition's usage counter, metered from its own HTTP response.
In ``RequestMode.BATCH`` the rest go through the Batch API instead
(``BatchRunner``): same rows, same usage keys, half the price.

Examples:
    >>> engine = Engine(openai_resource.session, context)  # doctest: +SKIP
    >>> messages = ({"role": "user", "content": "Tea?"},)
    >>> rows = engine.chat([ChatRequest("Picard", 0, "Tea?", messages, {"model": "gpt-4o-mini"})])  # doctest: +SKIP
"""

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, closing
from typing import Any, TypeVar

import dagster as dg
import openai

from llm_assets.accounting.usage import Usage
from llm_assets.batch.runner import BatchRunner
from llm_assets.batch.settings import RequestMode
from llm_assets.cache import CacheMode
from llm_assets.calls import MALFORMED, Call, ErrorPolicy
from llm_assets.engine.chat import ChatCalls, ChatRequest, Translate
from llm_assets.engine.embeddings import (
    MAX_EMBEDDING_BATCH_TOKENS,
    MAX_EMBEDDING_INPUTS,
    EmbeddingPlan,
    EmbeddingResult,
)
from llm_assets.engine.progress import Progress
from llm_assets.engine.results import OnPartition, Results
from llm_assets.engine.retries import RetryPolicy
from llm_assets.engine.rows import AnswerRow
from llm_assets.engine.sender import Poster, SDKPoster, Sender, SendPath
from llm_assets.errors import HookError
from llm_assets.http.contract import SDKContract
from llm_assets.http.direct import DirectClient
from llm_assets.redaction import redact
from llm_assets.session import RunSession

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where installed (less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class Engine:
    """Runs chat and embedding requests for one asset of one step.

    Args:
        session: the resource's session (``OpenAIResource(...).session``, or the resource
            itself): its gate, answer store and settings.
        context: the asset's execution context; usage lands on its asset, per partition.
        max_concurrency: requests in flight at once (defaults to the resource's).
        cache: how to use the request cache (default: answer from it, store new answers).
        on_error: what a request that still fails after retries does.
        mode: LIVE (send each request) or BATCH (through the Batch API; see the resource's
            ``batch`` settings).
        max_parse_retries: times a structured answer that does not validate is asked for
            again (live mode; each attempt metered, counted as ``openai.parse_retries``).
        path: what live requests go through: DIRECT (aiohttp, the SDK's retry contract,
            less CPU per request) or SDK (the official client's ``post``).
    """

    def __init__(
        self,
        session: Any,
        context: dg.AssetExecutionContext,
        *,
        max_concurrency: int | None = None,
        cache: CacheMode = CacheMode.USE,
        on_error: ErrorPolicy = ErrorPolicy.FAIL,
        mode: RequestMode = RequestMode.LIVE,
        max_parse_retries: int = 2,
        path: SendPath = SendPath.DIRECT,
    ) -> None:
        self.session: RunSession = session if isinstance(session, RunSession) else session.session
        self.context = context
        self.max_concurrency = max_concurrency or self.session.settings.max_concurrency
        self.cache = self.session.answers.mode(cache)
        self.on_error = on_error
        self.mode = RequestMode(mode)
        self.max_parse_retries = max_parse_retries
        self.path = SendPath(path)
        self.seconds = 0.0  # wall time of the last batch of requests

    def chat(
        self,
        requests: Sequence[ChatRequest],
        translate: Translate | None = None,
        on_partition: OnPartition[AnswerRow] | None = None,
    ) -> list[AnswerRow]:
        """Answer every request; one row per request, in order (``translate`` may rewrite
        each row from the response body: a translator's ``get_record``). With
        ``on_partition``, each partition's rows go to it as soon as they are all in, and
        are not kept (their places in the returned list are ``None``)."""
        partitions = [request.partition_key for request in requests]
        return self.run("chat requests", ChatCalls(requests, translate), len(requests), partitions, on_partition)

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

    def run(
        self,
        what: str,
        calls: Sequence[Call[T]],
        items: int,
        partitions: Sequence[str | None] | None = None,
        on_partition: OnPartition[T] | None = None,
    ) -> list[T]:
        """Send ``calls`` (cache hits first, without sending); results in order, or each
        partition's to ``on_partition`` as it completes (``partitions``: each call's
        partition key, given to spare building every call to read it)."""
        if not calls:
            return []
        started = time.perf_counter()
        partitions = [call.partition_key for call in calls] if partitions is None else partitions
        frozen = gc.get_freeze_count() == 0  # else someone else froze: leave it to them
        if frozen:
            gc.freeze()  # what lives before the run (Dagster's, the plan) is not rescanned by its collections
        try:
            with ExitStack() as blocks, asyncio.Runner(loop_factory=loop_factory()) as runner:
                usages = {
                    pk: blocks.enter_context(self.session.metered(self.context, partition_key=pk))
                    for pk in dict.fromkeys(partitions)
                }
                progress = Progress(self.context, what, items, list(usages.values()))
                results: Results[T] = Results(partitions, on_partition)
                keys = self._cache_keys(calls)
                pending = runner.run(self._answer_from_cache(calls, keys, usages, results, progress))
                if self.mode is RequestMode.BATCH:  # polls in this thread: a termination reaches it
                    self._batch_runner().run(calls, pending, keys, usages, results)
                elif pending:
                    runner.run(self._send(calls, pending, keys, usages, results, progress))
                return results.in_order()
        finally:
            if frozen:
                gc.unfreeze()
            self.seconds = time.perf_counter() - started

    def _cache_keys(self, calls: Sequence[Call[Any]]) -> list[str | None]:
        """The cache keys of ``calls`` where the run stores answers (``None``: not stored);
        in batch mode always (a batch's answers are paid for: stored whatever the cache mode)."""
        if self.cache.writes or self.mode is RequestMode.BATCH:
            return [self.session.answers.key(call.endpoint, call.body) for call in calls]
        return [None] * len(calls)

    def _batch_runner(self) -> BatchRunner:
        """What sends this run's requests in batch mode, given the session's parts."""
        session = self.session
        return BatchRunner(
            session.gate.governor,
            session.answers,
            lambda: closing(session.client(None)),
            self.context,
            session.settings.batch,
            self.on_error,
            self._text,
            reads=self.cache.reads,
            max_retries=session.settings.max_retries,
        )

    @asynccontextmanager
    async def _poster(self, contract: SDKContract) -> AsyncIterator[Poster]:
        """What this run's requests are posted through (see ``SendPath``)."""
        if self.path is SendPath.DIRECT:
            session = self.session
            async with DirectClient(contract, session.gate, session.answers, self.max_concurrency) as client:
                yield client
            return
        async with self.session.async_client(None, self.cache) as sdk:
            yield SDKPoster(sdk, looked_up=self.cache.reads)

    async def _send(
        self,
        calls: Sequence[Call[T]],
        pending: Sequence[int],
        keys: Sequence[str | None],
        usages: dict[str | None, Usage],
        results: Results[Any],
        progress: Progress,
    ) -> None:
        """Send ``calls[i]`` for ``i`` in ``pending``, ``max_concurrency`` at a time (one
        worker each, taking the next as it finishes), results into ``results``; ``keys``:
        their cache keys where already computed."""
        contract = SDKContract(openai.AsyncOpenAI(**self.session.client_kwargs))
        try:
            async with self._poster(contract) as poster:
                secret = self.session.client_kwargs.get("api_key")
                policy = RetryPolicy(contract, self.max_parse_retries)
                sender = Sender(poster, policy, self.on_error, self.context.log.warning, self._text, secret)
                errors: list[Exception] = []
                work = iter(pending)

                async def worker() -> None:
                    for index in work:
                        if errors:  # after a failure nothing new is sent; what is in flight finishes
                            return
                        call = calls[index]
                        try:
                            outcome = await sender.outcome(call, usages[call.partition_key], keys[index])
                            if not isinstance(outcome, Exception):
                                progress.step(call.items)
                                results[index] = outcome  # may complete a partition: its frame is built now
                                continue
                        except Exception as error:  # user code on the path (a translator, a frame): stop, don't cancel
                            outcome = error
                        errors.append(outcome)  # what is in flight finishes (and is cached) first
                        return

                await asyncio.gather(*(worker() for _ in range(min(self.max_concurrency, len(pending)))))
        finally:
            await contract.aclose()
        if errors:
            raise errors[0]

    async def _answer_from_cache(
        self,
        calls: Sequence[Call[T]],
        keys: Sequence[str | None],
        usages: dict[str | None, Usage],
        results: Results[Any],
        progress: Progress,
    ) -> list[int]:
        """Fill ``results`` from the cache (one batch read); returns the indices to send."""
        if not self.cache.reads:
            return list(range(len(calls)))
        requests = ((call.endpoint, call.body) for call in calls)  # each call built as it is read
        answers = await asyncio.to_thread(self.session.answers.cached, keys, requests)
        pending = []
        for index, (key, answer) in enumerate(zip(keys, answers, strict=True)):
            if answer is not None:
                call = calls[index]
                try:
                    result = call.read(answer.payload, cached=True, latency=0.0)
                except HookError:
                    raise
                except MALFORMED as error:  # damaged in a way only the reader sees: ask again
                    self.session.answers.discard(key, f"{type(error).__name__}: {error}")
                else:
                    usages[call.partition_key].add_cache_hit(answer.model)
                    progress.step(call.items)
                    results[index] = result  # may complete a partition: its frame is built now
                    continue
            pending.append(index)
        return pending

    def _text(self, text: str) -> str:
        """Text about prompts as the library may log it (redacted when asked)."""
        return redact(text) if self.session.settings.redact_text else text
