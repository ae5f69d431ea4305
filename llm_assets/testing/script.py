"""The script the server follows: its tokenizer, answers, vectors and usage shapes.

Everything here is a pure function of the request, so a test can compute what the
server will say (and bill) without asking it.

Examples:
    >>> answer = scripted_answer("to boldly go", 4)
    >>> answer, count_tokens(answer)
    ('Answer fce75dbd: to boldly', 4)
    >>> usage_payload(3, count_tokens(answer))
    {'prompt_tokens': 3, 'total_tokens': 7, 'completion_tokens': 4}
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def count_tokens(text: str) -> int:
    """The scripted tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class Refusal(str):
    """An answer the scripted server gives as ``message.refusal`` (``content`` null), as
    OpenAI does when a model declines a structured-output request."""


def scripted_answer(prompt: str, max_tokens: int | None) -> str:
    """The answer the server gives to ``prompt``: deterministic, at most ``max_tokens`` words."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    words = f"Answer {digest}: {prompt}".split()
    return " ".join(words[: max_tokens or 64])


def scripted_vector(text: str, dimensions: int) -> np.ndarray:
    """The unit embedding the server gives to ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    return vector / np.linalg.norm(vector)


def structured(response_format: Any, text: str) -> str:
    """The answer to a request for structured output (``json_schema``, or ``json_object``
    with a ``schema`` as llama.cpp takes it): JSON matching the schema, its strings ``text``
    and its numbers drawn from ``text``'s hash; ``text`` itself otherwise."""
    if not isinstance(response_format, dict):
        return text
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    elif response_format.get("type") == "json_object":
        schema = response_format.get("schema")
    else:
        schema = None
    return json.dumps(_sample(schema, text, schema)) if isinstance(schema, dict) else text


def _sample(spec: dict[str, Any], text: str, root: dict[str, Any]) -> Any:
    """A value of JSON Schema ``spec`` (``$ref`` resolved in ``root``)."""
    if "$ref" in spec:
        target: Any = root
        for part in spec["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _sample(target, text, root)
    if "enum" in spec:
        return spec["enum"][0]
    options = spec.get("anyOf") or []
    kind = spec.get("type") or ("object" if "properties" in spec else None)
    if isinstance(kind, list):
        options = [{**spec, "type": t} for t in kind]
    if options:
        real = [o for o in options if o.get("type") != "null"] or options
        return _sample(real[0], text, root)
    digest = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    if kind == "object":
        return {name: _sample(sub, text, root) for name, sub in spec.get("properties", {}).items()}
    if kind == "array":
        return [_sample(spec.get("items") or {"type": "string"}, text, root)]
    if kind == "integer":
        return digest % 100
    if kind == "number":
        return round(digest / 0xFFFFFFFF, 4)
    if kind == "boolean":
        return digest % 2 == 0
    if kind == "null":
        return None
    return text


def usage_payload(
    prompt_tokens: int, completion_tokens: int | None, *, details: bool = False, responses_api: bool = False
) -> dict[str, Any]:
    """The ``usage`` object of a reply, in the Chat Completions or the Responses API shape.

    ``details`` adds cached (half the prompt) and reasoning (a third of the completion) tokens.
    """
    total = prompt_tokens + (completion_tokens or 0)
    if responses_api:
        usage: dict[str, Any] = {
            "input_tokens": prompt_tokens,
            "output_tokens": completion_tokens,
            "total_tokens": total,
        }
        if details:
            usage["input_tokens_details"] = {"cached_tokens": prompt_tokens // 2}
            usage["output_tokens_details"] = {"reasoning_tokens": (completion_tokens or 0) // 3}
        return usage
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": total}
    if completion_tokens is not None:
        usage["completion_tokens"] = completion_tokens
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": prompt_tokens // 2}
        if completion_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": completion_tokens // 3}
    return usage
