"""The engine's hot path: billed POSTs sent over aiohttp directly, each decoded once.

Through the SDK, each request costs ~1 ms of CPU to build, send and parse (options
copied per attempt, an httpx request, an httpx-over-aiohttp adapter, the body parsed
twice); a self-hosted server answering thousands of requests per second makes that the
bottleneck. :class:`DirectClient` builds each endpoint's URL and headers once (by the
official client itself), encodes bodies with orjson, and decodes each answer once: the
engine's row, the usage and the cached body all come from that one parse.

Nothing else changes: the same :class:`~llm_assets.http.exchange.Exchange` as the
SDK's transports (usage, governance, rate limits, the cache), and the official client's
own retry contract (:class:`~llm_assets.http.contract.SDKContract`): same retried
statuses, waits, ``max_retries`` and exception classes. User code that calls
``get_client()`` still gets the official client.

Example:
    >>> async def answer(session, usage):  # doctest: +SKIP
    ...     async with DirectClient(session, CacheMode.OFF, connections=64) as client:
    ...         return await client.post("/chat/completions", {"model": "m", "messages": []}, usage)
"""

import asyncio
import json
import urllib.parse
import urllib.request
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import orjson

from llm_assets.accounting.usage import Usage
from llm_assets.cache import CacheMode
from llm_assets.http.body import BodyReader
from llm_assets.http.contract import RETRY_COUNT_HEADER, SDKContract
from llm_assets.http.exchange import Exchange
from llm_assets.http.pools import _ssl_context, httpx

if TYPE_CHECKING:
    from llm_assets.session import RunSession


def env_proxy(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY`` and ``NO_PROXY`` give ``url``, as httpx honours them under
    the SDK; looked up once per run (aiohttp's ``trust_env`` looks up every request, in a
    thread: about 90 µs of CPU each)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def encode(body: dict[str, Any]) -> bytes:
    """``body`` as JSON; text that can't be sent raises ``UnicodeEncodeError`` as the SDK's
    encoder does (orjson reports lone surrogates as a ``TypeError``)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class DirectClient:
    """Sends billed JSON POSTs for one engine run (see the module docstring). The caller
    has already looked each one up in the request cache (``mode`` still stores answers).

    Args:
        session: the resource's session: its configuration, cache, governor and limits.
        mode: the run's cache mode.
        connections: the most connections open at once (the engine's concurrency).
    """

    def __init__(self, session: "RunSession", mode: CacheMode, connections: int) -> None:
        self.session, self.mode, self.connections = session, mode, connections
        self.contract = SDKContract(openai.AsyncOpenAI(**session.client_kwargs))
        self._templates: dict[str, tuple[str, dict[str, str]]] = {}
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "DirectClient":
        timeout = httpx.Timeout(self.contract.client.timeout)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, ssl=_ssl_context()),
            timeout=aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read),
            skip_auto_headers=("User-Agent", "Content-Type"),
            auto_decompress=False,
            proxy=env_proxy(str(self.contract.client.base_url)),
        )
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None):
        assert self._http is not None
        await self._http.close()

    async def post(self, endpoint: str, body: dict[str, Any], usage: Usage) -> Any:
        """POST ``body`` to ``endpoint`` billed to ``usage``, retried as the SDK retries; the
        decoded answer (``None``: a 2xx body that is not JSON, counted as malformed).
        Raises the SDK's ``APIStatusError`` / ``APIConnectionError`` subclasses."""
        url, headers = self._templates.get(endpoint) or await self._template(endpoint)
        content = encode(body)
        exchange = Exchange(self.session, usage, self.mode, endpoint, content, body, looked_up=True)
        for taken in range(self.contract.max_retries + 1):
            retries_left = taken < self.contract.max_retries
            if (refusal := await exchange.refusal_off_loop()) is not None:
                raise self.contract.status_error(url, 403, {}, orjson.dumps(refusal))
            status, answer_headers, raw = await self._attempt(exchange, url, headers, content, taken)
            if status is None:  # no response: a timeout or a connection failure
                if retries_left:
                    await self.contract.wait(taken)
                    continue
                raise self.contract.connection_error(url, timed_out=answer_headers == "timeout")
            if 200 <= status < 300:
                return await self._answer(exchange, answer_headers, raw)
            if retries_left and self.contract.should_retry(status, answer_headers):
                await self.contract.wait(taken, status, answer_headers)
                continue
            raise self.contract.status_error(url, status, answer_headers, raw)
        raise AssertionError("unreachable")

    async def _attempt(
        self, exchange: Exchange, url: str, headers: dict[str, str], content: bytes, taken: int
    ) -> tuple[int | None, Any, bytes]:
        """One attempt: ``(status, headers, body)``, or ``(None, failure kind, b"")``."""
        assert self._http is not None
        status = None
        try:
            if exchange.paced:
                exchange.ticket = await self.session.limits.acquire(exchange.estimate, exchange.model)
            exchange.sent = True
            sent = {**headers, RETRY_COUNT_HEADER: str(taken)}
            async with self._http.post(url, data=content, headers=sent) as response:
                status = response.status
                exchange.observe(status, response.headers)
                return status, response.headers, await response.read()  # as sent: see _answer
        except (aiohttp.ClientError, TimeoutError) as error:
            kind = "timeout" if isinstance(error, TimeoutError) else "connection"
            if status is None or 200 <= status < 300:  # an error status was counted already
                exchange.failed(kind)
            return None, kind, b""
        except BaseException:  # cancelled: the engine stopping after a failure
            if status is None:
                exchange.abandoned()
            raise

    async def _answer(self, exchange: Exchange, headers: Any, raw: bytes) -> Any:
        """The decoded 2xx body, metered once, its answer stored in the cache. The body is
        decompressed here, not by aiohttp, so that a damaged one is a malformed answer
        (retried), as under the SDK."""
        reader = BodyReader(headers.get("content-encoding", ""), headers.get("content-type", ""))
        reader.feed(raw)
        summary = reader.finish()
        stored = exchange.finished(summary, complete=True, damaged=reader.damaged)
        if stored is not None:
            await asyncio.to_thread(self.session.store, exchange.key, stored, exchange.usage)
        return summary.answer

    async def _template(self, endpoint: str) -> tuple[str, dict[str, str]]:
        self._templates[endpoint] = await self.contract.template(endpoint)
        return self._templates[endpoint]
