"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", eq. 7), as run by DINO's ``eval_knn.py`` (Caron et al. 2021): features are
L2-normalized, the k training samples with the largest cosine similarity ``s_i`` to a test sample
vote for their class with weight ``exp(s_i / T)`` (T = 0.07), and the class with the largest
summed weight wins. Top-1 and top-5 accuracy are reported for k = 20 and k = 200.

Memory stays bounded for large sets: test features are processed ``chunk_size`` at a time and,
for each test chunk, the training features are streamed ``chunk_size`` at a time while a running
top-k is kept, so peak extra memory is O(chunk_size^2 + chunk_size * k), never M x N. Ties in
similarity go to the lower training index and ties in score to the lower class index, so the
result does not depend on the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL
from selfsup.eval.base import PROBES


def _check_features(name: str, features: Tensor) -> None:
    if features.ndim != 2 or not torch.is_floating_point(features):
        raise ValueError(
            f"{name} must be a (N, D) floating-point tensor, got {tuple(features.shape)} {features.dtype}"
        )


def _check_labels(name: str, labels: Tensor, n: int) -> Tensor:
    if (
        labels.shape != (n,)
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            f"{name} must be ({n},) integers (-1 = unlabeled), got {tuple(labels.shape)} {labels.dtype}"
        )
    labels = labels.long()
    if n and int(labels.min()) < UNKNOWN_LABEL:
        raise ValueError(f"{name} contains {int(labels.min())}; labels are >= 0, or -1 for unlabeled samples")
    return labels


def _check_finite(name: str, chunk: Tensor) -> None:
    if not torch.isfinite(chunk).all():
        raise ValueError(
            f"{name} contain NaN or infinite values; check the encoder output (e.g. an fp16 overflow)"
        )


def _normalize(chunk: Tensor, device: torch.device) -> Tensor:
    return F.normalize(chunk.to(device=device, dtype=torch.float32), dim=1)


def _chunk_top_k(sim: Tensor, start: int, k: int) -> tuple[Tensor, Tensor]:
    """The candidates of one train chunk ``sim`` ``(c, t)`` whose first column is sample ``start``.

    Returns similarities and training indices ``(c, t')``, in index order. When ``t > k`` only the
    ``k`` best columns are kept: ``topk`` is much cheaper than sorting the chunk, but picks
    arbitrarily among values tied across the k-th place, so a chunk with such a row (rare with real
    features, unless samples are duplicated) is kept whole and the caller's stable sort decides
    by index. Ties at -inf (unlabeled samples) are harmless: they never reach the final top-k.
    """
    c, t = sim.shape
    if t > k:
        values, pos = sim.topk(k + 1, dim=1)
        tied = (values[:, k - 1] == values[:, k]) & torch.isfinite(values[:, k])
        if not bool(tied.any()):
            pos = pos[:, :k].sort(dim=1).values
            return sim.gather(1, pos), pos + start
    return sim, torch.arange(start, start + t, device=sim.device).expand(c, -1)


