"""``ChatTranslator``: the hook that turns a filled prompt into a request and a response
into a row, like dagster-dbt's ``DagsterDbtTranslator``. Subclass it to add few-shot
examples, per-partition parameters (e.g. ``response_format``) or extra columns.

Examples:
    >>> class FewShot(ChatTranslator):
    ...     def get_messages(self, prompt, system_prompt, values):
    ...         example = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    ...         return example + super().get_messages(prompt, system_prompt, values)
    >>> FewShot().get_messages("3+3?", None, {})[-1]
    {'role': 'user', 'content': '3+3?'}
"""

from collections.abc import Mapping
from typing import Any


class ChatTranslator:
    """How a chat answers asset builds each request and each row of its DataFrame."""

    def get_messages(self, prompt: str, system_prompt: str | None, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chat messages for one request; ``values`` are the placeholder values."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages

    def get_params(self, params: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """Request parameters besides the messages (model, max_tokens, temperature…)."""
        return dict(params)

    def get_record(self, record: dict[str, Any], response: Mapping[str, Any]) -> dict[str, Any]:
        """The row for one answer: ``record`` has the standard columns; ``response`` is the
        server's JSON body (empty for a failed item). Add columns here."""
        return record
