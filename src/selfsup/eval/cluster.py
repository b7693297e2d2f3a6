"""Clustering evaluation on frozen features: k-means, then NMI, ARI and Hungarian-matched accuracy.

:func:`kmeans` is Lloyd's algorithm in torch with greedy k-means++ seeding (Arthur & Vassilvitskii
2007, with the ``2 + log k`` candidates per step of scikit-learn's ``_kmeans_plusplus``), several
restarts keeping the lowest inertia, and distances computed ``chunk_size`` rows at a time, so
memory stays O(chunk_size * k) whatever N. A seed fixes the result. Empty clusters are re-seeded
with the points farthest from their centres, as scikit-learn does.

The scores follow scikit-learn's conventions: :func:`nmi` is ``normalized_mutual_info_score``
(arithmetic mean of the entropies), :func:`ari` is ``adjusted_rand_score``;
:func:`hungarian_accuracy` matches clusters to classes one-to-one (``linear_sum_assignment``) as
in the deep-clustering literature (e.g. Van Gansbeke et al. 2020, SCAN), so with more clusters
than classes the unmatched clusters count as errors.

:class:`ClusterProbe` (``PROBES`` name ``"cluster"``) runs k-means on L2-normalized features by
default (cosine geometry, the one SSL features are trained and compared in, as in kNN).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL
from selfsup.eval.base import PROBES
from selfsup.eval.knn import _check_features, _check_labels


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _chunks(n: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _sq_distances(x: Tensor, x_sq: Tensor, centers: Tensor, c_sq: Tensor) -> Tensor:
    """``||x_i - c_j||^2`` ``(n, k)`` from the expansion, clamped at 0 (round-off)."""
    return (x_sq[:, None] - 2.0 * x @ centers.T + c_sq[None, :]).clamp_min_(0.0)


def _assign(x: Tensor, x_sq: Tensor, centers: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Nearest centre ``(N,)`` and squared distance to it ``(N,)``, ``chunk_size`` rows at a time."""
    c_sq = centers.square().sum(dim=1)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for rows in _chunks(x.shape[0], chunk_size):
        d, idx = _sq_distances(x[rows], x_sq[rows], centers, c_sq).min(dim=1)
        labels[rows], dist[rows] = idx, d
    return labels, dist


