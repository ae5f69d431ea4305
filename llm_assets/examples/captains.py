"""The captains pipeline: one question, many starship captains, a map of their answers.

Each captain is a partition of the ``captains/answers`` asset; their answers are
embedded (``captains/embeddings``, a LanceDB table) and projected to 2-D
(``captains/answer_map``). ``captains/most_like`` answers "which captain answered most
like this sentence?" (run config ``queries``). Change the question in the launchpad (run
config ``question``) and re-materialize.

The captains are a dynamic partition set (``captains``): add one from the UI (the
materialize dialog's **Add a partition**) and materialize it, as the Airflow tutorial's
run form takes a list of captains. The seven of ``CAPTAINS`` are added when the set is
empty: when the code location loads, to the instance ``DAGSTER_HOME`` names (``scripts/dev``
sets it), else by the ``seed_captains`` sensor on its first tick (a ``dagster dev`` without
``DAGSTER_HOME``, Dagster+). By hand, this seeds that instance and lists its captains::

    DAGSTER_HOME=$PWD/.dagster_home python -m llm_assets.examples.captains

Run it with ``dagster dev`` in the repository root (see the quick start: docs/guides/quickstart.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import dagster as dg

from llm_assets import (
    LanceDBIOManager,
    PartitionedFilesystemIOManager,
    SearchConfig,
    build_llm_pipeline_assets,
    build_search_asset,
)
from llm_assets.local import openai_resource_from_env
from llm_assets.local.resource import announce

#: The captains the example starts with, in the order partition ranges run through them.
CAPTAINS = ["Kirk", "Picard", "Sisko", "Janeway", "Archer", "Pike", "Burnham"]

captains = dg.DynamicPartitionsDefinition(name="captains")


def seed_captains(instance: dg.DagsterInstance, names: Sequence[str] = CAPTAINS) -> list[str]:
    """Add ``names`` to the ``captains`` partitions of ``instance`` if it has none yet, and
    return what was added: nothing when it has some, so a captain you deleted stays deleted.

    Examples:
        >>> with dg.instance_for_test() as instance:
        ...     seed_captains(instance)[:2], seed_captains(instance)
        (['Kirk', 'Picard'], [])
    """
    if instance.get_dynamic_partitions(captains.name):
        return []
    try:
        instance.add_dynamic_partitions(captains.name, list(names))
    except Exception:  # another process seeding the same instance at once (a unique key)
        if set(names) - set(instance.get_dynamic_partitions(captains.name)):
            raise
        return []
    return list(names)


def _seed_at_load() -> None:
    """Seeds the instance ``DAGSTER_HOME`` names, if it names one; never fails the load."""
    if not os.environ.get("DAGSTER_HOME"):
        return  # no instance reachable from here: the sensor below (or the one-liner) seeds it
    try:
        with dg.DagsterInstance.get() as instance:
            added = seed_captains(instance)
    except Exception as error:  # an unreachable database must not stop the code location loading
        dg.get_dagster_logger("llm_assets").warning(
            f"llm_assets: could not add the seven captains to the instance at DAGSTER_HOME ({error!r}); the "
            "seed_captains sensor adds them, or `python -m llm_assets.examples.captains` once it is reachable."
        )
        return
    if added:
        announce(f"added {len(added)} captains to the dynamic partitions {captains.name!r} ({', '.join(added)}).")


_seed_at_load()

_SEEDED = "seeded"


@dg.sensor(
    name="seed_captains",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=24 * 3600,  # it acts once: its first tick, which comes at once
    description=(
        "Adds the seven captains to the `captains` partitions once, if the set is empty (where the code "
        "location could not at load: no DAGSTER_HOME, e.g. Dagster+). A captain you delete stays deleted."
    ),
)
def seed_captains_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Seeds the ``captains`` partitions on its first tick, then only skips (its cursor says so)."""
    if context.cursor == _SEEDED:
        return dg.SensorResult(skip_reason="The captains were seeded on this sensor's first tick.")
    present = context.instance.get_dynamic_partitions(captains.name)
    if present:
        return dg.SensorResult(skip_reason=f"The captains partitions hold {len(present)} already.", cursor=_SEEDED)
    return dg.SensorResult(dynamic_partitions_requests=[captains.build_add_request(CAPTAINS)], cursor=_SEEDED)


# OpenAI with OPENAI_API_KEY, the server at OPENAI_BASE_URL, else the embedded local model
openai = openai_resource_from_env()

pipeline = build_llm_pipeline_assets(
    key_prefix="captains",
    partitions_def=captains,
    system_prompt="You are Captain {partition_key} of Star Trek. Stay in character.",
    prompt="{question} Answer in at most three sentences.",
    question="What is the most important quality of a starship captain, and why?",
    max_tokens=256,  # SmolLM2 rambles now and then (up to ~125 tokens seen): no truncated answers
    temperature=0.7,
    group_name="captains",
    kinds=openai.asset_kinds,  # what the UI shows answering: OpenAI, or the local model
    vector_store_key="vector_store",  # the embeddings in a LanceDB table, searchable
)

#: The sentence ``captains/most_like`` starts with (run config ``queries`` changes it).
SENTENCE = "A captain must put the crew before the mission."

#: "Which captain answered most like this sentence?": the nearest answers to it.
most_like = build_search_asset(
    key="most_like",
    key_prefix="captains",
    store=pipeline.embeddings,
    defaults=SearchConfig(queries=[SENTENCE], k=3),
    group_name="captains",
    kinds={*openai.asset_kinds, "lancedb"},
)


defs = dg.Definitions(
    assets=[*pipeline, most_like],
    sensors=[seed_captains_sensor],
    resources={
        "openai": openai,
        "io_manager": PartitionedFilesystemIOManager(),
        "vector_store": LanceDBIOManager(),  # 'lancedb' in the instance's storage directory
    },
)


if __name__ == "__main__":  # python -m llm_assets.examples.captains
    with dg.DagsterInstance.get() as instance:
        seed_captains(instance)
        print(", ".join(instance.get_dynamic_partitions(captains.name)))
