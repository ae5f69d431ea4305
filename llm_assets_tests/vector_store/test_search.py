"""Search and retrieval-augmented answers against the scripted server: numpy's exact
neighbours, usage equal to the server's per partition (query embeddings included), the
request cache, structured outputs, checks and batch mode with retrieval, and one clear
error for each bad input."""

import dagster as dg
import numpy as np
import pandas as pd
import pydantic
import pytest

from llm_assets import (
    LanceDBIOManager,
    PartitionedFilesystemIOManager,
    Retrieval,
    SearchConfig,
    Upstream,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_search_asset,
)
from llm_assets.batch import RequestMode
from llm_assets.testing import scripted_vector
from llm_assets.testing.batches import ScriptedBatchServer
from llm_assets_tests.batch import job
from llm_assets_tests.support import failure_message, metadata_values, partition_range, usage_metadata

NOTES = {
    "2025": ["Reset your password from the login page.", "Invoices are emailed monthly.", "Use two-factor codes."],
    "2026": ["Refunds take five days.", "The mobile app syncs every hour.", "Export reports as CSV files."],
}
TICKETS = {"mon": ["How do I get a refund?", "Where is my invoice?"], "tue": ["I forgot my password."]}
years = dg.StaticPartitionsDefinition(list(NOTES))
days = dg.StaticPartitionsDefinition(list(TICKETS))


@dg.asset(partitions_def=years, backfill_policy=dg.BackfillPolicy.single_run())
def notes(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"partition_key": pk, "text": NOTES[pk]}) for pk in context.partition_keys])


@dg.asset(partitions_def=days)
def tickets(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"question": TICKETS[context.partition_key]})


note_vectors = build_embeddings_asset(
    key="note_vectors", upstream=notes, text_column="text", dimensions=8, io_manager_key="vector_store"
)


def nearest(query: str, k: int) -> list[str]:
    """numpy's exact cosine neighbours of ``query`` among every note."""
    texts = [t for year in NOTES.values() for t in year]
    stored = np.stack([scripted_vector(t, 8) for t in texts])
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    vector = scripted_vector(query, 8)
    order = np.argsort(1 - stored @ (vector / np.linalg.norm(vector)), kind="stable")
    return [texts[i] for i in order[:k]]


@pytest.fixture
def run(openai_resource, instance, tmp_path):
    store = LanceDBIOManager(uri=str(tmp_path / "lancedb"))

    def materialize(assets, partitions=None, resource=None, **kwargs):
        resources = {
            "openai": resource or openai_resource,
            "io_manager": PartitionedFilesystemIOManager(),
            "vector_store": store,
        }
        tags = partition_range(partitions) if partitions else {}
        return dg.materialize(assets, resources=resources, instance=instance, tags=tags, **kwargs)

    materialize([notes, note_vectors], list(NOTES))
    return materialize


def test_each_query_gets_numpys_nearest_rows_and_its_partitions_usage(server, run):
    search = build_search_asset(
        key="similar", store=note_vectors, queries=Upstream(tickets, text_column="question"), k=2
    )
    run([tickets], ["mon"])
    before = len(server.stats.requests)
    result = run([tickets, search], ["mon"], selection=[search])
    frame = result.output_for_node("similar")
    assert list(frame.columns) == [
        "partition_key",
        "row",
        "query",
        "rank",
        "distance",
        "match_partition_key",
        "match_row",
        "match_text",
        "match_model",
    ]
    for row, query in enumerate(TICKETS["mon"]):
        got = frame[frame["row"] == row]
        assert got["match_text"].tolist() == nearest(query, 2) and got["rank"].tolist() == [1, 2]
    (event,) = result.get_asset_materialization_events()
    billed = server.usage_where(lambda body: body.get("input") == TICKETS["mon"])
    assert usage_metadata(event)["openai.total_tokens"] == billed.total_tokens > 0
    assert [r["body"]["dimensions"] for r in server.stats.requests[before:]] == [8]  # the stored vectors' length
    assert metadata_values(event)["nearest"] == "2026"  # the partition of the first query's nearest note

    again = run([tickets, search], ["mon"], selection=[search])
    assert len(server.stats.requests) == before + 1  # the query embeddings come from the request cache
    pd.testing.assert_frame_equal(again.output_for_node("similar"), frame)


def test_run_config_queries_and_partitions_searched(server, run):
    search = build_search_asset(key="most_like", store="note_vectors", defaults=SearchConfig(queries=["refund?"], k=1))
    result = run([search], run_config={"ops": {"most_like": {"config": {"partitions": ["2025"], "k": 2}}}})
    frame = result.output_for_node("most_like")
    assert frame["match_partition_key"].tolist() == ["2025", "2025"] and frame["query"].tolist() == ["refund?"] * 2
    assert frame["match_text"].tolist() == [t for t in nearest("refund?", 6) if t in NOTES["2025"]][:2]


