"""The OpenAI Files and Batches API on the embedded local server, so batch mode works
offline: each batch's lines run one by one through the server's own endpoints (or, for
tests, through any ``answer(url, body) -> (status, body)``).

State lives in the server process (the embedded server is started per run or step): a
batch of a server that has stopped is unknown to the next one, and the engine then
submits its requests again (the local model costs nothing).

Examples:
    >>> app = FastAPI()  # doctest: +SKIP
    >>> add_batch_routes(app)  # doctest: +SKIP
"""

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2

#: ``answer(url, body) -> (status_code, response body)``: how a batch line is answered.
Answer = Callable[[str, Any], Awaitable[tuple[int, Any]]]

_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": "invalid_request_error"}})


def _not_run(raw: bytes, code: str) -> bytes:
    """The error-file line of a request the batch never ran."""
    try:
        custom_id = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError):
        custom_id = None
    error = {"code": code, "message": f"This request was not executed ({code})."}
    return json.dumps(
        {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None, "error": error}
    ).encode()


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating"
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    times: dict[str, int] = field(default_factory=dict)
    polls_finalizing: int = 0

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "created_at": self.created_at,
            "metadata": self.metadata,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            **self.times,
        }


class BatchStore:
    """Files and batches of this server process, and the batches' workers.

    ``expire_after``: a batch expires after answering that many lines (tests of partial
    output); ``finalizing_polls``: retrieves that still show ``finalizing`` once done;
    ``fail_batches``: batches fail validation. Lines a batch never ran are listed in its
    error file as ``batch_expired`` / ``batch_cancelled``, as OpenAI does."""

    def __init__(
        self, answer: Answer, expire_after: int | None = None, finalizing_polls: int = 0, fail_batches: bool = False
    ) -> None:
        self.answer, self.expire_after, self.finalizing_polls = answer, expire_after, finalizing_polls
        self.fail_batches = fail_batches  # every batch fails validation (line 1), answering nothing
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, _Batch] = {}
        self.tasks: set[asyncio.Task] = set()

    def add_file(self, name: str, purpose: str, content: bytes) -> dict[str, Any]:
        info = {
            "id": f"file-{uuid.uuid4().hex}",
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[info["id"]] = (info, content)
        return info

    async def run(self, batch: _Batch) -> None:
        """Answer each line, in order."""
        lines = [line for line in self.files[batch.input_file_id][1].splitlines() if line.strip()]
        if self.fail_batches:
            batch.status, batch.errors = "failed", [{"code": "invalid_request", "line": 1, "message": "Scripted."}]
            batch.times["failed_at"] = int(time.time())
            return
        batch.total, batch.status = len(lines), "in_progress"
        batch.times["in_progress_at"] = int(time.time())
        outputs: list[bytes] = []
        failures: list[bytes] = []
        for number, raw in enumerate(lines, 1):
            if batch.status == "cancelling" or number - 1 == self.expire_after:
                code = "batch_cancelled" if batch.status == "cancelling" else "batch_expired"
                failures += [_not_run(line, code) for line in lines[number - 1 :]]
                break
            answer, failed = await self._answer(batch, number, raw)
            (failures if failed else outputs).append(json.dumps(answer).encode())
            batch.failed += failed
            batch.completed += not failed
        batch.times["finalizing_at"] = int(time.time())
        if outputs:
            batch.output_file_id = self.add_file(f"{batch.id}_output.jsonl", "batch_output", b"\n".join(outputs))["id"]
        if failures:
            batch.error_file_id = self.add_file(f"{batch.id}_error.jsonl", "batch_output", b"\n".join(failures))["id"]
        if batch.status == "cancelling":
            batch.status = "cancelled"
        elif self.expire_after is not None and batch.completed + batch.failed < batch.total:
            batch.status = "expired"
        else:
            batch.status = "finalizing" if self.finalizing_polls else "completed"
        batch.times[f"{batch.status}_at"] = int(time.time())

    def retrieve(self, batch: _Batch) -> dict[str, Any]:
        """The batch as a poll sees it (``finalizing`` for the first few polls, if asked)."""
        if batch.status == "finalizing":
            batch.polls_finalizing += 1
            if batch.polls_finalizing > self.finalizing_polls:
                batch.status = "completed"
                batch.times["completed_at"] = int(time.time())
        return batch.json()

    async def _answer(self, batch: _Batch, number: int, raw: bytes) -> tuple[dict[str, Any], bool]:
        """One line's output-file entry, and whether it failed."""
        entry: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": None, "response": None}
        try:
            line = json.loads(raw)
            entry["custom_id"], url, body = line["custom_id"], line.get("url", batch.endpoint), line["body"]
        except (ValueError, KeyError, TypeError) as error:
            message = f"line {number} is not a batch request ({type(error).__name__}: {error})"
            return {**entry, "error": {"code": "invalid_request", "message": message}}, True
        if url != batch.endpoint:
            message = f"line {number} has url {url!r}, not the batch's endpoint {batch.endpoint!r}"
            return {**entry, "error": {"code": "invalid_url", "message": message}}, True
        status, answer = await self.answer(url, body)
        entry["response"] = {"status_code": status, "request_id": entry["id"], "body": answer}
        return {**entry, "error": None}, status != 200


def asgi_answer(app: Any) -> Answer:
    """Answer batch lines by POSTing them to ``app`` itself, in process."""
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://local", timeout=None)

    async def answer(url: str, body: Any) -> tuple[int, Any]:
        response = await client.post(url, json=body)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"error": {"message": response.text[:500]}}

    return answer


