"""``build_llm_pipeline_assets``: answers per partition → embeddings → PCA map, in one call.

Example:
    >>> pipeline = build_llm_pipeline_assets(
    ...     key_prefix="captains", partitions_def=dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
    ...     prompt="You are Captain {partition_key}. {question}", question="Why explore?",
    ... )
    >>> [asset.key.to_user_string() for asset in pipeline]
    ['captains/answers', 'captains/embeddings', 'captains/answer_map']
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Unpack

import dagster as dg

from llm_assets.assets.chat import build_chat_answers_asset
from llm_assets.assets.embeddings import build_embeddings_asset
from llm_assets.assets.options import AssetOptions
from llm_assets.assets.plot import build_pca_plot_asset
from llm_assets.batch.settings import RequestMode


@dataclass(frozen=True)
class LLMPipeline:
    """Answers, their embeddings and the PCA map; iterate it to list the assets."""

    answers: dg.AssetsDefinition
    embeddings: dg.AssetsDefinition
    plot: dg.AssetsDefinition

    def __iter__(self) -> Iterator[dg.AssetsDefinition]:
        return iter((self.answers, self.embeddings, self.plot))


def build_llm_pipeline_assets(
    *,
    prompt: str,
    partitions_def: dg.PartitionsDefinition,
    question: str | None = None,
    system_prompt: str | None = None,
    chat_model: str | None = None,
    embedding_model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    mode: RequestMode | None = None,
    **options: Unpack[AssetOptions],
) -> LLMPipeline:
    """Answers per partition (keys ``answers``, ``embeddings``, ``answer_map`` under
    ``key_prefix``); the arguments are those of the three factories (``mode`` is the
    default of both requesting assets), ``options`` apply to all three but ``pool``, which
    only the two requesting assets take (the map sends nothing)."""
    answers = build_chat_answers_asset(
        key="answers",
        prompt=prompt,
        system_prompt=system_prompt,
        question=question,
        chat_model=chat_model,
        max_tokens=max_tokens,
        temperature=temperature,
        partitions_def=partitions_def,
        mode=mode,
        **options,
    )
    embeddings = build_embeddings_asset(
        key="embeddings", upstream=answers, embedding_model=embedding_model, mode=mode, **options
    )
    plot_options: AssetOptions = {name: value for name, value in options.items() if name != "pool"}  # type: ignore[assignment]
    plot = build_pca_plot_asset(key="answer_map", upstream=embeddings, **plot_options)
    return LLMPipeline(answers=answers, embeddings=embeddings, plot=plot)
