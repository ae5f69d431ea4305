"""Asset factories: partitioned chat answers, their embeddings, and a PCA map of them.

Each factory returns an ordinary ``dg.AssetsDefinition`` that any code location can
import; they are thin: the requests go through :class:`llm_assets.engine.Engine`.

Example:
    >>> import dagster as dg
    >>> captains = dg.StaticPartitionsDefinition(["Kirk", "Picard"])
    >>> answers = build_chat_answers_asset(
    ...     key="answers", partitions_def=captains,
    ...     prompt="You are Captain {partition_key}. {question}", question="Why explore?",
    ... )
    >>> embeddings = build_embeddings_asset(key="embeddings", upstream=answers)
    >>> plot = build_pca_plot_asset(key="answer_map", upstream=embeddings)
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
import pandas as pd
import pydantic
from dagster._core.definitions.asset_key import CoercibleToAssetKey
from dagster._core.storage.upath_io_manager import UPathIOManager

from llm_assets.assets.frames import (
    ANSWER_COLUMNS,
    EMBEDDING_COLUMNS,
    PARTITION_COLUMN,
    PLOT_COLUMNS,
    answers_frame,
    by_partition,
    column_schema,
    embeddings_frame,
    vector_columns,
)
from llm_assets.assets.pca import markdown_image, project_2d, scatter_png, stack_vectors
from llm_assets.assets.prompts import PromptTemplate, partition_placeholders, partition_values
from llm_assets.assets.translator import ChatTranslator
from llm_assets.cache import CacheMode
from llm_assets.engine.core import (
    MAX_EMBEDDING_BATCH_TOKENS,
    MAX_EMBEDDING_INPUTS,
    ChatRequest,
    Engine,
    ErrorPolicy,
)
from llm_assets.errors import LLMAssetsError
from llm_assets.io_manager import _SplittingPickleIOManager
from llm_assets.redaction import redact
from llm_assets.resource import OpenAIResource

#: Partitioned factories default to one run for many partitions: requests of all the
#: partitions are then sent concurrently instead of one Dagster run after another.
SINGLE_RUN = dg.BackfillPolicy.single_run()

UpstreamAsset = dg.AssetsDefinition | dg.AssetSpec | dg.AssetKey | str | Sequence[str]


class ChatConfig(dg.Config):
    """Run config of a chat answers asset (editable in the launchpad)."""

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
    cache: CacheMode = pydantic.Field(
        default=CacheMode.USE,
        description="Request cache: USE answers repeated requests from it, REFRESH re-asks the API "
        "(re-sampling) and stores the new answers, OFF neither reads nor writes.",
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
    cache: CacheMode = pydantic.Field(default=CacheMode.USE, description="Request cache: USE, REFRESH or OFF.")


class PlotConfig(dg.Config):
    """Run config of a PCA plot asset."""

    title: str = pydantic.Field(default="", description="Plot title; defaults to the asset key.")


def _config_class(base: type[dg.Config], name: str, defaults: Mapping[str, Any]) -> type[dg.Config]:
    """``base`` with the factory's defaults, so the launchpad shows them; the defaults are
    checked against the fields' bounds here, when the asset is defined."""
    fields = {  # the bounds (ge, le…) travel in the annotation's metadata
        field: (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation,
            pydantic.Field(defaults[field], description=info.description),
        )
        for field, info in base.model_fields.items()
        if field in defaults
    }
    config_class = pydantic.create_model(f"{name}_config", __base__=base, **fields)  # type: ignore[call-overload]
    try:
        config_class(**defaults)
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise LLMAssetsError(f"Invalid default for {name}: {problems}.") from None
    return config_class


def _key(key: CoercibleToAssetKey | None, key_prefix: Sequence[str] | str | None, default: str) -> dg.AssetKey:
    asset_key = dg.AssetKey.from_coercible(key if key is not None else default)
    if key_prefix:
        prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix)
        asset_key = asset_key.with_prefix(prefix)
    return asset_key


def _upstream_key(upstream: UpstreamAsset) -> dg.AssetKey:
    if isinstance(upstream, (dg.AssetsDefinition, dg.AssetSpec)):
        return upstream.key
    return dg.AssetKey.from_coercible(upstream)


