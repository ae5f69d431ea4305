"""Whether a request may go, and when: the ``Gate`` every billed request passes.

It holds the two things that decide: the ``Governor``
(the allow-list and the run's budgets: may it go at all?) and the
``RateLimits`` (the configured ceilings and the
provider's headers: when?). A refusal is a ``GovernanceError``
raised where it is decided; nothing was sent.

Examples:
    >>> gate = Gate(Governor(allowed_models=["gpt-4o-mini"], max_tokens=None, max_cost_usd=None, prices={}))
    >>> gate.admit("gpt-4o-mini", estimate=10)
    >>> gate.admit("gpt-4o", estimate=10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    llm_assets.errors.GovernanceError: model 'gpt-4o' is not in allowed_models ['gpt-4o-mini']: ...
    >>> Gate().active  # no allow-list, budget or rate limit: every request goes at once
    False
"""

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from llm_assets.accounting.governance import Governor
from llm_assets.accounting.limits import RateLimits
from llm_assets.accounting.provider_limits import Ticket
from llm_assets.errors import GovernanceError


class Gate:
    """The governor and the rate limits of one session (either may be absent: no checks)."""

    def __init__(self, governor: Governor | None = None, limits: RateLimits | None = None) -> None:
        self.governor = governor or Governor(None, None, None, {})
        self.limits = limits or RateLimits(None, None)

    @property
    def governed(self) -> bool:
        """Whether the governor checks requests (an allow-list or a budget is set)."""
        return self.governor.active

    @property
    def paced(self) -> bool:
        """Whether requests wait for their turn with the rate limits."""
        return self.limits.active

    @property
    def active(self) -> bool:
        """Whether requests pass any check (else the gate costs nothing, not even a parse)."""
        return self.governed or self.paced

    # -- may it go? ---------------------------------------------------------------------------

    def admit(self, model: str | None, estimate: int) -> None:
        """Reserve ``estimate`` tokens of ``model`` with the governor, or raise
        ``GovernanceError`` saying why the request may not go."""
        reason = self.governor.refusal(model, estimate)
        if reason is not None:
            raise GovernanceError(reason)

    async def admit_async(self, model: str | None, estimate: int) -> None:
        """``admit`` from a coroutine: a budget shared across processes is checked in
        its database, in a thread, and a cancellation meanwhile gives the reservation back."""
        if not self.governor.budget.shared:
            return self.admit(model, estimate)
        check = asyncio.ensure_future(asyncio.to_thread(self.admit, model, estimate))
        try:
            return await asyncio.shield(check)
        except asyncio.CancelledError:
            with contextlib.suppress(GovernanceError):
                await check
                self.settle(model, estimate, None, None, answered=False)  # reserved, but it never goes
            raise

    def settle(
        self, model: str | None, estimate: int, usage: Mapping[str, Any] | None, served: str | None, *, answered: bool
    ) -> None:
        """Replace an admitted request's reservation by what the server reported."""
        self.governor.settle(model, estimate, usage, served, answered=answered)

    # -- when? --------------------------------------------------------------------------------

    async def turn(self, estimate: int, model: str | None) -> Ticket:
        """Wait (without blocking the event loop) for the request's turn with the rate limits."""
        return await self.limits.acquire(estimate, model)

    def turn_blocking(self, estimate: int, model: str | None) -> Ticket:
        """Wait (blocking this thread) for the request's turn."""
        return self.limits.acquire_blocking(estimate, model)

    def observe(self, status: int, headers: Any, ticket: Ticket | None) -> None:
        """A response to ``ticket``'s request arrived: the rate limits learn from its headers."""
        self.limits.observe(status, headers, ticket)

    def abandoned(self, ticket: Ticket | None) -> None:
        """``ticket``'s request got no response: its place with the rate limits is given back."""
        self.limits.abandoned(ticket)
