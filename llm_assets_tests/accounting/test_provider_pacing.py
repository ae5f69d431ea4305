"""Processes sharing one key converge on the provider's limit from its headers alone:
proven on a simulated provider and fake clock (counts, never timing), then on the wire."""

import math
import threading

import pytest

from llm_assets import OpenAIResource
from llm_assets.accounting.limits import RateLimits
from llm_assets.accounting.provider_limits import Bucket, parse_duration, retry_after
from llm_assets.accounting.usage import Usage
from llm_assets.testing import ScriptedOpenAIServer
from llm_assets.testing.ratelimits import ProviderLimits
from llm_assets_tests.accounting.simulated_provider import Provider, simulate

LIMIT = 1200  # requests per minute: 20 a second


@pytest.mark.parametrize(
    ("processes", "window", "latency"),
    [(1, 1, 0.02), (2, 1, 0.02), (4, 1, 0.02), (4, 60, 0.02), (4, 60, 1.0), (8, 60, 1.0)],
)
def test_processes_sharing_a_key_sustain_its_limit_with_almost_no_429s(processes, window, latency):
    """``window``: what the provider's bucket holds, in seconds of refill (1: enforced per
    second; 60: a minute, as OpenAI's headers describe it)."""
    provider = simulate(processes, Provider(LIMIT, window), seconds=120, tasks=64, latency=latency)
    sent = len(provider.accepted) + provider.refused
    steady = [t for t in provider.accepted if t >= 20]  # after the first seconds of finding out
    assert len(steady) >= 0.95 * LIMIT / 60 * 100  # ≥ 95% of the limit
    assert provider.refused <= 0.01 * sent  # ≤ 1% 429s
    assert len(provider.accepted) <= LIMIT / 60 * 120 + provider.capacity  # never above what it allows


def test_without_the_headers_the_same_processes_mostly_get_429s():
    provider = simulate(4, Provider(LIMIT, window_seconds=1), seconds=60, follow=False)
    assert provider.refused > len(provider.accepted)  # the SDK's retries alone: a 429 storm


def test_a_full_minute_bucket_is_used_then_shared_at_the_refill_rate():
    provider = simulate(4, Provider(LIMIT, window_seconds=60), seconds=120)
    assert provider.refused == 0
    last_minute = [t for t in provider.accepted if t >= 60]
    assert 0.95 * LIMIT <= len(last_minute) <= 1.05 * LIMIT


