"""The answers of one session: ``AnswerStore`` keys requests, reads validated answers
and stores new ones, and never loses an answer over a cache problem.

Everything that sends billed requests (the SDK's transports, the engine's direct client,
batch mode) goes through it, so the keys, the validation and the warnings agree: a
damaged entry is a miss, a failed store is counted on the usage, and each problem is
logged once per session.

Examples:
    >>> from llm_assets.accounting.usage import Usage
    >>> store = AnswerStore(CacheKeys("http://127.0.0.1:9/v1"), RequestCache("memory://store-doctest"))
    >>> request = {"model": "m", "input": ["a"]}
    >>> key = store.key("/embeddings", request)
    >>> store.store(key, b'{"data": [{"index": 0, "embedding": [0.5]}]}', Usage())
    >>> [answer.payload["data"][0]["embedding"] for answer in store.cached([key], [("/embeddings", request)])]
    [[0.5]]
"""

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from llm_assets.accounting.usage import Usage
from llm_assets.cache.answers import answer_problem
from llm_assets.cache.files import RequestCache
from llm_assets.cache.keys import CacheKeys, CacheMode
from llm_assets.errors import ConfigurationError


@dataclass(frozen=True)
class CachedAnswer:
    """A response body from the request cache, and its decoded JSON."""

    body: bytes
    payload: dict[str, Any]

    @property
    def model(self) -> str | None:
        model = self.payload.get("model")
        return model if isinstance(model, str) else None


def _warning(message: str) -> None:
    dg.get_dagster_logger("llm_assets").warning(message)


class AnswerStore:
    """Cached answers of the requests ``keys`` names, in ``files`` (``None``: no cache, so
    every read misses and nothing is stored); ``warn`` logs each problem (once per topic)."""

    def __init__(self, keys: CacheKeys, files: RequestCache | None, warn: Callable[[str], None] = _warning) -> None:
        self.keys, self.files, self._log = keys, files, warn
        self._warned: set[str] = set()  # problems already logged (each once)
        self._warned_lock = threading.Lock()

    def mode(self, requested: CacheMode | bool | str) -> CacheMode:
        """``requested`` (``True`` means USE; a mode's name is accepted), or OFF without a cache."""
        if isinstance(requested, str) and requested.upper() in CacheMode.__members__:
            requested = CacheMode[requested.upper()]
        if requested is True:
            requested = CacheMode.USE
        if requested is False:
            requested = CacheMode.OFF
        if not isinstance(requested, CacheMode):
            raise ConfigurationError(
                f"cache={requested!r}: pass True, False or a llm_assets.CacheMode (USE, REFRESH, OFF)."
            )
        return CacheMode.OFF if self.files is None else requested

    def key(self, endpoint: str, payload: Any) -> str | None:
        """The cache key of a POST of ``payload`` to ``endpoint`` (see ``CacheKeys``)."""
        return self.keys.key(endpoint, payload)

    def cached(self, keys: Sequence[str | None], requests: Iterable[tuple[str, Any]]) -> list[CachedAnswer | None]:
        """The cached answers of ``keys`` (``None``: a miss) of ``requests`` (endpoint, JSON
        body). A damaged entry (``answer_problem``) is a miss,
        logged once; the fresh answer then overwrites it. An unreadable cache is all misses."""
        if self.files is None:
            return [None] * len(keys)
        try:
            bodies = self.files.get_many(list(keys))
        except Exception as error:  # any fsspec backend's error: answer live instead
            self._warn("read", f"The request cache at {self.files.root} can't be read ({error}): sending instead.")
            return [None] * len(keys)
        answers: list[CachedAnswer | None] = []
        for key, body, (endpoint, request) in zip(keys, bodies, requests, strict=True):
            answer = None
            if body is not None:
                try:
                    payload = json.loads(body)
                except ValueError as error:  # UnicodeDecodeError included
                    payload, problem = None, f"not JSON ({error})"
                else:
                    problem = answer_problem(endpoint, payload, request)
                if problem is None:
                    answer = CachedAnswer(body, payload)
                else:
                    self.discard(key, problem)
            answers.append(answer)
        return answers

    def discard(self, key: str, problem: str) -> None:
        """Log (once) that the entry of ``key`` is damaged; it is a miss, and the fresh
        answer will overwrite it."""
        path = self.files.path(key) if self.files is not None else key
        self._warn(key, f"Ignoring the damaged request cache entry {path} ({problem}): it will be asked again.")

    def store(self, key: str, body: bytes, usage: Usage, *, durable: bool = True) -> None:
        """Store an answer; a failure never loses it (it is already on its way to the
        caller): it is counted on ``usage`` and logged once. Without ``durable``,
        ``sync`` must follow."""
        if self.files is None:
            return
        try:
            self.files.put(key, body, durable=durable)
        except Exception as error:  # OSError, or any fsspec backend's error
            usage.add_cache_store_failure()
            self._warn(
                "store",
                f"Could not store an answer in the request cache at {self.files.path(key)} "
                f"({type(error).__name__}: {error}); the answer "
                "is kept in the output, but a re-run will ask again. Fix cache_dir, or set cache=False.",
            )

    def sync(self) -> None:
        """Make every store so far durable (after stores without ``durable``)."""
        if self.files is not None:
            self.files.sync()

    def _warn(self, topic: str, message: str) -> None:
        with self._warned_lock:  # cache I/O runs in worker threads
            if topic in self._warned:
                return
            self._warned.add(topic)
        self._log(message)
