"""The loopback HTTP server: its settings, lifecycle, a thin request handler, and ``main``.

What each endpoint answers lives in ``llm_assets.testing.endpoints``, what the server
saw in ``llm_assets.testing.stats``, and how replies are compressed and framed in
``llm_assets.testing.encoding``.

Examples:
    >>> import json, urllib.request
    >>> with ScriptedOpenAIServer(served_models={"gpt-4o": "gpt-4o-2024-08-06"}) as server:
    ...     body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Engage"}]})
    ...     reply = json.load(urllib.request.urlopen(f"{server.base_url}/chat/completions", body.encode()))
    ...     reply["model"], server.stats.paths["/v1/chat/completions"], server.usage.total_tokens
    ('gpt-4o-2024-08-06', 1, 4)
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llm_assets.accounting.usage import Usage
from llm_assets.testing import encoding, endpoints, ratelimits
from llm_assets.testing.ratelimits import ProviderLimits
from llm_assets.testing.stats import ServerStats

POLL_INTERVAL = 0.05  # seconds serve_forever waits between shutdown checks, so stop() is quick


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
        compression: ``"gzip"``, ``"deflate"`` (zlib-wrapped, as HTTP specifies),
            ``"deflate-raw"`` (a bare deflate stream, sent as ``content-encoding: deflate``)
            or None. When set and the request's ``Accept-Encoding`` allows it, JSON replies
            and event streams (flushed per event) are compressed, like OpenAI's own.
        provider_limits: per-API-key RPM and TPM limits, enforced like OpenAI's (429s and
            ``x-ratelimit-*`` headers; see ``llm_assets.testing.ratelimits``).

    Each setting is an attribute of the same name that a test may change while the server
    runs; ``reset`` puts them all back to the values given here.
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
        compression: str | None = None,
        provider_limits: ProviderLimits | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.served_models = served_models or {}
        self.usage_null = usage_null
        self.report_details = report_details
        self.latency = latency
        self.embedding_dimensions = embedding_dimensions
        self.fault = fault
        self.compression = compression
        self.provider_limits = provider_limits
        self._defaults = self._settings()
        self.stats = ServerStats()
        self._httpd = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def compression(self) -> str | None:
        return self._compression

    @compression.setter
    def compression(self, value: str | None) -> None:
        self._compression = encoding.check(value)

    def _settings(self) -> dict[str, Any]:
        return {
            "served_models": dict(self.served_models),
            "usage_null": self.usage_null,
            "report_details": self.report_details,
            "latency": self.latency,
            "embedding_dimensions": self.embedding_dimensions,
            "fault": self.fault,
            "compression": self.compression,
            "provider_limits": self.provider_limits,
        }

    def reset(self) -> None:
        """Fresh stats and the constructor's settings: ``served_models`` (a copy),
        ``usage_null``, ``report_details``, ``latency``, ``embedding_dimensions``, ``fault``,
        ``compression`` and ``provider_limits`` (its buckets full, its stats empty). The
        socket (host and port) stays, so ``base_url`` is unchanged."""
        self.stats = ServerStats()
        for name, value in self._defaults.items():
            setattr(self, name, dict(value) if name == "served_models" else value)
        if self.provider_limits is not None:
            self.provider_limits.reset()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def usage(self) -> Usage:
        return self.stats.usage

    def start(self) -> ScriptedOpenAIServer:
        kwargs = {"poll_interval": POLL_INTERVAL}
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs=kwargs, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() would wait forever for a loop never started
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers ----------------------------------------------------------------------------

    def usage_where(self, predicate: Callable[[dict[str, Any]], bool]) -> Usage:
        """Usage the server reported for the requests whose JSON body matches ``predicate``."""
        return self.stats.usage_where(predicate)

    def chat(self, body: dict[str, Any]) -> endpoints.ChatAnswers:
        """Returns (served model, answers per choice, usage, finish reasons); tests replace it
        to script the answers of ``/chat/completions``."""
        return endpoints.chat_answers(self, body)


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # many concurrent clients connect at once
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], scripted: ScriptedOpenAIServer
    ) -> None:
        self.scripted = scripted
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    """Reads the body, records stats, applies latency and the fault hook, routes, writes."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (~40 ms)
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._reply(endpoints.route_get(self.server.scripted, self.path))

    def do_POST(self) -> None:
        scripted = self.server.scripted
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        stats = scripted.stats
        stats.arrive(self.path, body)
        try:
            limits = scripted.provider_limits
            decision = limits.admit(self.path, self.headers.get("authorization"), body) if limits else None
            if decision is not None and decision.rejected:
                self._json(decision.status, decision.payload, decision.headers)
                return
            delay = scripted.latency(body) if callable(scripted.latency) else scripted.latency
            if delay:
                time.sleep(delay)
            if scripted.fault is not None and scripted.fault(self, body):
                return
            self._reply(endpoints.route_post(scripted, self.path, body), decision.headers if decision else None)
        finally:
            stats.leave()

    # -- wire -----------------------------------------------------------------------------

    def _reply(self, reply: endpoints.Reply, headers: dict[str, str] | None = None) -> None:
        if reply.events is not None:
            self._sse(reply.events, reply.event_names, headers)
        else:
            self._json(reply.status, reply.payload, headers)

    def _compression(self) -> str | None:
        """The server's compression if this request accepts it, else None."""
        compression = self.server.scripted.compression
        return compression if encoding.accepts(self.headers.get("accept-encoding"), compression) else None

    def _start(self, status: int, content_type: str, headers: dict[str, str] | None) -> str | None:
        """Status line, extra ``headers``, content type and encoding; returns the compression."""
        compression = self._compression()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", content_type)
        if compression:
            self.send_header("content-encoding", encoding.content_encoding(compression))
        return compression

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        compression = self._start(status, "application/json", headers)
        if compression:
            data = encoding.compress(compression, data)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, payloads: list[str], events: list[str] | None = None, headers: dict[str, str] | None = None) -> None:
        compression = self._start(200, "text/event-stream", headers)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for piece in encoding.event_stream(payloads, events, compression):
            self.wfile.write(piece)


def main(argv: list[str] | None = None) -> None:
    """``python -m llm_assets.testing --port 0 --latency 0.05``: serve until interrupted;
    prints the base URL on the first line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llm_assets.testing", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--dimensions", type=int, default=16, help="embedding size")
    parser.add_argument(
        "--compression", choices=encoding.COMPRESSIONS, default=None, help="content-encoding of replies"
    )
    ratelimits.add_arguments(parser)
    args = parser.parse_args(argv)
    options = {"latency": args.latency, "embedding_dimensions": args.dimensions, "compression": args.compression}
    server = ScriptedOpenAIServer(port=args.port, provider_limits=ratelimits.from_args(args), **options)
    # an explicit handler: a parent may have left SIGTERM ignored, and that is inherited
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    print(server.base_url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._httpd.serve_forever(poll_interval=POLL_INTERVAL)


if __name__ == "__main__":
    main()
