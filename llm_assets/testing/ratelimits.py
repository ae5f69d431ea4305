"""Provider-style rate limits per API key for the scripted server, shaped like OpenAI's.

Each configured limit (requests and tokens per minute) is a token bucket per API key (the
``Authorization: Bearer`` value) holding ``limit * window_seconds / 60`` and refilling
continuously at ``limit / 60`` per second; ``window_seconds=1`` models OpenAI's quantized
enforcement (1200 RPM enforced as 20 a second). A request too big for what a bucket holds
is answered 429 with OpenAI's error body, nothing consumed; every billed reply carries the
``x-ratelimit-*`` headers.

Examples:
    >>> now = [0.0]
    >>> limits = ProviderLimits(requests_per_minute=2, tokens_per_minute=None, clock=lambda: now[0])
    >>> [limits.check("k", "gpt-4o", 5).status for _ in range(3)]
    [200, 200, 429]
    >>> now[0] += 30.0
    >>> limits.check("k", "gpt-4o", 5).headers["x-ratelimit-reset-requests"]
    '1m0s'
    >>> format_duration(90.5), format_duration(0.05), format_duration(0)
    ('1m30.5s', '50ms', '0s')
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_assets.testing.script import count_tokens, text_of

BILLED_PATHS = ("/chat/completions", "/completions", "/embeddings", "/responses")
ORGANIZATION = "org-llm-assets"
DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
EPSILON = 1e-9  # a bucket this close to enough holds enough
UNITS = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers (and Go) write it, rounded up to a millisecond."""
    total_ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return text + str(secs) + (f".{ms:03d}".rstrip("0") if ms else "") + "s"


