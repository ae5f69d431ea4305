"""Run config of the factories' assets (editable in the launchpad), with the factory's
defaults applied and checked when the asset is defined.

Each default is declared once, here: a factory argument left as ``None`` keeps it. A
factory takes its run config's defaults as separate keywords or together, as a config
(``defaults=ChatConfig(max_tokens=60)``): ``factory_defaults`` merges the two.

Examples:
    >>> Answers = config_class(ChatConfig, "answers", {"max_tokens": 60, "temperature": None})
    >>> Answers().max_tokens, Answers().temperature
    (60, 0.7)
    >>> factory_defaults(ChatConfig, {"max_tokens": None}, ChatConfig(max_tokens=60), "build_chat_answers_asset")
    {'max_tokens': 60}
"""

from collections.abc import Mapping
from typing import Annotated, Any

import dagster as dg
import pydantic

from llm_assets.batch.settings import RequestMode
from llm_assets.cache import CacheMode
from llm_assets.calls import ErrorPolicy
from llm_assets.engine.embeddings import MAX_EMBEDDING_BATCH_TOKENS, MAX_EMBEDDING_INPUTS
from llm_assets.errors import ConfigurationError

_CACHE = (
    "Request cache: USE answers repeated requests from it, REFRESH re-asks the API (re-sampling) "
    "and stores the new answers, OFF neither reads nor writes."
)

_MODE = (
    "LIVE sends each request now; BATCH submits them to the OpenAI Batch API (half the price, any size; "
    "the step waits for it, and a re-run re-attaches instead of paying twice). The output is the same."
)


class ChatConfig(dg.Config):
    """Run config of a chat answers asset."""

    question: str = pydantic.Field(default="", description="Fills {question} in the prompt.")
    max_tokens: int = pydantic.Field(default=256, ge=1, description="Most tokens per answer.")
    temperature: float = pydantic.Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature, 0 (focused) to 2 (random)."
    )
    chat_model: str | None = pydantic.Field(
        default=None, description="Model to ask; defaults to the factory's, then the resource's chat_model."
    )
    variables: dict[str, str] = pydantic.Field(
        default_factory=dict, description="Values for other {placeholders} of the prompt."
    )
    cache: CacheMode = pydantic.Field(default=CacheMode.USE, description=_CACHE)
    mode: RequestMode = pydantic.Field(default=RequestMode.LIVE, description=_MODE)
    max_parse_retries: int = pydantic.Field(
        default=2,
        ge=0,
        le=10,
        description="Structured answers (response_format): times an answer that does not validate is asked "
        "for again; then on_error applies. Each attempt is metered (openai.parse_retries counts them).",
    )
    on_error: ErrorPolicy = pydantic.Field(
        default=ErrorPolicy.FAIL,
        description="A request that still fails after retries: FAIL the materialization (answers "
        "completed so far stay cached), or RECORD the error in its row and keep going.",
    )


class EmbeddingConfig(dg.Config):
    """Run config of an embeddings asset."""

    embedding_model: str | None = pydantic.Field(
        default=None, description="Model to embed with; defaults to the resource's embedding_model."
    )
    dimensions: int | None = pydantic.Field(
        default=None, ge=1, description="Vector size, for models that can shorten their vectors."
    )
    batch_size: int = pydantic.Field(
        default=MAX_EMBEDDING_INPUTS, ge=1, le=MAX_EMBEDDING_INPUTS, description="Most texts per request."
    )
    max_batch_tokens: int = pydantic.Field(
        default=MAX_EMBEDDING_BATCH_TOKENS, ge=1, description="Most (estimated) tokens per request."
    )
    cache: CacheMode = pydantic.Field(default=CacheMode.USE, description=_CACHE)
    mode: RequestMode = pydantic.Field(default=RequestMode.LIVE, description=_MODE)


class PlotConfig(dg.Config):
    """Run config of a PCA plot asset."""

    title: str = pydantic.Field(
        default="",
        description="Plot title; defaults to the question the answers answered (or that there were several).",
    )


def factory_defaults(
    base: type[dg.Config], keywords: Mapping[str, Any], defaults: dg.Config | None, where: str
) -> dict[str, Any]:
    """A factory's run config defaults for ``config_class``: its separate ``keywords``
    (``None``: not given) and the fields that its ``defaults`` config sets. A keyword that
    disagrees with ``defaults`` is an error naming both (all such keywords, in one error)."""
    if defaults is None:
        return dict(keywords)
    if not isinstance(defaults, base):
        raise ConfigurationError(
            f"defaults= of {where} is of type {type(defaults).__name__}: give a {base.__name__} (or leave it out)."
        )
    chosen = {field: getattr(defaults, field) for field in defaults.model_fields_set}
    conflicts = [
        f"{field}={value!r} and defaults={base.__name__}({field}={chosen[field]!r})"
        for field, value in keywords.items()
        if value is not None and field in chosen and value != chosen[field]
    ]
    if conflicts:
        raise ConfigurationError(f"{where} got {'; '.join(conflicts)}: set each default in one place.")
    return {**keywords, **chosen, **{field: value for field, value in keywords.items() if value is not None}}


def config_class(base: type[dg.Config], name: str, defaults: Mapping[str, Any]) -> type[dg.Config]:
    """``base`` with the factory's ``defaults`` (``None`` keeps the base's), so the launchpad
    shows them; they are checked against the fields' bounds here, when the asset is defined."""
    given = {field: value for field, value in defaults.items() if value is not None}

    def with_defaults(values: Mapping[str, Any]) -> type[dg.Config]:
        fields = {  # the bounds (ge, le…) travel in the annotation's metadata
            field: (
                Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation,
                pydantic.Field(values[field], description=info.description),
            )
            for field, info in base.model_fields.items()
            if field in values
        }
        return pydantic.create_model(f"{name}_config", __base__=base, **fields)  # type: ignore[call-overload]

    try:
        validated = with_defaults(given)(**given)
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigurationError(f"Invalid default for {name}: {problems}.") from None
    return with_defaults({field: getattr(validated, field) for field in given})  # e.g. mode="batch" as the enum
