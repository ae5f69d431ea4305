"""Code versions and data versions: each edit that decides an asset's content changes its
code version and no other edit does; and on a real instance, Dagster's own staleness API
marks answers → embeddings → map as the UI shows them."""

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pydantic
import pytest
from dagster._core.definitions.data_version import StaleCauseCategory, StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from llm_assets import (
    ChatTranslator,
    CheckRule,
    build_chat_answers_asset,
    build_embeddings_asset,
    build_llm_pipeline_assets,
    build_pca_plot_asset,
)
from llm_assets.batch import RequestMode
from llm_assets_tests.support import CAPTAINS, captains


class Verdict(pydantic.BaseModel):
    verdict: str


class Verdict2(pydantic.BaseModel):
    verdict: str
    confidence: float


class FewShot(ChatTranslator):
    def get_messages(self, prompt, system_prompt, values):
        example = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
        return [*example, *super().get_messages(prompt, system_prompt, values)]


class FewShotV2(FewShot):
    version = "2"


ANSWERS = dict(
    key="answers",
    partitions_def=captains,
    prompt="{question}",
    system_prompt="You are Captain {partition_key}.",
    question="Why explore?",
)
upstream = build_chat_answers_asset(key="tickets", prompt="Write a ticket.")


def version_of(asset: dg.AssetsDefinition) -> str:
    (version,) = asset.code_versions_by_key.values()
    assert version is not None and len(version) == 12
    return version


def answers_version(**edit) -> str:
    return version_of(build_chat_answers_asset(**{**ANSWERS, **edit}))


#: Each edit that decides the answers.
ANSWER_EDITS = {
    "prompt": {"prompt": "{question} Be brief."},
    "system_prompt": {"system_prompt": "You are Admiral {partition_key}."},
    "no system_prompt": {"system_prompt": None},
    "question": {"question": "Why stay?"},
    "chat_model": {"chat_model": "gpt-4.1"},
    "max_tokens": {"max_tokens": 99},
    "temperature": {"temperature": 0.1},
    "variables": {"variables": {"tone": "dry"}},
    "response_format": {"response_format": Verdict},
    "translator class": {"translator": FewShot()},
}
#: Edits that leave the answers as they are.
NEUTRAL_EDITS = {
    "key": {"key": "replies"},
    "key_prefix": {"key_prefix": "crew"},
    "group_name": {"group_name": "llm"},
    "description": {"description": "Why we explore"},
    "tags": {"tags": {"team": "bridge"}},
    "owners": {"owners": ["team:bridge"]},
    "pool": {"pool": "openai"},
    "kinds": {"kinds": {"openai", "local"}},
    "max_concurrency": {"max_concurrency": 3},
    "retry_policy": {"retry_policy": dg.RetryPolicy(max_retries=2)},
    "op_tags": {"op_tags": {"dagster/priority": "3"}},
    "mode": {"mode": RequestMode.BATCH},
    "checks": {"checks": {"no_refusals": CheckRule(max_rate=0.5)}},
    "metadata": {"metadata": {"owner_note": "x"}},
    "automation_condition": {"automation_condition": dg.AutomationCondition.eager()},
    "backfill_policy": {"backfill_policy": dg.BackfillPolicy.multi_run(1)},
}


def test_each_edit_that_decides_the_answers_changes_their_code_version_and_no_other_does():
    base = answers_version()
    changed = {name: answers_version(**edit) for name, edit in ANSWER_EDITS.items()}
    assert base not in changed.values(), [n for n, v in changed.items() if v == base]
    assert len(set(changed.values())) == len(changed)  # and each edit differently
    assert {name: answers_version(**edit) for name, edit in NEUTRAL_EDITS.items()} == dict.fromkeys(NEUTRAL_EDITS, base)
    assert answers_version(max_tokens=256, temperature=0.7) == base  # the run config's own defaults, spelled out


def test_response_schema_and_translator_version_change_it(monkeypatch):
    assert answers_version(response_format=Verdict) != answers_version(response_format=Verdict2)
    schema = {
        "type": "object",
        "properties": {"verdict": {"type": "string"}},
        "required": ["verdict"],
        "additionalProperties": False,
    }
    assert answers_version(response_format=schema) == answers_version(response_format=schema, key="renamed")
    # a translator's code is invisible to the hash: its version attribute says it changed
    assert answers_version(translator=FewShot()) != answers_version(translator=FewShotV2())
    assert answers_version(translator=FewShotV2()) == answers_version(translator=FewShotV2())
    monkeypatch.setattr(FewShotV2, "version", 3)  # any value, as text
    assert answers_version(translator=FewShotV2()) not in {answers_version(translator=FewShot())}


def test_how_upstream_rows_become_requests_changes_it():
    def version(**edit):
        arguments = {"key": "a", "prompt": "Sum up: {text}", "upstream": upstream, **edit}
        return version_of(build_chat_answers_asset(**arguments))

    base = version()
    assert version(text_column="prompt") != base
    assert version(one_request_per_row=False) != base
    assert version(partition_mapping=dg.LastPartitionMapping()) != base  # which upstream rows fill {text}
    assert version(key="b", group_name="g") == base


