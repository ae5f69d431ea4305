"""What a successful answer of each billed endpoint must look like, checked before it is
stored in the request cache and when it is read back: a body that fails is a malformed
answer (retried when live, a miss when cached), never a row built from half an answer.

The checks are structural, plus each embedding's encoding (base64 of float32, or a list
of finite numbers); the engine's readers check the rest as they build rows.

Examples:
    >>> answer_problem("/chat/completions", {"choices": []})
    "'choices' is not a non-empty list of objects"
    >>> answer_problem("/embeddings", {"data": [{"index": 0, "embedding": "AAAA"}]}, {"input": ["a", "b"]})
    '1 embeddings for 2 inputs'
"""

import base64
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _objects(items: Any) -> bool:
    return isinstance(items, list) and bool(items) and all(isinstance(item, dict) for item in items)


def _chat(answer: Mapping[str, Any], request: Mapping[str, Any]) -> str | None:
    choices = answer.get("choices")
    if not _objects(choices):
        return "'choices' is not a non-empty list of objects"
    for choice in choices:
        message = choice.get("message")
        if not isinstance(message, dict):
            return "a choice has no 'message' object"
        if not isinstance(message.get("content"), str | None):
            return "a message's 'content' is not text"
    return None


def _completion(answer: Mapping[str, Any], request: Mapping[str, Any]) -> str | None:
    choices = answer.get("choices")
    if not _objects(choices) or not all(isinstance(c.get("text"), str) for c in choices):
        return "'choices' is not a non-empty list of objects with 'text'"
    return None


def _inputs(request: Mapping[str, Any]) -> int | None:
    """How many texts an embeddings request sent (``None``: unknown)."""
    given = request.get("input")
    if isinstance(given, str) or (isinstance(given, list) and given and all(isinstance(i, int) for i in given)):
        return 1  # one text, or one pre-tokenized text
    return len(given) if isinstance(given, list) else None


def _embeddings(answer: Mapping[str, Any], request: Mapping[str, Any]) -> str | None:
    data = answer.get("data")
    if not _objects(data):
        return "'data' is not a non-empty list of objects"
    expected = _inputs(request)
    if expected is not None and len(data) != expected:
        return f"{len(data)} embeddings for {expected} inputs"
    if sorted(d.get("index") if type(d.get("index")) is int else -1 for d in data) != list(range(len(data))):
        return "the embeddings' 'index' values are not the integers 0…n-1"
    widths = {_width(item.get("embedding")) for item in data}
    if None in widths:
        return "an 'embedding' is neither a non-empty list of finite numbers nor base64 of finite float32"
    if len(widths) > 1:
        return f"the embeddings have different lengths {sorted(widths)}"
    return None


def _width(embedding: Any) -> int | None:
    """The length of a valid embedding (``None``: not one)."""
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except ValueError:  # binascii.Error
            return None
        if not raw or len(raw) % 4:
            return None
        vector = np.frombuffer(raw, dtype=np.float32)
        return len(vector) if np.isfinite(vector).all() else None
    if isinstance(embedding, list) and embedding and all(_float32(x) for x in embedding):
        return len(embedding)
    return None


def _float32(x: Any) -> bool:
    """A JSON number a float32 can hold (``10**400`` and ``Infinity`` parse, but can't)."""
    return (type(x) is float and math.isfinite(x) and abs(x) < 3.4e38) or (type(x) is int and abs(x) < 2**127)


def _response(answer: Mapping[str, Any], request: Mapping[str, Any]) -> str | None:
    return None if _objects(answer.get("output")) else "'output' is not a non-empty list of objects"


#: Endpoint suffix → its check (the first that matches; ``/chat/completions`` before ``/completions``).
_CHECKS: tuple[tuple[str, Callable[[Mapping[str, Any], Mapping[str, Any]], str | None]], ...] = (
    ("/chat/completions", _chat),
    ("/completions", _completion),
    ("/embeddings", _embeddings),
    ("/responses", _response),
)


def answer_problem(endpoint: str, answer: Any, request: Any = None) -> str | None:
    """Why ``answer`` (decoded JSON) can't be the answer to a POST of ``request`` to
    ``endpoint``; ``None`` when it can (other endpoints are not checked)."""
    if not isinstance(answer, dict):
        return f"not a JSON object but {type(answer).__name__}"
    endpoint = endpoint.rstrip("/")
    check = next((check for suffix, check in _CHECKS if endpoint.endswith(suffix)), None)
    return check(answer, request if isinstance(request, dict) else {}) if check else None
