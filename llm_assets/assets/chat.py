"""``build_chat_answers_asset``: partitioned chat answers, as plan → engine → report.

* plan: ``plan_chat_requests`` fills the prompt templates for each partition and
  upstream row (pure, testable without Dagster);
* engine: ``llm_assets.engine.Engine.chat`` sends them;
* report: ``report_partition`` builds each partition's
  frame and metadata as soon as its last answer is in.

Examples:
    >>> prompts = ChatPrompts(dg.AssetKey("answers"), PromptTemplate("Captain {partition_key}: {question}"))
    >>> (request,) = plan_chat_requests(prompts, {"Kirk": [{}]}, {"question": "Why?"}, {"model": "m"})
    >>> request.prompt
    'Captain Kirk: Why?'
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

import dagster as dg
import pandas as pd
import pydantic

from llm_assets.assets.checks import CHAT_CHECKS, AssetChecks, ChecksOption, chat_results, checked
from llm_assets.assets.config import ChatConfig, config_class, factory_defaults
from llm_assets.assets.frames import ANSWER_COLUMNS
from llm_assets.assets.options import (
    AssetKeyLike,
    AssetOptions,
    define_asset,
)
from llm_assets.assets.prompts import PromptTemplate, partition_placeholders, partition_values
from llm_assets.assets.reporting import concat_answers, report_partition, report_run
from llm_assets.assets.retrieval import Retrieval, context_text, retrieve
from llm_assets.assets.translator import ChatTranslator
from llm_assets.assets.upstream import Requesting, Upstream, load_texts, run_partitions
from llm_assets.assets.versions import code_version, data_version, translator_identity
from llm_assets.batch.settings import RequestMode
from llm_assets.engine import AnswerRow, ChatRequest, Engine
from llm_assets.engine.rows import ColumnSpec
from llm_assets.engine.structured import OutputSchema
from llm_assets.errors import ConfigurationError
from llm_assets.http.validation import check_body, check_model, check_text

Rows = Mapping[str | None, Sequence[Mapping[str, Any]]]  # per partition: each request's row values

#: Columns that differ between runs giving the same answers (a cache hit has no latency):
#: left out of the data version.
VARYING_COLUMNS = frozenset({"latency_s", "cached", "prompt_tokens", "completion_tokens", "total_tokens"})


@dataclass(frozen=True)
class ChatPrompts:
    """The prompt side of a chat answers asset, fixed when it is defined."""

    asset_key: dg.AssetKey
    prompt: PromptTemplate
    system_prompt: PromptTemplate | None = None
    partitions_def: dg.PartitionsDefinition | None = None
    translator: ChatTranslator = field(default_factory=ChatTranslator)
    schema: OutputSchema | None = None  # structured answers: their fields become columns

    @property
    def columns(self) -> dict[str, ColumnSpec]:
        """The answers frame's columns: the documented ones, then the structured fields."""
        return {**ANSWER_COLUMNS, **(self.schema.columns if self.schema else {})}

    @property
    def templates(self) -> dict[str, PromptTemplate]:
        return {"prompt": self.prompt, **({"system_prompt": self.system_prompt} if self.system_prompt else {})}

    @property
    def fields(self) -> frozenset[str]:
        """The placeholders the templates use."""
        return frozenset().union(*(t.fields for t in self.templates.values()))

    @property
    def uses_question(self) -> bool:
        return any("question" in t.fields for t in self.templates.values())

    def code_version(self, defaults: Mapping[str, Any], rows: Mapping[str, Any] | None) -> str:
        """The asset's code version: the templates, the run config ``defaults`` that fill
        them or are sent, the response schema, the translator and how upstream ``rows``
        become requests (``code_version``)."""
        parts = {
            "prompt": self.prompt.template,
            "system_prompt": self.system_prompt.template if self.system_prompt else None,
            "defaults": dict(defaults),
            "response_schema": self.schema.schema if self.schema else None,  # its name follows the asset's
            "translator": translator_identity(self.translator),
            "rows": dict(rows) if rows is not None else None,
        }
        return code_version("chat_answers", parts)

    def check(self, available: set[str]) -> None:
        """Fail at definition time on a placeholder nothing can fill."""
        available = available | partition_placeholders(self.partitions_def)
        for where, template in self.templates.items():
            template.check(available, where=f"{where} of {self.asset_key.to_user_string()}")
        if _static(self.partitions_def):  # its keys are known now: checked here, not at run time
            for key in self.partitions_def.get_partition_keys():
                partition_values(self.partitions_def, key, self.fields)