def test_embedding_and_map_versions_follow_their_settings_only():
    def embeddings(**edit):
        return version_of(build_embeddings_asset(**{"key": "e", "upstream": upstream, **edit}))

    base = embeddings()
    assert len({base, embeddings(embedding_model="text-embedding-3-large"), embeddings(dimensions=256)}) == 3
    assert embeddings(text_column="prompt") != base
    assert embeddings(partition_mapping=dg.LastPartitionMapping()) != base
    neutral = [{"key": "f"}, {"batch_size": 10}, {"max_concurrency": 2}, {"pool": "p"}, {"mode": RequestMode.BATCH}]
    assert {embeddings(**edit) for edit in neutral} == {base}

    vectors = build_embeddings_asset(key="e", upstream=upstream)

    def plot(**edit):
        return version_of(build_pca_plot_asset(**{"key": "m", "upstream": vectors, **edit}))

    base = plot()
    assert plot(label_column="text") != base and plot(title="Who answers?") != base
    neutral = [{"key": "n"}, {"plot_dir": "/tmp/elsewhere"}, {"group_name": "g"}, {"owners": ["data@example.com"]}]
    assert {plot(**edit) for edit in neutral} == {base}


def test_a_users_code_version_wins():
    (version,) = build_chat_answers_asset(**ANSWERS, code_version="7").code_versions_by_key.values()
    assert version == "7"
    pipeline = build_llm_pipeline_assets(prompt="{question}", partitions_def=captains, question="Q?", code_version="v3")
    assert {version for asset in pipeline for version in asset.code_versions_by_key.values()} == {"v3"}


def test_the_code_version_is_the_same_in_every_process():
    """A fresh interpreter (another hash seed, so other set and dict orders) computes the same."""
    script = (
        "from llm_assets_tests.assets.test_versions import ANSWERS, answers_version, Verdict\n"
        "print(answers_version(), answers_version(response_format=Verdict, variables={'b': '2', 'a': '1'}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    repo = Path(__file__).resolve().parents[2]  # where llm_assets_tests is importable from
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=repo, check=True
    )
    here = [answers_version(), answers_version(response_format=Verdict, variables={"a": "1", "b": "2"})]
    assert output.stdout.split() == here


# -- staleness on a real instance ------------------------------------------------------------


def pipeline(prompt: str = "{question}") -> list[dg.AssetsDefinition]:
    return list(
        build_llm_pipeline_assets(
            partitions_def=captains, system_prompt="You are Captain {partition_key}.", prompt=prompt, question="Why?"
        )
    )


ANSWERS_KEY, EMBEDDINGS_KEY, MAP_KEY = (dg.AssetKey(k) for k in ("answers", "embeddings", "answer_map"))


def statuses(instance, assets) -> dict[str, StaleStatus]:
    """What the UI shows for each asset (partition): Dagster's own stale-status resolver."""
    resolver = get_stale_status_resolver(instance, assets)
    shown = {"answer_map": resolver.get_status(MAP_KEY)}
    for key in (ANSWERS_KEY, EMBEDDINGS_KEY):
        shown.update({f"{key.to_user_string()}[{pk}]": resolver.get_status(key, pk) for pk in CAPTAINS})
    return shown


def causes(instance, assets, key: dg.AssetKey, partition: str | None = None) -> set[tuple[StaleCauseCategory, str]]:
    resolver = get_stale_status_resolver(instance, assets)
    return {(c.category, c.reason) for c in resolver.get_stale_root_causes(key, partition)}


def answers_config(**config) -> dict:
    return {"ops": {"answers": {"config": config}}}


def stale(instance, assets) -> set[str]:
    return {key for key, status in statuses(instance, assets).items() if status is StaleStatus.STALE}


def test_staleness_follows_code_and_data_versions(server, materialize, instance):
    """Dagster marks an asset unsynced when a direct dependency has a new data version, or
    its own code version changed (the UI's "code version changed"); each step below is
    one materialization, as a user would click them."""
    assets = pipeline()
    materialize(assets, selection=["answers", "embeddings"], partitions=CAPTAINS)
    materialize(assets, selection=["answer_map"])
    assert set(statuses(instance, assets).values()) == {StaleStatus.FRESH}

    # re-asked (cache REFRESH), the deterministic server answers the same: nothing is unsynced
    sent = len(server.stats.requests)
    materialize(assets, selection=["answers"], partitions=CAPTAINS, run_config=answers_config(cache="REFRESH"))
    assert len(server.stats.requests) == sent + len(CAPTAINS)
    assert stale(instance, assets) == set()
    materialize(assets, selection=["embeddings"], partitions=CAPTAINS)  # the same vectors, from the cache
    assert stale(instance, assets) == set()

    # a new question (run config) gives new answers: a new data version, not a new code version
    materialize(assets, selection=["answers"], partitions=CAPTAINS, run_config=answers_config(question="Why stay?"))
    assert stale(instance, assets) == {f"embeddings[{pk}]" for pk in CAPTAINS}
    assert causes(instance, assets, EMBEDDINGS_KEY, "Kirk") == {(StaleCauseCategory.DATA, "has a new data version")}
    materialize(assets, selection=["embeddings"], partitions=CAPTAINS)
    assert stale(instance, assets) == {"answer_map"}  # new vectors
    materialize(assets, selection=["answer_map"])
    assert stale(instance, assets) == set()

    # a reload with an edited prompt: the answers show "has a new code version"
    edited = pipeline(prompt="{question} Answer in one word.")
    assert stale(instance, edited) == {f"answers[{pk}]" for pk in CAPTAINS}
    assert causes(instance, edited, ANSWERS_KEY, "Kirk") == {(StaleCauseCategory.CODE, "has a new code version")}
    materialize(edited, selection=["answers"], partitions=CAPTAINS, run_config=answers_config(question="Why stay?"))
    assert stale(instance, edited) == {f"embeddings[{pk}]" for pk in CAPTAINS}  # the new prompt's answers differ


