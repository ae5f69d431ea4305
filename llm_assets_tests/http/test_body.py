"""Reading response bodies: gzip, deflate (zlib-wrapped and raw), plain; JSON and SSE;
and compressed responses metered exactly through every client path."""

import gzip
import json
import zlib

import dagster as dg
import pandas as pd
import pytest

from llm_assets import OpenAIResource, build_chat_answers_asset, build_embeddings_asset
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.http.body import BodyReader
from llm_assets_tests.support import event_of, usage_metadata

BODY = json.dumps({"model": "gpt-x", "usage": {"prompt_tokens": 3, "total_tokens": 7}, "choices": []}).encode()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODINGS = {
    "": lambda data: data,
    "gzip": gzip.compress,
    "deflate": zlib.compress,  # as HTTP specifies: zlib-wrapped
    "deflate-raw": raw_deflate,  # as some servers send it, under the same header
}


def feed_in_pieces(reader: BodyReader, data: bytes, size: int = 7) -> None:
    for start in range(0, len(data), size):
        reader.feed(data[start : start + size])


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_json_bodies_in_every_encoding(encoding):
    reader = BodyReader(encoding.replace("-raw", ""), "application/json")
    feed_in_pieces(reader, ENCODINGS[encoding](BODY))
    summary = reader.finish()
    assert (summary.model, summary.usage, summary.json_body) == ("gpt-x", {"prompt_tokens": 3, "total_tokens": 7}, BODY)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_event_streams_in_every_encoding(encoding):
    events = [
        {"model": "gpt-x", "choices": [{"delta": {"content": "hi"}}]},
        {"model": "gpt-x", "usage": {"total_tokens": 9}},
    ]
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"
    reader = BodyReader(encoding.replace("-raw", ""), "text/event-stream")
    feed_in_pieces(reader, ENCODINGS[encoding](stream), size=5)
    summary = reader.finish()
    assert (summary.model, summary.usage, summary.json_body) == ("gpt-x", {"total_tokens": 9}, None)


def test_a_cut_off_body_is_not_billed_as_read():
    reader = BodyReader("gzip", "application/json")
    reader.feed(gzip.compress(BODY)[:20])
    assert not reader.finish().readable


@pytest.mark.parametrize("compression", ["gzip", "deflate", "deflate-raw"])
def test_compressed_responses_are_metered_exactly_on_every_path(server, materialize, compression):
    """Sync client (plain and streamed), async engine (chat and embeddings): all compressed."""
    server.compression = compression

    @dg.asset
    def direct(context: dg.AssetExecutionContext, openai: OpenAIResource) -> None:
        with openai.get_client(context) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "compressed"}])
            stream = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "compressed stream"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    @dg.asset
    def texts() -> pd.DataFrame:
        return pd.DataFrame({"answer": [f"compressed text {i}" for i in range(12)]})

    answers = build_chat_answers_asset(key="answers", upstream=texts, prompt="{text}")
    vectors = build_embeddings_asset(key="vectors", upstream=texts, batch_size=5)
    result = materialize([direct, texts, answers, vectors])
    assert usage_metadata(event_of(result, "direct")) == server.usage_where(
        lambda b: "compressed" in str(b.get("messages"))[:40] and "text" not in str(b.get("messages"))
    ).to_metadata(PRICES)
    chat = server.usage_where(lambda b: "compressed text" in str(b.get("messages")))
    assert usage_metadata(event_of(result, "answers")) == chat.to_metadata(PRICES) and chat.calls == 12
    embedded = server.usage_where(lambda b: "input" in b)
    assert usage_metadata(event_of(result, "vectors")) == embedded.to_metadata(PRICES) and embedded.calls == 3
    assert result.output_for_node("answers")["answer"].str.startswith("Answer").all()