def _static(partitions_def: dg.PartitionsDefinition | None) -> bool:
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return all(_static(d.partitions_def) for d in partitions_def.partitions_defs)
    return isinstance(partitions_def, dg.StaticPartitionsDefinition)


def plan_chat_requests(
    prompts: ChatPrompts, rows: Rows, values: Mapping[str, str], params: Mapping[str, Any]
) -> list[ChatRequest]:
    """One request per row of each partition, its templates filled from ``values`` (run
    config), the partition's placeholders and the row's own (``text``, ``row``)."""
    requests = []
    name = prompts.asset_key.to_user_string()
    for pk, partition_rows in rows.items():
        base = {**values, **partition_values(prompts.partitions_def, pk, prompts.fields)}
        for row, extra in enumerate(partition_rows):
            filled = {**base, **extra}
            rendered = {w: t.render(filled, where=f"{w} of {name}") for w, t in prompts.templates.items()}
            where = f"partition {pk!r}, row {row}" if pk is not None else f"row {row}"
            if not rendered["prompt"].strip():
                raise ConfigurationError(
                    f"The prompt of {name} is empty once filled ({where}): give the "
                    "placeholders non-empty values in run config or the factory."
                )
            for part, text in rendered.items():
                check_text(text, f"The {part} of {name} ({where})")
            hook = prompts.translator
            messages = hook.get_messages(rendered["prompt"], rendered.get("system_prompt"), filled)
            body = check_body(
                {"messages": messages, **hook.get_params(params, filled)}, f"The request of {name} ({where})"
            )
            if prompts.schema is not None and body.get("response_format") != params.get("response_format"):
                raise ConfigurationError(
                    f"The translator's get_params changed the response_format of {name} ({where}), which the "
                    "factory's response_format= sets and validates: set it in one place."
                )
            messages = body.pop("messages")
            body = params if body == params else body  # one shared copy, not one per request
            requests.append(ChatRequest(pk, row, rendered["prompt"], tuple(messages), body, prompts.schema))
    return requests


def upstream_rows(texts: Mapping[str | None, list[str]], one_request_per_row: bool) -> dict[str | None, list[dict]]:
    """Each partition's rows: one per text (``{text}``, ``{row}``), or one of all texts joined."""
    if one_request_per_row:
        return {pk: [{"text": t, "row": i} for i, t in enumerate(items)] for pk, items in texts.items()}
    return {pk: [{"text": "\n\n".join(items)}] if items else [] for pk, items in texts.items()}


