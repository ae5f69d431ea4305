"""A scripted Batch API on loopback: the Files and Batches routes of the embedded server
(``llm_assets.local.batches``), with each line answered by a
``ScriptedOpenAIServer`` (so its usage totals are the truth to
compare with), and the outcomes other mock servers lack: expiry with partial output,
``finalizing``, failed lines, and a ``create`` that never answers (a crash between create
and record).

Examples:
    >>> with ScriptedOpenAIServer() as upstream, ScriptedBatchServer(upstream) as server:  # doctest: +SKIP
    ...     OpenAIResource(base_url=server.base_url)
"""

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx2

from llm_assets import extras
from llm_assets.local.batches import BatchStore, add_batch_routes
from llm_assets.testing.script import count_tokens, scripted_answer, text_of, usage_payload
from llm_assets.testing.server import ScriptedOpenAIServer

#: ``fail_line(url, body)``: ``(status, message or error body)`` to answer a line with an
#: error, else ``None``.
FailLine = Callable[[str, Any], tuple[int, Any] | None]


class ScriptedBatchServer:
    """Files + Batches on loopback in front of ``upstream`` (which also answers live requests).

    Args:
        expire_after: each batch expires after answering this many lines.
        finalizing_polls: polls that see ``finalizing`` before ``completed``.
        fail_line: answers chosen lines with an error instead.
        hold_create: ``batches.create`` creates the batch but never answers (until released).
        lose_creates: the first that many ``batches.create`` create the batch, then answer 502
            (a gateway that lost the answer).
    """

    def __init__(
        self,
        upstream: ScriptedOpenAIServer,
        expire_after: int | None = None,
        finalizing_polls: int = 0,
        fail_line: FailLine | None = None,
        hold_create: bool = False,
        lose_creates: int = 0,
    ) -> None:
        extras.require("local", "ScriptedBatchServer (the embedded server's Files and Batches API)")
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse

        self.upstream, self.fail_line = upstream, fail_line
        self.release = threading.Event()
        if not hold_create:
            self.release.set()
        self.creates = 0
        self.cancels = 0
        self.lose_creates = lose_creates
        self._client = httpx2.AsyncClient(base_url=upstream.base_url.removesuffix("/v1"), timeout=60)
        app = FastAPI()

        @app.middleware("http")
        async def count(request: Request, call_next: Any) -> Any:
            if request.method == "POST" and request.url.path.startswith("/v1/batches"):
                if request.url.path.endswith("/cancel"):
                    self.cancels += 1
                else:
                    self.creates += 1
                    response = await call_next(request)
                    while not self.release.is_set():  # the batch exists; its creator never hears of it
                        await asyncio.sleep(0.05)
                    if self.lose_creates > 0:
                        self.lose_creates -= 1
                        return JSONResponse({"error": {"message": "Bad gateway"}}, status_code=502)
                    return response
            return await call_next(request)

        self.store: BatchStore = add_batch_routes(app, BatchStore(self._answer, expire_after, finalizing_polls))

        @app.post("/v1/{path:path}")
        async def live(path: str, request: Request) -> Any:
            from fastapi.responses import Response

            reply = await self._client.post(f"/v1/{path}", content=await request.body(), headers=request.headers)
            return Response(reply.content, reply.status_code, media_type=reply.headers.get("content-type"))

        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread: threading.Thread | None = None

    async def _answer(self, url: str, body: Any) -> tuple[int, Any]:
        failure = self.fail_line(url, body) if self.fail_line else None
        if failure is not None:
            status, message = failure
            if isinstance(message, str):
                return status, {"error": {"message": message, "type": "invalid_request_error"}}
            return status, message
        reply = await self._client.post(url, json=body)
        return reply.status_code, reply.json()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def start(self) -> "ScriptedBatchServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> "ScriptedBatchServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def scripted_chat(url: str, body: Any) -> tuple[int, Any]:
    """A batch line answered in process, with the scripted server's text and token counts
    (no HTTP per line: for benchmarks of the client side)."""
    prompt = " ".join(text_of(m.get("content")) for m in body.get("messages", []))
    answer = scripted_answer(prompt, body.get("max_tokens"))
    choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
    usage = usage_payload(count_tokens(prompt), count_tokens(answer))
    return 200, {"object": "chat.completion", "model": body.get("model"), "choices": [choice], "usage": usage}


def main() -> None:
    """``python -m llm_assets.testing.batches``: a Batch API answering chat lines in
    process; prints its base URL."""
    extras.require("local", "The scripted Batch API (the embedded server's Files and Batches API)")
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    add_batch_routes(app, BatchStore(scripted_chat))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
