"""The factories' generated asset checks: run in the asset's step, each offending row named,
thresholds, severity and blocking configurable, and one clear error for a bad rule."""

from typing import Any

import dagster as dg
import numpy as np
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from llm_assets import LLMAssetsError, OpenAIResource, build_chat_answers_asset, build_llm_pipeline_assets
from llm_assets.assets.checks import CheckRule
from llm_assets.testing import Refusal, count_tokens, endpoints
from llm_assets_tests.support import CAPTAINS, captains, failure_message

KIRK, PICARD, SISKO = CAPTAINS


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def answer_by_captain(replies: dict[str, str]) -> Any:
    """A ``server.chat`` answering each captain's prompt with ``replies[captain]``."""

    def chat(body: dict[str, Any]) -> tuple[str, list[str], dict[str, Any], list[str]]:
        prompt = body["messages"][-1]["content"]
        reply = next(text for captain, text in replies.items() if captain in prompt)
        usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": count_tokens(reply)}
        usage["total_tokens"] = sum(usage.values())
        return body["model"], [reply], usage, ["length" if reply.endswith("…") else "stop"]

    return chat


def fail_picard(message: str) -> Any:
    """A fault hook answering Picard's requests with HTTP 500 ``message``."""

    def hook(handler, body) -> bool:
        if PICARD not in body["messages"][-1]["content"]:
            return False
        handler._json(500, {"error": {"message": message, "type": "server_error"}})
        return True

    return hook


def answers_asset(**kwargs: Any) -> dg.AssetsDefinition:
    return build_chat_answers_asset(key="answers", partitions_def=captains, prompt="Captain {partition_key}", **kwargs)


def test_refused_empty_and_truncated_answers_fail_their_checks_naming_the_rows(server, materialize, monkeypatch):
    replies = {KIRK: Refusal("I can't."), PICARD: "", SISKO: "Because the frontier…"}
    monkeypatch.setattr(server, "chat", answer_by_captain(replies))
    result = materialize([answers_asset()], partitions=CAPTAINS)
    assert result.success  # WARN checks: the answers are stored, the UI shows the warnings
    checks = evaluations(result)
    assert set(checks) == {
        "no_failed_requests",
        "no_empty_answers",
        "no_refusals",
        "no_truncated_answers",
        "answers_match_requests",
    }  # valid_structured_answers only with a response_format
    for name, captain in [("no_refusals", KIRK), ("no_empty_answers", PICARD), ("no_truncated_answers", SISKO)]:
        check = checks[name]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, name
        assert check.metadata["count"].value == 1 and check.metadata["rate"].value == round(1 / 3, 4)
        assert f"| {captain} | 0 | Captain {captain} |" in check.metadata["offending_rows"].value
    assert "raise max_tokens" in checks["no_truncated_answers"].metadata["fix"].value
    assert checks["no_failed_requests"].passed and checks["answers_match_requests"].passed
    assert checks["answers_match_requests"].metadata["requests"].value == 3
    assert checks["answers_match_requests"].metadata["partitions"].value == 3  # the run's figures are here


def test_failed_requests_recorded_fail_their_check(server, materialize, no_backoff):
    server.fault = fail_picard("down")
    config = {"ops": {"answers": {"config": {"on_error": "RECORD"}}}}
    result = materialize([answers_asset()], partitions=CAPTAINS, run_config=config)
    check = evaluations(result)["no_failed_requests"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "| HTTP 500: Error code: 500 - down |" in check.metadata["offending_rows"].value


def test_thresholds_severity_and_blocking(server, materialize, monkeypatch):
    replies = {KIRK: Refusal("I can't."), PICARD: "Duty.", SISKO: "Faith."}
    monkeypatch.setattr(server, "chat", answer_by_captain(replies))
    tolerant = answers_asset(checks={"no_refusals": CheckRule(max_rate=0.5)})
    assert evaluations(materialize([tolerant], partitions=CAPTAINS))["no_refusals"].passed

    pipeline = build_llm_pipeline_assets(
        partitions_def=captains,
        prompt="Captain {partition_key}",
        checks={"no_refusals": {"severity": "ERROR", "blocking": True}, "no_empty_answers": False},
    )
    result = materialize(list(pipeline), partitions=CAPTAINS, raise_on_error=False)
    checks = evaluations(result)
    assert not checks["no_refusals"].passed and checks["no_refusals"].severity == dg.AssetCheckSeverity.ERROR
    assert "no_empty_answers" not in checks
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"answers"}  # the blocking check stopped the embeddings
    assert server.stats.paths["/v1/embeddings"] == 0


def test_embedding_checks_catch_zero_vectors_and_mixed_dimensions(server, materialize, monkeypatch):
    real = endpoints.scripted_vector

    def vector(text: str, dimensions: int) -> np.ndarray:
        return np.zeros(dimensions, np.float32) if KIRK in text else real(text, dimensions)

    monkeypatch.setattr(endpoints, "scripted_vector", vector)
    pipeline = build_llm_pipeline_assets(partitions_def=captains, prompt="Captain {partition_key}")
    assets = list(pipeline)
    materialize(assets, selection=[pipeline.answers.key], partitions=CAPTAINS)
    first = evaluations(materialize(assets, selection=[pipeline.embeddings.key], partition_key=KIRK))
    offending = first["no_bad_vectors"].metadata["offending_rows"].value
    assert not first["no_bad_vectors"].passed and f"| {KIRK} | 0 |" in offending
    assert offending.startswith("| partition_key | row | text |\n")  # the rows, not their vectors
    assert first["one_dimension"].passed and first["embeddings_match_texts"].passed
    config = {"ops": {"embeddings": {"config": {"dimensions": 8}}}}
    second = materialize(assets, selection=[pipeline.embeddings.key], partition_key=PICARD, run_config=config)
    mixed = evaluations(second)["one_dimension"]
    assert not mixed.passed and mixed.metadata["dimensions"].value == f"{KIRK}: 16, {PICARD}: 8"


