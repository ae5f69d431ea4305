"""Project embeddings to 2-D with scikit-learn PCA and draw a labelled scatter PNG.

scikit-learn, matplotlib and adjustText are imported inside the functions: they cost ~2 s
to import, and code locations should load fast.

Labels are moved apart with adjustText (as in the Airflow captains tutorial) up to
``ADJUSTED_LABELS_MAX`` of them: its cost grows much faster than the label count
(measured in ``benchmarks/pca_plot.py``). Up to ``LABELS_MAX`` labels are drawn beside
their points, pointing inwards; beyond that none are (they would be unreadable).

Examples:
    >>> projection = project_2d(np.random.default_rng(0).normal(size=(5, 8)))
    >>> projection.points.shape
    (5, 2)
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from upath import UPath

from llm_assets.assets.frames import embedding_matrix, vector_columns, vector_width
from llm_assets.errors import ConfigurationError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The most labels a map draws; beyond, its points only.
LABELS_MAX = 200
#: The most labels moved apart with adjustText; beyond, they are placed beside their points.
ADJUSTED_LABELS_MAX = 50
#: adjustText's iterations at most (a count, not a time limit: the same map on any machine).
ADJUST_ITERATIONS = 100
#: Labels longer than this are cut, with an ellipsis.
LABEL_CHARS_MAX = 40


@dataclass(frozen=True)
class Projection:
    points: np.ndarray  # n × 2
    explained_variance_ratio: tuple[float, float]


def stack_vectors(frames: MutableMapping[Any, pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """One float32 matrix of the vectors of the embeddings ``frames`` (and a frame of their
    other columns), *consuming* the mapping: each frame is dropped once copied, so peak
    memory stays near one copy of the matrix however many partitions there are.

    Examples:
        >>> from llm_assets.assets.frames import embeddings_frame
        >>> frame = embeddings_frame([{"partition_key": "a", "row": 0, "text": "t", "model": "m"}], [[1.0, 2.0]])
        >>> frames = {"a": frame}
        >>> meta, matrix = stack_vectors(frames)
        >>> list(meta.columns), matrix.shape, frames
        (['partition_key', 'row', 'text', 'model'], (1, 2), {})
    """
    width = vector_width(next(iter(frames.values()))) if frames else 0
    total = sum(len(f) for f in frames.values())
    matrix = np.empty((total, width), dtype=np.float32)
    meta, start = [], 0
    for key in list(frames):
        frame = frames.pop(key)
        try:
            matrix[start : start + len(frame)] = embedding_matrix(frame)
        except ConfigurationError:  # it says what is wrong itself
            raise
        except (ValueError, TypeError) as error:  # Arrow's ArrowInvalid and ArrowTypeError among them
            raise ConfigurationError(
                f"Some embeddings are not numbers ({error}): re-materialize the embeddings asset."
            ) from None
        meta.append(frame.drop(columns=vector_columns(frame)))
        start += len(frame)
        del frame
    if not np.isfinite(matrix).all():
        raise ConfigurationError("Some embeddings are NaN or infinite: re-materialize the embeddings asset.")
    return (pd.concat(meta, ignore_index=True) if meta else pd.DataFrame()), matrix


#: How ``project_2d`` projects: part of the map's code version.
PROJECTION = {"method": "PCA", "n_components": 2, "svd_solver": "covariance_eigh"}


def project_2d(matrix: np.ndarray, chunk_rows: int = 16_384) -> Projection:
    """PCA of ``matrix`` (rows are vectors) onto its first two components, with
    scikit-learn's covariance solver (memory: a d × d matrix, not a copy of the data)."""
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ConfigurationError(
            f"PCA needs at least 2 embeddings, got {0 if matrix.ndim != 2 else matrix.shape[0]}: "
            "materialize more partitions of the embeddings asset (or rows within them) first."
        )
    import sklearn
    from sklearn.decomposition import PCA

    components = min(2, matrix.shape[0], matrix.shape[1])
    with sklearn.config_context(assume_finite=True):  # checked by the caller, chunk by chunk
        pca = PCA(n_components=components, svd_solver=PROJECTION["svd_solver"]).fit(matrix)
        points = np.vstack(
            [pca.transform(matrix[i : i + chunk_rows]) for i in range(0, matrix.shape[0], chunk_rows)]
        ).astype(np.float64)
    ratios = [float(r) for r in pca.explained_variance_ratio_]
    if components < 2:
        points = np.hstack([points, np.zeros((points.shape[0], 2 - components))])
        ratios += [0.0] * (2 - components)
    return Projection(points=points, explained_variance_ratio=(ratios[0], ratios[1]))


