"""Which models may be used and how much a run may spend, enforced before a request goes out.

A ``Governor`` sits in the HTTP transport, so it sees every request of every call
shape. A refused request never leaves the machine: the client gets an HTTP 403 with the
reason (an OpenAI-style error the SDK does not retry). Spending is what the server
reported, plus, for requests in flight, an estimate (prompt size plus ``max_tokens``), so
concurrent requests cannot overshoot the budget together.

Examples:
    >>> governor = Governor(allowed_models=["gpt-4o-mini"], max_tokens=None, max_cost_usd=None, prices={})
    >>> governor.refusal("gpt-4o", estimate=10).split(":")[0]
    "model 'gpt-4o' is not in allowed_models ['gpt-4o-mini']"
"""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from llm_assets.accounting.budgets import LocalBudget, SharedBudget, Spending
from llm_assets.accounting.prices import ModelPrice, price_for
from llm_assets.accounting.usage import normalize_usage

REFUSAL_CODE = "llm_assets_refused"


class Governor:
    """Allow-list and token / cost budgets, shared by all clients of a session. The
    spending is kept by ``budget``: this process's (``LocalBudget``) or the whole
    run's across processes (``SharedBudget``)."""

    def __init__(
        self,
        allowed_models: Sequence[str] | None,
        max_tokens: int | None,
        max_cost_usd: float | None,
        prices: Mapping[str, ModelPrice],
        budget: LocalBudget | SharedBudget | None = None,
    ) -> None:
        self.allowed_models = list(allowed_models) if allowed_models is not None else None
        self.max_tokens, self.max_cost_usd, self.prices = max_tokens, max_cost_usd, prices
        self.budget = budget or LocalBudget()
        self._warned_estimate = False

    @property
    def active(self) -> bool:
        return self.allowed_models is not None or self.limited

    @property
    def limited(self) -> bool:
        """Whether a token or cost budget is set."""
        return self.max_tokens is not None or self.max_cost_usd is not None

    @property
    def tokens(self) -> int:
        """Tokens spent (by the whole run, with a shared budget)."""
        return self.budget.totals().tokens

    @property
    def cost(self) -> float:
        """USD spent (by the whole run, with a shared budget)."""
        return self.budget.totals().cost

    def model_refusal(self, model: str | None) -> str | None:
        if self.allowed_models is None or model in self.allowed_models:
            return None
        return (
            f"model {model!r} is not in allowed_models {self.allowed_models}: ask for an allowed model, "
            "or add it to OpenAIResource(allowed_models=...)"
        )

    def _estimated_cost(self, model: str | None, estimate: int) -> float | None:
        price = price_for(model or "", self.prices)
        return None if price is None else estimate * max(price.input, price.output) / 1e6

    def refusal(self, model: str | None, estimate: int) -> str | None:
        """Why a request for ``model`` of about ``estimate`` tokens may not go out, if it may
        not; otherwise reserve its estimate."""
        return self.refusal_of_all([(model, estimate)])

    def refusal_of_all(self, requests: Sequence[tuple[str | None, int]]) -> str | None:
        """``refusal`` of many ``(model, estimate)`` requests at once (a batch): all
        are reserved, in one step, or none."""
        for model, _ in requests:
            if (refused := self.model_refusal(model)) is not None:
                return refused
        if not self.limited:
            return None
        costs = [self._estimated_cost(model, estimate) for model, estimate in requests]
        if self.max_cost_usd is not None and None in costs:
            model = requests[costs.index(None)][0]
            return (
                f"model {model!r} has no price, so max_cost_usd_per_run cannot be enforced: add it to "
                "OpenAIResource(prices=...), or unset max_cost_usd_per_run"
            )
        tokens, cost = sum(estimate for _, estimate in requests), sum(c or 0.0 for c in costs)
        return self.budget.reserve(tokens, cost, lambda total: self._over(total, tokens, cost))

    def _over(self, total: Spending, estimate: int, cost: float) -> str | None:
        """Why ``estimate`` tokens costing ``cost`` do not fit next to ``total``, if they don't."""
        whose = " by the run's steps together" if self.budget.shared else ""
        spent = f"{total.tokens} tokens spent{whose}"
        if self.max_tokens is not None and total.tokens + total.reserved_tokens + estimate > self.max_tokens:
            return (
                f"max_tokens_per_run {self.max_tokens} would be exceeded: {spent}, "
                f"{total.reserved_tokens} in flight, ~{estimate} needed. Answers so far are kept (cached); "
                "raise the budget and re-run to continue."
            )
        if self.max_cost_usd is not None and total.cost + total.reserved_cost + cost > self.max_cost_usd:
            return (
                f"max_cost_usd_per_run ${self.max_cost_usd:g} would be exceeded: ${total.cost:.6f} spent{whose}"
                f", ~${cost:.6f} needed. Answers so far are kept (cached); "
                "raise the budget and re-run."
            )
        return None

    def settle(
        self,
        model: str | None,
        estimate: int,
        usage: Mapping[str, Any] | None,
        served: str | None,
        *,
        answered: bool = True,
        batch: bool = False,
    ) -> None:
        """Replace a reservation by what the server reported (nothing, if it failed). An
        answer without usage (``usage: null``, a stream without ``include_usage``) is
        counted at its estimate, so a budget still holds. ``batch``: priced at Batch API rates."""
        if not self.limited:
            return
        if answered and not isinstance(usage, Mapping):
            usage = {"prompt_tokens": estimate, "total_tokens": estimate}
            if not self._warned_estimate:
                self._warned_estimate = True
                dg.get_dagster_logger("llm_assets").warning(
                    "The server reports no token usage, so the run's budget counts each answer at its estimate "
                    "(prompt size plus max_tokens); ask for usage (stream_options include_usage) to be exact."
                )
        tokens, cost = 0, 0.0
        if isinstance(usage, Mapping) and usage:
            counts = normalize_usage(usage)
            tokens = counts["total_tokens"] or 0
            price = price_for(served or model or "", self.prices)
            if price is not None:
                price = price.batch() if batch else price
                cost = price.cost(
                    counts["prompt_tokens"] or 0, counts["cached_tokens"] or 0, counts["completion_tokens"] or 0
                )
        self.budget.settle(estimate, self._estimated_cost(model, estimate) or 0.0, tokens, cost)

    def flush(self) -> None:
        """Write settled spending to a shared budget now (at the end of a block of work)."""
        self.budget.flush()

    def close(self) -> None:
        self.budget.close()
