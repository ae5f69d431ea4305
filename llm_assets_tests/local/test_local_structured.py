"""Structured outputs on the embedded local model, end to end (the README's example)."""

import dagster as dg
import pydantic
import pytest

from llm_assets import PartitionedFilesystemIOManager, build_chat_answers_asset
from llm_assets.local import LocalOpenAIResource
from llm_assets_tests.support import partition_range

pytestmark = pytest.mark.slow


class Verdict(pydantic.BaseModel):
    quality: str
    reason: str
    confidence: float


def test_structured_answers_on_the_local_model(instance):
    """The README's structured example: OpenAI's strict json_schema, which the embedded
    server turns into llama.cpp's schema-constrained JSON mode; every row validated."""
    partitions = dg.StaticPartitionsDefinition(["Kirk", "Picard", "Sisko"])
    verdicts = build_chat_answers_asset(
        key="verdicts",
        partitions_def=partitions,
        system_prompt="You are Captain {partition_key} of Star Trek.",
        prompt="{question} Give the quality, your reason and your confidence from 0 to 1.",
        question="What is the most important quality of a starship captain?",
        response_format=Verdict,
        max_tokens=200,
        max_parse_retries=4,
    )
    result = dg.materialize(
        [verdicts],
        resources={"openai": LocalOpenAIResource(cache=False), "io_manager": PartitionedFilesystemIOManager()},
        instance=instance,
        tags=partition_range(["Kirk", "Sisko"]),
    )
    frame = result.output_for_node("verdicts")
    assert len(frame) == 3 and frame["error"].isna().all()
    assert frame["quality"].str.len().gt(0).all() and frame["confidence"].dtype == "float64"
    for answer in frame["answer"]:
        Verdict.model_validate_json(answer)