def scatter_png(
    points: np.ndarray,
    labels: Sequence[str],
    path: str | PathLike,
    title: str,
    axes: tuple[str, str] = ("PC 1", "PC 2"),
) -> UPath:
    """Write a labelled scatter plot of ``points`` to ``path`` (PNG; a local path or any
    fsspec URL, e.g. ``s3://bucket/plots/map.png``) and return it (see
    ``labelled_scatter`` for how labels are placed)."""
    buffer = io.BytesIO()
    with labelled_scatter(points, labels, title, axes) as fig:
        fig.savefig(buffer, format="png", bbox_inches="tight")
    path = UPath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())  # one PUT on an object store
    return path


@contextmanager
def labelled_scatter(
    points: np.ndarray,
    labels: Sequence[str],
    title: str,
    axes: tuple[str, str] = ("PC 1", "PC 2"),
    adjusted_max: int = ADJUSTED_LABELS_MAX,
) -> Iterator[Figure]:
    """The scatter plot of ``points`` labelled with ``labels`` (the axes' texts, in order),
    closed on exit. Up to ``adjusted_max`` labels are moved apart with adjustText so none
    overlap (a thin line joins a moved label to its point); up to ``LABELS_MAX`` are
    drawn beside their points, pointing inwards; more are not drawn.

    Examples:
        >>> with labelled_scatter(np.array([[0.0, 0.0], [0.001, 0.0]]), ["Kirk", "Archer"], "Crew") as fig:
        ...     [t.get_text() for t in fig.axes[0].texts]
        ['Kirk', 'Archer']
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    try:
        ax.scatter(points[:, 0], points[:, 1], s=40, alpha=0.8)
        ax.margins(0.15)
        ax.set_title(title, fontsize=11, wrap=True)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.grid(True, alpha=0.3)
        texts = [_short(label) for label in labels] if len(labels) <= LABELS_MAX else []
        if len(texts) <= adjusted_max:
            fig.tight_layout()  # first: adjustText places labels for the axes' final size
            _adjusted_labels(ax, points, texts)
        else:
            _inward_labels(ax, points, texts)
            fig.tight_layout()
        yield fig
    finally:
        plt.close(fig)


def _short(label: object) -> str:
    text = str(label)
    return text if len(text) <= LABEL_CHARS_MAX else text[: LABEL_CHARS_MAX - 1] + "…"


def _left_half(points: np.ndarray) -> np.ndarray:
    """Which points lie left of the median x: their labels go to the right, the others' to
    the left, so labels point inwards."""
    return points[:, 0] <= np.median(points[:, 0]) if len(points) else np.zeros(0, dtype=bool)


def _inward_labels(ax: Any, points: np.ndarray, texts: Sequence[str]) -> None:
    """Each label beside its point: right of it in the left half, left of it in the right half."""
    for (x, y), text, right in zip(points, texts, _left_half(points), strict=True):
        ax.annotate(
            text,
            (x, y),
            textcoords="offset points",
            xytext=(5 if right else -5, 4),
            ha="left" if right else "right",
            fontsize=9,
            annotation_clip=True,
        )


def _adjusted_labels(ax: Any, points: np.ndarray, texts: Sequence[str]) -> None:
    """Labels at their points, then moved off the points and off each other by adjustText,
    kept inside the axes."""
    if not texts:
        return
    from adjustText import adjust_text

    labels = [
        ax.text(x, y, text, fontsize=9, ha="left" if right else "right", va="bottom")
        for (x, y), text, right in zip(points, texts, _left_half(points), strict=True)
    ]
    adjust_text(
        labels,
        x=points[:, 0],
        y=points[:, 1],
        ax=ax,
        iter_lim=ADJUST_ITERATIONS,
        ensure_inside_axes=True,
        arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.6},
    )


def markdown_image(path: PathLike | UPath, alt: str = "plot") -> str:
    """Markdown that shows a PNG inline in the Dagster UI."""
    encoded = base64.b64encode(UPath(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"
