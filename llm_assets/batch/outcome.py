"""What a batch answered, mapped back to the requests of a materialization.

``BatchOutcome`` reads output and error files line by line: each answer is checked,
stored in the request cache (so nothing is paid twice and a later live run of the same
request costs nothing), metered at Batch API prices on its partition's usage, and turned
into the request's result; each failed line becomes that request's failure. What is left
is decided by ``BatchOutcome.finish``: the rows, or one error naming what failed.

Examples:
    >>> outcome = BatchOutcome(governor, answers, calls, lines, usages, results)  # doctest: +SKIP
    >>> outcome.read_output(client.files.content(batch.output_file_id).iter_lines(), record)  # doctest: +SKIP
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import dagster as dg

from llm_assets.accounting.governance import Governor
from llm_assets.accounting.usage import Usage
from llm_assets.batch.lines import BatchLine
from llm_assets.batch.records import Submission
from llm_assets.cache.answers import answer_problem
from llm_assets.cache.store import AnswerStore
from llm_assets.calls import MALFORMED, Call, ErrorPolicy
from llm_assets.errors import INVALID_OUTPUT, HookError, InvalidOutputError, LLMRequestError

_SHOWN = 5  # failed rows named in an error
_WRITERS = 8  # threads storing cache entries (file I/O releases the GIL)
_CHUNK = 256  # entries each thread task stores
#: Error codes of requests the Batch API never ran (OpenAI lists them in the error file).
_NOT_RUN = ("batch_expired", "batch_cancelled")


def batch_problem(batch: Any, reads: bool) -> str | None:
    """What went wrong with a finished batch (``openai.types.Batch``), if anything;
    ``reads``: whether a re-run reads the request cache."""
    counts = batch.request_counts
    done = f"{counts.completed} of {counts.total} requests completed" if counts else "its completed requests"
    again = "re-materializing submits only the others" + ("" if reads else " (with run config cache: USE)")
    if batch.status == "failed":
        errors = (batch.errors.data if batch.errors else None) or []
        reasons = "; ".join(f"line {e.line}: {e.message}" if e.line is not None else str(e.message) for e in errors)
        return f"Batch {batch.id} failed: {reasons or 'no reason given'}."
    if batch.status in ("expired", "cancelled"):
        return f"Batch {batch.id} {batch.status} with {done}: those are kept (cached), and {again}."
    return None


def _message(body: Any) -> str:
    """The error message of an error response body, whatever its shape."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    return json.dumps(body)[:300]


