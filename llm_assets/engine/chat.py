"""Chat requests for the engine: what to ask, and each answer as an ``AnswerRow``.

Examples:
    >>> request = ChatRequest("Picard", 0, "Tea?", ({"role": "user", "content": "Tea?"},), {"model": "m"})
    >>> (call,) = ChatCalls([request])
    >>> body = {"model": "m", "choices": [{"message": {"content": "Earl Grey."}, "finish_reason": "stop"}]}
    >>> call.read(body, cached=False, latency=0.2).answer
    'Earl Grey.'
"""

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from llm_assets.calls import Call
from llm_assets.engine.rows import AnswerRow
from llm_assets.engine.structured import OutputSchema
from llm_assets.errors import HookError, InvalidOutputError

#: ``translate(record, response_body) -> record``: a translator's hook on each row.
Translate = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]


def token_count(value: Any) -> int | None:
    """A token count as the server reported it, for an ``Int64`` column: ``None`` unless a
    whole number that fits (a server may send floats, strings or nothing)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if type(value) is int and 0 <= value < 2**63 else None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion to send, and where its answer goes."""

    partition_key: str | None
    row: int
    prompt: str
    messages: tuple[Mapping[str, Any], ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    schema: OutputSchema | None = None  # a structured answer: its fields become columns

    def describe(self) -> str:
        where = f"partition {self.partition_key!r} " if self.partition_key is not None else ""
        return f"{where}row {self.row} (prompt {self.prompt[:60]!r})"

    def answered(self, body: Mapping[str, Any], *, cached: bool, latency: float | None) -> AnswerRow:
        """The row of a successful response (a body without choices is malformed: retried;
        a structured answer that does not validate raises ``InvalidOutputError``)."""
        choice = body["choices"][0]
        message = choice["message"]
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message.content is a {type(content).__name__}, not text")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        refusal = message.get("refusal")
        row = AnswerRow(
            partition_key=self.partition_key,
            row=self.row,
            prompt=self.prompt,
            answer=content or "",
            model=sys.intern(body["model"]) if isinstance(body.get("model"), str) else None,  # one copy per name
            finish_reason=sys.intern(choice["finish_reason"]) if isinstance(choice.get("finish_reason"), str) else None,
            refusal=refusal if isinstance(refusal, str) and refusal else None,
            prompt_tokens=token_count(usage.get("prompt_tokens")),
            completion_tokens=token_count(usage.get("completion_tokens")),
            total_tokens=token_count(usage.get("total_tokens")),
            latency_s=latency,
            cached=cached,
        )
        if self.schema is not None and row.refusal is None and row.finish_reason != "content_filter":
            row.extra.update(self._fields(row))
        return row

    def _fields(self, row: AnswerRow) -> dict[str, Any]:
        """The structured answer's fields (a refusal has none: the checks count it)."""
        assert self.schema is not None
        try:
            return self.schema.parse(row.answer or "")
        except InvalidOutputError as error:
            if row.finish_reason == "length":  # asked again, it would be cut again
                message = f"does not match {self.schema.name}: it was cut at max_tokens (finish_reason 'length')"
                raise InvalidOutputError(f"{message}: raise max_tokens", retry=False) from None
            raise InvalidOutputError(f"does not match {self.schema.name}: {error}") from None

    def failed(self, message: str) -> AnswerRow:
        return AnswerRow(partition_key=self.partition_key, row=self.row, prompt=self.prompt, error=message)


class ChatCalls(Sequence[Call[AnswerRow]]):
    """One engine call per request, each built when it is asked for (a million requests
    need not hold a million request bodies); ``translate`` may rewrite or extend each row."""

    def __init__(self, requests: Sequence[ChatRequest], translate: Translate | None = None) -> None:
        self.requests, self.translate = requests, translate

    def __len__(self) -> int:
        return len(self.requests)

    @overload
    def __getitem__(self, index: int) -> Call[AnswerRow]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Call[AnswerRow]]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return ChatCalls(self.requests[index], self.translate)
        request = self.requests[index]
        return Call(
            request.partition_key,
            "/chat/completions",
            {"messages": list(request.messages), **request.params},
            request.describe(),
            lambda body, *, cached, latency: self._finish(request.answered(body, cached=cached, latency=latency), body),
            failed=lambda message: self._finish(request.failed(message), {}),
        )

    def _finish(self, row: AnswerRow, body: Mapping[str, Any]) -> AnswerRow:
        if self.translate is None:
            return row
        try:
            record = self.translate(row.to_record(), body)
        except Exception as error:
            failed = " (a failed request, recorded under on_error=RECORD: its response is {})" if row.error else ""
            raise HookError(
                f"The translator's get_record failed on row {row.row}{failed}: {type(error).__name__}: {error}"
            ) from error
        same_row = isinstance(record, dict) and (record.get("partition_key"), record.get("row")) == (
            row.partition_key,
            row.row,
        )
        if not same_row:
            raise HookError(
                f"The translator's get_record returned {type(record).__name__} for row {row.row}: return the record "
                "dict it was given, with columns added or changed (partition_key and row unchanged)."
            )
        return AnswerRow.from_record(record)
