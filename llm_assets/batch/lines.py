"""The JSONL of a batch: one line per request, with a ``custom_id`` that names its request
for good, split into files at the API's limits.

Examples:
    >>> from llm_assets.calls import Call
    >>> call = Call("Kirk", "/chat/completions", {"model": "m", "messages": []}, "row 0", lambda body, **_: body)
    >>> ids = custom_ids("captains/answers", [call, call])
    >>> ids[1] == ids[0] + "-2"
    True
    >>> (line,) = batch_lines(ids, [call, call], [0], ["k0", "k0"])
    >>> from llm_assets.batch.settings import BatchSettings
    >>> [len(chunk) for chunk in split_lines([line] * 5, BatchSettings(max_requests_per_file=2))]
    [2, 2, 1]
"""

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llm_assets.batch.settings import BatchSettings
from llm_assets.errors import ConfigurationError

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
    items: int  # inputs: 1 for a chat request, the texts of an embeddings request
    data: bytes


def custom_id(asset: str, call: Any) -> str:
    """A request's ``custom_id``: a hash of the asset, the partition, the request's place
    in it (its description) and its body, so the same request always gets the same id."""
    body = json.dumps(call.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    named = f"{asset}\n{call.partition_key}\n{call.description}\n{call.endpoint}\n{body}"
    return "llm-" + hashlib.sha256(named.encode()).hexdigest()[:40]


def custom_ids(asset: str, calls: Sequence[Any]) -> list[str]:
    """The ``custom_id`` of each call; a repeat of the same request in the same place (same
    partition, row and body) gets its occurrence appended, so every line has its own."""
    seen: dict[str, int] = {}
    ids = []
    for call in calls:
        cid = custom_id(asset, call)
        seen[cid] = seen.get(cid, 0) + 1
        ids.append(cid if seen[cid] == 1 else f"{cid}-{seen[cid]}")
    return ids


def batch_lines(
    ids: Sequence[str], calls: Sequence[Any], indices: Iterable[int], cache_keys: Sequence[str | None]
) -> list[BatchLine]:
    """The lines of ``calls[i]`` for ``i`` in ``indices``, with their ``ids[i]``."""
    lines = []
    for index in indices:
        call = calls[index]
        cid = ids[index]
        line = {"custom_id": cid, "method": "POST", "url": API_PREFIX + call.endpoint, "body": call.body}
        data = json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        lines.append(BatchLine(index, cid, cache_keys[index], call.partition_key, call.endpoint, call.items, data))
    return lines


def split_lines(lines: Sequence[BatchLine], settings: BatchSettings) -> list[list[BatchLine]]:
    """Consecutive files within the settings' limits of requests, bytes and embedding
    inputs, one endpoint each (a batch has one)."""
    max_bytes = settings.max_bytes_per_file
    chunks: list[list[BatchLine]] = []
    current: list[BatchLine] = []
    size = inputs = 0
    for line in lines:
        if len(line.data) > max_bytes:
            raise ConfigurationError(
                f"One batch line is {len(line.data)} bytes, over BatchSettings.max_bytes_per_file {max_bytes}: "
                "raise it (OpenAI takes 200 MB per file), or send this request in mode LIVE."
            )
        full = (
            len(current) >= settings.max_requests_per_file
            or size + len(line.data) > max_bytes
            or inputs + line.items > settings.max_inputs_per_file
        )
        if current and (full or line.endpoint != current[0].endpoint):
            chunks.append(current)
            current, size, inputs = [], 0, 0
        current.append(line)
        size += len(line.data)
        inputs += line.items
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
