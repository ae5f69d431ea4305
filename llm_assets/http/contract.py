"""The official OpenAI client's contract, asked of the client itself: the headers it
sends, when it retries, how long it waits, and the errors it raises.

The engine's direct path (``llm_assets.http.direct``) sends over aiohttp without the
SDK's per-request machinery, but it must behave exactly like ``openai.AsyncOpenAI``:
same headers (auth, organization, project, platform, custom), same retried statuses
(408, 409, 429, 5xx, ``x-should-retry``), same waits (``retry-after-ms``,
``Retry-After`` up to two minutes, else 0.5 s doubling to 8 s with jitter), same
``max_retries``, and the same exception classes. So it does not re-implement any of it:
``SDKContract`` holds an official client (which never sends) and calls its own
methods. A test runs the fault catalogue through both paths and compares.

Examples:
    >>> import openai
    >>> contract = SDKContract(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=2))
    >>> contract.should_retry(503, {}), contract.should_retry(400, {"x-should-retry": "true"})
    (True, True)
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import openai

from llm_assets._compat import FinalRequestOptions
from llm_assets.http.body import ACCEPT_ENCODING
from llm_assets.http.pools import httpx

#: Set per attempt, as the SDK does.
RETRY_COUNT_HEADER = "x-stainless-retry-count"
#: Headers the HTTP library writes itself for each request.
_PER_REQUEST = ("host", "content-length", "connection", RETRY_COUNT_HEADER)


@dataclass(frozen=True)
class _Answer:
    """What the SDK's retry decision reads of a response."""

    status_code: int
    headers: Mapping[str, str]


class SDKContract:
    """The official ``client``'s own headers, retry decisions and errors (it never sends)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self.max_retries = client.max_retries
        self._options = FinalRequestOptions.construct(method="post", url="/", json_data={})

    async def aclose(self) -> None:
        """Close the client this contract asks (it never sends, but holds an HTTP client)."""
        await self.client.close()

    async def template(self, endpoint: str) -> tuple[str, dict[str, str]]:
        """The URL and headers the client sends a POST to ``endpoint`` with (built once by
        the client itself; the body's own headers and the retry count are per request)."""
        options = FinalRequestOptions.construct(method="post", url=endpoint, json_data={})
        options = await self.client._prepare_options(options)
        request = self.client._build_request(options, retries_taken=0)
        await self.client._prepare_request(request)
        headers = {name: value for name, value in request.headers.items() if name not in _PER_REQUEST}
        headers["accept-encoding"] = ACCEPT_ENCODING
        return str(request.url), headers

    def should_retry(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether the client retries an error response (with retries left)."""
        return self.client._should_retry(_Answer(status, headers))  # type: ignore[arg-type]

    async def wait(self, retries_taken: int, status: int | None = None, headers: Mapping[str, str] | None = None):
        """Wait as the client does before its next attempt, after ``retries_taken`` retries
        (``status`` and ``headers``: the error response, or none after a connection failure)."""
        answer = None if status is None or headers is None else _Answer(status, headers)
        await self.client._sleep_for_retry(
            retries_taken=retries_taken,
            max_retries=self.max_retries,
            options=self._options,
            response=answer,  # type: ignore[arg-type]
        )

    def status_error(self, url: str, status: int, headers: Any, content: bytes) -> openai.APIStatusError:
        """The exception the client raises for an error response."""
        response = httpx.Response(status, headers=list(headers.items()), content=content, request=_request(url))
        return self.client._make_status_error_from_response(response)

    def connection_error(self, url: str, timed_out: bool) -> openai.APIConnectionError:
        """The exception the client raises when the last attempt got no response."""
        if timed_out:
            return openai.APITimeoutError(request=_request(url))
        return openai.APIConnectionError(request=_request(url))


def _request(url: str) -> httpx.Request:
    return httpx.Request("POST", url)