def build_chat_answers_asset(
    *,
    prompt: str,
    key: AssetKeyLike | None = None,
    system_prompt: str | None = None,
    question: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    chat_model: str | None = None,
    variables: Mapping[str, str] | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    upstream: Upstream | dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike | None = None,
    text_column: str | None = None,
    one_request_per_row: bool = True,
    partition_mapping: dg.PartitionMapping | None = None,
    max_concurrency: int | None = None,
    translator: ChatTranslator | None = None,
    mode: RequestMode | None = None,
    response_format: type[pydantic.BaseModel] | Mapping[str, Any] | None = None,
    max_parse_retries: int | None = None,
    retrieval: Retrieval | None = None,
    checks: ChecksOption = True,
    defaults: ChatConfig | None = None,
    **options: Unpack[AssetOptions],
) -> dg.AssetsDefinition:
    """An asset of chat answers: one request per partition, or per upstream row.

    ``prompt`` and ``system_prompt`` are templates filled from ``{partition_key}`` (and each
    dimension of a multi-partition by name), ``{question}`` and ``variables`` from run
    config, and, with ``upstream`` (an asset, or an ``Upstream``),
    ``{text}`` from its ``text_column`` (default ``"answer"``): one request per row
    (``{row}`` is its position) or, with ``one_request_per_row=False``, one request with
    all rows joined, which chains answers into a report. ``question``, ``max_tokens``,
    ``temperature``, ``chat_model``, ``variables``, ``mode`` (LIVE or BATCH) and
    ``max_parse_retries`` are the defaults of the run config (``ChatConfig``; ``None``
    keeps its own); ``defaults=ChatConfig(...)`` gives them (and any other field of the run
    config) in one place instead. A ``translator`` (``ChatTranslator`` subclass)
    customises the messages, parameters and rows.
    ``response_format`` (a Pydantic model or JSON Schema) gives typed, validated columns
    (``llm_assets.engine.structured``); ``checks`` configures the generated checks
    (``llm_assets.assets.checks``). With ``retrieval`` (``Retrieval``), each
    request's ``{context}`` is the ``k`` nearest rows of a vector store to its query
    (retrieval-augmented answers). ``options`` are Dagster's (``AssetOptions``).

    Examples:
        >>> answers = build_chat_answers_asset(
        ...     key="answers", partitions_def=dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
        ...     prompt="You are Captain {partition_key}. {question}", question="Why explore?",
        ... )
        >>> same = build_chat_answers_asset(  # the run config's defaults in one place: the same asset
        ...     key="answers", partitions_def=dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
        ...     prompt="You are Captain {partition_key}. {question}", defaults=ChatConfig(question="Why explore?"),
        ... )
        >>> same.code_versions_by_key == answers.code_versions_by_key
        True
    """
    options, name, where, source, partitions_def = Requesting.of(
        "build_chat_answers_asset",
        "answers",
        key,
        options,
        upstream,
        (text_column, partition_mapping),
        partitions_def,
        max_concurrency,
    )
    schema = OutputSchema.of(response_format, name.to_user_string()) if response_format is not None else None
    system = PromptTemplate(system_prompt) if system_prompt else None
    prompts = ChatPrompts(name, PromptTemplate(prompt), system, partitions_def, translator or ChatTranslator(), schema)
    keywords = dict(question=question, max_tokens=max_tokens, temperature=temperature, chat_model=chat_model, mode=mode)
    keywords.update(variables=variables or None, max_parse_retries=max_parse_retries)
    config = config_class(
        ChatConfig, name.to_python_identifier(), factory_defaults(ChatConfig, keywords, defaults, where)
    )
    row_placeholders = {"question", *config().variables, *_row_placeholders(source, one_request_per_row)}
    prompts.check(row_placeholders | ({"context"} if retrieval else set()))
    if retrieval is not None:
        _check_retrieval(prompts, retrieval, row_placeholders)
        options["deps"] = [*(options.get("deps") or ()), retrieval.key]
    checks_ = AssetChecks(name, CHAT_CHECKS, checks, skip=[] if schema else ["valid_structured_answers"])
    sent = config().model_dump(include={"question", "variables", "chat_model", "max_tokens", "temperature"})
    rows = None
    if source is not None:
        rows = {"text_column": source.text_column, "one_request_per_row": one_request_per_row}
        rows["mapping"] = source.partition_mapping
    if retrieval is not None:
        retrieved = {"store": retrieval.key.to_user_string(), "k": retrieval.k, "query": retrieval.query}
        rows = {**(rows or {}), "retrieval": {**retrieved, "partitions": list(retrieval.partitions or []) or None}}
    return define_asset(
        _ChatAnswers(prompts, source, one_request_per_row, max_concurrency, options, checks_, retrieval).compute(),
        key=name,
        config_class=config,
        columns=prompts.columns,
        ins={"upstream": source.asset_in()} if source else {},
        partitions_def=partitions_def,
        options=options,
        description="Chat answers: one row per request, with model, finish reason, tokens and latency.",
        kinds={"openai"},
        code_version=prompts.code_version(sent, rows),
        check_specs=checks_.specs,
        extra_resource_keys={retrieval.store_key} if retrieval else (),
    )


def _check_retrieval(prompts: ChatPrompts, retrieval: Retrieval, available: set[str]) -> None:
    """``retrieval=`` fills ``{context}``: a prompt must use it, and the query template must
    be fillable from the row's placeholders."""
    name = prompts.asset_key.to_user_string()
    if "context" not in prompts.fields:
        raise ConfigurationError(
            f"retrieval= of {name} fills {{context}} with the retrieved rows, and neither prompt uses it: put "
            "{context} in the prompt or system_prompt."
        )
    PromptTemplate(retrieval.query).check(
        available | partition_placeholders(prompts.partitions_def), where=f"Retrieval query of {name}"
    )


def _row_placeholders(source: Upstream | None, one_request_per_row: bool) -> set[str]:
    if source is None:
        return set()
    return {"text", "row"} if one_request_per_row else {"text"}


