"""How the engine sends one call: posted by the direct path or the SDK, asked again per
the ``RetryPolicy``, and its failure named.

A ``Poster`` sends one call's POST: ``DirectClient``
(``SendPath.DIRECT``, the default: aiohttp with the SDK's retry contract) or
``SDKPoster`` (``SendPath.SDK``: the official ``openai.AsyncOpenAI`` over the
metered transports). Both meter, cache, govern and pace each request through the same
``Exchange``, raise the SDK's errors, and raise
``GovernanceError`` for a refused request. ``Sender`` turns
their answers into the call's result.

Examples:
    >>> SendPath("sdk")
    <SendPath.SDK: 'sdk'>
"""

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import openai

from llm_assets.accounting.usage import Usage
from llm_assets.calls import MALFORMED, Call, ErrorPolicy
from llm_assets.engine.retries import RetryPolicy
from llm_assets.engine.structured import style_hint
from llm_assets.errors import (
    INVALID_OUTPUT,
    GovernanceError,
    HookError,
    InvalidOutputError,
    LLMRequestError,
    MalformedResponseError,
)
from llm_assets.http.attribution import billed_to
from llm_assets.http.pools import httpx
from llm_assets.http.transport import REFUSAL_CODE
from llm_assets.redaction import mask_secrets

T = TypeVar("T")


class SendPath(enum.Enum):
    """What the engine's requests go through (both behave the same; DIRECT costs less CPU)."""

    DIRECT = "direct"  # aiohttp, each endpoint's headers built once, one JSON parse per answer
    SDK = "sdk"  # the official openai.AsyncOpenAI's post()


class Poster(Protocol):
    """Sends one call's POST, with the HTTP retries of the SDK's contract."""

    async def post(self, endpoint: str, body: dict[str, Any], usage: Usage, key: str | None) -> Any:
        """The decoded answer (``None``: a 2xx body that is not JSON), billed to ``usage``
        and stored under cache ``key``."""
        ...


class SDKPoster:
    """Posts through the official ``client`` (over a session's metered transport, which
    keys the cache itself; ``looked_up``: the engine already read the cache)."""

    def __init__(self, client: openai.AsyncOpenAI, *, looked_up: bool) -> None:
        self.client, self.looked_up = client, looked_up

    async def post(self, endpoint: str, body: dict[str, Any], usage: Usage, key: str | None) -> Any:
        with billed_to(usage, looked_up=self.looked_up):
            try:
                response = await self.client.post(endpoint, cast_to=httpx.Response, body=body)
            except openai.APIStatusError as error:
                if isinstance(error.body, dict) and error.body.get("code") == REFUSAL_CODE:
                    raise GovernanceError(error.body["message"]) from None  # the transport's 403, decoded once
                raise
        try:
            return response.json()
        except ValueError:
            return None


@dataclass(frozen=True)
class Sender:
    """Sends calls with ``poster``, asked again per ``policy``; a failure is named
    (``describe``: text about prompts as it may be logged; ``secret``: masked in
    messages) and, under ``on_error=RECORD``, recorded in its row and logged by ``warn``."""

    poster: Poster
    policy: RetryPolicy
    on_error: ErrorPolicy
    warn: Callable[[str], None]
    describe: Callable[[str], str] = str
    secret: str | None = None

    async def outcome(self, call: Call[T], usage: Usage, key: str | None = None) -> T | LLMRequestError:
        """The call's result, a recorded failure, or the error that stops the run (``key``:
        its cache key; ``None``: its answer is not stored)."""
        try:
            return await self.send(call, usage, key)
        except LLMRequestError as error:
            if self.on_error is ErrorPolicy.FAIL or call.failed is None or isinstance(error, GovernanceError):
                return error
            self.warn(str(error))
            return call.failed(error.recorded)

    async def send(self, call: Call[T], usage: Usage, key: str | None = None) -> T:
        """The call's result, asked again while the policy says so; else one
        ``LLMRequestError`` naming the call."""
        malformed = invalid = 0
        while True:
            try:
                return await self._attempt(call, usage, key)
            except MalformedResponseError as error:
                if not self.policy.retries_malformed(malformed):
                    raise LLMRequestError(self._failure(call, error)) from None
                await self.policy.wait_malformed(malformed)
                malformed += 1
            except InvalidOutputError as error:
                if not self.policy.reasks(error, invalid):
                    why = f"{INVALID_OUTPUT} after {invalid + 1} attempt(s): the answer {self.describe(str(error))}"
                    raise LLMRequestError(f"Request for {self.describe(call.description)} failed: {why}", why) from None
                usage.add_parse_retry()
                invalid, malformed = invalid + 1, 0  # a new question: its own malformed retries
            except GovernanceError as error:
                raise GovernanceError(f"Request for {self.describe(call.description)} was not sent: {error}") from None
            except openai.OpenAIError as error:
                raise LLMRequestError(self._failure(call, error)) from None
            except UnicodeEncodeError as error:  # the factories check their texts; a translator may not
                raise LLMRequestError(
                    f"Request for {self.describe(call.description)} holds text that can't be sent "
                    f"({error.reason} at {error.start}): clean it, e.g. with .encode('utf-8', 'replace').decode()."
                ) from None

    async def _attempt(self, call: Call[T], usage: Usage, key: str | None) -> T:
        """One POST of ``call`` (with its HTTP retries), read into its result."""
        sent = time.perf_counter()
        body = await self.poster.post(call.endpoint, call.body, usage, key)
        if not isinstance(body, dict):  # the exchange counted this failed attempt
            raise MalformedResponseError("malformed response body (not a JSON object)")
        try:
            return call.read(body, cached=False, latency=time.perf_counter() - sent)
        except (HookError, InvalidOutputError):
            raise
        except MALFORMED as error:
            usage.add_failed_attempt("malformed")
            raise MalformedResponseError(f"malformed response body ({type(error).__name__}: {error})") from error

    def _failure(self, call: Call[Any], error: BaseException) -> str:
        """The server's own message for an API error, else the error; secrets masked (a
        server may echo the key it was sent)."""
        api_error = isinstance(error, openai.APIStatusError)
        message = f"HTTP {error.status_code}: {error.message}" if api_error else str(error)
        hint = style_hint(call.body, message) if api_error else ""
        return f"Request for {self.describe(call.description)} failed: {mask_secrets(message, self.secret)}{hint}"
