"""Assets that update themselves: ``automation_condition`` on the factories, evaluated
with Dagster's own ``dg.evaluate_automation_conditions`` tick by tick, as the automation
daemon does, on a real instance."""

import dagster as dg

from llm_assets import build_chat_answers_asset, build_embeddings_asset, build_pca_plot_asset
from llm_assets.batch import RequestMode
from llm_assets.testing.batches import ScriptedBatchServer
from llm_assets_tests.batch import job
from llm_assets_tests.support import failure_message

crew = dg.DynamicPartitionsDefinition(name="crew")
eager = dg.AutomationCondition.eager()


class Ticks:
    """The automation daemon's ticks, one at a time, its cursor carried over."""

    def __init__(self, assets: list[dg.AssetsDefinition], instance: dg.DagsterInstance, openai: object) -> None:
        self.defs = dg.Definitions(assets=assets, resources={"openai": openai})
        self.instance, self.cursor = instance, None

    def __call__(self) -> dict[str, set[str | None]]:
        """What this tick requests: asset key → partitions."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {
            key.to_user_string(): set(result.get_requested_partitions(key))
            for key in self.defs.resolve_all_asset_keys()
            if result.get_num_requested(key)
        }


def test_eager_embeddings_and_map_follow_a_new_partitions_answers(server, materialize, instance, openai_resource):
    answers = build_chat_answers_asset(
        key="answers", partitions_def=crew, prompt="You are Captain {partition_key}. {question}", question="Why?"
    )
    embeddings = build_embeddings_asset(key="embeddings", upstream=answers, automation_condition=eager)
    plot = build_pca_plot_asset(key="answer_map", upstream=embeddings, automation_condition=eager)
    assets = [answers, embeddings, plot]
    instance.add_dynamic_partitions("crew", ["Kirk", "Picard"])
    materialize(assets, selection=["answers", "embeddings"], partitions=["Kirk", "Picard"])
    materialize(assets, selection=["answer_map"])
    tick = Ticks(assets, instance, openai_resource)
    assert tick() == {}  # all up to date

    instance.add_dynamic_partitions("crew", ["Riker"])  # as the UI's "Add partition" does
    assert tick() == {}  # the answers cost money: they are materialized on purpose
    materialize(assets, selection=["answers"], partitions=["Riker"])
    assert tick() == {"embeddings": {"Riker"}}  # exactly the new partition's, and not the map yet
    materialize(assets, selection=["embeddings"], partitions=["Riker"])
    assert tick() == {"answer_map": {None}}
    result = materialize(assets, selection=["answer_map"])
    assert result.asset_value("answer_map")["label"].tolist() == ["Kirk", "Picard", "Riker"]
    assert tick() == {}
    assert server.stats.paths["/v1/embeddings"] == 3  # one per partition: Riker embedded once


def test_automation_never_pays_for_a_pending_batch_twice(server, materialize, instance, tmp_path):
    """Eager answers in batch mode: the tick that asks for a new partition launches one
    batch; while it is pending no tick asks again by itself, and when an upstream update
    makes one ask again, the run re-attaches to the pending batch instead of creating one."""

    @dg.asset
    def roster() -> list[str]:
        return ["Kirk", "Picard", "Sisko"]

    answers = build_chat_answers_asset(
        key="answers",
        partitions_def=crew,
        prompt="You are Captain {partition_key}. {question}",
        question="What matters most on a starship?",
        mode=RequestMode.BATCH,
        automation_condition=eager,
        deps=[roster],
    )
    with ScriptedBatchServer(server, finalizing_polls=1_000_000) as pending:
        openai = job.resource(pending.base_url, cache_dir=str(tmp_path), batch={"max_wait_seconds": 0})
        tick = Ticks([roster, answers], instance, openai)

        def launch(requested: dict) -> None:
            """Runs what a tick requested, as the daemon would; each answers run waits 0 s."""
            for key in requested:
                partitions = [p for p in job.CAPTAINS if p in requested[key]]  # in the order they were added
                run = materialize(
                    [roster, answers], openai, selection=[key], partitions=partitions or None, raise_on_error=False
                )
                if key == "answers":
                    assert "is still running after 0 s" in failure_message(run)

        materialize([roster, answers], openai, selection=["roster"])
        assert tick() == {}
        instance.add_dynamic_partitions("crew", job.CAPTAINS)
        requested = tick()
        assert requested == {"answers": set(job.CAPTAINS)}  # new partitions, newly missing
        launch(requested)
        assert pending.creates == 1
        for _ in range(3):  # later ticks, the batch still pending: nothing asked again
            assert tick() == {}

        materialize([roster, answers], openai, selection=["roster"])  # an upstream update
        requested = tick()
        assert requested == {"answers": set(job.CAPTAINS)}
        launch(requested)
        assert pending.creates == 1  # re-attached to the pending batch: billed once
        assert tick() == {}
