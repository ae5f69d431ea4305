"""Which models may be used and how much a run may spend, enforced before a request goes out.

A :class:`Governor` sits in the HTTP transport, so it sees every request of every call
shape. A refused request never leaves the machine: the client gets an HTTP 403 with the
reason (an OpenAI-style error the SDK does not retry). Spending is what the server
reported, plus, for requests in flight, an estimate (prompt size plus ``max_tokens``), so
concurrent requests cannot overshoot the budget together.

Example:
    >>> governor = Governor(allowed_models=["gpt-4o-mini"], max_tokens=None, max_cost_usd=None, prices={})
    >>> governor.refusal("gpt-4o", estimate=10).split(":")[0]
    "model 'gpt-4o' is not in allowed_models ['gpt-4o-mini']"
"""

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from llm_assets.accounting.prices import ModelPrice, price_for
from llm_assets.accounting.usage import normalize_usage

REFUSAL_CODE = "llm_assets_refused"


class Governor:
    """Allow-list and token / cost budgets, shared by all clients of a session (see
    :mod:`llm_assets.session` for its scope: the run, or one step)."""

    def __init__(
        self,
        allowed_models: Sequence[str] | None,
        max_tokens: int | None,
        max_cost_usd: float | None,
        prices: Mapping[str, ModelPrice],
    ) -> None:
        self.allowed_models = list(allowed_models) if allowed_models is not None else None
        self.max_tokens, self.max_cost_usd, self.prices = max_tokens, max_cost_usd, prices
        self.tokens = 0
        self.cost = 0.0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._lock = threading.Lock()
        self._warned_estimate = False

    @property
    def active(self) -> bool:
        return self.allowed_models is not None or self.max_tokens is not None or self.max_cost_usd is not None

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
        if (refused := self.model_refusal(model)) is not None:
            return refused
        with self._lock:
            if self.max_tokens is not None and self.tokens + self._reserved_tokens + estimate > self.max_tokens:
                return (
                    f"max_tokens_per_run {self.max_tokens} would be exceeded: {self.tokens} tokens spent, "
                    f"{self._reserved_tokens} in flight, ~{estimate} needed. Answers so far are kept (cached); "
                    "raise the budget and re-run to continue."
                )
            cost = self._estimated_cost(model, estimate)
            if self.max_cost_usd is not None:
                if cost is None:
                    return (
                        f"model {model!r} has no price, so max_cost_usd_per_run cannot be enforced: add it to "
                        "OpenAIResource(prices=...), or unset max_cost_usd_per_run"
                    )
                if self.cost + self._reserved_cost + cost > self.max_cost_usd:
                    return (
                        f"max_cost_usd_per_run ${self.max_cost_usd:g} would be exceeded: ${self.cost:.6f} spent, "
                        f"~${cost:.6f} needed. Answers so far are kept (cached); raise the budget and re-run."
                    )
            self._reserved_tokens += estimate
            self._reserved_cost += cost or 0.0
        return None

    def settle(
        self,
        model: str | None,
        estimate: int,
        usage: Mapping[str, Any] | None,
        served: str | None,
        answered: bool = True,
        batch: bool = False,
    ) -> None:
        """Replace a reservation by what the server reported (nothing, if it failed). An
        answer without usage (``usage: null``, a stream without ``include_usage``) is
        counted at its estimate, so a budget still holds. ``batch``: priced at Batch API rates."""
        if answered and not isinstance(usage, Mapping) and (self.max_tokens or self.max_cost_usd):
            usage = {"prompt_tokens": estimate, "total_tokens": estimate}
            if not self._warned_estimate:
                self._warned_estimate = True
                dg.get_dagster_logger("llm_assets").warning(
                    "The server reports no token usage, so the run's budget counts each answer at its estimate "
                    "(prompt size plus max_tokens); ask for usage (stream_options include_usage) to be exact."
                )
        with self._lock:
            self._reserved_tokens -= estimate
            self._reserved_cost -= self._estimated_cost(model, estimate) or 0.0
            if isinstance(usage, Mapping) and usage:
                counts = normalize_usage(usage)
                self.tokens += counts["total_tokens"] or 0
                price = price_for(served or model or "", self.prices)
                if price is not None and batch:
                    price = price.batch()
                if price is not None:
                    self.cost += price.cost(
                        counts["prompt_tokens"] or 0,
                        counts["cached_tokens"] or 0,
                        counts["completion_tokens"] or 0,
                    )
