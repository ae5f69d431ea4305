"""The JSONL of a batch: one line per request, with a ``custom_id`` that names its request
for good, split into files at the API's limits.

Example:
    >>> from llm_assets.engine.calls import Call
    >>> call = Call("Kirk", "/chat/completions", {"model": "m", "messages": []}, "row 0", lambda *a: a)
    >>> (line,) = batch_lines("captains/answers", [call], [0], ["k0"])
    >>> line.custom_id == batch_lines("captains/answers", [call], [0], ["k0"])[0].custom_id
    True
    >>> [len(chunk) for chunk in split_lines([line] * 5, max_requests=2, max_bytes=10**6)]
    [2, 2, 1]
"""

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llm_assets.errors import LLMAssetsError

#: Prefix of the URLs of batch lines (the Batch API names endpoints with their version).
API_PREFIX = "/v1"


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch: its position among the engine's calls, its ``custom_id``,
    its request-cache key, and its JSONL line (newline included)."""

    index: int
    custom_id: str
    cache_key: str | None
    partition_key: str | None
    endpoint: str
    data: bytes


def custom_id(asset: str, call: Any) -> str:
    """A request's ``custom_id``: a hash of the asset, the partition, the request's place
    in it (its description) and its body, so the same request always gets the same id."""
    body = json.dumps(call.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    named = f"{asset}\n{call.partition_key}\n{call.description}\n{call.endpoint}\n{body}"
    return "llm-" + hashlib.sha256(named.encode()).hexdigest()[:40]


def batch_lines(
    asset: str, calls: Sequence[Any], indices: Iterable[int], cache_keys: Sequence[str | None]
) -> list[BatchLine]:
    """The lines of ``calls[i]`` for ``i`` in ``indices``."""
    lines = []
    for index in indices:
        call = calls[index]
        cid = custom_id(asset, call)
        line = {"custom_id": cid, "method": "POST", "url": API_PREFIX + call.endpoint, "body": call.body}
        data = json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        lines.append(BatchLine(index, cid, cache_keys[index], call.partition_key, call.endpoint, data))
    return lines


def split_lines(lines: Sequence[BatchLine], max_requests: int, max_bytes: int) -> list[list[BatchLine]]:
    """Consecutive files of at most ``max_requests`` lines and ``max_bytes`` bytes, one
    endpoint each (a batch has one)."""
    chunks: list[list[BatchLine]] = []
    current: list[BatchLine] = []
    size = 0
    for line in lines:
        if len(line.data) > max_bytes:
            raise LLMAssetsError(
                f"One batch line is {len(line.data)} bytes, over BatchSettings.max_bytes_per_file {max_bytes}: "
                "raise it (OpenAI takes 200 MB per file), or send this request in mode LIVE."
            )
        full = len(current) >= max_requests or size + len(line.data) > max_bytes
        if current and (full or line.endpoint != current[0].endpoint):
            chunks.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line.data)
    if current:
        chunks.append(current)
    return chunks


def fingerprint(lines: Sequence[BatchLine]) -> str:
    """The fingerprint of a batch: the SHA-256 of its JSONL, so the same requests in the
    same order always have the same one (the Batch API's metadata carries it)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.data)
    return digest.hexdigest()
