"""The captains pipeline: one question, many starship captains, a map of their answers.

Each captain is a partition of the ``captains/answers`` asset; their answers are
embedded (``captains/embeddings``) and projected to 2-D (``captains/answer_map``).
Change the question in the launchpad (run config ``question``) and re-materialize.

Run it with ``dagster dev`` in the repository root (see README).
"""

import os

import dagster as dg

from llm_assets import OpenAIResource, PartitionedFilesystemIOManager, build_llm_pipeline_assets

CAPTAINS = ["Kirk", "Picard", "Sisko", "Janeway", "Archer", "Pike", "Burnham"]

captains = dg.StaticPartitionsDefinition(CAPTAINS)

pipeline = build_llm_pipeline_assets(
    key_prefix="captains",
    partitions_def=captains,
    system_prompt="You are Captain {partition_key} of Star Trek. Stay in character.",
    prompt="{question} Answer in at most three sentences.",
    question="What is the most important quality of a starship captain, and why?",
    max_tokens=120,
    temperature=0.7,
    group_name="captains",
)


def openai_resource() -> OpenAIResource:
    """OpenAI with ``OPENAI_API_KEY``, or the server at ``OPENAI_BASE_URL``."""
    return OpenAIResource(
        api_key=dg.EnvVar("OPENAI_API_KEY") if os.environ.get("OPENAI_API_KEY") else None,
        base_url=os.environ.get("OPENAI_BASE_URL") or None,
    )


defs = dg.Definitions(
    assets=list(pipeline),
    resources={"openai": openai_resource(), "io_manager": PartitionedFilesystemIOManager()},
)