def add_batch_routes(app: Any, store: BatchStore | None = None) -> BatchStore:
    """Add ``/v1/files`` and ``/v1/batches`` (create, retrieve, list, cancel) to ``app``;
    lines are answered by ``app`` itself unless ``store`` says otherwise."""
    store = store or BatchStore(asgi_answer(app))
    _add_file_routes(app, store)
    _add_batch_routes(app, store)
    return store


def _add_file_routes(app: Any, store: BatchStore) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    async def create_file(request: Request) -> Any:
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str) or not isinstance(purpose, str):
            return _error(400, "Send multipart form fields 'file' and 'purpose'.")
        return JSONResponse(store.add_file(upload.filename or "upload.jsonl", purpose, await upload.read()))

    async def file_content(file_id: str) -> Any:
        if file_id not in store.files:
            return _error(404, f"No such file: {file_id}")
        return Response(store.files[file_id][1], media_type="application/jsonl")

    async def retrieve_file(file_id: str) -> Any:
        return (
            JSONResponse(store.files[file_id][0]) if file_id in store.files else _error(404, f"No such file: {file_id}")
        )

    app.add_api_route("/v1/files", create_file, methods=["POST"])
    app.add_api_route("/v1/files/{file_id}", retrieve_file, methods=["GET"])
    app.add_api_route("/v1/files/{file_id}/content", file_content, methods=["GET"])


def _add_batch_routes(app: Any, store: BatchStore) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def create_batch(request: Request) -> Any:
        body = await request.json()
        if not isinstance(body, dict) or body.get("endpoint") not in _ENDPOINTS:
            return _error(400, f"'endpoint' must be one of {', '.join(_ENDPOINTS)}.")
        if body.get("input_file_id") not in store.files:
            return _error(400, f"No such file: {body.get('input_file_id')}")
        batch = _Batch(
            f"batch_{uuid.uuid4().hex}",
            body["input_file_id"],
            body["endpoint"],
            str(body.get("completion_window", "24h")),
            body.get("metadata"),
        )
        store.batches[batch.id] = batch
        task = asyncio.create_task(store.run(batch))
        store.tasks.add(task)
        task.add_done_callback(store.tasks.discard)
        return JSONResponse(batch.json())

    async def retrieve_batch(batch_id: str) -> Any:
        batch = store.batches.get(batch_id)
        return JSONResponse(store.retrieve(batch)) if batch else _error(404, f"No such batch: {batch_id}")

    async def cancel_batch(batch_id: str) -> Any:
        batch = store.batches.get(batch_id)
        if batch is None:
            return _error(404, f"No such batch: {batch_id}")
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelling"
            batch.times["cancelling_at"] = int(time.time())
        return JSONResponse(batch.json())

    async def list_batches(limit: int = 20, after: str | None = None) -> Any:
        ordered = sorted(store.batches.values(), key=lambda b: b.created_at, reverse=True)
        ids = [b.id for b in ordered]
        start = ids.index(after) + 1 if after in ids else 0
        page = ordered[start : start + max(1, min(limit, 100))]
        return JSONResponse(
            {
                "object": "list",
                "data": [b.json() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": start + len(page) < len(ordered),
            }
        )

    app.add_api_route("/v1/batches", create_batch, methods=["POST"])
    app.add_api_route("/v1/batches", list_batches, methods=["GET"])
    app.add_api_route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"])
    app.add_api_route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"])
