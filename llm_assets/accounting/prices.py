"""USD prices per 1M tokens, and the estimated cost of recorded usage.

``DEFAULT_PRICES`` are OpenAI's published standard (non-batch) rates as of
``PRICES_AS_OF`` (source: ``PRICES_SOURCE``); override or extend them with
``OpenAIResource(prices={...})``. Batch API requests cost ``BATCH_DISCOUNT`` of these
unless a model's ``batch_*`` rates say otherwise. A served model name (often a dated snapshot such as
``gpt-4o-mini-2024-07-18``) is priced by its longest listed prefix; a model with no
listed prefix has an *unknown* cost, never a guessed one.

Examples:
    >>> price = price_for("gpt-4o-mini-2024-07-18", DEFAULT_PRICES)
    >>> price.input, price.batch().input
    (0.15, 0.075)
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from llm_assets.errors import ConfigurationError

PRICES_AS_OF = "2025-06-01"
PRICES_SOURCE = "https://openai.com/api/pricing (standard tier)"
#: The Batch API's price as a share of the live one (OpenAI: half).
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens: uncached input, cached input, output (reasoning included), live
    and, when they differ from ``BATCH_DISCOUNT`` of those, through the Batch API."""

    input: float
    cached_input: float | None = None
    output: float = 0.0
    batch_input: float | None = None
    batch_cached_input: float | None = None
    batch_output: float | None = None

    def batch(self) -> "ModelPrice":
        """The rates of the Batch API (the ``batch_*`` given, else the live ones discounted)."""

        def rate(given: float | None, live: float | None) -> float | None:
            return given if given is not None else None if live is None else live * BATCH_DISCOUNT

        return ModelPrice(
            rate(self.batch_input, self.input),  # type: ignore[arg-type]
            rate(self.batch_cached_input, self.cached_input),
            rate(self.batch_output, self.output),  # type: ignore[arg-type]
        )

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        cached = min(cached, prompt)  # a server reporting more cached than prompt tokens is not believed
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1e6


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4.1-nano": ModelPrice(0.10, 0.025, 0.40),
    "gpt-4.1-mini": ModelPrice(0.40, 0.10, 1.60),
    "gpt-4.1": ModelPrice(2.00, 0.50, 8.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.075, 0.60),
    "gpt-4o": ModelPrice(2.50, 1.25, 10.00),
    "o4-mini": ModelPrice(1.10, 0.275, 4.40),
    "o3": ModelPrice(2.00, 0.50, 8.00),
    "gpt-3.5-turbo": ModelPrice(0.50, None, 1.50),
    "text-embedding-3-small": ModelPrice(0.02),
    "text-embedding-3-large": ModelPrice(0.13),
    "text-embedding-ada-002": ModelPrice(0.10),
    # the embedded local models cost nothing
    "smollm2-135m-instruct": ModelPrice(0.0),
    "multilingual-e5-small-q4": ModelPrice(0.0),
}


def price_table(overrides: Mapping[str, Mapping[str, float]] | None) -> dict[str, ModelPrice]:
    """``DEFAULT_PRICES`` with ``{"model": {"input": …, "cached_input": …, "output": …}}``
    applied (and optionally ``batch_input``, ``batch_cached_input``, ``batch_output``)."""
    table = dict(DEFAULT_PRICES)
    names = {f.name for f in fields(ModelPrice)}
    for model, price in (overrides or {}).items():
        unknown = set(price) - names
        if unknown or "input" not in price:
            raise ConfigurationError(
                f"prices[{model!r}] has {sorted(price)}: give 'input' and optionally 'cached_input', "
                "'output', 'batch_input', 'batch_cached_input' and 'batch_output', in USD per 1M tokens."
            )
        for field, value in price.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(
                    f"prices[{model!r}][{field!r}] is {value!r}: give a finite, non-negative USD per 1M tokens."
                )
        table[model] = ModelPrice(**price)
    return table


def price_for(model: str, table: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model`` by its longest listed prefix, or ``None`` (unknown)."""
    matches = [name for name in table if model == name or model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None
