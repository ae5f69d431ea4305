"""How the engine sends one call: through the direct path or the SDK, asked again while a
structured answer does not validate, and its failure named.

:func:`poster` opens what the engine's requests go through for one run:
:class:`~llm_assets.http.direct.DirectClient` (``SendPath.DIRECT``, the default: aiohttp
with the SDK's retry contract) or the official ``openai.AsyncOpenAI`` over the metered
transports (``SendPath.SDK``). Both meter, cache, govern and pace each request through
the same :class:`~llm_assets.http.exchange.Exchange`, and raise the SDK's errors.

Example:
    >>> SendPath("sdk")
    <SendPath.SDK: 'sdk'>
"""

import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from llm_assets.accounting.governance import REFUSAL_CODE
from llm_assets.accounting.usage import Usage
from llm_assets.cache import CacheMode
from llm_assets.calls import MALFORMED, Call, ErrorPolicy
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
from llm_assets.http.direct import DirectClient
from llm_assets.http.pools import httpx
from llm_assets.redaction import mask_secrets, redact
from llm_assets.session import RunSession

T = TypeVar("T")

#: ``post(call, usage, key)``: the decoded answer to one attempt of ``call`` (``None``: a 2xx
#: body that is not JSON), retried by the SDK's contract on HTTP and connection errors.
Post = Callable[[Call[Any], Usage, str | None], Awaitable[Any]]


class SendPath(enum.Enum):
    """What the engine's requests go through (both behave the same; DIRECT costs less CPU)."""

    DIRECT = "direct"  # aiohttp, each endpoint's headers built once, one JSON parse per answer
    SDK = "sdk"  # the official openai.AsyncOpenAI's post()


@asynccontextmanager
async def poster(session: RunSession, path: SendPath, cache: CacheMode, connections: int) -> AsyncIterator[Post]:
    """The ``post`` of one engine run over ``path``; the engine has looked every call up in
    the request cache already (``cache`` still stores answers)."""
    if path is SendPath.DIRECT:
        async with DirectClient(session, cache, connections) as client:

            async def post(call: Call[Any], usage: Usage, key: str | None) -> Any:
                return await client.post(call.endpoint, call.body, usage, key)

            yield post
        return
    async with session.async_client(None, cache) as sdk:

        async def post_via_sdk(call: Call[Any], usage: Usage, key: str | None) -> Any:  # the transport keys it
            with billed_to(usage, looked_up=cache.reads):
                response = await sdk.post(call.endpoint, cast_to=httpx.Response, body=call.body)
            try:
                return response.json()
            except ValueError:
                return None

        yield post_via_sdk


@dataclass(frozen=True)
class Sender:
    """Sends calls with ``post``: HTTP and connection errors retried by the SDK's contract,
    malformed 2xx bodies by tenacity (same count, exponential backoff with jitter), and
    structured answers that do not validate asked again up to ``max_parse_retries`` times."""

    post: Post
    session: RunSession
    on_error: ErrorPolicy
    max_parse_retries: int
    warn: Callable[[str], None]  # logs a failure recorded in its row

    async def outcome(self, call: Call[T], usage: Usage, key: str | None = None) -> T | LLMRequestError:
        """The call's result, a recorded failure, or the error that stops the run (``key``:
        its cache key, when the engine computed it already)."""
        try:
            return await self._send(call, usage, key)
        except LLMRequestError as error:
            if self.on_error is ErrorPolicy.FAIL or call.failed is None or isinstance(error, GovernanceError):
                return error
            self.warn(str(error))
            return call.failed(error.recorded)

    async def _send(self, call: Call[T], usage: Usage, key: str | None) -> T:
        """One call, asked again while its structured answer does not validate."""
        for attempt in range(self.max_parse_retries + 1):
            try:
                return await self._send_once(call, usage, key)
            except InvalidOutputError as error:
                if attempt == self.max_parse_retries or not error.retry:
                    why = f"{INVALID_OUTPUT} after {attempt + 1} attempt(s): the answer {self.text(str(error))}"
                    raise LLMRequestError(f"Request for {self.text(call.description)} failed: {why}", why) from None
                usage.add_parse_retry()
        raise AssertionError("unreachable")

    async def _send_once(self, call: Call[T], usage: Usage, key: str | None) -> T:
        async def attempt() -> T:
            sent = time.perf_counter()
            body = await self.post(call, usage, key)
            if not isinstance(body, dict):  # the exchange counted this failed attempt
                raise MalformedResponseError("malformed response body (not a JSON object)")
            try:
                return call.read(body, False, time.perf_counter() - sent)
            except (HookError, InvalidOutputError):
                raise
            except MALFORMED as error:
                usage.add_failed_attempt("malformed")
                raise MalformedResponseError(f"malformed response body ({type(error).__name__}: {error})") from error

        try:
            try:
                return await attempt()
            except MalformedResponseError:
                if self.session.max_retries == 0:
                    raise
            retrying = AsyncRetrying(  # only built on the rare malformed body
                retry=retry_if_exception_type(MalformedResponseError),
                stop=stop_after_attempt(self.session.max_retries),
                wait=wait_exponential_jitter(multiplier=0.5, max=8),
                reraise=True,
            )
            return await retrying(attempt)
        except openai.APIStatusError as error:
            if isinstance(error.body, dict) and error.body.get("code") == REFUSAL_CODE:
                raise GovernanceError(
                    f"Request for {self.text(call.description)} was not sent: {error.body['message']}"
                ) from None
            raise LLMRequestError(self._failure(call, error)) from None
        except (openai.OpenAIError, MalformedResponseError) as error:
            raise LLMRequestError(self._failure(call, error)) from None
        except UnicodeEncodeError as error:  # the factories check their texts; a translator may not
            raise LLMRequestError(
                f"Request for {self.text(call.description)} holds text that can't be sent "
                f"({error.reason} at {error.start}): clean it, e.g. with .encode('utf-8', 'replace').decode()."
            ) from None

    def _failure(self, call: Call[Any], error: BaseException) -> str:
        """The server's own message for an API error, else the error; secrets masked (a
        server may echo the key it was sent)."""
        message = (
            f"HTTP {error.status_code}: {error.message}" if isinstance(error, openai.APIStatusError) else str(error)
        )
        hint = style_hint(call.body, message) if isinstance(error, openai.APIStatusError) else ""
        api_key = self.session.client_kwargs["api_key"]
        return f"Request for {self.text(call.description)} failed: {mask_secrets(message, api_key)}{hint}"

    def text(self, text: str) -> str:
        """Text about prompts as the library may log it (redacted when asked)."""
        return redact(text) if self.session.redact_text else text
