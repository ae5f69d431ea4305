"""What a batch answered, mapped back to the requests of a materialization.

:class:`BatchOutcome` reads output and error files line by line: each answer is checked,
stored in the request cache (so nothing is paid twice and a later live run of the same
request costs nothing), metered at Batch API prices on its partition's usage, and turned
into the request's result; each failed line becomes that request's failure. What is left
is decided by :meth:`BatchOutcome.finish`: the rows, or one error naming what failed.

Example:
    >>> outcome = BatchOutcome(session, calls, lines, usages, results)  # doctest: +SKIP
    >>> outcome.read_output(client.files.content(batch.output_file_id).iter_lines(), record)  # doctest: +SKIP
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import dagster as dg

from llm_assets.accounting.usage import Usage
from llm_assets.batch.lines import API_PREFIX, BatchLine
from llm_assets.batch.records import Submission
from llm_assets.engine.calls import Call, ErrorPolicy, HookError, LLMRequestError
from llm_assets.http.answers import answer_problem

if TYPE_CHECKING:
    from llm_assets.session import RunSession

#: What a reader raises on a body that is JSON but not the endpoint's answer.
_MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError)
_SHOWN = 5  # failed rows named in an error
_WRITERS = 8  # threads storing cache entries (file I/O releases the GIL)
_CHUNK = 256  # entries each thread task stores


class BatchOutcome:
    """The results of the requests ``lines`` stands for (``calls[line.index]``), filled in
    ``results`` as their batches' files are read."""

    def __init__(
        self,
        session: "RunSession",
        calls: Sequence[Call[Any]],
        lines: Sequence[BatchLine],
        usages: Mapping[str | None, Usage],
        results: list[Any],
    ) -> None:
        self.session, self.calls, self.usages, self.results = session, calls, usages, results
        self.wanted = {line.custom_id: line for line in lines}
        self.answered: set[str] = set()
        self.failures: dict[str, str] = {}
        self.problems: list[str] = []  # whole batches that failed, expired or were cancelled
        self.estimates: dict[str, int] = {}  # governor reservations of the lines this run submitted
        self._writers = ThreadPoolExecutor(_WRITERS, thread_name_prefix="llm-assets-cache")
        self._writes: list[Future] = []
        self._unwritten: list[tuple[str, bytes, Usage]] = []

    @property
    def open(self) -> list[BatchLine]:
        """The lines neither answered nor failed yet."""
        return [line for cid, line in self.wanted.items() if cid not in self.answered and cid not in self.failures]

    def read_output(self, lines: Iterable[str], record: Submission) -> None:
        """Map each output line (``{"custom_id", "response": {"status_code", "body"}}``)."""
        for text in lines:
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                cid, response = line["custom_id"], line.get("response") or {}
                status, body = response.get("status_code"), response.get("body")
            except (ValueError, KeyError, TypeError, AttributeError):
                self.problems.append(f"An output line of batch {record.batch_id} is not JSON Lines: {text[:200]!r}")
                continue
            if status == 200 and isinstance(body, dict):
                self._answer(cid, body, record)
            else:
                message = (body or {}).get("error", {}).get("message") if isinstance(body, dict) else None
                self._fail(cid, f"HTTP {status}: {message or json.dumps(body)[:300]}", str(status))

    def read_errors(self, lines: Iterable[str]) -> None:
        """Map each error-file line (``{"custom_id", "error": {"code", "message"}}``)."""
        for text in lines:
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                cid, error = line.get("custom_id"), line.get("error") or {}
                response = line.get("response") or {}
                body = response.get("body") if isinstance(response, dict) else None
                if not error and isinstance(body, dict):
                    error = body.get("error") or {}
                status = response.get("status_code")
            except (ValueError, TypeError, AttributeError):
                self.problems.append(f"An error-file line is not JSON Lines: {text[:200]!r}")
                continue
            if status is None:  # refused by the Batch API itself, not the endpoint
                self._fail(cid, f"{error.get('code')}: {error.get('message')}", "batch_error")
            else:
                self._fail(cid, f"HTTP {status}: {error.get('message')}", str(status))

    def _answer(self, cid: str, body: dict[str, Any], record: Submission) -> None:
        key, partition = (record.lines.get(cid) or [None, None])[:2]
        endpoint = record.endpoint.removeprefix(API_PREFIX)
        line = self.wanted.get(cid)
        problem = answer_problem(endpoint, body, self.calls[line.index].body if line else None)
        if problem is not None:
            self._fail(cid, f"malformed answer ({problem})", "malformed")
            return
        usage = self.usages.get(partition) if line else None
        if line is not None and cid not in self.answered:
            try:
                self.results[line.index] = self.calls[line.index].read(body, False, None)
            except HookError:
                raise
            except _MALFORMED as error:
                self._fail(cid, f"malformed answer ({type(error).__name__}: {error})", "malformed")
                return
            self.answered.add(cid)
            self.failures.pop(cid, None)
        if usage is not None:
            usage.add_response(body.get("model"), body.get("usage"), batch=True)
        self.session.governor.settle(
            body.get("model"), self.estimates.pop(cid, 0), body.get("usage"), body.get("model"), batch=True
        )
        if key:  # the answer is paid for: keep it, also when this run no longer asks for it
            self._unwritten.append((key, json.dumps(body, ensure_ascii=False).encode(), usage or Usage()))
            if len(self._unwritten) >= _CHUNK:
                self._write()

    def _write(self) -> None:
        """Hand the answers read so far to a writer thread."""
        if not self._unwritten:
            return

        def store(entries: list[tuple[str, bytes, Usage]]) -> None:
            for key, answer, usage in entries:
                self.session.store(key, answer, usage, durable=False)

        self._writes.append(self._writers.submit(store, self._unwritten))
        self._unwritten = []

    def flush(self) -> None:
        """Wait until every answer read so far is stored in the request cache, durably."""
        self._write()
        for write in self._writes:
            write.result()
        if self._writes and self.session.cache is not None:
            self.session.cache.sync()
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
            self.session.governor.settle(self.calls[line.index].body.get("model"), estimate, None, None, False)
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
            for (line, _), text in zip(failed, texts, strict=True):
                self.results[line.index] = self.calls[line.index].failed(text)
            dg.get_dagster_logger("llm_assets").warning(f"{len(failed)} batch requests failed: {texts[0]} …")
            return
        raise LLMRequestError(
            f"{len(failed)} of {len(self.wanted)} batch requests failed (the answered ones are cached; "
            "re-materializing submits only the failed ones, or set run config on_error: RECORD): "
            + "; ".join(texts[:_SHOWN])
            + (" …" if len(texts) > _SHOWN else "")
        )
