"""The captains example: loads, materializes end to end, in-process and from the CLI."""

import importlib
import os
import subprocess
import sys
import warnings

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from llm_assets import embedding_matrix
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.testing import scripted_vector
from llm_assets.vector_store.column import frame_of

MODULE = "llm_assets.examples.captains"


def load_example(monkeypatch, base_url: str):
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    return importlib.reload(importlib.import_module(MODULE))


def test_definitions_validate(monkeypatch, server):
    example = load_example(monkeypatch, server.base_url)
    dg.Definitions.validate_loadable(example.defs)
    keys = {k.to_user_string() for k in example.defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"captains/answers", "captains/embeddings", "captains/answer_map", "captains/most_like"}


def test_the_example_names_what_answers_and_loads_quietly(monkeypatch, capsys):
    """With no key nor base URL the defaults, kinds and the terminal line name the local
    model; a code server (which dagster dev runs at log level warning) prints the line;
    the factories' deliberate beta parameter warns nothing."""
    from llm_assets.local import CHAT_MODEL, EMBEDDING_MODEL

    monkeypatch.setattr(sys, "argv", ["dagster", "api", "grpc", "--log-level", "warning"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        example = importlib.reload(importlib.import_module(MODULE))
    assert not [w for w in caught if issubclass(w.category, dg.BetaWarning)]
    line = capsys.readouterr().err
    assert f"answering with the embedded local model ({CHAT_MODEL}, {EMBEDDING_MODEL})" in line
    resource = example.defs.resources["openai"]
    assert (resource.chat_model, resource.embedding_model) == (CHAT_MODEL, EMBEDDING_MODEL)
    kinds = {a.key.to_user_string(): a.specs_by_key[a.key].kinds for a in example.pipeline}
    assert kinds["captains/answers"] == {"local", "llama.cpp"} == kinds["captains/embeddings"]
    assert kinds["captains/answer_map"] == {"scikitlearn", "matplotlib"}


def test_all_captains_then_embeddings_then_plot(monkeypatch, server, env_home):
    example = load_example(monkeypatch, server.base_url)
    assets, resources = list(example.pipeline), example.defs.resources
    everyone = {
        "dagster/asset_partition_range_start": example.CAPTAINS[0],
        "dagster/asset_partition_range_end": example.CAPTAINS[-1],
    }
    with dg.DagsterInstance.get() as instance:
        for asset, tags in (
            (example.pipeline.answers, everyone),
            (example.pipeline.embeddings, everyone),
            (example.pipeline.plot, {}),
        ):
            result = dg.materialize(assets, selection=[asset.key], resources=resources, instance=instance, tags=tags)
            assert result.success
        records = instance.fetch_materializations(example.pipeline.answers.key, limit=100).records
        plot_event = instance.get_latest_materialization_event(example.pipeline.plot.key)
    by_captain = {r.asset_materialization.partition: usage_metadata_from_record(r) for r in records}
    assert set(by_captain) == set(example.CAPTAINS)
    for captain, recorded in by_captain.items():
        expected = server.usage_where(
            lambda b, c=captain: f"Captain {c} " in b.get("messages", [{}])[0].get("content", "")
        )
        assert recorded == expected.to_metadata(PRICES) and expected.calls == 1
    assert server.stats.paths["/v1/chat/completions"] == len(example.CAPTAINS)
    assert server.stats.paths["/v1/embeddings"] == len(example.CAPTAINS)
    png = plot_event.asset_materialization.metadata["plot_path"].value
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100
    assert_most_like_is_the_nearest_captain(example, server)


def assert_most_like_is_the_nearest_captain(example, server) -> None:
    """``captains/most_like`` names the captain whose answer is nearest the run config's
    sentence: numpy's cosine over the embeddings in the example's LanceDB table."""
    sentence = example.SENTENCE
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [*example.pipeline, example.most_like],
            selection=[example.most_like.key],
            resources=example.defs.resources,
            instance=instance,
        )
        stored = example.defs.resources["vector_store"].store(instance).read("captains__embeddings")
    frame = result.output_for_node("captains__most_like")
    matrix = embedding_matrix(frame_of(stored))
    query = scripted_vector(sentence, matrix.shape[1])
    cosine = 1 - (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    captains = stored.column("partition_key").to_pylist()
    assert frame["match_partition_key"].tolist() == [captains[i] for i in np.argsort(cosine)[:3]]
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["nearest"].value == captains[int(np.argmin(cosine))]
    assert server.usage_where(lambda b: b.get("input") == [sentence]).calls == 1  # the query, embedded once


def test_the_seven_captains_are_seeded_at_load_once_and_a_deleted_one_stays_deleted(monkeypatch, env_home):
    example = importlib.reload(importlib.import_module(MODULE))  # DAGSTER_HOME names a fresh instance
    assert isinstance(example.captains, dg.DynamicPartitionsDefinition)
    with dg.DagsterInstance.get() as instance:
        assert list(instance.get_dynamic_partitions("captains")) == example.CAPTAINS  # in order: ranges follow it
        instance.delete_dynamic_partition("captains", "Pike")
        instance.add_dynamic_partitions("captains", ["Riker"])
    importlib.reload(example)  # as a code location reload, or the next run's process
    with dg.DagsterInstance.get() as instance:
        kept = list(instance.get_dynamic_partitions("captains"))
    assert kept == [c for c in example.CAPTAINS if c != "Pike"] + ["Riker"]


def test_the_example_loads_where_no_instance_is_reachable(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no-such-folder"))
    with caplog.at_level("WARNING"):
        example = importlib.reload(importlib.import_module(MODULE))
    dg.Definitions.validate_loadable(example.defs)
    assert "could not add the seven captains" in caplog.text and "seed_captains" in caplog.text
    monkeypatch.delenv("DAGSTER_HOME")
    dg.Definitions.validate_loadable(importlib.reload(example).defs)  # no instance named at all


def test_the_seed_sensor_adds_the_captains_to_an_empty_set_on_its_first_tick_only(instance):
    from llm_assets.examples.captains import CAPTAINS, seed_captains_sensor

    first = seed_captains_sensor(dg.build_sensor_context(instance=instance))
    (request,) = first.dynamic_partitions_requests
    assert (request.partitions_def_name, list(request.partition_keys)) == ("captains", CAPTAINS)
    later = seed_captains_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert not later.dynamic_partitions_requests and later.skip_reason
    instance.add_dynamic_partitions("captains", ["Riker"])  # seeded elsewhere (at load), or by hand
    elsewhere = seed_captains_sensor(dg.build_sensor_context(instance=instance))
    assert not elsewhere.dynamic_partitions_requests and elsewhere.cursor == first.cursor


def test_a_captain_added_to_the_instance_is_answered_and_on_the_map(monkeypatch, server, env_home):
    example = load_example(monkeypatch, server.base_url)
    assets, resources = list(example.pipeline), example.defs.resources
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("captains", ["Riker"])  # what the UI's "Add a partition" does
        crew = {"dagster/asset_partition_range_start": "Kirk", "dagster/asset_partition_range_end": "Riker"}
        for asset, tags in ((example.pipeline.answers, crew), (example.pipeline.embeddings, crew)):
            dg.materialize(assets, selection=[asset.key], resources=resources, instance=instance, tags=tags)
        drawn = dg.materialize(assets, selection=[example.pipeline.plot.key], resources=resources, instance=instance)
    assert sorted(drawn.output_for_node("captains__answer_map")["label"]) == sorted([*example.CAPTAINS, "Riker"])
    riker = server.usage_where(lambda b: "Captain Riker " in b.get("messages", [{}])[0].get("content", ""))
    assert riker.calls == 1


@pytest.mark.slow
def test_cli_materializes_the_example(server, env_home):
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "DAGSTER_HOME": env_home}
    dagster = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", MODULE]
    for select, extra in (
        ("captains/answers", ["--partition-range", "Kirk...Burnham"]),
        ("captains/embeddings", ["--partition-range", "Kirk...Burnham"]),
        ("captains/answer_map", []),
    ):
        done = subprocess.run(
            [*dagster, "--select", select, *extra], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["captains", "answer_map"]))
        records = instance.fetch_materializations(dg.AssetKey(["captains", "answers"]), limit=100).records
    assert len(records) == 7  # one materialization per captain from a single run
    totals = sum(usage_metadata_from_record(r)["openai.total_tokens"] for r in records)
    assert totals == server.usage_where(lambda b: "messages" in b).total_tokens
    with Image.open(event.asset_materialization.metadata["plot_path"].value) as image:
        assert image.format == "PNG"


def usage_metadata_from_record(record) -> dict:
    return {k: v.value for k, v in record.asset_materialization.metadata.items() if k.startswith("openai.")}


def test_reviews_example_from_the_readme(monkeypatch, server, instance):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-reviews")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    example = importlib.reload(importlib.import_module("llm_assets.examples.reviews"))
    assets = example.defs.assets
    products = list(example.REVIEWS)
    tags = {
        "dagster/asset_partition_range_start": products[0],
        "dagster/asset_partition_range_end": products[-1],
    }
    partitioned = [example.reviews.key, example.summaries.key, example.report.key, example.embeddings.key]
    result = dg.materialize(
        assets, selection=partitioned, resources=example.defs.resources, instance=instance, tags=tags
    )
    assert result.success
    summaries = result.output_for_node("review_summaries")
    assert len(summaries) == sum(len(v) for v in example.REVIEWS.values())  # one request per review
    reports = result.output_for_node("review_report")
    assert len(reports) == len(products)  # one chained request per product
    assert all("Summarise in one short sentence" in p for p in reports["prompt"])  # summaries fed in
    plot = dg.materialize(
        assets, selection=[example.review_map.key], resources=example.defs.resources, instance=instance
    )
    assert len(plot.output_for_node("review_map")) == len(summaries)
