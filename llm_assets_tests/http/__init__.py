"""Shared by the HTTP-layer tests: one chat call, one materialization's usage."""

from llm_assets_tests.support import usage_metadata

MODEL = "gpt-4o-mini"
SERVED = "gpt-4o-mini-2024-07-18"


def ask(client, text: str, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **kwargs)


def materialize_one(materialize, asset) -> dict:
    result = materialize([asset])
    (event,) = result.get_asset_materialization_events()
    return usage_metadata(event)
