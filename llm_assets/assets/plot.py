"""``build_pca_plot_asset``: every materialized partition of an embeddings asset, projected
to 2-D with PCA and drawn as a labelled scatter PNG, as gather (``embedding_parts``)
→ project (``llm_assets.assets.pca``) → report (``report_plot``).

Examples:
    >>> import numpy as np
    >>> from llm_assets.assets.frames import embeddings_frame
    >>> frame = embeddings_frame([{"partition_key": "a", "row": 0, "text": "t", "model": "m"}], np.ones((1, 4)))
    >>> list(embedding_parts({"a": frame, "b": frame.iloc[:0]}, "text", "embeddings"))
    ['a']
"""

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Unpack

import dagster as dg
import numpy as np
import pandas as pd
from upath import UPath

from llm_assets.assets.checks import PLOT_CHECKS, AssetChecks, ChecksOption, checked, plot_results
from llm_assets.assets.config import PlotConfig, config_class, factory_defaults
from llm_assets.assets.frames import PLOT_COLUMNS, preview, typed_columns, vector_columns, vector_width
from llm_assets.assets.options import PARTITION_COLUMN, AssetKeyLike, AssetOptions, asset_key, define_asset, resolved
from llm_assets.assets.pca import PROJECTION, Projection, markdown_image, project_2d, scatter_png, stack_vectors
from llm_assets.assets.reporting import MAX_LOOKUPS, latest_metadata
from llm_assets.assets.upstream import Upstream, log_missing
from llm_assets.assets.versions import code_version, data_version
from llm_assets.errors import ConfigurationError
from llm_assets.vector_store.column import VECTOR_COLUMN

_COORDINATES = dg.TableSchema(
    columns=[dg.TableColumn("label", "string"), dg.TableColumn("x", "float"), dg.TableColumn("y", "float")]
)


def embedding_parts(upstream: Any, label_column: str, name: str) -> MutableMapping[Any, pd.DataFrame]:
    """The non-empty embeddings frames to project, by partition, checked to share one
    dimension and to have ``label_column``. A dict of partitions is trimmed in place: no
    second reference to its frames, so ``stack_vectors`` can free each as it copies it
    and memory stays near one copy of the vectors."""
    parts = upstream if isinstance(upstream, dict) else {None: upstream}
    for pk in [pk for pk, frame in parts.items() if not len(frame)]:
        del parts[pk]
    for pk, frame in parts.items():
        where = f"{name}" + (f" partition {pk!r}" if pk is not None else "")
        if not vector_columns(frame) or frame.columns.duplicated().any():
            raise ConfigurationError(
                f"{where} is not an embeddings frame (one vector column '{VECTOR_COLUMN}', each column once; "
                f"columns: {[str(c) for c in frame.columns][:10]}): point upstream= at a build_embeddings_asset asset."
            )
    widths = {pk: vector_width(frame) for pk, frame in parts.items()}
    if len(set(widths.values())) > 1:
        raise ConfigurationError(
            f"Embeddings of {name} differ in dimension across partitions "
            f"({widths}): re-materialize them all with one embedding model and dimensions."
        )
    columns = set().union(*(frame.columns for frame in parts.values())) if parts else set()
    if parts and label_column not in columns:
        vectors = set().union(*(vector_columns(frame) for frame in parts.values()))
        raise ConfigurationError(
            f"label_column {label_column!r} is not a column of {name} "
            f"(columns: {sorted(str(c) for c in columns if c not in vectors)})."
        )
    return parts


def recorded_questions(
    instance: dg.DagsterInstance, answers: dg.AssetKey, embeddings: dg.AssetKey, partition_keys: Sequence[Any]
) -> dict[Any, str]:
    """The ``question`` that the embedded answers of each partition answered: that of the
    latest materialization of ``answers`` before the partition's latest ``embeddings``
    (answers re-run since then are not on the map yet). Looked up for the first
    ``MAX_LOOKUPS`` partitions, two queries each."""
    questions = {}
    for pk in list(partition_keys)[:MAX_LOOKUPS]:
        embedded, _ = latest_metadata(instance, embeddings, pk)
        _, metadata = latest_metadata(instance, answers, pk, before_storage_id=embedded)
        question = metadata.get("question")
        if isinstance(question, dg.TextMetadataValue) and question.value:
            questions[pk] = question.value
    return questions