def _top_neighbours(
    train_features: Tensor,
    train_labels: Tensor,
    test_chunk: Tensor,
    k: int,
    chunk_size: int,
    *,
    check: bool,
    normalized: bool,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` labeled training neighbours of ``test_chunk`` ``(c, D)`` (already normalized).

    Returns similarities ``(c, k)`` sorted by (similarity descending, training index ascending)
    and the neighbours' labels ``(c, k)``. ``k`` must not exceed the number of labeled samples.
    """
    device = test_chunk.device
    c = test_chunk.shape[0]
    best_sim = torch.empty(c, 0, device=device)
    best_idx = torch.empty(c, 0, dtype=torch.long, device=device)
    for start in range(0, train_features.shape[0], chunk_size):
        raw = train_features[start : start + chunk_size]
        if check:
            _check_finite("train_features", raw)
        chunk = raw.to(device=device, dtype=torch.float32) if normalized else _normalize(raw, device)
        sim = test_chunk @ chunk.T
        unlabeled = train_labels[start : start + chunk_size].to(device) == UNKNOWN_LABEL
        if bool(unlabeled.any()):
            # Never neighbours: since k <= #labeled, -inf sorts them out of the final top-k.
            sim.masked_fill_(unlabeled.unsqueeze(0), float("-inf"))
        sim, idx = _chunk_top_k(sim, start, k)
        # The running best holds only lower indices than this chunk, in (sim desc, index asc) order,
        # and the chunk's candidates are in index order, so a stable descending sort of
        # [best, chunk] orders by (sim desc, index asc): ties are broken the same for any chunking.
        merged_sim = torch.cat([best_sim, sim], dim=1)
        merged_idx = torch.cat([best_idx, idx], dim=1)
        order = torch.sort(merged_sim, dim=1, descending=True, stable=True).indices[:, :k]
        best_sim = merged_sim.gather(1, order)
        best_idx = merged_idx.gather(1, order)
    return best_sim, train_labels.to(device)[best_idx]


def _vote(sims: Tensor, labels: Tensor, temperature: float, num_classes: int) -> Tensor:
    """Scores ``(c, num_classes)``: the sum of ``exp(sim / T)`` over the neighbours of each class."""
    weights = (sims / temperature).exp()
    scores = torch.zeros(sims.shape[0], num_classes, device=sims.device)
    return scores.scatter_add_(1, labels, weights)


def _prepare(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: Sequence[int],
    temperature: float,
    chunk_size: int,
) -> tuple[Tensor, int]:
    _check_features("train_features", train_features)
    _check_features("test_features", test_features)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}"
        )
    labels = _check_labels("train_labels", train_labels, train_features.shape[0])
    for value in k:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"k must be a positive integer, got {value!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    num_labeled = int((labels != UNKNOWN_LABEL).sum())
    if num_labeled == 0:
        raise ValueError("kNN needs labeled training samples, but every training label is -1 (unknown)")
    return labels, num_labeled


def _scores_per_chunk(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    ks: Sequence[int],
    temperature: float,
    num_classes: int,
    chunk_size: int,
    train_normalized: bool = False,
) -> Iterator[tuple[int, dict[int, Tensor]]]:
    """Yield ``(start, {k: scores (c, num_classes)})`` per test chunk; one neighbour search serves
    every k because the top-k list is a prefix of the top-max(k) list under the tie order."""
    labels, num_labeled = _prepare(train_features, train_labels, test_features, ks, temperature, chunk_size)
    if int(labels.max()) >= num_classes:
        raise ValueError(f"train_labels contain class {int(labels.max())} but num_classes is {num_classes}")
    k_max = min(max(ks), num_labeled)
    for start in range(0, test_features.shape[0], chunk_size):
        raw = test_features[start : start + chunk_size]
        _check_finite("test_features", raw)
        test_chunk = _normalize(raw, test_features.device)
        sims, neighbour_labels = _top_neighbours(
            train_features,
            labels,
            test_chunk,
            k_max,
            chunk_size,
            check=start == 0 and not train_normalized,
            normalized=train_normalized,
        )
        scores = {
            k: _vote(sims[:, : min(k, k_max)], neighbour_labels[:, : min(k, k_max)], temperature, num_classes)
            for k in ks
        }
        yield start, scores


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int,
    temperature: float,
    num_classes: int,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN class scores (Wu et al. 2018, eq. 7; DINO's ``knn_classifier``).

    train_features ``(N, D)``, train_labels ``(N,)`` int (``-1`` = unlabeled, ignored),
    test_features ``(M, D)``; features need not be normalized. ``k`` is clamped to the number of
    labeled training samples. Returns ``(M, num_classes)`` float32 on ``test_features.device``:
    for each test sample, ``sum over its k nearest neighbours i of class c of exp(cos_i / T)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    out = torch.zeros(test_features.shape[0], num_classes, device=test_features.device)
    for start, scores in _scores_per_chunk(
        train_features, train_labels, test_features, (k,), temperature, num_classes, chunk_size
    ):
        out[start : start + scores[k].shape[0]] = scores[k]
    return out


def _hits(scores: Tensor, target: Tensor, top: int) -> Tensor:
    """``(c, top)`` bool: whether the class ranked j-th for each row is its target.

    Equal scores rank the lower class first. A class that got no vote at all is never a hit:
    with fewer than ``top`` voted classes DINO's top-5 counts whichever zero-score classes its
    unstable sort happens to place there; here they never count, so results are deterministic.
    """
    ranked = torch.sort(scores, dim=1, descending=True, stable=True)
    return (ranked.indices[:, :top] == target.unsqueeze(1)) & (ranked.values[:, :top] > 0)


@PROBES.register("knn")
class KNNProbe:
    """Weighted kNN probe (Wu et al. 2018; DINO's protocol): ``fit`` stores L2-normalized labeled
    features, ``evaluate`` returns ``{"knn_top1@k": %, "knn_top5@k": %}`` for each k, over the test
    samples whose label is not -1 (top-5 only with more than 5 classes: with fewer it is always 100).
    The number of classes is ``max(train label) + 1``."""

    def __init__(
        self, k: int | Sequence[int] = (20, 200), temperature: float = 0.07, chunk_size: int = 1024
    ) -> None:
        ks = (k,) if isinstance(k, int) else tuple(k)
        if not ks:
            raise ValueError("k must name at least one neighbourhood size")
        for value in ks:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"k must be positive integers, got {k!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.ks = tuple(dict.fromkeys(ks))
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.train_features: Tensor | None = None
        self.train_labels: Tensor | None = None
        self.num_classes = 0

    @torch.no_grad()
    def fit(self, features: Tensor, labels: Tensor) -> KNNProbe:
        """Keep the labeled rows of ``features`` ``(N, D)``, L2-normalized, and their ``labels`` ``(N,)``."""
        _check_features("features", features)
        labels = _check_labels("labels", labels, features.shape[0])
        keep = labels != UNKNOWN_LABEL
        if not bool(keep.any()):
            raise ValueError("KNNProbe.fit needs labeled samples, but every label is -1 (unknown)")
        _check_finite("features", features)
        kept = features[keep].float()  # boolean indexing copies, so normalizing in place is safe
        kept.div_(kept.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.train_features = kept
        self.train_labels = labels[keep]
        self.num_classes = int(self.train_labels.max()) + 1
        return self

    @torch.no_grad()
    def evaluate(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """Top-1 / top-5 accuracy (%) of the weighted vote for each k over test samples labelled != -1."""
        if self.train_features is None or self.train_labels is None:
            raise RuntimeError("KNNProbe.evaluate called before fit")
        _check_features("features", features)
        labels = _check_labels("labels", labels, features.shape[0])
        keep = labels != UNKNOWN_LABEL
        num_test = int(keep.sum())
        if num_test == 0:
            raise ValueError("KNNProbe.evaluate needs labeled test samples, but every label is -1 (unknown)")
        test = features[keep]
        targets = labels[keep].to(test.device)
        top = min(5, self.num_classes)
        correct1 = dict.fromkeys(self.ks, 0)
        correct5 = dict.fromkeys(self.ks, 0)
        for start, scores in _scores_per_chunk(
            self.train_features,
            self.train_labels,
            test,
            self.ks,
            self.temperature,
            self.num_classes,
            self.chunk_size,
            train_normalized=True,  # fit normalized (and checked) them once
        ):
            target = targets[start : start + self.chunk_size]
            for k, s in scores.items():
                hits = _hits(s, target, top)
                correct1[k] += int(hits[:, 0].sum())
                correct5[k] += int(hits.any(dim=1).sum())
        metrics: dict[str, float] = {}
        for k in self.ks:
            metrics[f"knn_top1@{k}"] = 100.0 * correct1[k] / num_test
            if self.num_classes > 5:
                metrics[f"knn_top5@{k}"] = 100.0 * correct5[k] / num_test
        return metrics

    @torch.no_grad()
    def predict(self, features: Tensor, k: int | None = None) -> Tensor:
        """``(M,)`` the class of the weighted vote of the ``k`` nearest neighbours (default: the first k)
        for every row of ``features``; equal scores go to the lower class, as in :meth:`evaluate`."""
        if self.train_features is None or self.train_labels is None:
            raise RuntimeError("KNNProbe.predict called before fit")
        _check_features("features", features)
        k = self.ks[0] if k is None else k
        out = torch.empty(features.shape[0], dtype=torch.long)
        for start, scores in _scores_per_chunk(
            self.train_features,
            self.train_labels,
            features,
            (k,),
            self.temperature,
            self.num_classes,
            self.chunk_size,
            train_normalized=True,
        ):
            ranked = torch.sort(scores[k], dim=1, descending=True, stable=True).indices[:, 0]
            out[start : start + ranked.shape[0]] = ranked.cpu()
        return out


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
) -> dict[str, float]:
    """Fit a :class:`KNNProbe` on the training features and return its accuracies on the test features."""
    return (
        KNNProbe(k=k, temperature=temperature)
        .fit(train_features, train_labels)
        .evaluate(test_features, test_labels)
    )