def test_a_missing_table_or_no_store_or_no_queries_is_one_clear_error_before_any_request(server, run):
    before = len(server.stats.requests)
    missing = build_search_asset(key="s1", store="nowhere", defaults=SearchConfig(queries=["x"]))
    assert "Nothing to search: the LanceDB table 'nowhere'" in failure_message(run([missing], raise_on_error=False))
    no_queries = build_search_asset(key="s2", store=note_vectors)
    message = failure_message(run([no_queries], raise_on_error=False))
    assert "s2 has no queries: set run config `queries`" in message
    wrong_store = build_search_asset(
        key="s3", store=note_vectors, store_key="io_manager", defaults=SearchConfig(queries=["x"])
    )
    message = failure_message(run([wrong_store], raise_on_error=False))
    assert "needs a LanceDBIOManager under the resource key 'io_manager' (found " in message
    assert len(server.stats.requests) == before


def test_a_query_longer_than_the_model_takes_fails_as_embedding_it_does(server, run):
    def too_long(handler, body):
        if "very long" not in str(body.get("input")):
            return False
        message = "This model's maximum context length is 8192 tokens, however you requested 9001 tokens."
        handler._json(400, {"error": {"message": message, "type": "invalid_request_error"}})
        return True

    server.fault = too_long
    search = build_search_asset(key="s", store=note_vectors, defaults=SearchConfig(queries=["a very long query"]))

    @dg.asset
    def long_texts() -> pd.DataFrame:
        return pd.DataFrame({"answer": ["a very long query"]})

    embedded = build_embeddings_asset(key="e", upstream=long_texts, io_manager_key="io_manager")
    searched = failure_message(run([search], raise_on_error=False))
    embedding = failure_message(run([long_texts, embedded], raise_on_error=False))
    expected = "texts 0..0 failed: HTTP 400: Error code: 400 - This model's maximum context length is 8192 tokens"
    assert expected in searched and expected in embedding


class Reply(pydantic.BaseModel):
    reply: str
    confidence: int


def rag_answers(**kwargs):
    return build_chat_answers_asset(
        key="replies",
        upstream=Upstream(tickets, text_column="question"),
        prompt="Notes:\n{context}\n\nTicket: {text}",
        retrieval=Retrieval(note_vectors, k=2),
        **kwargs,
    )


def context_of(query: str) -> str:
    return "\n".join(f"[{i}] {text}" for i, text in enumerate(nearest(query, 2), start=1))


def test_answers_get_their_rows_neighbours_and_usage_stays_exact_per_partition(server, run):
    replies = rag_answers(response_format=Reply)
    run([tickets], list(TICKETS)[:1])
    run([tickets], list(TICKETS)[1:])
    result = run([tickets, replies], list(TICKETS), selection=[replies])
    prompts = [
        r["body"]["messages"][-1]["content"] for r in server.stats.requests if r["path"].endswith("/chat/completions")
    ]
    for query in [q for day in TICKETS.values() for q in day]:
        assert f"Notes:\n{context_of(query)}\n\nTicket: {query}" in prompts
    frame = result.output_for_node("replies")
    assert frame["confidence"].notna().all()  # structured answers, validated
    assert all(check.passed for check in result.get_asset_check_evaluations())
    for event in result.get_asset_materialization_events():
        day = event.partition
        billed = server.usage_where(
            lambda body, d=day: (
                body.get("input") == TICKETS[d] or any(q in str(body.get("messages")) for q in TICKETS[d])
            )
        )
        assert usage_metadata(event)["openai.total_tokens"] == billed.total_tokens > 0
        assert usage_metadata(event)["openai.prompt_tokens"] == billed.total("prompt_tokens")


def test_a_prompt_without_context_or_a_query_that_cant_be_filled_is_refused_when_defined():
    with pytest.raises(Exception, match=r"retrieval= of replies fills \{context\}.*neither prompt uses it"):
        build_chat_answers_asset(key="replies", prompt="{question}", retrieval=Retrieval(note_vectors))
    with pytest.raises(Exception, match=r"Retrieval query of replies uses \{ticket\}"):
        build_chat_answers_asset(
            key="replies", prompt="{context} {question}", retrieval=Retrieval(note_vectors, query="{ticket}")
        )
    with pytest.raises(Exception, match="Retrieval k is 0"):
        Retrieval(note_vectors, k=0)


def test_batch_mode_answers_with_retrieved_context(server, run, tmp_path):
    with ScriptedBatchServer(server) as batch_server:
        resource = job.resource(batch_server.base_url, cache_dir=str(tmp_path / "cache"))
        run([notes, note_vectors], list(NOTES), resource=resource)  # live, through the batch server's proxy
        replies = rag_answers(mode=RequestMode.BATCH)
        run([tickets], ["tue"], resource=resource)
        result = run([tickets, replies], ["tue"], resource=resource, selection=[replies])
    (event,) = result.get_asset_materialization_events()
    assert usage_metadata(event)["openai.batch_requests"] == 1
    billed = server.usage_where(
        lambda body: body.get("input") == TICKETS["tue"] or "I forgot my password." in str(body.get("messages"))
    )
    assert usage_metadata(event)["openai.total_tokens"] == billed.total_tokens > 0
    (prompt,) = [r["body"]["messages"][-1]["content"] for r in server.stats.requests if "messages" in r["body"]]
    assert context_of("I forgot my password.") in prompt
