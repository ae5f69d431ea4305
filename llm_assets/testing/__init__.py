"""A scripted OpenAI-compatible server on loopback, for tests and benchmarks.

It answers ``/v1/chat/completions`` (plain and streamed), ``/v1/completions``,
``/v1/embeddings`` (float and base64) and ``/v1/responses`` with deterministic text,
vectors and token counts, and keeps its own totals of the usage it reported, so tests
can compare what a pipeline recorded with what the server billed.

Example:
    >>> import openai
    >>> with ScriptedOpenAIServer() as server:
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    ...     _ = client.embeddings.create(model="text-embedding-3-small", input=["hello world"])
    ...     server.usage.total_tokens
    2
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from llm_assets.accounting.usage import Usage


def count_tokens(text: str) -> int:
    """The scripted tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def scripted_answer(prompt: str, max_tokens: int | None) -> str:
    """The answer the server gives to ``prompt``: deterministic, at most ``max_tokens`` words."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    words = f"Answer {digest}: {prompt}".split()
    return " ".join(words[: max_tokens or 64])


def scripted_vector(text: str, dimensions: int) -> np.ndarray:
    """The unit embedding the server gives to ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    return vector / np.linalg.norm(vector)


@dataclass
class ServerStats:
    """What the server saw: requests by path, usage it reported, concurrency peaks."""

    usage: Usage = field(default_factory=Usage)
    requests: list[dict[str, Any]] = field(default_factory=list)
    billed: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    paths: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScriptedOpenAIServer:
    """OpenAI-compatible HTTP server with scripted answers and exact usage totals.

    Args:
        served_models: maps a requested model to the model name the server returns
            (e.g. a dated snapshot); unmapped names are echoed.
        usage_null: answer with ``"usage": null`` like many local servers do.
        report_details: include cached and reasoning token details in usage.
        latency: seconds each request waits before answering, or ``latency(body)``.
        embedding_dimensions: vector size when the request gives no ``dimensions``.
        fault: optional hook ``fault(handler, body) -> bool``; returning True means it
            already answered (used for fault injection).
    """

    def __init__(
        self,
        *,
        served_models: dict[str, str] | None = None,
        usage_null: bool = False,
        report_details: bool = False,
        latency: float | Callable[[dict[str, Any]], float] = 0.0,
        embedding_dimensions: int = 16,
        fault: Callable[[BaseHTTPRequestHandler, dict[str, Any]], bool] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.served_models = served_models or {}
        self.usage_null = usage_null
        self.report_details = report_details
        self.latency = latency
        self.embedding_dimensions = embedding_dimensions
        self.fault = fault
        self.stats = ServerStats()
        self._httpd = _Server((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def usage(self) -> Usage:
        return self.stats.usage

    def start(self) -> ScriptedOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reset(self) -> None:
        self.stats = ServerStats()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers ----------------------------------------------------------------------------

    def _usage(self, prompt_tokens: int, completion_tokens: int | None, responses_api: bool = False):
        if self.usage_null:
            return None
        total = prompt_tokens + (completion_tokens or 0)
        if responses_api:
            usage: dict[str, Any] = {
                "input_tokens": prompt_tokens,
                "output_tokens": completion_tokens,
                "total_tokens": total,
            }
            if self.report_details:
                usage["input_tokens_details"] = {"cached_tokens": prompt_tokens // 2}
                usage["output_tokens_details"] = {"reasoning_tokens": (completion_tokens or 0) // 3}
            return usage
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": total}
        if completion_tokens is not None:
            usage["completion_tokens"] = completion_tokens
        if self.report_details:
            usage["prompt_tokens_details"] = {"cached_tokens": prompt_tokens // 2}
            if completion_tokens is not None:
                usage["completion_tokens_details"] = {"reasoning_tokens": completion_tokens // 3}
        return usage

    def _bill(self, model: str, usage: dict[str, Any] | None, body: dict[str, Any]) -> None:
        self.stats.usage.add_response(model, usage)
        with self.stats.lock:
            self.stats.billed.append((model, usage, body))

    def usage_where(self, predicate: Callable[[dict[str, Any]], bool]) -> Usage:
        """Usage the server reported for the requests whose JSON body matches ``predicate``."""
        usage = Usage()
        for model, reported, body in list(self.stats.billed):
            if predicate(body):
                usage.add_response(model, reported)
        return usage

    def chat(self, body: dict[str, Any]) -> tuple[str, list[str], dict[str, Any] | None, list[str]]:
        """Returns (served model, answers per choice, usage, finish reasons)."""
        messages = body.get("messages") or []
        prompt = "\n".join(_text_of(m.get("content")) for m in messages)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        answers = []
        for i in range(int(body.get("n") or 1)):
            text = scripted_answer(prompt + ("" if i == 0 else f" #{i}"), limit)
            answers.append(_structured(body.get("response_format"), text))
        finish = ["length" if limit and count_tokens(a) >= limit else "stop" for a in answers]
        usage = self._usage(count_tokens(prompt), sum(count_tokens(a) for a in answers))
        return self.served_models.get(body.get("model", ""), body.get("model", "")), answers, usage, finish


def _structured(response_format: Any, text: str) -> str:
    """A JSON answer filling every string property when a JSON schema is requested."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return text
    schema = response_format.get("json_schema", {}).get("schema", {})
    return json.dumps({name: text for name in schema.get("properties", {})})


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # many concurrent clients connect at once
    daemon_threads = True


def _make_handler(server: ScriptedOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (~40 ms)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/_stats"):  # not OpenAI: the server's own counters
                stats = server.stats
                counters = {"requests": len(stats.requests), "max_in_flight": stats.max_in_flight}
                self._json(200, {**counters, "usage": stats.usage.to_metadata()})
            elif self.path.rstrip("/").endswith("/models"):
                models = [{"id": m, "object": "model", "owned_by": "scripted"} for m in server.served_models.values()]
                self._json(200, {"object": "list", "data": models})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                return
            stats = server.stats
            with stats.lock:
                stats.requests.append({"path": self.path, "body": body})
                stats.arrivals.append(time.monotonic())
                stats.paths[self.path] += 1
                stats.in_flight += 1
                stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                delay = server.latency(body) if callable(server.latency) else server.latency
                if delay:
                    time.sleep(delay)
                if server.fault is not None and server.fault(self, body):
                    return
                self._route(body)
            finally:
                with stats.lock:
                    stats.in_flight -= 1

        def _route(self, body: dict[str, Any]) -> None:
            path = self.path.rstrip("/")
            if path.endswith("/chat/completions"):
                self._chat(body)
            elif path.endswith("/completions"):
                self._completion(body)
            elif path.endswith("/embeddings"):
                self._embeddings(body)
            elif path.endswith("/responses"):
                self._responses(body)
            else:
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        # -- endpoints ----------------------------------------------------------------------

        def _chat(self, body: dict[str, Any]) -> None:
            model, answers, usage, finish = server.chat(body)
            created = int(time.time())
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                events = []
                for i, answer in enumerate(answers):
                    for word in answer.split(" "):
                        events.append({"index": i, "delta": {"content": word + " "}, "finish_reason": None})
                    events.append({"index": i, "delta": {}, "finish_reason": finish[i]})
                chunks = [
                    {
                        "id": "chatcmpl-s",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [choice],
                    }
                    for choice in events
                ]
                if include_usage:
                    chunks.append(
                        {
                            "id": "chatcmpl-s",
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                server._bill(model, usage if include_usage else None, body)
                self._sse([json.dumps(c) for c in chunks] + ["[DONE]"])
                return
            server._bill(model, usage, body)
            self._json(
                200,
                {
                    "id": "chatcmpl-s",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": a},
                            "finish_reason": finish[i],
                        }
                        for i, a in enumerate(answers)
                    ],
                    "usage": usage,
                },
            )

        def _completion(self, body: dict[str, Any]) -> None:
            model = server.served_models.get(body.get("model", ""), body.get("model", ""))
            prompt = body.get("prompt") or ""
            prompt = " ".join(prompt) if isinstance(prompt, list) else str(prompt)
            text = scripted_answer(prompt, body.get("max_tokens"))
            usage = server._usage(count_tokens(prompt), count_tokens(text))
            server._bill(model, usage, body)
            self._json(
                200,
                {
                    "id": "cmpl-s",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                    "usage": usage,
                },
            )

        def _embeddings(self, body: dict[str, Any]) -> None:
            model = server.served_models.get(body.get("model", ""), body.get("model", ""))
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
            if not inputs or not all(isinstance(t, str) and t for t in inputs):
                self._json(
                    400,
                    {
                        "error": {
                            "message": "input must be non-empty strings",
                            "type": "invalid_request_error",
                        }
                    },
                )
                return
            dims = int(body.get("dimensions") or server.embedding_dimensions)
            data = []
            for i, text in enumerate(inputs):
                vector = scripted_vector(text, dims)
                encoded: Any = (
                    base64.b64encode(vector.tobytes()).decode()
                    if body.get("encoding_format") == "base64"
                    else vector.tolist()
                )
                data.append({"object": "embedding", "index": i, "embedding": encoded})
            usage = server._usage(sum(count_tokens(t) for t in inputs), None)
            server._bill(model, usage, body)
            self._json(200, {"object": "list", "data": data, "model": model, "usage": usage})

        def _responses(self, body: dict[str, Any]) -> None:
            model = server.served_models.get(body.get("model", ""), body.get("model", ""))
            given = body.get("input")
            prompt = given if isinstance(given, str) else "\n".join(_text_of(m.get("content")) for m in given or [])
            text = scripted_answer(prompt, body.get("max_output_tokens"))
            usage = server._usage(count_tokens(prompt), count_tokens(text), responses_api=True)
            server._bill(model, usage, body)
            response = {
                "id": "resp-s",
                "object": "response",
                "created_at": int(time.time()),
                "model": model,
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "id": "msg-s",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "usage": usage,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
            }
            if body.get("stream"):
                created = dict(response, status="in_progress", output=[], usage=None)
                item = dict(response["output"][0], content=[], status="in_progress")
                part = {"type": "output_text", "text": "", "annotations": []}
                events = [
                    {"type": "response.created", "response": created},
                    {"type": "response.output_item.added", "output_index": 0, "item": item},
                    {
                        "type": "response.content_part.added",
                        "item_id": "msg-s",
                        "output_index": 0,
                        "content_index": 0,
                        "part": part,
                    },
                    {
                        "type": "response.output_text.delta",
                        "item_id": "msg-s",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": text,
                        "logprobs": [],
                    },
                    {"type": "response.completed", "response": response},
                ]
                for number, event in enumerate(events):
                    event["sequence_number"] = number
                self._sse([json.dumps(e) for e in events], events=[e["type"] for e in events])
                return
            self._json(200, response)

        # -- wire -----------------------------------------------------------------------------

        def _json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _sse(self, payloads: list[str], events: list[str] | None = None) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i, payload in enumerate(payloads):
                prefix = f"event: {events[i]}\n" if events else ""
                chunk = f"{prefix}data: {payload}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    return Handler


def main(argv: list[str] | None = None) -> None:
    """``python -m llm_assets.testing --port 0 --latency 0.05``: serve until interrupted;
    prints the base URL on the first line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llm_assets.testing", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--dimensions", type=int, default=16, help="embedding size")
    args = parser.parse_args(argv)
    server = ScriptedOpenAIServer(port=args.port, latency=args.latency, embedding_dimensions=args.dimensions)
    # an explicit handler: a parent may have left SIGTERM ignored, and that is inherited
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    print(server.base_url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._httpd.serve_forever()


if __name__ == "__main__":
    main()


FAULTS = ("429", "500", "503", "slow", "drop", "malformed")


class FaultInjector:
    """A ``fault`` hook for :class:`ScriptedOpenAIServer`: each request fails, with a
    fault drawn from ``kinds``, with probability ``rate`` (seeded, so runs repeat).

    Faults: ``429`` (with ``Retry-After``), ``500``, ``503``, ``slow`` (no answer before
    ``slow_seconds``, then the connection closes), ``drop`` (connection closed without an
    answer) and ``malformed`` (HTTP 200 with a body that is not JSON). None is billed.
    """

    def __init__(
        self,
        rate: float,
        kinds: tuple[str, ...] = FAULTS,
        seed: int = 0,
        slow_seconds: float = 1.0,
        retry_after: str = "1",
    ) -> None:
        import random

        self.rate, self.kinds, self.slow_seconds, self.retry_after = rate, kinds, slow_seconds, retry_after
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter = Counter()

    def __call__(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> bool:
        with self._lock:
            if self._random.random() >= self.rate:
                return False
            kind = self._random.choice(self.kinds)
            self.injected[kind] += 1
        if kind in ("429", "500", "503"):
            payload = json.dumps({"error": {"message": f"injected {kind}", "type": "server_error"}}).encode()
            handler.send_response(int(kind))
            if kind == "429":
                handler.send_header("retry-after", self.retry_after)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        elif kind == "malformed":
            payload = b'{"choices": [{"message": '
            handler.send_response(200)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        else:
            if kind == "slow":
                time.sleep(self.slow_seconds)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(2)
        return True