def describe_map(questions: Mapping[Any, str], models: Sequence[str], points: int, title: str) -> tuple[str, dict]:
    """The map's title (``title``, else the question; several questions are said to be
    several) and the metadata naming them."""
    asked = list(dict.fromkeys(questions.values()))
    if len(asked) > 1:
        headline = title or f"Answers to {len(asked)} different questions (partitions re-run with a new question)"
        rows = [{"partition": pk, "question": q} for pk, q in questions.items()]
        metadata = {"questions": dg.MetadataValue.md(preview(rows, ["partition", "question"], count=MAX_LOOKUPS))}
    else:
        headline = title or (f"“{asked[0]}”" if asked else "Map of the embeddings")
        metadata = {"question": asked[0]} if asked else {}
    embedded = f" · embeddings: {', '.join(models)}" if models else ""
    return f"{headline}\n{points} points{embedded} · PCA to 2-D", metadata


def report_plot(points: pd.DataFrame, projection: Projection, png: UPath, name: str) -> dict[str, Any]:
    """The plot inline, its PNG path, explained variance and a coordinate table (rounded
    for reading; the output keeps full precision)."""
    pc1, pc2 = (round(r, 4) for r in projection.explained_variance_ratio)
    records = [
        dg.TableRecord({"label": r.label, "x": round(float(r.x), 4), "y": round(float(r.y), 4)})
        for r in points.head(100).itertuples()
    ]
    return {
        "plot": dg.MetadataValue.md(markdown_image(png, alt=name)),
        "plot_path": dg.MetadataValue.path(str(png)),
        "points": len(points),
        "explained_variance_pc1": pc1,
        "explained_variance_pc2": pc2,
        "coordinates": dg.MetadataValue.table(records=records, schema=_COORDINATES),
    }


def build_pca_plot_asset(
    *,
    upstream: Upstream | dg.AssetsDefinition | dg.AssetSpec | AssetKeyLike,
    key: AssetKeyLike | None = None,
    label_column: str = PARTITION_COLUMN,
    title: str | None = None,
    plot_dir: str | None = None,
    questions_from: AssetKeyLike | None = None,
    checks: ChecksOption = True,
    defaults: PlotConfig | None = None,
    **options: Unpack[AssetOptions],
) -> dg.AssetsDefinition:
    """A non-partitioned asset projecting every materialized partition of an embeddings
    asset to 2-D with PCA, drawn as a labelled scatter PNG shown in the UI (written to
    ``plot_dir``, a directory or fsspec URL such as ``s3://bucket/plots``; default: the
    instance's storage directory). The title says what was
    asked: the ``question`` that the partitions of ``questions_from`` (a chat answers asset)
    answered, or that they answered different ones; ``title`` (or ``defaults=PlotConfig(title=...)``)
    is the run config's default (``PlotConfig``). ``upstream`` is the embeddings asset
    (or an ``Upstream`` of it: every partition is read, so
    it takes no ``text_column`` or ``partition_mapping``). ``checks`` configures the generated
    asset checks (``llm_assets.assets.checks``: with ``enough_points`` on, a map of
    fewer than 2 points is drawn and that check fails; off, it is an error). ``options``
    are Dagster's (``AssetOptions``).

    Examples:
        >>> plot = build_pca_plot_asset(key="answer_map", upstream=embeddings)  # doctest: +SKIP
    """
    options = resolved(options)
    name = asset_key(key, options.get("key_prefix"), "answer_map")
    where = f"build_pca_plot_asset ({name.to_user_string()})"
    read = upstream if isinstance(upstream, Upstream) else Upstream(upstream)
    if read.text_column is not None or read.partition_mapping is not None:
        raise ConfigurationError(
            f"upstream= of {where} sets text_column or partition_mapping: the map reads every partition's "
            "vectors, so give the embeddings asset alone (label_column= names the column of the labels)."
        )
    partitioned = read.partitions_def
    source = dg.AssetIn(
        read.key,
        partition_mapping=dg.AllPartitionMapping() if partitioned is not None else None,
        metadata={"allow_missing_partitions": True},
    )
    asset_checks = AssetChecks(name, PLOT_CHECKS, checks)
    answers = dg.AssetKey.from_coercible(questions_from) if questions_from is not None else None
    config = config_class(
        PlotConfig, name.to_python_identifier(), factory_defaults(PlotConfig, {"title": title}, defaults, where)
    )
    drawn = {"label_column": label_column, "title": config().title, "projection": PROJECTION}
    return define_asset(
        _answer_map(name, source.key, partitioned, label_column, plot_dir, answers, asset_checks),
        key=name,
        config_class=config,
        columns=PLOT_COLUMNS,
        ins={"upstream": source},
        partitions_def=None,
        options=options,
        description=f"2-D PCA map of {source.key.to_user_string()}, as a labelled scatter plot.",
        kinds={"scikitlearn", "matplotlib"},
        uses_resource=False,
        code_version=code_version("pca_map", drawn),
        check_specs=asset_checks.specs,
    )