@dataclass(frozen=True)
class _ChatAnswers:
    """The asset's body, one run at a time: plan, send through the engine, report, check."""

    prompts: ChatPrompts
    source: Upstream | None
    one_request_per_row: bool
    max_concurrency: int | None
    options: AssetOptions
    checks: AssetChecks
    retrieval: Retrieval | None = None

    def compute(self) -> Callable[..., dg.MaterializeResult]:
        """The function Dagster runs (it reads the signature and names it)."""

        def answers(
            context: dg.AssetExecutionContext, config: ChatConfig, **inputs: Any
        ) -> dg.MaterializeResult[pd.DataFrame]:
            return self.run(context, config, inputs.pop("upstream", None))

        return answers

    def run(self, context: dg.AssetExecutionContext, config: ChatConfig, upstream: Any) -> dg.MaterializeResult:
        resource = getattr(context.resources, self.options["resource_key"])
        partition_keys = run_partitions(context, self.options["io_manager_key"])
        requests = self.plan(context, config, resource, partition_keys, upstream)
        engine = Engine(
            resource.session,
            context,
            max_concurrency=self.max_concurrency,
            cache=config.cache,
            on_error=config.on_error,
            mode=config.mode,
            max_parse_retries=config.max_parse_retries,
        )
        question = config.question if self.prompts.uses_question else None
        frames: dict[str | None, pd.DataFrame] = dict.fromkeys(partition_keys)  # each partition's, as it completes
        finished = functools.partial(self.report, context, frames, resource.redact_text, question)
        engine.chat(requests, self.prompts.translator.get_record, on_partition=finished)
        run = report_run(context, "chat requests", len(requests), len(partition_keys), engine.seconds)
        for pk in (pk for pk, frame in frames.items() if frame is None):  # partitions without requests
            finished(pk, [])
        frame = concat_answers(frames.values(), self.prompts.columns)
        results = chat_results(self.checks, frame, len(requests), run, resource.redact_text)
        return checked(frame, results, data_version=data_version(context, frames, VARYING_COLUMNS))

    def plan(
        self, context: dg.AssetExecutionContext, config: ChatConfig, resource: Any, partition_keys: list, upstream: Any
    ) -> list[ChatRequest]:
        """This run's requests (the upstream rows they come from are let go once planned)."""
        params = _chat_params(self.prompts, config, resource)
        rows: Rows = {pk: [{}] for pk in partition_keys}
        if self.source is not None:
            texts = load_texts(context, upstream, partition_keys, self.source.text_column, self.source.key)
            rows = upstream_rows(texts, self.one_request_per_row)
        values = {**config.variables, "question": config.question}
        if self.retrieval is not None:
            rows = self.retrieved(context, resource, rows, values)
        return plan_chat_requests(self.prompts, rows, values, params)

    def retrieved(
        self, context: dg.AssetExecutionContext, resource: Any, rows: Rows, values: Mapping[str, str]
    ) -> Rows:
        """``rows`` with each one's ``{context}``: the neighbours of its query (embedded
        live, billed to its partition), numbered, nearest first."""
        assert self.retrieval is not None
        query, name = PromptTemplate(self.retrieval.query), self.prompts.asset_key.to_user_string()
        queries = {
            pk: [
                query.render(
                    {**values, **partition_values(self.prompts.partitions_def, pk), **row}, f"Retrieval query of {name}"
                )
                for row in partition_rows
            ]
            for pk, partition_rows in rows.items()
        }
        found = retrieve(context, resource, self.retrieval, queries, max_concurrency=self.max_concurrency)
        return {
            pk: [
                {**row, "context": context_text(matches)}
                for row, matches in zip(partition_rows, found[pk], strict=True)
            ]
            for pk, partition_rows in rows.items()
        }

    def report(
        self,
        context: dg.AssetExecutionContext,
        frames: dict[str | None, pd.DataFrame],
        redact: bool,
        question: str | None,
        pk: str | None,
        answered: list[AnswerRow],
    ) -> None:
        """Report one partition as soon as all its rows are in (its frame kept in ``frames``)."""
        frames[pk] = report_partition(context, pk, answered, redact, self.prompts.columns, question)


def _chat_params(prompts: ChatPrompts, config: ChatConfig, resource: Any) -> dict[str, Any]:
    """The request parameters of this run, after checking its question and model."""
    if prompts.uses_question and not config.question.strip():
        name = prompts.asset_key
        raise ConfigurationError(
            f"Run config 'question' of {name.to_user_string()} is empty: set "
            f"ops.{name.to_python_identifier()}.config.question in the launchpad, or "
            "question= in build_chat_answers_asset."
        )
    model = config.chat_model or resource.chat_model
    check_model(model, "chat_model", "run config chat_model, the factory's chat_model or the resource's")
    if (refused := resource.session.governor.model_refusal(model)) is not None:
        raise ConfigurationError(f"{refused} (set by run config or factory `chat_model`, else the resource's).")
    params = {"model": model, "max_tokens": config.max_tokens, "temperature": config.temperature}
    if prompts.schema is not None:
        params["response_format"] = prompts.schema.response_format(resource.response_format_style)
    return params
