"""Batch mode of the engine: submit, re-attach, wait, collect, never pay twice.

``BatchRunner`` takes the requests the request cache could not answer and runs them
through the OpenAI Batch API: it first re-attaches to the batches earlier attempts already
submitted for them (``llm_assets.batch.records``), submits only what no batch covers
(JSONL files split at the API's limits, each recorded before and after
``batches.create``), then polls until every batch is done and maps the files back
(``llm_assets.batch.outcome``). A terminated step cancels the batches it created and
keeps what they completed.

Examples:
    >>> runner = BatchRunner(governor, answers, connect, context, settings, ErrorPolicy.FAIL, str)  # doctest: +SKIP
    >>> runner.run(calls, pending, cache_keys, usages, results)  # doctest: +SKIP
"""

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import dagster as dg
import openai

from llm_assets.accounting.governance import Governor
from llm_assets.accounting.usage import Usage
from llm_assets.batch.lines import batch_lines, custom_ids, split_lines
from llm_assets.batch.outcome import BatchOutcome, batch_problem
from llm_assets.batch.records import Submission, SubmissionStore
from llm_assets.batch.settings import BatchSettings
from llm_assets.batch.submit import DONE, Job, Submitter
from llm_assets.cache.store import AnswerStore
from llm_assets.calls import Call, ErrorPolicy
from llm_assets.errors import ConfigurationError, LLMRequestError


class StillRunningError(LLMRequestError):
    """The batches outlived ``max_wait_seconds``; re-materializing collects them."""


