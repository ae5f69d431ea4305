"""build_pca_plot_asset (and the three factories together): a PNG of every materialized
partition, labels that don't overlap, and clear errors for what cannot be projected."""

from itertools import combinations

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from upath import UPath

from llm_assets import build_llm_pipeline_assets, build_pca_plot_asset
from llm_assets.accounting.prices import DEFAULT_PRICES as PRICES
from llm_assets.assets import pca
from llm_assets.assets.frames import embeddings_frame
from llm_assets.assets.plot import embedding_parts
from llm_assets_tests.support import CAPTAINS, captains, failure_message, metadata_values, usage_metadata


def test_pipeline_single_run_backfill_then_plot(server, materialize, tmp_path):
    pipeline = build_llm_pipeline_assets(
        key_prefix="crew",
        partitions_def=captains,
        prompt="Captain {partition_key}: {question}",
        question="Why?",
        group_name="crew",
        plot_dir="memory://crew-plots",  # any fsspec URL: S3 when steps run on several machines
    )
    assets = list(pipeline)
    answers = materialize(assets, selection=[pipeline.answers.key], partitions=CAPTAINS)
    assert server.stats.paths["/v1/chat/completions"] == 3
    assert len(answers.get_asset_materialization_events()) == 3  # one run, one event per partition
    embeddings = materialize(assets, selection=[pipeline.embeddings.key], partitions=CAPTAINS)
    for event in embeddings.get_asset_materialization_events():
        expected = server.usage_where(lambda b, p=event.partition: "input" in b and p in b["input"][0])
        assert usage_metadata(event) == expected.to_metadata(PRICES)
    plot = materialize(assets, selection=[pipeline.plot.key])
    frame = plot.output_for_node("crew__answer_map")
    assert sorted(frame["label"]) == sorted(CAPTAINS)
    (event,) = plot.get_asset_materialization_events()
    meta = metadata_values(event)
    assert meta["plot"].startswith("![crew/answer_map](data:image/png;base64,")
    assert meta["plot_path"] == "memory://crew-plots/crew/answer_map.png"
    assert UPath(meta["plot_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 < meta["explained_variance_pc1"] <= 1 and meta["explained_variance_pc1"] >= meta["explained_variance_pc2"]
    assert len(meta["coordinates"].records) == 3


def test_plot_skips_missing_partitions_with_a_log_line(server, materialize, instance):
    pipeline = build_llm_pipeline_assets(partitions_def=captains, prompt="Captain {partition_key}")
    assets = list(pipeline)
    materialize(assets, selection=[pipeline.answers.key, pipeline.embeddings.key], partitions=CAPTAINS[:2])
    result = materialize(assets, selection=[pipeline.plot.key])
    assert len(result.output_for_node("answer_map")) == 2
    logs = [e.message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any("Skipping 1 partition(s)" in m and CAPTAINS[2] in m for m in logs)


@pytest.mark.parametrize("checks", [True, {"enough_points": False}])
def test_plot_with_fewer_than_two_points_fails_its_check_or_is_an_error(server, materialize, checks):
    pipeline = build_llm_pipeline_assets(partitions_def=captains, prompt="Captain {partition_key}", checks=checks)
    assets = list(pipeline)
    materialize(assets, selection=[pipeline.answers.key, pipeline.embeddings.key], partition_key=CAPTAINS[0])
    result = materialize(assets, selection=[pipeline.plot.key], raise_on_error=False)
    if checks is True:  # drawn, and the check says why it is no map
        (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "enough_points"]
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert "materialize more partitions" in evaluation.metadata["fix"].value
        return
    assert not result.success
    assert "PCA needs at least 2 embeddings, got 1" in failure_message(result)


def test_embeddings_of_differing_dimension_in_one_pca(server, materialize):
    parts = dg.StaticPartitionsDefinition(["small", "large"])

    @dg.asset(partitions_def=parts)
    def vectors(context: dg.AssetExecutionContext) -> pd.DataFrame:
        dims = 8 if context.partition_key == "small" else 16
        return embeddings_frame(
            [{"partition_key": context.partition_key, "row": i, "text": "t", "model": "m"} for i in range(3)],
            np.ones((3, dims)),
        )

    plot = build_pca_plot_asset(key="map", upstream=vectors)
    for key in ("small", "large"):
        assert materialize([vectors], raise_on_error=False, partition_key=key).success
    result = materialize([vectors, plot], raise_on_error=False, selection=[plot.key])
    assert "differ in dimension across partitions ({'small': 8, 'large': 16})" in failure_message(result)


def test_partitions_are_trimmed_in_place_so_each_frame_can_be_freed():
    """The plot holds one copy of the vectors: no second dict may keep the loaded frames alive."""
    frame = embeddings_frame([{"partition_key": "a", "row": 0, "text": "t", "model": "m"}], np.ones((1, 4)))
    loaded = {"a": frame, "empty": frame.iloc[:0]}
    assert embedding_parts(loaded, "text", "embeddings") is loaded and list(loaded) == ["a"]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"partition_key": ["a", "b"], "text": ["x", "y"]}), "is not an embeddings frame"),
        (
            pd.DataFrame([["a", [1.0], [2.0]], ["b", [3.0], [4.0]]], columns=["text", "embedding", "embedding"]),
            "is not an embeddings frame (one vector column 'embedding', each column once",
        ),
        (pd.DataFrame({"text": ["a", "b"], "embedding": ["xy", "zw"]}), "Some embeddings are not numbers"),
        (pd.DataFrame({"text": ["a", "b"], "embedding": [[1.0, 2.0], [3.0]]}), "Some embeddings are not numbers"),
        (pd.DataFrame({"text": ["a", "b"], "embedding": [[1.0, np.nan], [3.0, 4.0]]}), "NaN or infinite"),
        (
            pd.DataFrame({"partition_key": ["a", "b"], 7: [1, 2], "embedding": [[1.0], [2.0]]}),
            "label_column 'text' is not a column of vectors (columns: ['7', 'partition_key'])",
        ),
        # frames stored with one column per dimension, before the `embedding` column
        (pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], columns=["e0", "e0"]), "is not an embeddings frame"),
        (pd.DataFrame({"text": ["a", "b"], "e0": ["x", "y"]}), "Some embeddings are not numbers"),
        (
            pd.DataFrame({"partition_key": ["a", "b"], 7: [1, 2], "e0": [1.0, 2.0]}),
            "label_column 'text' is not a column of vectors (columns: ['7', 'partition_key'])",
        ),
    ],
)
def test_a_plot_of_something_that_is_not_embeddings_is_one_clear_error(server, materialize, frame, message):
    @dg.asset(key="vectors")
    def vectors() -> pd.DataFrame:
        return frame

    plot = build_pca_plot_asset(key="plot", upstream=vectors, label_column="text")
    result = materialize([vectors, plot], raise_on_error=False)
    assert "ConfigurationError" in failure_message(result) and message in failure_message(result)