def _kmeans_plusplus(x: Tensor, x_sq: Tensor, k: int, generator: torch.Generator, chunk_size: int) -> Tensor:
    """Greedy k-means++: each new centre is the best (lowest potential) of ``2 + log k`` candidates
    drawn with probability proportional to the squared distance to the nearest chosen centre."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    closest = _assign(x, x_sq, x[first : first + 1], chunk_size)[1]
    for _ in range(1, k):
        potential = closest.sum()
        if not potential > 0:  # fewer distinct points than k: any point will do
            candidates = torch.randint(n, (trials,), generator=generator)
        else:
            # Drawn on the CPU generator, then moved: the same draws on every device.
            draws = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
            candidates = torch.searchsorted(closest.cumsum(0), draws * potential).clamp_(max=n - 1)
        cand = x[candidates]
        cand_sq = x_sq[candidates]
        # New closest distances if each candidate were chosen: (trials, N), by chunks of rows.
        best = torch.empty(trials, n, dtype=x.dtype, device=x.device)
        for rows in _chunks(n, chunk_size):
            d = _sq_distances(x[rows], x_sq[rows], cand, cand_sq).T
            best[:, rows] = torch.minimum(d, closest[rows])
        pick = int(best.sum(dim=1).argmin())
        centers.append(cand[pick])
        closest = best[pick]
    return torch.stack(centers)


def _update(x: Tensor, labels: Tensor, dist: Tensor, centers: Tensor) -> Tensor:
    """Means of the clusters; an empty cluster takes the point farthest from its centre (one each)."""
    k = centers.shape[0]
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().flatten()
    if empty.numel():
        # Move the farthest points into the empty clusters (scikit-learn's relocation); a
        # point at distance 0 (a duplicate or a singleton) is moved only if nothing else is left.
        far = dist.argsort(descending=True, stable=True)[: empty.numel()]
        labels = labels.clone()
        labels[far] = empty[: far.numel()]
        counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros_like(centers).index_add_(0, labels, x)
    filled = counts > 0
    new = centers.clone()
    new[filled] = sums[filled] / counts[filled, None].to(x.dtype)
    return new


def _lloyd(
    x: Tensor, x_sq: Tensor, centers: Tensor, iters: int, tol: float, chunk_size: int
) -> tuple[Tensor, Tensor, float]:
    for _ in range(iters):
        labels, dist = _assign(x, x_sq, centers, chunk_size)
        new = _update(x, labels, dist, centers)
        shift = (new - centers).square().sum()
        centers = new
        if shift <= tol:
            break
    # A last assignment, so that the labels and the inertia belong to the returned centres.
    labels, dist = _assign(x, x_sq, centers, chunk_size)
    return labels, centers, float(dist.sum())


@torch.no_grad()
def kmeans(
    features: Tensor,
    k: int,
    *,
    n_init: int = 10,
    iters: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    init: Tensor | None = None,
    chunk_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, float]:
    """k-means (Lloyd) with greedy k-means++ seeding and ``n_init`` restarts; the lowest inertia wins.

    ``features`` ``(N, D)``, on any device; the work is done in ``dtype``, by default float64 on
    CPUs (near-ties and the inertia free of round-off) and float32 on accelerators. Returns
    ``(assignments (N,) int64, centers (k, D) float32, inertia)`` where the inertia is the sum of
    squared distances to the nearest centre. Each restart runs at most ``iters`` iterations and
    stops when the centres move by at most ``tol`` times the mean per-feature variance (summed
    squared shift; scikit-learn's criterion and defaults). ``init`` ``(k, D)`` starts one run
    from the given centres instead (``n_init`` is then ignored). The same ``seed`` gives the same
    result on the same device; ``chunk_size`` bounds memory and does not change the result.
    """
    _check_features("features", features)
    k = _positive("k", k)
    n_init = _positive("n_init", n_init)
    iters = _positive("iters", iters)
    chunk_size = _positive("chunk_size", chunk_size)
    n = features.shape[0]
    if k > n:
        raise ValueError(f"k-means needs at least k={k} samples, got {n}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values; check the encoder output")
    if dtype is None:
        dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    elif dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    x = features.detach().to(dtype)
    x_sq = x.square().sum(dim=1)
    threshold = tol * float(x.var(dim=0, unbiased=False).mean())
    if init is not None:
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"init must be ({k}, {x.shape[1]}) centres, got {tuple(init.shape)}")
        starts: list[Tensor | None] = [init.to(device=x.device, dtype=dtype)]
    else:
        starts = [None] * n_init
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on every device
    best: tuple[Tensor, Tensor, float] | None = None
    for start in starts:
        centers = start if start is not None else _kmeans_plusplus(x, x_sq, k, generator, chunk_size)
        result = _lloyd(x, x_sq, centers, iters, threshold, chunk_size)
        if best is None or result[2] < best[2]:
            best = result
    assert best is not None
    labels, centers, inertia = best
    return labels, centers.float(), inertia


@torch.no_grad()
def nearest_centers(
    features: Tensor, centers: Tensor, *, chunk_size: int = 4096, dtype: torch.dtype | None = None
) -> Tensor:
    """Index ``(N,)`` int64 of the nearest of ``centers`` ``(k, D)`` (squared Euclidean distance) for
    each row of ``features`` ``(N, D)``, ``chunk_size`` rows at a time (memory O(chunk_size * k)); the
    assignment step of :func:`kmeans`, in ``dtype`` (default: float64 on CPUs, float32 elsewhere), on
    the features' device. Ties go to the lowest index."""
    _check_features("features", features)
    chunk_size = _positive("chunk_size", chunk_size)
    if centers.ndim != 2 or centers.shape[1] != features.shape[1] or centers.shape[0] < 1:
        raise ValueError(
            f"centers must be (k, {features.shape[1]}) for features of width {features.shape[1]}, "
            f"got {tuple(centers.shape)}"
        )
    if dtype is None:
        dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    x = features.detach().to(dtype)
    return _assign(x, x.square().sum(dim=1), centers.to(x.device, dtype), chunk_size)[0]


# --- scores, in scikit-learn's conventions -------------------------------------------------


def _as_labels(name: str, labels: Tensor | np.ndarray) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {array.shape} {array.dtype}")
    return array


def contingency(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> np.ndarray:
    """``(clusters, classes)`` int64 counts ``n_ij`` of samples in cluster i with class j, over the
    distinct values of each (any integers)."""
    p, t = _as_labels("pred", pred), _as_labels("target", target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in length: {p.shape[0]} vs {t.shape[0]}")
    if p.size == 0:
        raise ValueError("pred and target are empty")
    _, p_idx = np.unique(p, return_inverse=True)
    _, t_idx = np.unique(t, return_inverse=True)
    table = np.zeros((p_idx.max() + 1, t_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (p_idx, t_idx), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> float:
    """Normalized mutual information in [0, 1]: ``I(pred; target) / ((H(pred) + H(target)) / 2)``
    (scikit-learn's ``normalized_mutual_info_score``, ``average_method="arithmetic"``): 1 when
    both put everything in one group, 0 when the mutual information is 0."""
    table = contingency(pred, target)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    n = table.sum()
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    i, j = np.nonzero(table)
    nij = table[i, j].astype(np.float64)
    mi = float((nij / n * (np.log(nij * n) - np.log(rows[i] * cols[j].astype(np.float64)))).sum())
    if mi <= 0:  # also rounding just below 0 (scikit-learn clips at 0)
        return 0.0
    return mi / (0.5 * (_entropy(rows) + _entropy(cols)))


def ari(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985), scikit-learn's ``adjusted_rand_score``: 1 for
    identical partitions (up to renaming), about 0 for independent ones, possibly negative.
    Computed from the pair-confusion counts with Python integers, so no overflow for any N."""
    table = contingency(pred, target)
    n = int(table.sum())
    sum_sq = int((table.astype(object) ** 2).sum())
    rows = int((table.sum(axis=1).astype(object) ** 2).sum())
    cols = int((table.sum(axis=0).astype(object) ** 2).sum())
    # Ordered pairs: same cluster and same class (tp), same class only (fn), same cluster only
    # (fp), neither (tn). The index is symmetric in fp and fn, so the table's orientation is moot.
    tp = sum_sq - n
    fn = cols - sum_sq
    fp = rows - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def hungarian_accuracy(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> float:
    """Accuracy (fraction in [0, 1]) under the best one-to-one mapping of clusters to classes
    (``scipy.optimize.linear_sum_assignment`` on the contingency table). With k clusters and c
    classes, ``min(k, c)`` pairs are matched; samples in unmatched clusters count as errors."""
    table = contingency(pred, target)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


@PROBES.register("cluster")
class ClusterProbe:
    """k-means clustering probe: ``fit`` clusters the features (all of them, labelled or not — the
    labels only choose k), ``evaluate`` assigns samples to the nearest centre and returns
    ``{"nmi": 0..1, "ari": <= 1, "cluster_accuracy": %}`` over the samples labelled != -1.

    ``k`` defaults to the number of distinct labels seen by ``fit``. ``normalize`` (default)
    L2-normalizes the features first (spherical geometry, as kNN uses), both in ``fit`` and in
    ``evaluate``. The usual protocol clusters the evaluation set itself: ``fit(test)`` then
    ``evaluate(test)``; fitting on training features and evaluating on test features also works.
    """

    def __init__(
        self,
        k: int | None = None,
        normalize: bool = True,
        n_init: int = 10,
        iters: int = 300,
        seed: int = 0,
        chunk_size: int = 4096,
    ) -> None:
        self.k = None if k is None else _positive("k", k)
        self.normalize = bool(normalize)
        self.n_init = _positive("n_init", n_init)
        self.iters = _positive("iters", iters)
        self.seed = int(seed)
        self.chunk_size = _positive("chunk_size", chunk_size)
        self.centers: Tensor | None = None
        self.inertia = math.nan

    def _prepare(self, features: Tensor) -> Tensor:
        x = features.detach().float()
        return F.normalize(x, dim=1) if self.normalize else x

    @torch.no_grad()
    def fit(self, features: Tensor, labels: Tensor) -> ClusterProbe:
        """Run k-means on ``features`` ``(N, D)``; ``labels`` ``(N,)`` (-1 = unknown) set the default k."""
        _check_features("features", features)
        labels = _check_labels("labels", labels, features.shape[0])
        k = self.k
        if k is None:
            known = labels[labels != UNKNOWN_LABEL]
            if known.numel() == 0:
                raise ValueError("ClusterProbe needs k, or labelled samples to count the classes from")
            k = int(known.unique().numel())
        _, self.centers, self.inertia = kmeans(
            self._prepare(features),
            k,
            n_init=self.n_init,
            iters=self.iters,
            seed=self.seed,
            chunk_size=self.chunk_size,
        )
        return self

    def predict(self, features: Tensor) -> Tensor:
        """Index ``(M,)`` of the nearest centre for each row of ``features`` ``(M, D)``."""
        if self.centers is None:
            raise RuntimeError("ClusterProbe.predict called before fit")
        _check_features("features", features)
        x = self._prepare(features).to(self.centers.device, torch.float64)
        centers = self.centers.to(torch.float64)
        return _assign(x, x.square().sum(dim=1), centers, self.chunk_size)[0]

    @torch.no_grad()
    def evaluate(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """NMI and ARI (0..1 fractions) and Hungarian-matched accuracy (%) over labels != -1."""
        _check_features("features", features)
        labels = _check_labels("labels", labels, features.shape[0])
        keep = labels != UNKNOWN_LABEL
        if not bool(keep.any()):
            raise ValueError("ClusterProbe.evaluate needs labelled samples, but every label is -1 (unknown)")
        pred = self.predict(features[keep]).cpu().numpy()
        target = labels[keep].cpu().numpy()
        return {
            "nmi": nmi(pred, target),
            "ari": ari(pred, target),
            "cluster_accuracy": 100.0 * hungarian_accuracy(pred, target),
        }


__all__ = ["ClusterProbe", "ari", "contingency", "hungarian_accuracy", "kmeans", "nearest_centers", "nmi"]