class BatchRunner:
    """Runs one materialization's requests through the Batch API (see the module docstring).

    Args:
        governor: reserves every new line's estimate at once, and settles each answer.
        answers: where answers are stored; its cache location keeps the batch records.
        connect: opens the client the Files and Batches API calls go through (metered).
        context, settings, on_error: the asset's context, the batch settings, and what a
            failed line does; ``describe``: text about prompts as it may be logged.
        reads: whether the run reads the cache (else a batch already collected is asked again).
        max_retries: retries of a ``batches.create`` that failed on the way.
    """

    def __init__(
        self,
        governor: Governor,
        answers: AnswerStore,
        connect: Callable[[], AbstractContextManager[openai.OpenAI]],
        context: dg.AssetExecutionContext,
        settings: BatchSettings,
        on_error: ErrorPolicy,
        describe: Callable[[str], str],
        *,
        reads: bool = True,
        max_retries: int = 2,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if answers.files is None:
            raise ConfigurationError(
                "Batch mode keeps its submissions and results next to the request cache: set "
                "OpenAIResource(cache=True) (the default) and a writable cache_dir, or use run config mode: LIVE."
            )
        self.governor, self.answers, self.connect = governor, answers, connect
        self.context, self.settings, self.on_error = context, settings, on_error
        self.describe, self.sleep, self.clock, self.reads, self.max_retries = describe, sleep, clock, reads, max_retries
        self.store = SubmissionStore(answers.files.root)
        self.asset = context.asset_key.to_user_string()
        self.backend = answers.keys.identity  # records of another backend are not this run's to touch

    def run(
        self,
        calls: Sequence[Call[Any]],
        pending: Sequence[int],
        keys: Sequence[str | None],
        usages: Mapping[str | None, Usage],
        results: list[Any],
    ) -> None:
        """Answer ``calls[i]`` for ``i`` in ``pending`` into ``results`` (and collect the
        earlier batches of this asset's requests, also when the cache answered them all)."""
        records = [r for r in self.store.open(self.asset) if r.backend in ("", self.backend)]
        if not pending and not records:
            return
        ids = custom_ids(self.asset, calls)
        outcome = BatchOutcome(
            self.governor, self.answers, calls, batch_lines(ids, calls, pending, keys), usages, results, ids
        )
        submitter = Submitter(
            self.governor, self.answers.keys, self.context, self.settings, self.store, self.max_retries
        )
        with self.connect() as client:
            try:
                submitter.api(lambda: client.batches.list(limit=1), "/batches")  # is there a Batch API?
                jobs = self._attach(client, records, outcome)
                covered = {cid for job in jobs for cid in job.record.lines}
                new = [line for line in outcome.open if line.custom_id not in covered]
                submitter.reserve(calls, new, outcome)
                chunks = split_lines(new, self.settings)
                jobs += [submitter.submit(client, chunk, n, len(chunks)) for n, chunk in enumerate(chunks, 1)]
                self._wait(client, jobs, outcome)
            except (KeyboardInterrupt, SystemExit, dg.DagsterExecutionInterruptedError):  # the step is terminated
                self._cancel(client, submitter.unfinished(client), outcome)
                raise
            finally:
                outcome.release()
        outcome.finish(self.on_error, self.describe)

    # -- re-attaching -------------------------------------------------------------------------

    def _attach(self, client: openai.OpenAI, records: list[Submission], outcome: BatchOutcome) -> list[Job]:
        """The jobs of earlier records that cover requests of this run, still running; the
        ones that finished meanwhile are collected now (their missing lines go out again)."""
        jobs = []
        for record in records:
            if not any(cid in outcome.known for cid in record.lines):
                continue  # another request set's batch: its own re-run (or the sensor) collects it
            batch = self.store.find_batch(client, record)
            if batch is None:
                self.context.log.warning(
                    f"The batch of record {record.fingerprint[:12]} is not on the server: "
                    "submitting its requests again."
                )
                self.store.remove(record)
                continue
            job = Job(record, batch)
            self.context.log.info(
                f"Re-attached to batch {batch.id} ({batch.status}), submitted by run {record.run_id}."
            )
            if record.cancel_requested:  # the run that made it was terminated: let the cancel finish
                self._wait(client, [job], outcome)
            elif batch.status in DONE:
                self._collect(client, job, outcome, waited=False)
            else:
                jobs.append(job)
        return jobs

    # -- waiting and collecting -------------------------------------------------------------

    def _wait(self, client: openai.OpenAI, jobs: list[Job], outcome: BatchOutcome) -> None:
        """Poll until every job is done (collecting each as it finishes), or fail after
        ``max_wait_seconds``."""
        started, delay = self.clock(), self.settings.poll_seconds
        waiting = list(jobs)
        while True:
            for job in [job for job in waiting if job.batch.status in DONE]:
                waiting.remove(job)
                self._collect(client, job, outcome, waited=True)
            if not waiting:
                return
            elapsed = self.clock() - started
            if elapsed >= self.settings.max_wait_seconds:
                raise StillRunningError("\n".join([*outcome.problems, self._still_running(waiting, elapsed)]))
            self.sleep(min(delay, max(0.0, self.settings.max_wait_seconds - elapsed)))
            delay = min(delay * 1.5, self.settings.max_poll_seconds)
            for job in waiting:
                job.batch = client.batches.retrieve(job.batch.id)
            self._progress(jobs, self.clock() - started)

    def _collect(self, client: openai.OpenAI, job: Job, outcome: BatchOutcome, waited: bool) -> None:
        """Read a finished batch's files into ``outcome``. A batch this step waited for that
        did not complete is a problem (one found finished is logged, and what it did not
        answer is submitted again). Then its record goes, unless it answered requests of
        partitions this run does not materialize: those stay for the run that does."""
        batch, record = job.batch, job.record
        unclaimed: set[str] = set()
        try:
            if batch.output_file_id:
                with client.files.with_streaming_response.content(batch.output_file_id) as response:
                    unclaimed = outcome.read_output(response.iter_lines(), record)
            if batch.error_file_id:
                with client.files.with_streaming_response.content(batch.error_file_id) as response:
                    outcome.read_errors(response.iter_lines(), record)
        except openai.NotFoundError:  # the server deleted its files: what they held goes out again
            gone = f"The files of batch {batch.id} are gone from the server"
            if waited:
                outcome.problems.append(f"{gone}: re-materializing submits its requests again.")
            else:
                self.context.log.warning(f"{gone}: submitting its requests again.")
            unclaimed = set()
        problem = batch_problem(batch, self.reads)
        if problem and waited and not record.cancel_requested:
            outcome.problems.append(problem)
        elif problem:
            self.context.log.warning(f"{problem.split(':')[0]}; its other requests are submitted again.")
        outcome.flush()  # the record changes only once its answers are safe in the cache
        remaining = {cid: record.lines[cid] for cid in unclaimed if cid in record.lines}
        if remaining:
            record.lines = remaining
            self.store.save(record)
        else:
            self.store.remove(record)

    def _cancel(self, client: openai.OpenAI, jobs: list[Job], outcome: BatchOutcome) -> None:
        """Cancel ``jobs`` (the step is being terminated); the records stay, so the next
        attempt collects what they completed and submits the rest."""
        for job in jobs:
            job.record.cancel_requested = True
            self.store.save(job.record)
            try:
                job.batch = client.batches.cancel(job.batch.id)
                self.context.log.warning(f"Cancelled batch {job.batch.id}: the step was terminated.")
                if job.batch.status in DONE:
                    self._collect(client, job, outcome, waited=False)
            except Exception as error:  # best effort: the step is going down anyway
                self.context.log.warning(f"Could not cancel batch {job.batch.id}: {error}")

    def _progress(self, jobs: list[Job], elapsed: float) -> None:
        counts = [job.batch.request_counts for job in jobs if job.batch.request_counts]
        total = sum(len(job.record.lines) for job in jobs)
        done, failed = sum(c.completed for c in counts), sum(c.failed for c in counts)
        states = ", ".join(f"{job.batch.id} {job.batch.status}" for job in jobs[:5])
        self.context.log.info(
            f"Batch API: {done}/{total} requests completed, {failed} failed, {elapsed:.0f} s elapsed ({states})."
        )

    def _still_running(self, jobs: list[Job], elapsed: float) -> str:
        ids = ", ".join(job.batch.id for job in jobs)
        return (
            f"Batch {ids} of {self.asset} is still running after {elapsed:.0f} s (BatchSettings.max_wait_seconds "
            f"{self.settings.max_wait_seconds:g}). Nothing is lost: re-materializing (or build_batch_sensor) "
            "collects it without submitting again."
        )
