"""Submitting a batch so that it is never paid twice: the budget reserved first, then
record, upload, record, ``create``, record (``llm_assets.batch.records``), and a lost
``create`` answer looked for by fingerprint before it is retried.

Examples:
    >>> submitter = Submitter(governor, keys, context, BatchSettings(), store)  # doctest: +SKIP
    >>> job = submitter.submit(client, lines, part=1, parts=1)  # doctest: +SKIP
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dagster as dg
import openai
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from llm_assets.accounting.governance import Governor
from llm_assets.accounting.limits import request_estimate
from llm_assets.batch.lines import API_PREFIX, BatchLine, fingerprint
from llm_assets.batch.outcome import BatchOutcome
from llm_assets.batch.records import FINGERPRINT, Submission, SubmissionStore
from llm_assets.batch.settings import BatchSettings
from llm_assets.cache.keys import CacheKeys
from llm_assets.calls import Call
from llm_assets.errors import ConfigurationError, GovernanceError

DONE = ("completed", "failed", "expired", "cancelled")
#: Failures of ``batches.create`` that are retried (as the SDK would), after a lookup.
_RETRIED = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError, openai.ConflictError)


@dataclass
class Job:
    """A batch being waited for: its record and its latest state."""

    record: Submission
    batch: Any  # openai.types.Batch


class Submitter:
    """Submits one materialization's new lines (see the module docstring), and knows the
    batches it created, for a termination to cancel."""

    def __init__(
        self,
        governor: Governor,
        keys: CacheKeys,
        context: dg.AssetExecutionContext,
        settings: BatchSettings,
        store: SubmissionStore,
        max_retries: int = 2,
    ) -> None:
        self.governor, self.keys, self.context, self.settings, self.store = governor, keys, context, settings, store
        self.max_retries = max_retries
        self.asset = context.asset_key.to_user_string()
        self.backend = keys.identity
        self.created: list[Job] = []
        self.creating: Submission | None = None  # recorded, its create maybe sent, its id not yet known

    def reserve(self, calls: Sequence[Call[Any]], lines: Sequence[BatchLine], outcome: BatchOutcome) -> None:
        """Reserve every new line's estimate with the governor at once, or refuse the lot."""
        if not self.governor.active:
            return
        models = [calls[line.index].body.get("model") for line in lines]
        estimates = [request_estimate(line.data, calls[line.index].body) for line in lines]
        reason = self.governor.refusal_of_all(list(zip(models, estimates, strict=True)))
        if reason is not None:
            raise GovernanceError(f"The batch was not submitted: {reason}")
        outcome.estimates.update((line.custom_id, estimate) for line, estimate in zip(lines, estimates, strict=True))

    def submit(self, client: openai.OpenAI, chunk: list[BatchLine], part: int, parts: int) -> Job:
        """Record, upload, record, create, record: a crash at any point leaves a record
        that the next attempt re-attaches through."""
        endpoint = API_PREFIX + chunk[0].endpoint
        record = Submission(
            fingerprint(chunk),
            self.asset,
            endpoint,
            {line.custom_id: [line.cache_key, line.partition_key] for line in chunk},
            self.context.run.run_id,
            backend=self.backend,
        )
        written = self.store.written_at(record)
        if written is not None:  # a damaged record of the same requests: was its batch created?
            since = written - 2 * 86_400  # rewritten (batch id, cancel) up to a completion window after create
            found = self.store.find_batch(client, replace(record, created=since))
            if found is not None:
                self.context.log.warning(f"Re-attached to batch {found.id} through its fingerprint (damaged record).")
                return Job(record, found)
        self.store.save(record)
        jsonl = (f"{record.fingerprint[:16]}.jsonl", b"".join(line.data for line in chunk))
        upload = self.api(lambda: client.files.create(file=jsonl, purpose="batch"), "/files")
        record.input_file_id = upload.id
        self.store.save(record)
        metadata = {
            FINGERPRINT: record.fingerprint,
            "llm_assets_asset": self.asset[:512],
            "llm_assets_partitions": record.span[:512],
            "llm_assets_part": f"{part}/{parts}",
            "dagster_run_id": self.context.run.run_id,
        }
        self.creating = record
        batch = self.api(lambda: self._create(client, record, upload.id, metadata), "/batches")
        job = Job(record, batch)
        self.created.append(job)  # first: a termination from here on cancels it
        self.creating = None
        record.batch_id = batch.id
        self.store.save(record)
        self.context.log.info(
            f"Submitted batch {batch.id} ({part}/{parts}): {len(chunk)} request{'s' * (len(chunk) > 1)} of {self.asset}"
            f"{' for ' + record.span if record.span else ''}."
        )
        return job

    def _create(self, client: openai.OpenAI, record: Submission, file_id: str, metadata: dict[str, str]) -> Any:
        """``batches.create``, retried like the SDK would, except that before each retry the
        batch is looked for by its fingerprint: a create whose answer was lost (a 502, a
        timeout) may have made it, and must not be paid twice."""
        once = client.with_options(max_retries=0)
        sent = False

        def create() -> Any:
            nonlocal sent
            if sent and record.batch_id is None and (found := self.store.find_batch(client, record)):
                return found
            sent = True
            return once.batches.create(
                input_file_id=file_id,
                endpoint=record.endpoint,  # type: ignore[arg-type]
                completion_window=self.settings.completion_window,  # type: ignore[arg-type]
                metadata=metadata,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(_RETRIED),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential_jitter(multiplier=0.5, max=8),
            reraise=True,
        )
        return retrying(create)

    def api(self, request: Callable[[], Any], path: str) -> Any:
        """One Files/Batches call; a server without the Batch API is one clear error."""
        try:
            return request()
        except openai.APIStatusError as error:
            if error.status_code not in (404, 405, 501):
                raise
            raise ConfigurationError(
                f"The server at {self.keys.base_url} has no Batch API (HTTP {error.status_code} on "
                f"{path}): use run config mode: LIVE for it."
            ) from None

    # -- termination ------------------------------------------------------------------------

    def unfinished(self, client: openai.OpenAI) -> list[Job]:
        """The unfinished batches this step created, including one whose ``create`` was
        interrupted before it answered (found through its fingerprint)."""
        jobs = [job for job in self.created if job.batch.status not in DONE]
        if self.creating is not None:
            batch = self.store.find_batch(client, self.creating)
            if batch is not None and batch.status not in DONE:
                jobs.append(Job(self.creating, batch))
        return jobs