def _upstream_partitions(upstream: UpstreamAsset) -> dg.PartitionsDefinition | None:
    if isinstance(upstream, (dg.AssetsDefinition, dg.AssetSpec)):
        return upstream.partitions_def
    return None


def _asset(
    fn: Any,
    *,
    key: dg.AssetKey,
    config_class: type[dg.Config],
    description: str,
    columns: Mapping[str, tuple[str, str]],
    resource_key: str | None,
    io_manager_key: str,
    partitions_def: dg.PartitionsDefinition | None,
    ins: Mapping[str, dg.AssetIn] | None,
    options: Mapping[str, Any],
) -> dg.AssetsDefinition:
    """The ``@dg.asset`` every factory builds, with Dagster's own option names."""
    fn.__annotations__["config"] = config_class
    fn.__name__ = key.to_python_identifier()
    metadata = {"dagster/column_schema": column_schema(columns), "partition_expr": PARTITION_COLUMN}
    metadata.update(options.get("metadata") or {})
    return dg.asset(
        key=key,
        ins=dict(ins or {}),
        description=description,
        partitions_def=partitions_def,
        backfill_policy=options.get("backfill_policy") if partitions_def is not None else None,
        group_name=options.get("group_name"),
        retry_policy=options.get("retry_policy"),
        pool=options.get("pool"),
        kinds=set(options.get("kinds") or ()),
        tags=options.get("tags"),
        owners=options.get("owners"),
        metadata=metadata,
        required_resource_keys={resource_key} if resource_key else set(),
        io_manager_key=io_manager_key,
    )(fn)


def _run_partitions(context: dg.AssetExecutionContext, io_manager_key: str) -> list[str | None]:
    """Partition keys this run materializes (``[None]`` when unpartitioned), after checking
    that the I/O manager can store several partitions from one run."""
    if not context.has_partition_key_range and not context.has_partition_key:
        return [None]
    keys = list(context.partition_keys)
    io_manager = getattr(context.resources, io_manager_key, None)
    if (
        len(keys) > 1
        and isinstance(io_manager, UPathIOManager)
        and not isinstance(io_manager, _SplittingPickleIOManager)
    ):
        raise LLMAssetsError(
            f"This run materializes {len(keys)} partitions of {context.asset_key.to_user_string()} at "
            f"once, which the I/O manager under '{io_manager_key}' cannot store: set resources="
            f"{{'{io_manager_key}': llm_assets.PartitionedFilesystemIOManager()}} in Definitions, or "
            "pass backfill_policy=dg.BackfillPolicy.multi_run() to the factory."
        )
    return keys


def _check_model(resource: OpenAIResource, model: str, field: str) -> None:
    """Refuse a model outside the resource's allow-list before anything is sent."""
    refused = resource.governor().model_refusal(model)
    if refused is not None:
        raise LLMAssetsError(f"{refused} (set by run config or factory `{field}`, else the resource's).")


def _texts(frame: Any, column: str, where: str) -> list[str]:
    """The text column of an upstream value, checked to hold non-empty strings."""
    if isinstance(frame, pd.Series):
        values = frame.tolist()
    elif isinstance(frame, pd.DataFrame):
        if column not in frame.columns:
            raise LLMAssetsError(
                f"{where} has no column {column!r} (columns: {list(frame.columns)}): "
                "pass text_column= naming the column that holds the text."
            )
        values = frame[column].tolist()
    elif isinstance(frame, (list, tuple)):
        values = list(frame)
    elif isinstance(frame, str):
        values = [frame]
    else:
        raise LLMAssetsError(f"{where} is a {type(frame).__name__}; expected a DataFrame with a {column!r} column.")
    for row, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise LLMAssetsError(
                f"{where} row {row} column {column!r} holds {value!r}, not text: "
                "fill or drop that row upstream (only non-empty strings can be sent)."
            )
    return values


def _log_missing(
    context: dg.AssetExecutionContext, upstream: Mapping[Any, Any], expected: Sequence[str], key: dg.AssetKey
) -> None:
    missing = [k for k in expected if k not in upstream]
    if missing:
        context.log.warning(
            f"Skipping {len(missing)} partition(s) of {key.to_user_string()} that are not "
            f"materialized: {', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}"
        )


# -- chat answers ---------------------------------------------------------------------------


