"""An efficient loopback OpenAI-compatible chat server for benchmarks, in its own process.

Unlike the scripted server (``llm_assets.testing``), it does as little as it can per
request, so that it is not what a benchmark measures: ``aiohttp.web`` on uvloop, no
access log, orjson both ways, one fixed small ``chat.completion`` answered after
``--latency`` seconds. Its usage is a function of the request alone, so a benchmark can
compute the totals it must see: ``prompt_tokens = len(last message content) // 4 + 1``,
``completion_tokens = 3``.

- ``POST /v1/chat/completions``: the answer (``model`` echoed, content ``ok <n>``).
- ``GET /v1/_stats``: ``{"requests", "prompt_tokens", "completion_tokens", "cpu_seconds"}``,
  ``cpu_seconds`` being the server process's CPU time so far.

Run: ``.venv/bin/python benchmarks/fast_server.py --latency 0.02`` prints its base URL
``http://127.0.0.1:PORT/v1`` on the first line of stdout and serves until terminated.
From a benchmark: ``common.FastServer(0.02)``; ``server.base_url``, ``server.stats()``,
``server.close()``.
"""

import argparse
import asyncio
import signal
import socket
import time

import orjson

COMPLETION_TOKENS = 3


def prompt_tokens(content: str) -> int:
    """The prompt tokens the server reports for a request whose last message is ``content``."""
    return len(content) // 4 + 1


def usage_of(content: str) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the server reports for one request."""
    return prompt_tokens(content), COMPLETION_TOKENS


def app(latency: float):
    from aiohttp import web

    stats = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    loads, dumps, sleep, now = orjson.loads, orjson.dumps, asyncio.sleep, time.time

    async def chat(request: web.Request) -> web.Response:
        body = loads(await request.read())
        content = body["messages"][-1].get("content") or ""
        prompt = len(content if isinstance(content, str) else dumps(content)) // 4 + 1
        stats["requests"] += 1
        n = stats["requests"]
        stats["prompt_tokens"] += prompt
        stats["completion_tokens"] += COMPLETION_TOKENS
        if latency > 0:
            await sleep(latency)
        answer = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(now()),
            "model": body.get("model", "unknown"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"ok {n}"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": prompt + COMPLETION_TOKENS,
            },
        }
        return web.Response(body=dumps(answer), content_type="application/json")

    async def get_stats(request: web.Request) -> web.Response:
        return web.Response(body=dumps({**stats, "cpu_seconds": time.process_time()}), content_type="application/json")

    application = web.Application()
    application.router.add_post("/v1/chat/completions", chat)
    application.router.add_get("/v1/_stats", get_stats)
    return application


async def serve(latency: float, port: int) -> None:
    from aiohttp import web

    runner = web.AppRunner(app(latency), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer (default 0)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.latency, args.port))


if __name__ == "__main__":
    main()
