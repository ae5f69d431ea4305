"""Allow-lists, budgets and cost: refusals send nothing, spending is exact, cost is priced."""

import dagster as dg
import pandas as pd
import pytest
from openai import PermissionDeniedError

from llm_assets import OpenAIResource, build_chat_answers_asset
from llm_assets.accounting.governance import Governor
from llm_assets.accounting.prices import DEFAULT_PRICES, price_for
from llm_assets.accounting.usage import Usage
from llm_assets_tests.support import failure_message, metadata_values, usage_metadata

PROMPTS = [f"Budget question number {i}" for i in range(100)]


@dg.asset
def prompts() -> pd.DataFrame:
    return pd.DataFrame({"text": PROMPTS})


answers = build_chat_answers_asset(key="answers", upstream=prompts, text_column="text", prompt="{text}", max_tokens=20)


def test_a_model_outside_the_allow_list_is_refused_before_sending(server, materialize):
    resource = OpenAIResource(base_url=server.base_url, allowed_models=["gpt-4o-mini", "text-embedding-3-small"])
    result = materialize(
        [prompts, answers],
        resource,
        run_config={"ops": {"answers": {"config": {"chat_model": "gpt-4.1"}}}},
        raise_on_error=False,
    )
    assert not result.success
    message = failure_message(result)
    assert "model 'gpt-4.1' is not in allowed_models ['gpt-4o-mini', 'text-embedding-3-small']" in message
    assert server.stats.requests == []


def test_the_allow_list_also_guards_your_own_client_calls(server, materialize):
    @dg.asset
    def direct(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client, pytest.raises(PermissionDeniedError, match="allowed_models"):
            client.chat.completions.create(model="o3", messages=[{"role": "user", "content": "hi"}])

    resource = OpenAIResource(base_url=server.base_url, allowed_models=["gpt-4o-mini"])
    assert materialize([direct], resource).success
    assert server.stats.requests == []


def test_token_budget_stops_sending_keeps_answers_and_fails_clearly(server, materialize):
    budget = 500  # each request is estimated at ~45 tokens and costs 10
    resource = OpenAIResource(base_url=server.base_url, max_concurrency=8, max_tokens_per_run=budget)
    result = materialize([prompts, answers], resource, raise_on_error=False)
    assert not result.success
    assert "max_tokens_per_run 500 would be exceeded" in failure_message(result)
    sent = len(server.stats.requests)
    assert 0 < sent < len(PROMPTS)
    assert server.usage.total_tokens <= budget  # the server never billed past the budget
    bigger = OpenAIResource(base_url=server.base_url, max_concurrency=8, max_tokens_per_run=100_000)
    server.reset()
    assert materialize([prompts, answers], bigger, raise_on_error=False).success
    assert len(server.stats.requests) == len(PROMPTS) - sent  # completed answers were kept


def test_cost_budget_and_unpriced_models(server, materialize):
    resource = OpenAIResource(
        base_url=server.base_url,
        max_concurrency=4,
        max_cost_usd_per_run=0.001,
        prices={"gpt-4o-mini": {"input": 1.0, "output": 4.0}},
    )
    result = materialize([prompts, answers], resource, raise_on_error=False)
    assert not result.success and "max_cost_usd_per_run $0.001 would be exceeded" in failure_message(result)
    assert 0 < len(server.stats.requests) < len(PROMPTS)

    server.reset()
    unpriced = OpenAIResource(base_url=server.base_url, max_cost_usd_per_run=1.0, chat_model="my-finetune")
    result = materialize([prompts, answers], unpriced, raise_on_error=False)
    assert "model 'my-finetune' has no price" in failure_message(result)
    assert server.stats.requests == []


def test_cost_metadata_is_priced_from_the_reported_usage(server, materialize):
    server.report_details = True  # cached and reasoning tokens
    resource = OpenAIResource(base_url=server.base_url)
    result = materialize([prompts, answers], resource, raise_on_error=False)
    assert result.success
    meta = metadata_values(
        next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["answers"])
    )
    served = "gpt-4o-mini-2024-07-18"
    usage = server.usage.models[served]
    price = price_for(served, DEFAULT_PRICES)
    by_hand = (
        (usage.prompt_tokens - usage.cached_tokens) * 0.15
        + usage.cached_tokens * 0.075
        + usage.completion_tokens * 0.60
    ) / 1e6
    assert (price.input, price.cached_input, price.output) == (0.15, 0.075, 0.60)
    assert meta[f"openai.{served}.cost_usd"] == pytest.approx(by_hand) == meta["openai.cost_usd"]


def test_unknown_models_say_the_cost_is_unknown(server, materialize):
    resource = OpenAIResource(base_url=server.base_url, chat_model="my-finetune")
    result = materialize([prompts, answers], resource, raise_on_error=False)
    recorded = usage_metadata(
        next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["answers"])
    )
    assert recorded["openai.cost_unknown_models"] == "my-finetune"
    assert "openai.cost_usd" not in recorded and recorded["openai.my-finetune.total_tokens"] > 0


def test_a_budget_holds_when_the_server_reports_no_usage(server, materialize, instance):
    server.usage_null = True  # many local servers answer with usage: null
    resource = OpenAIResource(base_url=server.base_url, max_tokens_per_run=300, max_concurrency=1)
    result = materialize([prompts, answers], resource, raise_on_error=False)
    assert not result.success and "max_tokens_per_run 300 would be exceeded" in failure_message(result)
    assert 0 < len(server.stats.requests) < len(PROMPTS)  # each answer counted at its estimate
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert sum("reports no token usage" in line for line in logs) == 1


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": "5"}},
        {"prompt_tokens": 10, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": [1]}},
        {"prompt_tokens": 10, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": float("nan")}},
        {"prompt_tokens": 10, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 10**30}},
        {"prompt_tokens": -100, "total_tokens": float("inf"), "prompt_tokens_details": 7},
    ],
)
def test_odd_usage_never_breaks_or_defeats_the_budget(usage):
    governor = Governor(None, max_tokens=10**6, max_cost_usd=1.0, prices=DEFAULT_PRICES)
    assert governor.refusal("gpt-4o-mini", estimate=50) is None
    governor.settle("gpt-4o-mini", 50, usage, "gpt-4o-mini")
    assert 0 <= governor.cost < 1e-4 and 0 <= governor.tokens <= 12  # finite, non-negative, believable
    recorded = Usage()
    recorded.add_response("gpt-4o-mini", usage)
    assert all(v >= 0 for k, v in recorded.to_metadata(DEFAULT_PRICES).items() if isinstance(v, int | float))