def build_chat_answers_asset(
    *,
    prompt: str,
    key: CoercibleToAssetKey | None = None,
    key_prefix: Sequence[str] | str | None = None,
    system_prompt: str | None = None,
    question: str = "",
    max_tokens: int = 256,
    temperature: float = 0.7,
    chat_model: str | None = None,
    variables: Mapping[str, str] | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    upstream: UpstreamAsset | None = None,
    text_column: str = "answer",
    one_request_per_row: bool = True,
    partition_mapping: dg.PartitionMapping | None = None,
    max_concurrency: int | None = None,
    translator: ChatTranslator | None = None,
    group_name: str | None = None,
    description: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
    backfill_policy: dg.BackfillPolicy | None = SINGLE_RUN,
    resource_key: str = "openai",
    io_manager_key: str = "io_manager",
    kinds: set[str] | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dg.AssetsDefinition:
    """An asset of chat answers: one request per partition, or per upstream row.

    ``prompt`` and ``system_prompt`` are templates filled from ``{partition_key}`` (and each
    dimension of a multi-partition by name), ``{question}`` and ``variables`` from run
    config, and, with ``upstream``, ``{text}`` from its ``text_column``: one request per
    row (``{row}`` is its position) or, with ``one_request_per_row=False``, one request
    with all rows joined, which chains answers into a report. A ``translator``
    (:class:`ChatTranslator` subclass) customises the messages, parameters and rows.

    Example:
        >>> answers = build_chat_answers_asset(
        ...     key="answers", partitions_def=dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
        ...     prompt="You are Captain {partition_key}. {question}", question="Why explore?",
        ... )
    """
    asset_key = _key(key, key_prefix, "answers")
    hook = translator or ChatTranslator()
    variables = dict(variables or {})
    upstream_partitions = _upstream_partitions(upstream) if upstream is not None else None
    partitions_def = partitions_def or upstream_partitions
    templates = {"prompt": PromptTemplate(prompt)}
    if system_prompt:
        templates["system_prompt"] = PromptTemplate(system_prompt)
    available = {"question", *variables, *partition_placeholders(partitions_def)}
    if upstream is not None:
        available |= {"text", "row"} if one_request_per_row else {"text"}
    for where, template in templates.items():
        template.check(available, where=f"{where} of {asset_key.to_user_string()}")
    config_class = _config_class(
        ChatConfig,
        asset_key.to_python_identifier(),
        {
            "question": question,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "chat_model": chat_model,
            "variables": variables,
        },
    )
    ins = None
    if upstream is not None:
        ins = {"upstream": dg.AssetIn(key=_upstream_key(upstream), partition_mapping=partition_mapping)}

    def answers(context: dg.AssetExecutionContext, config: ChatConfig, **inputs: Any) -> pd.DataFrame:
        resource: OpenAIResource = getattr(context.resources, resource_key)
        partition_keys = _run_partitions(context, io_manager_key)
        uses_question = any("question" in t.fields for t in templates.values())
        if uses_question and not config.question.strip():
            raise LLMAssetsError(
                f"Run config 'question' of {asset_key.to_user_string()} is empty: set "
                f"ops.{asset_key.to_python_identifier()}.config.question in the launchpad, or "
                "question= in build_chat_answers_asset."
            )
        params: dict[str, Any] = {
            "model": config.chat_model or resource.chat_model,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        _check_model(resource, params["model"], "chat_model")
        rows_by_partition = {pk: [{}] for pk in partition_keys}
        if ins:
            loaded = by_partition(inputs["upstream"], partition_keys)
            _log_missing(context, loaded, [k for k in partition_keys if k is not None], ins["upstream"].key)
            rows_by_partition = {}
            for pk, value in loaded.items():
                texts = _texts(value, text_column, f"Upstream {ins['upstream'].key.to_user_string()} partition {pk!r}")
                rows_by_partition[pk] = (
                    [{"text": t, "row": i} for i, t in enumerate(texts)]
                    if one_request_per_row
                    else [{"text": "\n\n".join(texts)}]
                )
        requests = []
        for pk, rows in rows_by_partition.items():
            base = {**config.variables, "question": config.question, **partition_values(partitions_def, pk)}
            for row, extra in enumerate(rows):
                values = {**base, **extra}
                rendered = {
                    w: t.render(values, where=f"{w} of {asset_key.to_user_string()}") for w, t in templates.items()
                }
                if not rendered["prompt"].strip():
                    raise LLMAssetsError(
                        f"The prompt of {asset_key.to_user_string()} is empty once filled (partition {pk!r}, row "
                        f"{row}): give the placeholders non-empty values in run config or the factory."
                    )
                messages = hook.get_messages(rendered["prompt"], rendered.get("system_prompt"), values)
                requests.append(
                    ChatRequest(pk, row, rendered["prompt"], tuple(messages), hook.get_params(params, values))
                )
        engine = Engine(
            resource, context, max_concurrency=max_concurrency, cache=config.cache, on_error=config.on_error
        )
        records = engine.chat(requests, hook.get_record)
        frame = answers_frame(records)
        context.add_asset_metadata({"request_seconds": engine.seconds})
        by_key: dict[str | None, list[dict[str, Any]]] = {pk: [] for pk in rows_by_partition}
        for record in records:
            by_key[record["partition_key"]].append(record)
        for pk, rows in by_key.items():
            context.add_asset_metadata(
                {
                    "dagster/row_count": len(rows),
                    "answers_from_cache": sum(1 for r in rows if r["cached"]),
                    "failed_requests": sum(1 for r in rows if r.get("error")),
                    "preview": dg.MetadataValue.md(_preview(rows, ["prompt", "answer"], resource.redact_text)),
                },
                partition_key=pk,
            )
        return frame

    return _asset(
        answers,
        key=asset_key,
        config_class=config_class,
        description=description or "Chat answers: one row per request, with model, finish reason, tokens and latency.",
        columns=ANSWER_COLUMNS,
        resource_key=resource_key,
        io_manager_key=io_manager_key,
        partitions_def=partitions_def,
        ins=ins,
        options={
            "backfill_policy": backfill_policy,
            "group_name": group_name,
            "retry_policy": retry_policy,
            "pool": pool,
            "kinds": kinds or {"openai"},
            "tags": tags,
            "owners": owners,
            "metadata": metadata,
        },
    )


def _preview(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], redacted: bool = False, count: int = 5, width: int = 120
) -> str:
    """A small markdown table of the first ``count`` rows, cells cut at ``width`` characters
    (personal data and secrets masked when ``redacted``)."""

    def cell(value: Any) -> str:
        text = (redact(str(value)) if redacted else str(value)).replace("|", "\\|").replace("\n", " ")
        return text[:width] + "…" if len(text) > width else text

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows[:count]]
    return "\n".join(lines)


