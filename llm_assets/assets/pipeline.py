"""``build_llm_pipeline_assets``: answers per partition → embeddings → PCA map, in one call.

Examples:
    >>> pipeline = build_llm_pipeline_assets(
    ...     key_prefix="captains", partitions_def=dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
    ...     prompt="You are Captain {partition_key}. {question}", question="Why explore?",
    ... )
    >>> [asset.key.to_user_string() for asset in pipeline]
    ['captains/answers', 'captains/embeddings', 'captains/answer_map']
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Unpack

import dagster as dg
import pydantic

from llm_assets.assets.chat import build_chat_answers_asset
from llm_assets.assets.checks import CHAT_CHECKS, EMBEDDING_CHECKS, PLOT_CHECKS, ChecksOption, checks_of
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
    response_format: type[pydantic.BaseModel] | Mapping[str, Any] | None = None,
    max_parse_retries: int | None = None,
    checks: ChecksOption = True,
    vector_store_key: str | None = None,
    plot_dir: str | None = None,
    **options: Unpack[AssetOptions],
) -> LLMPipeline:
    """Answers per partition (keys ``answers``, ``embeddings``, ``answer_map`` under
    ``key_prefix``); the arguments are those of the three factories (``mode`` is the
    default of both requesting assets), ``options`` apply to all three but ``pool`` and
    ``kinds``, which only the two requesting assets take (the map sends nothing). ``checks`` configures all
    three assets' generated checks by name (``llm_assets.assets.checks``). With a
    ``response_format``, the embeddings embed each answer's raw JSON text.
    ``vector_store_key`` names the I/O manager of the embeddings alone (e.g. a
    ``LanceDBIOManager``, to search them);
    ``plot_dir`` where the map's PNG goes (e.g. ``s3://bucket/plots`` when steps run on
    several machines)."""
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
        response_format=response_format,
        max_parse_retries=max_parse_retries,
        checks=checks_of(checks, CHAT_CHECKS),
        **options,
    )
    embeddings = build_embeddings_asset(
        key="embeddings",
        upstream=answers,
        embedding_model=embedding_model,
        mode=mode,
        checks=checks_of(checks, EMBEDDING_CHECKS),
        **{**options, **({"io_manager_key": vector_store_key} if vector_store_key else {})},
    )
    plot_options: AssetOptions = {n: v for n, v in options.items() if n not in ("pool", "kinds")}  # type: ignore[assignment]
    plot = build_pca_plot_asset(
        key="answer_map",
        upstream=embeddings,
        questions_from=answers.key,
        plot_dir=plot_dir,
        checks=checks_of(checks, PLOT_CHECKS),
        **plot_options,
    )
    return LLMPipeline(answers=answers, embeddings=embeddings, plot=plot)