class BatchOutcome:
    """The results of the requests ``lines`` stands for (``calls[line.index]``), filled in
    ``results`` as their batches' files are read; ``ids`` are the ``custom_id`` of all
    ``calls`` (those the cache answered too)."""

    def __init__(
        self,
        governor: Governor,
        answers: AnswerStore,
        calls: Sequence[Call[Any]],
        lines: Sequence[BatchLine],
        usages: Mapping[str | None, Usage],
        results: list[Any],
        ids: Sequence[str] = (),
    ) -> None:
        self.governor, self.answers, self.calls, self.usages, self.results = governor, answers, calls, usages, results
        self.wanted = {line.custom_id: line for line in lines}
        self.known = set(ids) | set(self.wanted)  # every request of the run, the cached ones too
        self.answered: set[str] = set()
        self.failures: dict[str, str] = {}
        self.invalid: set[str] = set()  # lines whose answer did not validate (recorded as such)
        self.problems: list[str] = []  # whole batches that failed, expired or were cancelled
        self.estimates: dict[str, int] = {}  # governor reservations of the lines this run submitted
        self._writers = ThreadPoolExecutor(_WRITERS, thread_name_prefix="llm-assets-cache")
        self._writes: list[Future] = []
        self._unwritten: list[tuple[str, bytes, Usage]] = []

    @property
    def open(self) -> list[BatchLine]:
        """The lines neither answered nor failed yet."""
        return [line for cid, line in self.wanted.items() if cid not in self.answered and cid not in self.failures]

    def read_output(self, lines: Iterable[str], record: Submission) -> set[str]:
        """Map each output line (``{"custom_id", "response": {"status_code", "body"}}``);
        returns the ids answered for requests this run does not make (see ``_answer``)."""
        unclaimed: set[str] = set()
        for text in lines:
            line = self._parse(text, record)
            if line is None:
                continue
            cid, response = line.get("custom_id"), line.get("response")
            status = response.get("status_code") if isinstance(response, dict) else None
            body = response.get("body") if isinstance(response, dict) else None
            if status == 200 and isinstance(body, dict):
                if self._answer(cid, body) is False:
                    unclaimed.add(cid)
            else:
                self._fail(cid, f"HTTP {status}: {_message(body)}", str(status))
        return unclaimed

    def read_errors(self, lines: Iterable[str], record: Submission) -> None:
        """Map each error-file line (``{"custom_id", "error": {"code", "message"}}``, or a
        ``response`` with an error status). Requests the Batch API never ran (the batch
        expired or was cancelled first) stay open: they are submitted again."""
        for text in lines:
            line = self._parse(text, record)
            if line is None:
                continue
            cid, error, response = line.get("custom_id"), line.get("error"), line.get("response")
            status = response.get("status_code") if isinstance(response, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            if status is None and code in _NOT_RUN:
                continue
            if status is None:  # refused by the Batch API itself, not by the endpoint
                self._fail(cid, f"{code}: {_message({'error': error})}", "batch_error")
            else:
                self._fail(cid, f"HTTP {status}: {_message(response.get('body'))}", str(status))

    def _parse(self, text: str, record: Submission) -> dict[str, Any] | None:
        """One JSON Lines object, or ``None`` (a blank line, or a problem noted)."""
        if not text.strip():
            return None
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            self.problems.append(f"A line of batch {record.batch_id}'s files is not a JSON object: {text[:200]!r}")
            return None
        return line

    def _answer(self, cid: Any, body: dict[str, Any]) -> bool:
        """Meter, check, read and store one answer; ``False`` when this run does not make
        its request (another run's partitions: left in the record, for the run that
        materializes them to collect and account for)."""
        line = self.wanted.get(cid) if isinstance(cid, str) else None
        if line is None:  # answered from the cache this run (its record can go), or another run's
            return cid in self.known
        call = self.calls[line.index]
        served, reported = body.get("model"), body.get("usage")
        usage = self.usages.get(line.partition_key)
        if usage is not None:  # billed, whatever the body holds
            usage.add_response(served, reported, batch=True)
        requested = call.body.get("model")
        self.governor.settle(requested, self.estimates.pop(cid, 0), reported, served, batch=True)
        if cid in self.answered:
            return True
        problem = answer_problem(line.endpoint, body, call.body)
        try:
            if problem is not None:
                raise ValueError(problem)
            row = call.read(body, cached=False, latency=None)
        except HookError:
            raise
        except InvalidOutputError as error:  # not asked again in a batch: a batch answers once
            self._fail(cid, f"{INVALID_OUTPUT}: the answer {error}", "invalid_output")
            self.invalid.add(cid)
            return True
        except MALFORMED as error:
            self._fail(cid, f"malformed answer ({type(error).__name__}: {error})", "malformed")
            return True
        self.answered.add(cid)
        self.failures.pop(cid, None)
        self.invalid.discard(cid)
        if line.cache_key:  # paid for: stored before the batch's record goes
            self._unwritten.append((line.cache_key, json.dumps(body, ensure_ascii=False).encode(), usage or Usage()))
            if len(self._unwritten) >= _CHUNK:
                self._write()
        self.results[line.index] = row  # may complete a partition: its frame is built now
        return True

    def _write(self) -> None:
        """Hand the answers read so far to a writer thread."""
        if not self._unwritten:
            return

        def store(entries: list[tuple[str, bytes, Usage]]) -> None:
            for key, answer, usage in entries:
                self.answers.store(key, answer, usage, durable=False)

        self._writes.append(self._writers.submit(store, self._unwritten))
        self._unwritten = []

    def flush(self) -> None:
        """Wait until every answer read so far is stored in the request cache, durably."""
        self._write()
        for write in self._writes:
            write.result()
        if self._writes:
            self.answers.sync()
        self._writes.clear()

    def _fail(self, cid: Any, message: str, kind: str) -> None:
        line = self.wanted.get(cid) if isinstance(cid, str) else None
        if line is None or cid in self.answered:
            return
        self.failures[cid] = message
        usage = self.usages.get(line.partition_key)
        if usage is not None:
            usage.add_failed_attempt(kind)

    def release(self) -> None:
        """Store what was read, and give back the governor's reservations of lines that
        were never answered."""
        self.flush()
        self._writers.shutdown()
        for cid, estimate in self.estimates.items():
            line = self.wanted[cid]
            self.governor.settle(self.calls[line.index].body.get("model"), estimate, None, None, answered=False)
        self.estimates.clear()

    def finish(self, on_error: ErrorPolicy, describe: Any) -> None:
        """Fill in the failed rows (``on_error=RECORD``), or raise one error naming what failed."""
        for line in self.open:  # a line the server left out of both files
            self.failures[line.custom_id] = "the batch's output and error files have no line for it"
        if self.problems:
            raise LLMRequestError("\n".join(self.problems))
        if not self.failures:
            return
        failed = [(self.wanted[cid], message) for cid, message in self.failures.items()]
        failed.sort(key=lambda item: item[0].index)
        texts = [
            f"Request for {describe(self.calls[line.index].description)} failed: {message}" for line, message in failed
        ]
        if on_error is ErrorPolicy.RECORD and all(self.calls[line.index].failed for line, _ in failed):
            for (line, message), text in zip(failed, texts, strict=True):
                recorded = message if line.custom_id in self.invalid else text  # the row names its request
                self.results[line.index] = self.calls[line.index].failed(recorded)
            dg.get_dagster_logger("llm_assets").warning(f"{len(failed)} batch requests failed: {texts[0]} …")
            return
        raise LLMRequestError(
            f"{len(failed)} of {len(self.wanted)} batch requests failed (the answered ones are cached; "
            "re-materializing submits only the failed ones, or set run config on_error: RECORD): "
            + "; ".join(texts[:_SHOWN])
            + (" …" if len(texts) > _SHOWN else "")
        )