def test_the_map_names_the_question_its_answers_answered(server, materialize):
    pipeline = build_llm_pipeline_assets(
        partitions_def=captains, prompt="Captain {partition_key}: {question}", question="Why explore?"
    )
    assets, everything = list(pipeline), [pipeline.answers.key, pipeline.embeddings.key]
    materialize(assets, selection=everything, partitions=CAPTAINS)

    def map_metadata() -> dict:
        (event,) = materialize(assets, selection=[pipeline.plot.key]).get_asset_materialization_events()
        return metadata_values(event)

    assert map_metadata()["question"] == "Why explore?"
    new_question = {"ops": {"answers": {"config": {"question": "Tea or coffee?"}}}}
    materialize(assets, selection=[pipeline.answers.key], partition_key=CAPTAINS[0], run_config=new_question)
    assert map_metadata()["question"] == "Why explore?"  # Kirk's new answer is not embedded yet
    materialize(assets, selection=[pipeline.embeddings.key], partition_key=CAPTAINS[0])
    mixed = map_metadata()
    assert "question" not in mixed and f"| {CAPTAINS[0]} | Tea or coffee? |" in mixed["questions"]
    assert f"| {CAPTAINS[1]} | Why explore? |" in mixed["questions"]
    assert mixed["explained_variance_pc1"] == round(mixed["explained_variance_pc1"], 4)


# -- labels ------------------------------------------------------------------------------------

#: The quick start's map (docs/images/answer-map.png, before adjustText): Archer's label, right of its
#: point, ran into Kirk's, left of its point.
CREW = ["Kirk", "Archer", "Picard", "Sisko", "Janeway", "Pike", "Burnham"]
CREW_POINTS = np.array(
    [[0.052, 0.05], [0.012, 0.04], [-0.214, -0.004], [-0.056, -0.202], [0.135, -0.042], [-0.045, 0.171], [0.12, -0.014]]
)


def label_boxes(points: np.ndarray, labels: list[str], **kwargs) -> tuple[dict, object]:
    """Each label's bounding box on the rendered figure (display pixels), and the axes' box."""
    with pca.labelled_scatter(points, labels, "Crew", **kwargs) as fig:
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        return {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}, ax.get_window_extent(renderer)


def overlapping(boxes: dict) -> set[tuple[str, str]]:
    return {(a, b) for a, b in combinations(sorted(boxes), 2) if boxes[a].overlaps(boxes[b])}


def test_labels_that_would_overlap_are_moved_apart_inside_the_axes():
    beside, _ = label_boxes(CREW_POINTS, CREW, adjusted_max=0)  # each beside its point, unadjusted
    assert overlapping(beside) == {("Archer", "Kirk")}
    adjusted, frame = label_boxes(CREW_POINTS, CREW)
    assert sorted(adjusted) == sorted(CREW)
    assert overlapping(adjusted) == set()
    assert all(
        frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in adjusted.values()
    )


def test_labels_are_adjusted_up_to_a_count_beside_their_points_up_to_another_then_not_drawn(monkeypatch):
    import adjustText

    calls = []
    monkeypatch.setattr(adjustText, "adjust_text", lambda texts, **kwargs: calls.append(len(texts)))
    rng = np.random.default_rng(0)
    for count in (pca.ADJUSTED_LABELS_MAX, pca.ADJUSTED_LABELS_MAX + 1, pca.LABELS_MAX, pca.LABELS_MAX + 1):
        boxes, _ = label_boxes(rng.normal(size=(count, 2)), [f"c{i}" for i in range(count)])
        assert len(boxes) == (count if count <= pca.LABELS_MAX else 0)
    assert calls == [pca.ADJUSTED_LABELS_MAX]  # adjustText's cost grows too fast beyond


def test_the_map_of_the_captains_writes_a_png_with_adjusted_labels(tmp_path):
    png = pca.scatter_png(CREW_POINTS, CREW, tmp_path / "map" / "crew.png", title="Crew")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