# -- embeddings -----------------------------------------------------------------------------


def build_embeddings_asset(
    *,
    upstream: UpstreamAsset,
    key: CoercibleToAssetKey | None = None,
    key_prefix: Sequence[str] | str | None = None,
    text_column: str = "answer",
    embedding_model: str | None = None,
    dimensions: int | None = None,
    batch_size: int = MAX_EMBEDDING_INPUTS,
    partitions_def: dg.PartitionsDefinition | None = None,
    partition_mapping: dg.PartitionMapping | None = None,
    max_concurrency: int | None = None,
    group_name: str | None = None,
    description: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
    backfill_policy: dg.BackfillPolicy | None = SINGLE_RUN,
    resource_key: str = "openai",
    io_manager_key: str = "io_manager",
    kinds: set[str] | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dg.AssetsDefinition:
    """An asset embedding ``text_column`` of ``upstream``, per partition (partitions follow
    the upstream's unless given). Many texts go in one request; order is kept.

    Example:
        >>> embeddings = build_embeddings_asset(key="embeddings", upstream=answers)  # doctest: +SKIP
    """
    asset_key = _key(key, key_prefix, "embeddings")
    upstream_key = _upstream_key(upstream)
    partitions_def = partitions_def or _upstream_partitions(upstream)
    config_class = _config_class(
        EmbeddingConfig,
        asset_key.to_python_identifier(),
        {"embedding_model": embedding_model, "dimensions": dimensions, "batch_size": batch_size},
    )

    def embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, upstream: Any) -> pd.DataFrame:
        resource: OpenAIResource = getattr(context.resources, resource_key)
        partition_keys = _run_partitions(context, io_manager_key)
        loaded = by_partition(upstream, partition_keys)
        _log_missing(context, loaded, [k for k in partition_keys if k is not None], upstream_key)
        texts = {
            pk: _texts(value, text_column, f"Upstream {upstream_key.to_user_string()} partition {pk!r}")
            for pk, value in loaded.items()
        }
        params: dict[str, Any] = {"model": config.embedding_model or resource.embedding_model}
        _check_model(resource, params["model"], "embedding_model")
        if config.dimensions:
            params["dimensions"] = config.dimensions
        engine = Engine(resource, context, max_concurrency=max_concurrency, cache=config.cache)
        results = engine.embed(
            {pk: t for pk, t in texts.items() if t}, params, config.batch_size, config.max_batch_tokens
        )
        context.add_asset_metadata({"request_seconds": engine.seconds})
        frames = []
        for pk, items in texts.items():
            model, matrix, _ = results.get(pk, (params["model"], None, 0))
            records = [{"partition_key": pk, "row": i, "text": t, "model": model} for i, t in enumerate(items)]
            frame = embeddings_frame(records, matrix if matrix is not None else [])
            frames.append(frame)
            context.add_asset_metadata(
                {"dagster/row_count": len(frame), "dimensions": len(vector_columns(frame)), "model": model},
                partition_key=pk,
            )
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    return _asset(
        embeddings,
        key=asset_key,
        config_class=config_class,
        description=description
        or f"Embeddings of {upstream_key.to_user_string()}.{text_column}, one float32 column per dimension.",
        columns=EMBEDDING_COLUMNS,
        resource_key=resource_key,
        io_manager_key=io_manager_key,
        partitions_def=partitions_def,
        ins={"upstream": dg.AssetIn(key=upstream_key, partition_mapping=partition_mapping)},
        options={
            "backfill_policy": backfill_policy,
            "group_name": group_name,
            "retry_policy": retry_policy,
            "pool": pool,
            "kinds": kinds or {"openai"},
            "tags": tags,
            "owners": owners,
            "metadata": metadata,
        },
    )