def api_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; "" when missing."""
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def request_cost(body: dict[str, Any]) -> int:
    """Tokens a request needs: the scripted count of its prompt plus the most it may answer."""
    given = body.get("messages") or body.get("input") or body.get("prompt") or ""
    parts = given if isinstance(given, list) else [given]
    texts = [text_of(p.get("content")) if isinstance(p, dict) else text_of(p) for p in parts]
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    return count_tokens("\n".join(texts)) + int(limit or 0)


@dataclass
class Decision:
    """The verdict on one request: ``payload`` is the 429 body when rejected, else None."""

    status: int
    headers: dict[str, str]
    payload: dict[str, Any] | None = None

    @property
    def rejected(self) -> bool:
        return self.payload is not None


@dataclass
class _Bucket:
    level: float
    updated: float


@dataclass
class _KeyStats:
    accepted: int = 0
    rejected: int = 0
    accepted_times: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        times = list(self.accepted_times)
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "accepted_times": times,
            "first_accepted": times[0] if times else None,
            "last_accepted": times[-1] if times else None,
        }


@dataclass
class ProviderLimits:
    """Requests and tokens per minute per API key (None: no limit), enforced like OpenAI.

    Args:
        requests_per_minute: the RPM limit, or None.
        tokens_per_minute: the TPM limit (prompt tokens plus ``max_tokens``), or None.
        window_seconds: what a bucket holds, in seconds of refill; 60 is the full minute.
        retry_after: send ``retry-after`` and ``retry-after-ms`` with each 429.
        clock: seconds, monotonic; tests pass a fake one.
    """

    requests_per_minute: int | None
    tokens_per_minute: int | None
    window_seconds: float = 60.0
    retry_after: bool = True
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict, init=False, repr=False)
    _stats: dict[str, _KeyStats] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _limits(self) -> dict[str, int]:
        given = {"requests": self.requests_per_minute, "tokens": self.tokens_per_minute}
        return {kind: limit for kind, limit in given.items() if limit is not None}

    def capacity(self, limit: int) -> float:
        return limit * self.window_seconds / 60

    def reset(self) -> None:
        """Full buckets and no stats, for every key."""
        with self._lock:
            self._buckets.clear()
            self._stats.clear()

    def admit(self, path: str, authorization: str | None, body: dict[str, Any]) -> Decision | None:
        """The verdict on a POST of ``body`` to ``path``; None when the path is not billed."""
        if not path.split("?")[0].rstrip("/").endswith(BILLED_PATHS):
            return None
        return self.check(api_key(authorization), str(body.get("model", "")), request_cost(body))

    def check(self, key: str, model: str, tokens: int) -> Decision:
        """Takes one request and ``tokens`` tokens from ``key``'s buckets, or rejects with 429."""
        with self._lock:
            now = self.clock()
            needs = {"requests": 1, "tokens": tokens}
            levels = {kind: self._refill(key, kind, limit, now) for kind, limit in self._limits().items()}
            waits = {kind: (needs[kind] - level) * 60 / self._limits()[kind] for kind, level in levels.items()}
            short = [kind for kind in levels if levels[kind] + EPSILON < needs[kind]]  # float drift of the clock
            stats = self._stats.setdefault(key, _KeyStats())
            if short:
                stats.rejected += 1
                kind = max(short, key=lambda k: waits[k])
                return self._reject(kind, model, needs[kind], levels, waits[kind])
            for kind in levels:
                levels[kind] -= needs[kind]
                self._buckets[key, kind].level = levels[kind]
            stats.accepted += 1
            stats.accepted_times.append(now)
            return Decision(200, self._headers(levels))

    def _refill(self, key: str, kind: str, limit: int, now: float) -> float:
        full = self.capacity(limit)
        bucket = self._buckets.setdefault((key, kind), _Bucket(full, now))
        bucket.level = min(full, bucket.level + max(0.0, now - bucket.updated) * limit / 60)
        bucket.updated = now
        return bucket.level

    def _headers(self, levels: dict[str, float]) -> dict[str, str]:
        headers = {}
        for kind, limit in self._limits().items():
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(math.floor(levels[kind] + EPSILON))
            reset = (self.capacity(limit) - levels[kind]) * 60 / limit
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset)
        return headers

    def _reject(self, kind: str, model: str, need: int, levels: dict[str, float], wait: float) -> Decision:
        limit = self._limits()[kind]
        headers = self._headers(levels)
        where = f"for {model} in organization {ORGANIZATION} on {UNITS[kind]}"
        if need > self.capacity(limit):  # no wait helps: OpenAI's "Request too large"
            message = f"Request too large {where}: Limit {limit}, Requested {need}. "
            message += f"The input or output tokens must be reduced in order to run successfully. {DOCS}"
        else:
            used = min(limit, round((self.capacity(limit) - levels[kind]) * 60 / self.window_seconds))
            message = f"Rate limit reached {where}: Limit {limit}, Used {used}, Requested {need}. "
            message += f"Please try again in {format_duration(wait)}. {DOCS}"
            if self.retry_after:
                wait_ms = max(1, math.ceil(wait * 1000 - 1e-6))
                headers |= {"retry-after-ms": str(wait_ms), "retry-after": str(math.ceil(wait_ms / 1000))}
        error = {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}
        return Decision(429, headers, {"error": error})

    def stats(self) -> dict[str, Any]:
        """The limits and, per API key, accepted and rejected counts and accepted times (clock)."""
        with self._lock:
            keys = {key: stats.to_json() for key, stats in self._stats.items()}
        config = {"requests_per_minute": self.requests_per_minute, "tokens_per_minute": self.tokens_per_minute}
        return config | {"window_seconds": self.window_seconds, "keys": keys}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's command-line flags for ``ProviderLimits``."""
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute per API key")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute per API key")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of refill a rate-limit bucket holds")
    parser.add_argument("--no-retry-after", action="store_true", help="429s without retry-after headers")


def from_args(args: argparse.Namespace) -> ProviderLimits | None:
    """The limits the flags of ``add_arguments`` ask for; None when neither RPM nor TPM is set."""
    if args.rpm is None and args.tpm is None:
        return None
    return ProviderLimits(args.rpm, args.tpm, window_seconds=args.window, retry_after=not args.no_retry_after)