def _answer_map(
    name: dg.AssetKey,
    source: dg.AssetKey,
    partitioned: dg.PartitionsDefinition | None,
    label_column: str,
    plot_dir: str | None,
    answers: dg.AssetKey | None,
    checks: AssetChecks,
) -> Callable[..., dg.MaterializeResult]:
    """The asset's body: gather the partitions, project, draw, report, check."""

    def answer_map(context: dg.AssetExecutionContext, config: PlotConfig, upstream: Any) -> dg.MaterializeResult:
        if isinstance(upstream, dict) and partitioned is not None:
            expected = partitioned.get_partition_keys(dynamic_partitions_store=context.instance)
            log_missing(context, upstream, expected, source)
        meta, matrix = stack_vectors(embedding_parts(upstream, label_column, source.to_user_string()))
        if len(matrix) < 2 and "enough_points" in checks.rules:  # drawn; the check says why it is no map
            projection = Projection(np.zeros((len(matrix), 2)), (0.0, 0.0))
        else:
            projection = project_2d(matrix)  # stack_vectors consumed the frames: one copy of the vectors in memory
        del matrix
        labels = meta[label_column].astype(str).tolist() if len(meta) else []
        records = {
            PARTITION_COLUMN: meta.get(PARTITION_COLUMN, pd.Series([None] * len(meta))),
            "row": meta.get("row", pd.Series(range(len(meta)))),
            "label": labels,
            "x": projection.points[:, 0],
            "y": projection.points[:, 1],
        }
        points = typed_columns(pd.DataFrame(records), PLOT_COLUMNS)
        png = UPath(plot_dir or context.instance.storage_directory()).joinpath(*name.path).with_suffix(".png")
        keys = list(dict.fromkeys(points[PARTITION_COLUMN])) if len(points) else []
        questions = recorded_questions(context.instance, answers, source, keys) if answers is not None else {}
        models = sorted(str(m) for m in meta["model"].dropna().unique()) if "model" in meta else []
        title, described = describe_map(questions, models, len(points), config.title)
        axes = tuple(f"PC {i} ({r:.0%} of variance)" for i, r in enumerate(projection.explained_variance_ratio, 1))
        scatter_png(projection.points, labels, png, title=title, axes=axes)
        metadata = {**report_plot(points, projection, png, name.to_user_string()), **described}
        results = plot_results(checks, points, projection.explained_variance_ratio)
        return checked(points, results, metadata, data_version=data_version(context, {None: points}))

    return answer_map
