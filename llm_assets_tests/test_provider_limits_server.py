"""Provider-style rate limits on the scripted server: per-key buckets, OpenAI's 429 and headers.

Every test drives the buckets with a fake clock (a list the test advances), never the wall clock.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import openai
import pytest

from llm_assets.testing import ScriptedOpenAIServer
from llm_assets.testing.ratelimits import ProviderLimits, add_arguments, format_duration, from_args, request_cost

DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}]}


@pytest.fixture
def now() -> list[float]:
    return [100.0]


def limited(server: ScriptedOpenAIServer, now: list[float], rpm: int | None, tpm: int | None, **kw: Any):
    server.provider_limits = ProviderLimits(rpm, tpm, clock=lambda: now[0], **kw)
    return server.provider_limits


def post(
    server: ScriptedOpenAIServer, key: str | None = "k1", body: dict | None = None, path: str = "/chat/completions"
):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(server.base_url + path, json=body or CHAT, headers=headers)


def statuses(server: ScriptedOpenAIServer, count: int, key: str | None = "k1") -> list[int]:
    return [post(server, key).status_code for _ in range(count)]


def test_burst_to_capacity_then_openai_shaped_429(server, now):
    limited(server, now, 1200, None, window_seconds=1)  # 1200 RPM enforced as 20 a second
    assert statuses(server, 20) == [200] * 20
    reply = post(server)
    assert reply.status_code == 429
    assert reply.json() == {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-llm-assets on requests per min (RPM): "
            f"Limit 1200, Used 1200, Requested 1. Please try again in 50ms. {DOCS}",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert reply.headers["retry-after-ms"] == "50"
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["x-ratelimit-limit-requests"] == "1200"
    assert reply.headers["x-ratelimit-remaining-requests"] == "0"
    assert reply.headers["x-ratelimit-reset-requests"] == "1s"
    assert "x-ratelimit-limit-tokens" not in reply.headers
    assert len(server.stats.billed) == 20  # the rejected request was never answered nor billed


def test_429_consumes_nothing_and_retry_after_can_be_off(server, now):
    limited(server, now, 60, None, window_seconds=2, retry_after=False)  # 2 requests, one a second back
    assert statuses(server, 4) == [200, 200, 429, 429]
    assert "retry-after" not in post(server).headers
    now[0] += 1.0
    assert statuses(server, 2) == [200, 429]


def test_buckets_refill_with_the_clock(server, now):
    limited(server, now, 1200, None, window_seconds=1)
    assert statuses(server, 21)[-1] == 429
    now[0] += 0.05  # one request's worth
    assert statuses(server, 2) == [200, 429]
    now[0] += 0.02
    assert "try again in 30ms" in post(server).json()["error"]["message"]
    now[0] += 10.0  # refills only up to capacity
    assert statuses(server, 21) == [200] * 20 + [429]


def test_each_api_key_has_its_own_buckets(server, now):
    limited(server, now, 120, None, window_seconds=1)  # 2 a second
    assert statuses(server, 3, "k1") == [200, 200, 429]
    assert statuses(server, 3, "k2") == [200, 200, 429]
    assert statuses(server, 3, None) == [200, 200, 429]  # no key: the bucket of ""


def test_token_limit_counts_prompt_and_max_tokens(server, now):
    limited(server, now, None, 100)
    body = {**CHAT, "max_tokens": 48}  # 2 prompt tokens + 48
    first, second, third = (post(server, body=body) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["x-ratelimit-remaining-tokens"] == "50"
    assert first.headers["x-ratelimit-reset-tokens"] == "30s"
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "x-ratelimit-limit-requests" not in first.headers
    error = third.json()["error"]
    assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
    assert error["message"] == (
        "Rate limit reached for gpt-4o-mini in organization org-llm-assets on tokens per min (TPM): "
        f"Limit 100, Used 100, Requested 50. Please try again in 30s. {DOCS}"
    )
    assert (third.headers["retry-after"], third.headers["retry-after-ms"]) == ("30", "30000")
    now[0] += 15.0  # 25 tokens back: enough for a smaller request only
    small = {**CHAT, "max_completion_tokens": 23}
    assert [post(server, body=b).status_code for b in (body, small, small)] == [429, 200, 429]


def test_request_cost_of_each_endpoint():
    assert request_cost({"messages": [{"content": "a b"}, {"content": [{"text": "c"}]}], "max_tokens": 5}) == 8
    assert request_cost({"prompt": "a b c", "max_tokens": 2}) == 5
    assert request_cost({"input": ["a b", "c"]}) == 3
    assert request_cost({"input": "a b", "max_output_tokens": 4}) == 6


def test_a_request_larger_than_the_bucket_is_too_large(server, now):
    limited(server, now, None, 10)
    reply = post(server, body={**CHAT, "max_tokens": 20})
    assert reply.status_code == 429
    assert reply.json()["error"]["message"].startswith(
        "Request too large for gpt-4o-mini in organization org-llm-assets on tokens per min (TPM): "
        "Limit 10, Requested 22."
    )
    assert "retry-after" not in reply.headers  # no wait would help


def test_headers_on_every_billed_reply(server, now):
    limited(server, now, 1200, 90000)
    reply = post(server)  # 2 tokens, no max
    assert reply.status_code == 200
    assert {k: v for k, v in reply.headers.items() if k.startswith("x-ratelimit")} == {
        "x-ratelimit-limit-requests": "1200",
        "x-ratelimit-remaining-requests": "1199",
        "x-ratelimit-reset-requests": "50ms",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "89998",
        "x-ratelimit-reset-tokens": "2ms",
    }
    streamed = post(server, body={**CHAT, "stream": True})
    assert streamed.headers["x-ratelimit-remaining-requests"] == "1198"
    assert streamed.headers["x-ratelimit-reset-requests"] == "100ms"
    embedded = post(server, body={"model": "text-embedding-3-small", "input": "a b c"}, path="/embeddings")
    assert embedded.headers["x-ratelimit-remaining-tokens"] == "89993"
    assert "x-ratelimit-limit-requests" not in httpx.get(server.base_url + "/models").headers


def test_remaining_and_reset_tell_the_capacity(server, now):
    limited(server, now, 600, None, window_seconds=6)  # capacity 60
    replies = [post(server) for _ in range(30)]
    remaining = int(replies[-1].headers["x-ratelimit-remaining-requests"])
    assert (remaining, replies[-1].headers["x-ratelimit-reset-requests"]) == (30, "3s")
    assert remaining + 3.0 * 600 / 60 == 60


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.05, "50ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_openai_client_gets_rate_limit_error(server, now):
    limited(server, now, 120, None, window_seconds=1)
    client = openai.OpenAI(base_url=server.base_url, api_key="k1", max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
    error = caught.value
    assert error.status_code == 429
    assert error.body == {
        "message": "Rate limit reached for gpt-4o-mini in organization org-llm-assets on requests per min (RPM): "
        f"Limit 120, Used 120, Requested 1. Please try again in 500ms. {DOCS}",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert (error.code, error.type) == ("rate_limit_exceeded", "requests")
    headers = error.response.headers
    assert (headers["retry-after-ms"], headers["retry-after"]) == ("500", "1")
    assert (headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-reset-requests"]) == ("0", "1s")


def test_stats_per_key_and_over_http(server, now):
    limits = limited(server, now, 60, None, window_seconds=2)
    statuses(server, 1, "k1")
    now[0] += 0.5
    statuses(server, 3, "k1")
    statuses(server, 1, "k2")
    k1 = {"accepted": 2, "rejected": 2, "accepted_times": [100.0, 100.5], "first_accepted": 100.0}
    k2 = {"accepted": 1, "rejected": 0, "accepted_times": [100.5], "first_accepted": 100.5}
    keys = {"k1": {**k1, "last_accepted": 100.5}, "k2": {**k2, "last_accepted": 100.5}}
    expected = {"requests_per_minute": 60, "tokens_per_minute": None, "window_seconds": 2, "keys": keys}
    assert limits.stats() == expected
    assert httpx.get(server.base_url + "/_stats").json()["provider_limits"] == expected


def test_stats_endpoint_without_limits(server):
    assert httpx.get(server.base_url + "/_stats").json()["provider_limits"] is None


def test_reset_gives_fresh_buckets_and_stats(now):
    limits = ProviderLimits(60, None, window_seconds=1, clock=lambda: now[0])
    with ScriptedOpenAIServer(provider_limits=limits) as server:
        assert statuses(server, 2) == [200, 429]
        server.provider_limits = None
        server.reset()
        assert server.provider_limits is limits
        assert limits.stats()["keys"] == {}
        assert statuses(server, 2) == [200, 429]


def test_command_line_flags():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])) is None
    limits = from_args(parser.parse_args(["--rpm", "1200", "--tpm", "5000", "--window", "1"]))
    assert limits is not None
    assert (limits.requests_per_minute, limits.tokens_per_minute, limits.window_seconds) == (1200, 5000, 1.0)
    assert limits.retry_after
    assert not from_args(parser.parse_args(["--tpm", "5", "--no-retry-after"])).retry_after
