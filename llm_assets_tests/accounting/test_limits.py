"""Rate limits: pacing proven on a fake clock by counting grants, never by timing."""

import asyncio

import dagster as dg
import pandas as pd
import pytest

from llm_assets import OpenAIResource, build_chat_answers_asset
from llm_assets.accounting.limits import RateLimits, _Waiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def grant_times(limits: RateLimits, clock: FakeClock, tokens: list[int]) -> list[float]:
    """When each request (reserved at the clock's current time, in order) may go out."""
    return [clock.now + limits.reserve(t) for t in tokens]


def test_requests_are_spaced_evenly_so_no_window_exceeds_its_share():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=1200, tokens_per_minute=None, clock=clock)  # one per 50 ms
    starts = grant_times(limits, clock, [10] * 60)
    assert starts == pytest.approx([i * 0.05 for i in range(60)])
    for i, start in enumerate(starts):  # any 1-second window holds at most 20 (+1 at its edge)
        assert sum(1 for t in starts[i:] if t - start < 1.0) <= 21


def test_an_idle_limiter_does_not_bank_requests():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=60, tokens_per_minute=None, clock=clock)
    assert grant_times(limits, clock, [1, 1]) == [0.0, 1.0]
    clock.now = 100.0  # a long pause earns no burst: still one a second
    assert grant_times(limits, clock, [1, 1, 1]) == [100.0, 101.0, 102.0]


def test_tokens_burst_to_ten_seconds_worth_then_refill():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=6000, clock=clock)  # bucket 1,000, +100/s
    assert limits.reserve(1000) == 0.0  # a full bucket goes at once
    assert limits.reserve(100) == pytest.approx(1.0)  # then 100 tokens a second
    assert limits.reserve(50_000) == pytest.approx(501.0)  # a request above the bucket waits for all it needs
    clock.now = 1000.0
    assert limits.reserve(1000) == 0.0


def test_both_limits_together_wait_for_the_later():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=60, tokens_per_minute=600, clock=clock)  # 1 req/s, bucket 100, +10/s
    assert [limits.reserve(100), limits.reserve(10), limits.reserve(30)] == pytest.approx([0.0, 1.0, 4.0])


def test_every_request_sent_reserves_once_and_cache_hits_never(server, materialize):
    @dg.asset
    def questions() -> pd.DataFrame:
        return pd.DataFrame({"question": [f"paced question {i}" for i in range(30)]})

    answers = build_chat_answers_asset(key="answers", upstream=questions, text_column="question", prompt="{text}")

    @dg.asset(deps=[answers])
    def grants(openai: OpenAIResource) -> int:  # the same session as the answers, in process
        return openai.session.limits.granted

    resource = OpenAIResource(base_url=server.base_url, requests_per_minute=600_000, tokens_per_minute=10**9)
    first = materialize([questions, answers, grants], resource)
    assert first.output_for_node("grants") == len(server.stats.requests) == 30
    second = materialize([questions, answers, grants], resource)  # answered from the cache
    assert second.output_for_node("grants") == 0 and len(server.stats.requests) == 30


def test_sync_and_async_clients_of_a_step_share_one_budget(server, materialize):
    @dg.asset
    def both(context: dg.AssetExecutionContext, openai: OpenAIResource) -> int:
        messages = [{"role": "user", "content": "shared budget"}]
        with openai.get_client(context) as client:
            for _ in range(3):
                client.chat.completions.create(model="m", messages=messages)

        async def twice() -> None:
            async with openai.get_async_client(context) as client:
                for _ in range(2):
                    await client.chat.completions.create(model="m", messages=messages)

        asyncio.run(twice())
        return openai.session.limits.granted

    resource = OpenAIResource(base_url=server.base_url, requests_per_minute=600_000)
    assert materialize([both], resource).output_for_node("both") == 5 == len(server.stats.requests)


def test_a_request_bigger_than_the_burst_gets_its_place_and_waits_for_all_it_needs():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=60_000, clock=clock)  # 1,000/s, burst 10,000
    wait, ticket = limits._place(25_000, "m", horizon=0.25, waiter=_Waiter())
    assert ticket is not None and wait == pytest.approx(15.0)  # nothing promised ahead: it goes in debt
    wait, ticket = limits._place(10, "m", horizon=0.25, waiter=_Waiter())
    assert ticket is None  # the next one asks again later: 15 s of tokens are promised


def test_a_big_request_is_not_starved_by_a_stream_of_small_ones():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=60_000, clock=clock)
    limits.reserve(10_000)  # the bucket is empty
    big, placed_at = _Waiter(), None
    for step in range(2_000):  # 8 small senders poll every 10 ms, the big one every time it is told
        clock.now = step * 0.01
        for _ in range(8):
            limits._place(300, "m", 0.25, _Waiter())
        if placed_at is None and limits._place(9_000, "m", 0.25, big)[1] is not None:
            placed_at = clock.now
    assert placed_at is not None and placed_at < 15  # 9 s of refill, then its turn: not starved for 20 s


def test_a_request_turned_away_often_enough_goes_before_newcomers():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=None, tokens_per_minute=60_000, clock=clock)
    limits.reserve(10_100)  # in debt: 100 tokens promised ahead
    patient = _Waiter()
    for _ in range(4):
        assert limits._place(5_000, "m", 0.25, patient)[1] is None  # turned away: places are promised
    clock.now = 0.2  # the debt is paid: a newcomer's small request would fit now…
    assert limits._place(10, "m", 0.25, _Waiter())[1] is None  # …but the patient one goes first
    assert limits._place(5_000, "m", 0.25, patient)[1] is not None
    assert limits._place(10, "m", 0.25, _Waiter())[0] > 0.25  # then newcomers wait behind it