def test_checks_off_and_bad_rules():
    assert not answers_asset(checks=False).check_specs_by_output_name
    names = {spec.name for spec in answers_asset().check_specs}
    assert "no_refusals" in names and "valid_structured_answers" not in names
    with pytest.raises(LLMAssetsError, match=r"Unknown check\(s\) no_typos in checks of answers: its factory"):
        answers_asset(checks={"no_typos": False})
    with pytest.raises(LLMAssetsError, match=r"checks\['no_refusals'\] of answers: max_rate: Input should be"):
        answers_asset(checks={"no_refusals": {"max_rate": 2}})
    with pytest.raises(LLMAssetsError, match="give True, False or"):
        answers_asset(checks=["no_refusals"])


def test_yaml_component_takes_checks_and_a_response_format(server, materialize):
    schema = {
        "type": "object",
        "properties": {"quality": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["quality", "confidence"],
        "additionalProperties": False,
    }
    attributes = {
        "key_prefix": "crew",
        "partitions": CAPTAINS,
        "prompt": "Captain {partition_key}",
        "response_format": schema,
        "checks": {"no_truncated_answers": {"max_rate": 0.5, "severity": "ERROR"}, "explained_variance": False},
    }
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "crew"
        folder.mkdir(parents=True)
        document = {"type": "llm_assets.components.LLMPipelineComponent", "attributes": attributes}
        (folder / "defs.yaml").write_text(yaml.safe_dump(document))
        with sandbox.load_component_and_build_defs(defs_path=folder) as (_, defs):
            assets = list(defs.assets)
    result = materialize(assets, selection=["crew/answers"], partitions=CAPTAINS)
    checks = evaluations(result)
    assert checks["valid_structured_answers"].passed and checks["no_truncated_answers"].passed
    assert str(result.output_for_node("crew__answers")["confidence"].dtype) == "float64"
    plot_checks = {
        spec.name for asset in assets for spec in asset.check_specs if spec.asset_key.path[-1] == "answer_map"
    }
    assert plot_checks == {"enough_points"}


def test_a_server_message_naming_invalid_output_is_still_a_failed_request(server, materialize, no_backoff):
    server.fault = fail_picard("Invalid output from upstream worker")
    config = {"ops": {"answers": {"config": {"on_error": "RECORD"}}}}
    checks = evaluations(materialize([answers_asset()], partitions=CAPTAINS, run_config=config))
    assert not checks["no_failed_requests"].passed


def test_check_metadata_and_the_question_are_redacted(server, materialize, monkeypatch):
    monkeypatch.setattr(server, "chat", answer_by_captain({KIRK: Refusal("No."), PICARD: "Duty.", SISKO: "Faith."}))
    resource = OpenAIResource(api_key="sk-test", base_url=server.base_url, redact_text=True)
    asset = build_chat_answers_asset(
        key="answers",
        partitions_def=captains,
        prompt="Captain {partition_key}: {question}",
        question="write to ana@example.org",
    )
    result = materialize([asset], resource, partitions=CAPTAINS)
    shown = evaluations(result)["no_refusals"].metadata["offending_rows"].value
    assert KIRK in shown and "ana@example.org" not in shown
    for event in result.get_asset_materialization_events():
        assert "ana@example.org" not in event.materialization.metadata["question"].value


def test_one_dimension_compares_every_other_partition_on_record(server, materialize):
    pipeline = build_llm_pipeline_assets(partitions_def=captains, prompt="Captain {partition_key}")
    assets, embeddings = list(pipeline), [pipeline.embeddings.key]
    materialize(assets, selection=[pipeline.answers.key, *embeddings], partitions=CAPTAINS)
    smaller = {"ops": {"embeddings": {"config": {"dimensions": 8}}}}
    for _ in range(2):  # the second time, the latest event is Kirk's own: the others still differ
        check = evaluations(materialize(assets, selection=embeddings, partition_key=KIRK, run_config=smaller))
        assert not check["one_dimension"].passed
        assert check["one_dimension"].metadata["dimensions"].value == f"{PICARD}: 16, {SISKO}: 16, {KIRK}: 8"


def test_blocking_needs_severity_error():
    with pytest.raises(LLMAssetsError, match="blocking at severity WARN, which Dagster never blocks on"):
        answers_asset(checks={"no_truncated_answers": CheckRule(blocking=True)})


def test_embedding_a_refused_answer_says_it_was_refused(server, materialize, monkeypatch):
    monkeypatch.setattr(server, "chat", answer_by_captain({KIRK: Refusal("No."), PICARD: "Duty.", SISKO: "Faith."}))
    pipeline = build_llm_pipeline_assets(partitions_def=captains, prompt="Captain {partition_key}")
    result = materialize(list(pipeline), partitions=CAPTAINS, raise_on_error=False)
    assert "its upstream answer is a refusal ('No.')" in failure_message(result)
