"""One billed request on its way, whatever sends it: whose usage, its cache key, its
governor reservation and its place with the rate limits.

Both paths that send billed requests go through an :class:`Exchange`: the httpx
transports under the OpenAI SDK's clients (:mod:`llm_assets.http.transport`) and the
engine's direct aiohttp path (:mod:`llm_assets.http.direct`). It knows nothing of HTTP
libraries: each path tells it what happened (refused, sent, a status, a body, a failure)
and it meters, settles and picks the body to cache.

Example:
    >>> from llm_assets import OpenAIResource
    >>> session = OpenAIResource(base_url="http://127.0.0.1:9/v1").session
    >>> usage = Usage()
    >>> exchange = Exchange(session, usage, CacheMode.OFF, "/chat/completions", b'{"model": "m"}')
    >>> exchange.finished(BodySummary("m", {"total_tokens": 3}, b"{}", answer={}), complete=True) is None
    True
    >>> usage.total_tokens
    3
"""

import asyncio
import json
from typing import TYPE_CHECKING, Any

from llm_assets.accounting.governance import REFUSAL_CODE
from llm_assets.accounting.limits import request_estimate
from llm_assets.accounting.provider_limits import Ticket
from llm_assets.accounting.usage import Usage
from llm_assets.cache import CacheMode
from llm_assets.cache.answers import answer_problem
from llm_assets.http.body import BodySummary

if TYPE_CHECKING:
    from llm_assets.session import RunSession


class Exchange:
    """One billed POST of JSON ``content`` (decoded: ``payload``, parsed here if not given)
    to ``endpoint``, billed to ``usage``; ``looked_up`` when the caller already looked it
    up in the request cache (a miss), so it is not read again; never cached unless
    ``cacheable`` (an endpoint of the session's base URL); ``key``: its cache key, when
    the caller computed it already."""

    def __init__(
        self,
        session: "RunSession",
        usage: Usage,
        mode: CacheMode,
        endpoint: str,
        content: bytes,
        payload: dict[str, Any] | None = None,
        looked_up: bool = False,
        cacheable: bool = True,
        key: str | None = None,
    ) -> None:
        self.session, self.usage = session, usage
        self.governed, self.paced = session.governor.active, session.limits.active
        self.model: str | None = None
        self.endpoint, self.payload = endpoint, None
        self.estimate, self.key, self.reads, self._reserved = 0, None, False, False
        self.ticket: Ticket | None = None  # its place with the rate limits, once it has one
        self.sent = False  # handed to the connection: the provider may bill it, answered or not
        if mode is CacheMode.OFF and not self.governed and not self.paced:
            return  # nothing reads the body: don't parse it
        if payload is None:
            try:
                payload = json.loads(content)
            except ValueError:
                return
        if isinstance(payload, dict):
            self.payload = payload
            model = payload.get("model")
            self.model = model if isinstance(model, str) else None
            self.estimate = request_estimate(content, payload)
        if mode.writes and cacheable:  # OFF when the session has no cache (see RunSession.cache_mode)
            self.key = key or session.cache_keys.key(endpoint, payload)
        self.reads = self.key is not None and mode.reads and not looked_up

    def refusal(self) -> dict[str, Any] | None:
        """The error body of a 403 if the governor refuses this request (else its estimate
        is reserved)."""
        if not self.governed:
            return None
        reason = self.session.governor.refusal(self.model, self.estimate)
        if reason is None:
            self._reserved = True
            return None
        return {"error": {"message": reason, "type": "invalid_request_error", "code": REFUSAL_CODE, "param": "model"}}

    async def refusal_off_loop(self) -> dict[str, Any] | None:
        """:meth:`refusal` from a coroutine: a budget shared across processes is checked in
        its database, in a thread, and a cancellation meanwhile gives the reservation back."""
        if not (self.governed and self.session.governor.budget.shared):
            return self.refusal()
        check = asyncio.ensure_future(asyncio.to_thread(self.refusal))
        try:
            return await asyncio.shield(check)
        except asyncio.CancelledError:
            if await check is None:  # the thread reserved it: this request never goes
                self.abandoned()
            raise

    def observe(self, status: int, headers: Any) -> bool:
        """A response arrived: the rate limits learn from its headers. Returns whether it is
        a success; an error status is a failed attempt (nothing billed; maybe retried)."""
        self.session.limits.observe(status, headers, self.ticket)
        if 200 <= status < 300:
            return True
        self.failed(str(status))
        return False

    def failed(self, kind: str) -> None:
        """An error response (``kind``: its status: nothing billed) or a connection failure
        (``"timeout"``, ``"connection"``); maybe retried."""
        self.usage.add_failed_attempt(kind)
        if kind.isdigit():
            self._settle(None, None)
        else:
            self.abandoned()

    def abandoned(self) -> None:
        """No response (a connection failure, a cancellation): give back its place with the
        rate limits; its budget reservation too if it was never sent, else it counts at its
        estimate, since the provider may have answered and billed it."""
        self.session.limits.abandoned(self.ticket)
        unknown = {"prompt_tokens": self.estimate, "total_tokens": self.estimate} if self.sent else None
        self._settle(None, unknown, answered=self.sent)

    def finished(self, summary: BodySummary, complete: bool, damaged: bool = False) -> bytes | None:
        """Count what a 2xx body reported (``complete``: read to its end; ``damaged``: not
        decompressible); returns the body to store in the cache, if any."""
        if summary.readable:
            self.usage.add_response(summary.model, summary.usage)
        elif complete or damaged:
            self.usage.add_failed_attempt("malformed")
        self._settle(summary.model, summary.usage, answered=summary.readable)
        if not complete or self.key is None or summary.answer is None:
            return None
        return None if answer_problem(self.endpoint, summary.answer, self.payload) else summary.json_body

    def _settle(self, served: str | None, usage: dict[str, Any] | None, answered: bool = False) -> None:
        if self._reserved:
            self._reserved = False
            self.session.governor.settle(self.model, self.estimate, usage, served, answered)
