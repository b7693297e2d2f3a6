"""A 2-D map of embeddings for the report: a deterministic PCA projection of (a sample of) the features.

The result is the JSON shape of ``eval/embedding_map.json`` (docs: ``notes/EVAL_FILES.md``), so the
evaluation glue can write it and ``selfsup report`` can plot it without the features.

PCA, not t-SNE or UMAP: it is exact, deterministic and cheap, and it needs no extra dependency. The
projection is the exact SVD of the centred sample (as scikit-learn's ``PCA(svd_solver="full")``),
with scikit-learn's sign convention (``sklearn.utils.extmath.svd_flip(u_based_decision=False)``: the
largest-magnitude loading of each component is positive), so the same features always give the
same picture rather than one mirrored at random.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _as_numpy(values: Any, dtype: type) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``features`` ``(N, D)`` on their first two principal components.

    Returns the points ``(N, 2)`` and the fraction of the variance each component explains ``(2,)``.
    With ``D == 1`` (or ``N == 1``) the missing component is all zeros with ratio 0.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    # svd_flip(u, vt, u_based_decision=False): make each component's largest |loading| positive.
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    u, vt = u * signs, vt * signs[:, None]
    k = min(2, s.shape[0])
    points = np.zeros((x.shape[0], 2))
    points[:, :k] = u[:, :k] * s[:k]
    variance = s**2
    total = float(variance.sum())
    ratio = np.zeros(2)
    if total > 0:
        ratio[:k] = variance[:k] / total
    return points, ratio


def embedding_map(
    features: Any,
    labels: Any,
    classes: Sequence[str] | None,
    max_points: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``eval/embedding_map.json`` record of ``features`` ``(N, D)`` and ``labels`` ``(N,)``.

    At most ``max_points`` samples are kept, drawn uniformly without replacement with ``seed`` (and
    kept in their original order); the PCA is fitted on those samples. Labels are ints, ``-1`` for
    unknown. Returns ``{"points": [[x, y]], "labels": [int], "classes": [names], "method": "pca",
    "explained_variance_ratio": [r1, r2], "total": N, "seed": seed}``.
    """
    x = _as_numpy(features, np.float64)
    y = _as_numpy(labels, np.int64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values; check the encoder output")
    keep = np.arange(x.shape[0])
    if x.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=max_points, replace=False))
    points, ratio = pca_2d(x[keep])
    return {
        "points": [[float(a), float(b)] for a, b in points],
        "labels": [int(v) for v in y[keep]],
        "classes": [str(c) for c in classes] if classes is not None else [],
        "method": "pca",
        "explained_variance_ratio": [float(r) for r in ratio],
        "total": int(x.shape[0]),
        "seed": int(seed),
    }
