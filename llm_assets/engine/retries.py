"""Every retry of the engine's live requests, in one place: ``RetryPolicy``.

=============================================  ===========================  =========================================
What failed                                    Asked again                  After
=============================================  ===========================  =========================================
HTTP 408, 409, 429, 5xx, ``x-should-retry``,   ``max_retries`` times        ``Retry-After`` / ``retry-after-ms``, else
a connection error or a timeout                (the SDK's own decision)     0.5 s doubling to 8 s, with jitter
a 2xx body that is not the endpoint's JSON     ``max_retries`` times        the same backoff
a structured answer that does not validate     ``max_parse_retries`` times  at once (an answer cut at ``max_tokens``:
                                                                            never, it would be cut again)
a refusal (allow-list, budget), a translator   never                        --
error, any other 4xx
=============================================  ===========================  =========================================

The first row is the official client's contract
(``SDKContract``): the SDK applies it itself on the SDK
path, and ``DirectClient`` asks the same client for each
decision on the direct path. The other rows are applied by
``Sender``, with the SDK's own backoff.

Examples:
    >>> import openai
    >>> from llm_assets.errors import InvalidOutputError
    >>> contract = SDKContract(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=2))
    >>> policy = RetryPolicy(contract, max_parse_retries=1)
    >>> policy.retries_malformed(taken=1), policy.retries_malformed(taken=2)
    (True, False)
    >>> policy.reasks(InvalidOutputError("cut at max_tokens", retry=False), taken=0)
    False
"""

from dataclasses import dataclass

from llm_assets.errors import InvalidOutputError
from llm_assets.http.contract import SDKContract


@dataclass(frozen=True)
class RetryPolicy:
    """What the engine asks again, how often and after how long (see the module's table)."""

    http: SDKContract  # the official client's retried statuses, waits and max_retries
    max_parse_retries: int = 2

    @property
    def max_retries(self) -> int:
        return self.http.max_retries

    def retries_malformed(self, taken: int) -> bool:
        """Whether a malformed 2xx body is asked again after ``taken`` such retries."""
        return taken < self.max_retries

    async def wait_malformed(self, taken: int) -> None:
        """Back off before retrying a malformed body, as the SDK backs off."""
        await self.http.wait(taken)

    def reasks(self, error: InvalidOutputError, taken: int) -> bool:
        """Whether a structured answer that failed validation is asked for again after
        ``taken`` re-asks."""
        return error.retry and taken < self.max_parse_retries