def test_one_partition_rerun_alone_to_the_same_answers_keeps_its_dependants_up_to_date(server, materialize, instance):
    """Dagster gives a run's partitions one data version: a partition re-run alone keeps the
    one it shared with the others while its content is unchanged."""
    assets = pipeline()
    together = materialize(assets, selection=["answers", "embeddings"], partitions=CAPTAINS)
    versions = {e.materialization.tags["dagster/data_version"] for e in together.get_asset_materialization_events()}
    assert len(versions) == 2  # one for the answers of all three partitions, one for their embeddings

    alone = materialize(assets, selection=["answers"], partitions=["Kirk"], run_config=answers_config(cache="REFRESH"))
    (event,) = alone.get_asset_materialization_events()
    assert event.materialization.tags["dagster/data_version"] in versions
    assert stale(instance, assets) == set()

    picard = CAPTAINS[1]
    materialize(assets, selection=["answers"], partitions=[picard], run_config=answers_config(question="Why stay?"))
    assert stale(instance, assets) == {f"embeddings[{picard}]"}


def test_a_rerun_of_all_keeps_the_data_version_most_of_them_shared(server, materialize, instance):
    """As in the README journey: captains answered in one backfill, one more alone, then
    all again to the same answers: only the one answered alone looks new below."""
    assets = pipeline()
    sisko = CAPTAINS[2]
    materialize(assets, selection=["answers", "embeddings"], partitions=CAPTAINS[:2])
    materialize(assets, selection=["answers", "embeddings"], partitions=[sisko])
    materialize(assets, selection=["answers"], partitions=CAPTAINS, run_config=answers_config(cache="REFRESH"))
    assert stale(instance, assets) == {f"embeddings[{sisko}]"}  # one data version for three: Sisko's changed


class Retold(ChatTranslator):
    """Adds a per-captain note to the prompt, set by the test (the code stays the same)."""

    notes: ClassVar[dict[str, str]] = {}

    def get_messages(self, prompt, system_prompt, values):
        note = self.notes.get(values["partition_key"], "")
        return super().get_messages(prompt + note, system_prompt, values)


def test_a_kept_data_version_never_hides_a_change(server, materialize, instance, monkeypatch):
    """A version is kept only for partitions that never had it with other content: Picard,
    once under the version Kirk and Sisko keep, changed since, is new below."""
    answers = build_chat_answers_asset(
        key="answers", partitions_def=captains, prompt="{question}", question="Why?", translator=Retold()
    )
    embeddings = build_embeddings_asset(key="embeddings", upstream=answers)
    assets = [answers, embeddings, build_pca_plot_asset(key="answer_map", upstream=embeddings)]
    picard = CAPTAINS[1]
    monkeypatch.setattr(Retold, "notes", {})
    materialize(assets, selection=["answers", "embeddings"], partitions=CAPTAINS)
    Retold.notes[picard] = " Tell it again."
    materialize(assets, selection=["answers"], partitions=[picard])
    assert stale(instance, assets) == {f"embeddings[{picard}]"}
    Retold.notes[picard] = " Tell it a third way."
    materialize(assets, selection=["answers"], partitions=CAPTAINS)
    assert f"embeddings[{picard}]" in stale(instance, assets)


def test_data_versions_are_the_content_of_what_was_materialized(server, materialize, instance):
    assets = pipeline()
    first = materialize(assets, selection=["answers"], partitions=["Kirk"])
    again = materialize(assets, selection=["answers"], partitions=["Kirk"], run_config=answers_config(cache="OFF"))
    other = materialize(assets, selection=["answers"], partitions=["Kirk"], run_config=answers_config(question="?!"))

    def version(result):
        (event,) = result.get_asset_materialization_events()
        return event.materialization.tags["dagster/data_version"]

    assert version(first) == version(again) != version(other)
    assert len({version(first), version(other)}) == 2 and all(len(version(r)) == 12 for r in (first, other))


@pytest.fixture
def code_versions_of_the_example():
    from llm_assets.examples import captains as example

    return {asset.key.to_user_string(): version_of(asset) for asset in example.pipeline}


def test_the_example_has_code_versions(code_versions_of_the_example):
    assert set(code_versions_of_the_example) == {"captains/answers", "captains/embeddings", "captains/answer_map"}
