"""One billed request on its way, whatever sends it: whose usage, its cache key, its
admission by the governor and its turn with the rate limits.

Both paths that send billed requests go through an ``Exchange``: the httpx
transports under the OpenAI SDK's clients (``llm_assets.http.transport``) and the
engine's direct aiohttp path (``llm_assets.http.direct``). It knows nothing of HTTP
libraries, of sessions or of the cache's files: each path tells it what happened
(admitted, sent, a status, a body, a failure) and it meters, settles and picks the body
to cache. It works with two collaborators: the usage counter it bills and the
``Gate`` that admits and paces it.

Examples:
    >>> usage = Usage()
    >>> exchange = Exchange(Gate(), usage, "/chat/completions", b'{"model": "m"}')
    >>> exchange.finished(BodySummary("m", {"total_tokens": 3}, b"{}", answer={}), complete=True) is None
    True
    >>> usage.total_tokens
    3
"""

from typing import Any

from llm_assets.accounting.gate import Gate
from llm_assets.accounting.limits import request_estimate
from llm_assets.accounting.provider_limits import Ticket
from llm_assets.accounting.usage import Usage
from llm_assets.cache.answers import answer_problem
from llm_assets.http.body import BodySummary


class Exchange:
    """One billed POST of JSON ``content`` (decoded: ``payload``, when the caller parsed
    it; needed when the gate checks requests or the answer is cached) to ``endpoint``,
    billed to ``usage`` and let through by ``gate``; ``key``: its cache key (``None``: its
    answer is not stored)."""

    def __init__(
        self, gate: Gate, usage: Usage, endpoint: str, content: bytes, payload: Any = None, *, key: str | None = None
    ) -> None:
        self.gate, self.usage, self.endpoint, self.key = gate, usage, endpoint, key
        self.payload: dict[str, Any] | None = payload if isinstance(payload, dict) else None
        model = self.payload.get("model") if self.payload is not None else None
        self.model = model if isinstance(model, str) else None
        self.estimate = request_estimate(content, self.payload) if self.payload is not None and gate.active else 0
        self.ticket: Ticket | None = None  # its place with the rate limits, once it has one
        self.sent = False  # handed to the connection: the provider may bill it, answered or not
        self._reserved = False

    def admit(self) -> None:
        """Reserve its estimate with the governor, or raise
        ``GovernanceError`` (it is never sent)."""
        if self.gate.governed:
            self.gate.admit(self.model, self.estimate)
            self._reserved = True

    async def admit_async(self) -> None:
        """``admit`` from a coroutine (a shared budget is checked off the event loop)."""
        if self.gate.governed:
            await self.gate.admit_async(self.model, self.estimate)
            self._reserved = True

    async def go(self) -> None:
        """Wait for its turn with the rate limits; from now on it counts as sent."""
        if self.gate.paced:
            self.ticket = await self.gate.turn(self.estimate, self.model)
        self.sent = True

    def go_blocking(self) -> None:
        """``go``, blocking this thread."""
        if self.gate.paced:
            self.ticket = self.gate.turn_blocking(self.estimate, self.model)
        self.sent = True

    def observe(self, status: int, headers: Any) -> bool:
        """A response arrived: the rate limits learn from its headers. Returns whether it is
        a success; an error status is a failed attempt (nothing billed; maybe retried)."""
        if self.gate.paced:
            self.gate.observe(status, headers, self.ticket)
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
        if self.gate.paced:
            self.gate.abandoned(self.ticket)
        unknown = {"prompt_tokens": self.estimate, "total_tokens": self.estimate} if self.sent else None
        self._settle(None, unknown, answered=self.sent)

    def finished(self, summary: BodySummary, *, complete: bool, damaged: bool = False) -> bytes | None:
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

    def _settle(self, served: str | None, usage: dict[str, Any] | None, *, answered: bool = False) -> None:
        if self._reserved:
            self._reserved = False
            self.gate.settle(self.model, self.estimate, usage, served, answered=answered)