# -- PCA plot -------------------------------------------------------------------------------


def build_pca_plot_asset(
    *,
    upstream: UpstreamAsset,
    key: CoercibleToAssetKey | None = None,
    key_prefix: Sequence[str] | str | None = None,
    label_column: str = PARTITION_COLUMN,
    title: str = "",
    plot_dir: str | None = None,
    group_name: str | None = None,
    description: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
    io_manager_key: str = "io_manager",
    kinds: set[str] | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dg.AssetsDefinition:
    """A non-partitioned asset projecting every materialized partition of an embeddings
    asset to 2-D with PCA, drawn as a labelled scatter PNG shown in the UI.

    The PNG is written to ``plot_dir`` (default: the instance's storage directory).

    Example:
        >>> plot = build_pca_plot_asset(key="answer_map", upstream=embeddings)  # doctest: +SKIP
    """
    asset_key = _key(key, key_prefix, "answer_map")
    upstream_key = _upstream_key(upstream)
    upstream_partitions = _upstream_partitions(upstream)
    config_class = _config_class(PlotConfig, asset_key.to_python_identifier(), {"title": title})
    ins = {
        "upstream": dg.AssetIn(
            key=upstream_key,
            partition_mapping=dg.AllPartitionMapping() if upstream_partitions is not None else None,
            metadata={"allow_missing_partitions": True},
        )
    }

    def answer_map(context: dg.AssetExecutionContext, config: PlotConfig, upstream: Any) -> pd.DataFrame:
        if isinstance(upstream, dict):
            if upstream_partitions is not None:
                expected = upstream_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
                _log_missing(context, upstream, expected, upstream_key)
            parts = upstream
            for pk in [pk for pk, frame in parts.items() if not len(frame)]:
                del parts[pk]
        else:
            parts = {None: upstream}
        widths = {pk: len(vector_columns(frame)) for pk, frame in parts.items()}
        if len(set(widths.values())) > 1:
            raise LLMAssetsError(
                f"Embeddings of {upstream_key.to_user_string()} differ in dimension across partitions "
                f"({widths}): re-materialize them all with one embedding model and dimensions."
            )
        columns = set().union(*(frame.columns for frame in parts.values())) if parts else set()
        if parts and label_column not in columns:
            raise LLMAssetsError(
                f"label_column {label_column!r} is not a column of {upstream_key.to_user_string()} "
                f"(columns: {sorted(c for c in columns if not (c[:1] == 'e' and c[1:].isdigit()))})."
            )
        meta, matrix = stack_vectors(parts)  # consumes the loaded partitions to bound memory
        projection = project_2d(matrix)
        del matrix
        labels = meta[label_column].astype(str).tolist() if len(meta) else []
        points = pd.DataFrame(
            {
                PARTITION_COLUMN: meta.get(PARTITION_COLUMN, pd.Series([None] * len(meta))),
                "row": meta.get("row", pd.Series(range(len(meta)))),
                "label": labels,
                "x": projection.points[:, 0],
                "y": projection.points[:, 1],
            }
        )
        directory = Path(plot_dir or context.instance.storage_directory())
        png = scatter_png(
            projection.points,
            labels,
            directory.joinpath(*asset_key.path).with_suffix(".png"),
            title=config.title or asset_key.to_user_string(),
        )
        pc1, pc2 = projection.explained_variance_ratio
        context.add_output_metadata(
            {
                "plot": dg.MetadataValue.md(markdown_image(png, alt=asset_key.to_user_string())),
                "plot_path": dg.MetadataValue.path(str(png)),
                "points": len(points),
                "explained_variance_pc1": pc1,
                "explained_variance_pc2": pc2,
                "coordinates": dg.MetadataValue.table(
                    records=[
                        dg.TableRecord({"label": r.label, "x": float(r.x), "y": float(r.y)})
                        for r in points.head(100).itertuples()
                    ],
                    schema=dg.TableSchema(
                        columns=[
                            dg.TableColumn("label", "string"),
                            dg.TableColumn("x", "float"),
                            dg.TableColumn("y", "float"),
                        ]
                    ),
                ),
            }
        )
        return points

    return _asset(
        answer_map,
        key=asset_key,
        config_class=config_class,
        description=description or f"2-D PCA map of {upstream_key.to_user_string()}, as a labelled scatter plot.",
        columns=PLOT_COLUMNS,
        resource_key=None,
        io_manager_key=io_manager_key,
        partitions_def=None,
        ins=ins,
        options={
            "group_name": group_name,
            "retry_policy": retry_policy,
            "pool": pool,
            "kinds": kinds or {"scikitlearn", "matplotlib"},
            "tags": tags,
            "owners": owners,
            "metadata": metadata,
        },
    )


# -- the three together ---------------------------------------------------------------------


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
    key_prefix: Sequence[str] | str | None = None,
    question: str = "",
    system_prompt: str | None = None,
    chat_model: str | None = None,
    embedding_model: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.7,
    group_name: str | None = None,
    resource_key: str = "openai",
    io_manager_key: str = "io_manager",
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
) -> LLMPipeline:
    """Answers per partition → embeddings → PCA map, the common case in one call.

    Example:
        >>> pipeline = build_llm_pipeline_assets(
        ...     key_prefix="captains", partitions_def=dg.StaticPartitionsDefinition(["Kirk", "Picard"]),
        ...     prompt="You are Captain {partition_key}. {question}", question="Why explore?",
        ... )
        >>> defs = dg.Definitions(assets=list(pipeline))
    """
    shared = {
        "key_prefix": key_prefix,
        "group_name": group_name,
        "io_manager_key": io_manager_key,
        "retry_policy": retry_policy,
        "pool": pool,
    }
    answers = build_chat_answers_asset(
        key="answers",
        prompt=prompt,
        system_prompt=system_prompt,
        question=question,
        chat_model=chat_model,
        max_tokens=max_tokens,
        temperature=temperature,
        partitions_def=partitions_def,
        resource_key=resource_key,
        **shared,
    )
    embeddings = build_embeddings_asset(
        key="embeddings",
        upstream=answers,
        embedding_model=embedding_model,
        resource_key=resource_key,
        **shared,
    )
    plot = build_pca_plot_asset(key="answer_map", upstream=embeddings, **shared)
    return LLMPipeline(answers=answers, embeddings=embeddings, plot=plot)
