"""The captains pipeline: one question, many starship captains, a map of their answers.

Each captain is a partition of the ``captains/answers`` asset; their answers are
embedded (``captains/embeddings``) and projected to 2-D (``captains/answer_map``).
Change the question in the launchpad (run config ``question``) and re-materialize.

Run it with ``dagster dev`` in the repository root (see README).
"""

import dagster as dg

from llm_assets import PartitionedFilesystemIOManager, build_llm_pipeline_assets
from llm_assets.local import openai_resource_from_env

CAPTAINS = ["Kirk", "Picard", "Sisko", "Janeway", "Archer", "Pike", "Burnham"]

captains = dg.StaticPartitionsDefinition(CAPTAINS)

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
)


defs = dg.Definitions(
    assets=list(pipeline),
    resources={
        "openai": openai,
        "io_manager": PartitionedFilesystemIOManager(),
    },
)
