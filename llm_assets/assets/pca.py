"""Project embeddings to 2-D with scikit-learn PCA and draw a labelled scatter PNG.

scikit-learn and matplotlib are imported inside the functions: they cost ~2 s to
import, and code locations should load fast.

Example:
    >>> projection = project_2d(np.random.default_rng(0).normal(size=(5, 8)))
    >>> projection.points.shape
    (5, 2)
"""

from __future__ import annotations

import base64
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_assets.assets.frames import vector_columns
from llm_assets.errors import LLMAssetsError


@dataclass(frozen=True)
class Projection:
    points: np.ndarray  # n × 2
    explained_variance_ratio: tuple[float, float]


def stack_vectors(frames: MutableMapping[Any, pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """One float32 matrix of the vector columns of ``frames`` (and their other columns),
    *consuming* the mapping: each frame is dropped once copied, so peak memory stays near
    one copy of the matrix however many partitions there are."""
    columns = vector_columns(next(iter(frames.values()))) if frames else []
    total = sum(len(f) for f in frames.values())
    matrix = np.empty((total, len(columns)), dtype=np.float32)
    meta, start = [], 0
    for key in list(frames):
        frame = frames.pop(key)
        try:
            matrix[start : start + len(frame)] = frame[columns].to_numpy(dtype=np.float32, copy=False)
        except (ValueError, TypeError) as error:
            raise LLMAssetsError(
                f"Some embeddings are not numbers ({error}): re-materialize the embeddings asset."
            ) from None
        meta.append(frame.drop(columns=columns))
        start += len(frame)
        del frame
    if not np.isfinite(matrix).all():
        raise LLMAssetsError("Some embeddings are NaN or infinite: re-materialize the embeddings asset.")
    return (pd.concat(meta, ignore_index=True) if meta else pd.DataFrame()), matrix


#: How :func:`project_2d` projects: part of the map's code version.
PROJECTION = {"method": "PCA", "n_components": 2, "svd_solver": "covariance_eigh"}


def project_2d(matrix: np.ndarray, chunk_rows: int = 16_384) -> Projection:
    """PCA of ``matrix`` (rows are vectors) onto its first two components, with
    scikit-learn's covariance solver (memory: a d × d matrix, not a copy of the data)."""
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise LLMAssetsError(
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
    points: np.ndarray, labels: Sequence[str], path: Path, title: str, axes: tuple[str, str] = ("PC 1", "PC 2")
) -> Path:
    """Write a labelled scatter plot of ``points`` to ``path`` (PNG) and return it; labels
    point inwards, so they stay inside the frame."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    try:
        ax.scatter(points[:, 0], points[:, 1], s=40, alpha=0.8)
        ax.margins(0.15)
        if len(labels) <= 200:  # beyond that, labels are unreadable
            middle = float(np.median(points[:, 0])) if len(points) else 0.0
            for (x, y), label in zip(points, labels, strict=True):
                text = str(label) if len(str(label)) <= 40 else str(label)[:39] + "…"
                right = x <= middle  # left half: label to the right; right half: to the left
                ax.annotate(
                    text,
                    (x, y),
                    textcoords="offset points",
                    xytext=(5 if right else -5, 4),
                    ha="left" if right else "right",
                    fontsize=9,
                    annotation_clip=True,
                )
        ax.set_title(title, fontsize=11, wrap=True)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def markdown_image(path: Path, alt: str = "plot") -> str:
    """Markdown that shows a PNG inline in the Dagster UI."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"