def test_ceilings_still_hold_and_the_provider_only_lowers_them():
    clock = [0.0]
    limits = RateLimits(600, None, follow_provider=True, clock=lambda: clock[0])
    assert limits.rate("requests") == 10
    full = {"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "6000"}
    probe = limits._place(1, "m", 0.25)[1]
    limits.observe(200, {**full, "x-ratelimit-reset-requests": "0s"}, probe)
    assert limits.rate("requests", "m") == 10  # the provider allows 100/s: the configured ceiling stays
    empty = {**full, "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m0s"}
    second = limits._place(1, "m", 10)[1]
    limits.observe(429, {**empty, "retry-after-ms": "1500"}, second)
    assert limits.rate("requests", "m") == pytest.approx(100 / 64 / 2)  # empty: the lowest share, halved by the 429
    assert limits.reserve(1, "m") == pytest.approx(1.5)  # the model's requests wait out the Retry-After
    assert limits.reserve(1, "other") == pytest.approx(0.3)  # another model: no pause, only the ceiling's spacing
    unlimited = RateLimits(None, None, follow_provider=True, clock=lambda: clock[0])
    probe = unlimited._place(1, "m", 0.25)[1]
    unlimited.observe(200, {**full, "x-ratelimit-reset-requests": "0s"}, probe)
    assert unlimited.rate("requests", "m") == 100  # raised to the provider's limit


def test_one_request_probes_before_the_rest_go():
    clock = [0.0]
    limits = RateLimits(None, None, follow_provider=True, clock=lambda: clock[0])
    wait, probe = limits._place(1, "m", 0.25)
    assert wait == 0 and probe.probe  # the probe
    assert limits._place(1, "m", 0.25)[1] is None  # the others wait for its answer
    limits.abandoned(probe)  # it failed without a response (or was cancelled): the next one probes
    wait, probe = limits._place(1, "m", 0.25)
    assert wait == 0 and probe.probe
    limits.observe(200, {}, probe)  # no rate-limit headers (a local server): nothing paces
    assert [limits._place(1, "m", 0.25)[0] for _ in range(1_000)] == [0.0] * 1_000
    assert limits.rate("requests", "m") is None and not limits.pace("m")._sends  # nothing kept per request


def test_headers_are_read_as_openai_writes_them():
    assert [parse_duration(t) for t in ("6m0s", "1.5s", "20ms", "1h2m3s", "0s", "7", "soon")] == [
        360,
        1.5,
        0.02,
        3723,
        0,
        7,
        None,
    ]
    assert retry_after({"retry-after": "2"}) == 2 and retry_after({"retry-after": "Wed, 21 Oct 2026"}) is None
    bucket = Bucket.parse(
        {
            "x-ratelimit-limit-tokens": "60000",
            "x-ratelimit-remaining-tokens": "59000",
            "x-ratelimit-reset-tokens": "1s",
        },
        "tokens",
    )
    assert (bucket.rate, bucket.capacity, bucket.fill) == (1000, 60000, pytest.approx(59 / 60))
    assert Bucket.parse({"x-ratelimit-limit-tokens": "x"}, "tokens") is None
    for limit, remaining in (("0", "0"), ("-5", "1"), ("nan", "1"), ("inf", "1"), ("60", "nan"), ("60", "-1")):
        headers = {"x-ratelimit-limit-requests": limit, "x-ratelimit-remaining-requests": remaining}
        assert Bucket.parse({**headers, "x-ratelimit-reset-requests": "1s"}, "requests") is None


def test_the_sdk_client_learns_the_limit_from_the_servers_headers():
    clock = [0.0]
    limits = ProviderLimits(requests_per_minute=LIMIT, tokens_per_minute=None, window_seconds=1, clock=lambda: clock[0])
    with ScriptedOpenAIServer(provider_limits=limits) as server:
        session = OpenAIResource(base_url=server.base_url, api_key="k1").session
        with session.client(Usage()) as client:
            for _ in range(5):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        bucket = session.limits.pace("m").buckets["requests"]
        assert (bucket.limit, bucket.remaining, bucket.capacity) == (LIMIT, 15, 20)
        rate = session.limits.rate("requests", "m")  # from 15 of 20 left, refilled since (real time passes)
        assert 20 * (0.75 / 0.8) ** 4 <= rate <= 20
        assert math.isclose(bucket.fill, 0.75)


def test_a_cancelled_first_request_neither_blocks_the_next_nor_keeps_its_budget():
    import asyncio

    release = threading.Event()
    with ScriptedOpenAIServer(latency=lambda body: release.wait(30) and 0) as server:
        session = OpenAIResource(base_url=server.base_url, max_tokens_per_run=10_000).session

        async def first_cancelled_then_second() -> str:
            async with session.async_client(Usage()) as client:
                ask = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                first = asyncio.ensure_future(ask)
                while not server.stats.requests:  # the probe is at the server, unanswered
                    await asyncio.sleep(0.01)
                first.cancel()
                release.set()
                ask = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "2"}])
                second = await asyncio.wait_for(ask, 60)  # a stuck probe would block it forever
                return second.choices[0].message.content

        assert asyncio.run(first_cancelled_then_second())
        assert session.limits.pace("m").probe == "known"
        spent = session.governor.budget.totals()
        assert spent.reserved_tokens == 0
        assert server.stats.paths["/v1/chat/completions"] == 2  # the server answered both…
        assert spent.tokens >= server.usage.total_tokens  # …so the cancelled one counts (at its estimate)


def test_a_request_cancelled_while_its_budget_is_checked_gives_the_reservation_back(tmp_path, monkeypatch):
    import asyncio
    import time

    from llm_assets.accounting.budgets import SharedBudget
    from llm_assets.session import RunSession

    with ScriptedOpenAIServer() as server:
        resource = OpenAIResource(base_url=server.base_url, max_tokens_per_run=10_000)
        session = RunSession(resource.session_settings(), None)
        session.governor.budget = SharedBudget(f"sqlite:///{tmp_path / 'b.db'}", "run:1", ttl=600)
        check = session.governor.refusal
        monkeypatch.setattr(session.governor, "refusal", lambda *a: time.sleep(0.5) or check(*a))  # a slow database

        async def cancelled_during_the_check() -> None:
            async with session.async_client(Usage()) as client:
                ask = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(ask, 0.05)

        asyncio.run(cancelled_during_the_check())
        assert session.governor.budget.totals().reserved_tokens == 0
        assert server.stats.requests == []
        session.close()
