"""One function per endpoint: the JSON body in, a ``Reply`` out.

The functions bill the usage they report (in ``server.stats``) but never touch a socket;
the HTTP handler in ``llm_assets.testing.server`` writes the reply. What they read of
the server is the ``Server`` protocol.

Examples:
    >>> from llm_assets.testing import ScriptedOpenAIServer
    >>> server = ScriptedOpenAIServer()
    >>> reply = route_post(server, "/v1/embeddings", {"model": "m", "input": "hello world", "dimensions": 4})
    >>> reply.status, len(reply.payload["data"][0]["embedding"]), reply.payload["usage"]
    (200, 4, {'prompt_tokens': 2, 'total_tokens': 2})
    >>> server.usage.total_tokens, route_get(server, "/v1/nowhere").status
    (2, 404)
    >>> server.stop()
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llm_assets.testing.script import (
    Refusal,
    count_tokens,
    scripted_answer,
    scripted_vector,
    structured,
    text_of,
    usage_payload,
)

if TYPE_CHECKING:
    from llm_assets.testing.ratelimits import ProviderLimits
    from llm_assets.testing.stats import ServerStats

Body = dict[str, Any]
#: (served model, answers per choice, usage, finish reasons) of a chat request.
ChatAnswers = tuple[str, list[str], dict[str, Any] | None, list[str]]


class Server(Protocol):
    """What the endpoints read of the server (a ``ScriptedOpenAIServer``):
    its settings, its stats, and ``chat``, the answers to a chat request (tests replace it)."""

    served_models: dict[str, str]
    usage_null: bool
    report_details: bool
    embedding_dimensions: int
    provider_limits: ProviderLimits | None
    stats: ServerStats

    def chat(self, body: Body) -> ChatAnswers: ...


@dataclass
class Reply:
    """What to answer: a JSON ``payload`` with ``status``, or (when ``events`` is set) a
    server-sent-event stream of ``data:`` payloads, each named by ``event_names`` if given."""

    status: int = 200
    payload: Any = None
    events: list[str] | None = None
    event_names: list[str] | None = None


def error(status: int, message: str, kind: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": kind}})


def not_found(path: str) -> Reply:
    return error(404, f"no route {path}", "not_found")


def reported_usage(
    server: Server, prompt_tokens: int, completion_tokens: int | None, responses_api: bool = False
) -> dict[str, Any] | None:
    """The ``usage`` object the server reports (None when it is set to ``usage_null``)."""
    if server.usage_null:
        return None
    return usage_payload(prompt_tokens, completion_tokens, details=server.report_details, responses_api=responses_api)


def served_model(server: Server, body: Body) -> str:
    """The model name the server answers with: the mapped snapshot, or the requested name."""
    return server.served_models.get(body.get("model", ""), body.get("model", ""))


def chat_answers(server: Server, body: Body) -> ChatAnswers:
    """Returns (served model, answers per choice, usage, finish reasons) of a chat request."""
    messages = body.get("messages") or []
    prompt = "\n".join(text_of(m.get("content")) for m in messages)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    answers = []
    for i in range(int(body.get("n") or 1)):
        text = scripted_answer(prompt + ("" if i == 0 else f" #{i}"), limit)
        answers.append(structured(body.get("response_format"), text))
    finish = ["length" if limit and count_tokens(a) >= limit else "stop" for a in answers]
    usage = reported_usage(server, count_tokens(prompt), sum(count_tokens(a) for a in answers))
    return served_model(server, body), answers, usage, finish


# -- POST /chat/completions ---------------------------------------------------------------


def chat_completion(server: Server, body: Body) -> Reply:
    if body.get("stream"):
        return chat_completion_stream(server, body)
    model, answers, usage, finish = server.chat(body)
    server.stats.bill(model, usage, body)
    choices = [{"index": i, "message": _message(a), "finish_reason": finish[i]} for i, a in enumerate(answers)]
    return Reply(
        200,
        {
            "id": "chatcmpl-s",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage,
        },
    )


def _message(answer: str) -> dict[str, Any]:
    if isinstance(answer, Refusal):
        return {"role": "assistant", "content": None, "refusal": str(answer)}
    return {"role": "assistant", "content": answer}


def chat_completion_stream(server: Server, body: Body) -> Reply:
    """One chunk per word of each choice, a finish chunk per choice, then (when
    ``stream_options.include_usage``) a usage chunk with no choices, then ``[DONE]``."""
    model, answers, usage, finish = server.chat(body)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    choices = []
    for i, answer in enumerate(answers):
        for word in answer.split(" "):
            choices.append({"index": i, "delta": {"content": word + " "}, "finish_reason": None})
        choices.append({"index": i, "delta": {}, "finish_reason": finish[i]})
    chunks = [{**head, "choices": [choice]} for choice in choices]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": usage})
    server.stats.bill(model, usage if include_usage else None, body)
    return Reply(200, events=[json.dumps(c) for c in chunks] + ["[DONE]"])


# -- POST /completions --------------------------------------------------------------------


def completion(server: Server, body: Body) -> Reply:
    model = served_model(server, body)
    prompt = body.get("prompt") or ""
    prompt = " ".join(prompt) if isinstance(prompt, list) else str(prompt)
    text = scripted_answer(prompt, body.get("max_tokens"))
    usage = reported_usage(server, count_tokens(prompt), count_tokens(text))
    server.stats.bill(model, usage, body)
    return Reply(
        200,
        {
            "id": "cmpl-s",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": usage,
        },
    )


# -- POST /embeddings ---------------------------------------------------------------------


def embeddings(server: Server, body: Body) -> Reply:
    model = served_model(server, body)
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
    if not inputs or not all(isinstance(t, str) and t for t in inputs):
        return error(400, "input must be non-empty strings", "invalid_request_error")
    dims = int(body.get("dimensions") or server.embedding_dimensions)
    data = []
    for i, text in enumerate(inputs):
        vector = scripted_vector(text, dims)
        encoded: Any = (
            base64.b64encode(vector.tobytes()).decode() if body.get("encoding_format") == "base64" else vector.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    usage = reported_usage(server, sum(count_tokens(t) for t in inputs), None)
    server.stats.bill(model, usage, body)
    return Reply(200, {"object": "list", "data": data, "model": model, "usage": usage})


# -- POST /responses ----------------------------------------------------------------------


def _response_object(server: Server, body: Body) -> dict[str, Any]:
    """The completed ``response`` object of a Responses API request, billed."""
    model = served_model(server, body)
    given = body.get("input")
    prompt = given if isinstance(given, str) else "\n".join(text_of(m.get("content")) for m in given or [])
    text = scripted_answer(prompt, body.get("max_output_tokens"))
    usage = reported_usage(server, count_tokens(prompt), count_tokens(text), responses_api=True)
    server.stats.bill(model, usage, body)
    message = {
        "type": "message",
        "id": "msg-s",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return {
        "id": "resp-s",
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "completed",
        "output": [message],
        "usage": usage,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def response(server: Server, body: Body) -> Reply:
    if body.get("stream"):
        return response_stream(server, body)
    return Reply(200, _response_object(server, body))


def response_stream(server: Server, body: Body) -> Reply:
    """``response.created``, the output item and content part, one text delta, then
    ``response.completed`` carrying the usage; numbered, and named by their type."""
    response = _response_object(server, body)
    text = response["output"][0]["content"][0]["text"]
    created = dict(response, status="in_progress", output=[], usage=None)
    item = dict(response["output"][0], content=[], status="in_progress")
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg-s", "output_index": 0, "content_index": 0}
    events = [
        {"type": "response.created", "response": created},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        {"type": "response.output_text.delta", **where, "delta": text, "logprobs": []},
        {"type": "response.completed", "response": response},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return Reply(200, events=[json.dumps(e) for e in events], event_names=[e["type"] for e in events])


# -- GET ----------------------------------------------------------------------------------


def models(server: Server) -> Reply:
    data = [{"id": m, "object": "model", "owned_by": "scripted"} for m in server.served_models.values()]
    return Reply(200, {"object": "list", "data": data})


def server_stats(server: Server) -> Reply:
    """Not OpenAI: the server's own counters."""
    stats = server.stats
    counters = {"requests": len(stats.requests), "max_in_flight": stats.max_in_flight}
    limits = server.provider_limits.stats() if server.provider_limits is not None else None
    return Reply(200, {**counters, "usage": stats.usage.to_metadata(), "provider_limits": limits})


# -- routing ------------------------------------------------------------------------------

POST_ROUTES: list[tuple[str, Callable[[Server, Body], Reply]]] = [
    ("/chat/completions", chat_completion),  # before /completions, which it ends with
    ("/completions", completion),
    ("/embeddings", embeddings),
    ("/responses", response),
]
GET_ROUTES: list[tuple[str, Callable[[Server], Reply]]] = [
    ("/_stats", server_stats),
    ("/models", models),
]


def route_post(server: Server, path: str, body: Body) -> Reply:
    """The reply to a POST of ``body`` to ``path`` (matched by its ending, e.g. ``/v1/embeddings``)."""
    for suffix, endpoint in POST_ROUTES:
        if path.rstrip("/").endswith(suffix):
            return endpoint(server, body)
    return not_found(path)


def route_get(server: Server, path: str) -> Reply:
    for suffix, endpoint in GET_ROUTES:
        if path.rstrip("/").endswith(suffix):
            return endpoint(server)
    return not_found(path)
