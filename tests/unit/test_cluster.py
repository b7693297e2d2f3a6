"""Clustering evaluation against scikit-learn (NMI, ARI, KMeans) and a brute-force matching search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from selfsup.eval import PROBES
from selfsup.eval.cluster import ClusterProbe, ari, contingency, hungarian_accuracy, kmeans, nmi


def brute_force_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Best accuracy over every one-to-one map from clusters to classes (injective either way)."""
    clusters, classes = np.unique(pred), np.unique(target)
    best = 0
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image))
            best = max(best, sum(mapping[p] == t for p, t in zip(pred, target)))
    else:
        for image in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(image, classes))  # only the matched clusters can be right
            best = max(best, sum(mapping.get(p) == t for p, t in zip(pred, target)))
    return best / len(pred)


# --- scores -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "c", "n"), [(3, 3, 50), (5, 3, 80), (2, 6, 60), (10, 10, 500), (1, 4, 20)])
def test_nmi_ari_match_sklearn(k: int, c: int, n: int) -> None:
    rng = np.random.default_rng(k * 100 + c)
    for trial in range(5):
        target = rng.integers(0, c, n)
        # Correlated with the target in some trials, independent in others.
        pred = (
            (target + rng.integers(0, 2, n) * rng.integers(0, k, n)) % k
            if trial % 2
            else rng.integers(0, k, n)
        )
        pred = pred * 7 - 3  # arbitrary integer ids: only the partition matters
        assert nmi(pred, target) == pytest.approx(normalized_mutual_info_score(target, pred), abs=1e-12)
        assert ari(pred, target) == pytest.approx(adjusted_rand_score(target, pred), abs=1e-12)


def test_scores_of_edge_partitions_match_sklearn() -> None:
    same = np.zeros(10, dtype=np.int64)
    split = np.arange(10)
    cases = [(same, same), (same, split), (split, same), (split, split), (split, split[::-1])]
    for pred, target in cases:
        assert nmi(pred, target) == pytest.approx(normalized_mutual_info_score(target, pred))
        assert ari(pred, target) == pytest.approx(adjusted_rand_score(target, pred))
    assert nmi(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 2, 2])) == pytest.approx(1.0)


def test_ari_large_n_has_no_overflow() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, 300_000)
    pred = np.where(rng.random(300_000) < 0.8, target, rng.integers(0, 3, 300_000))
    assert ari(pred, target) == pytest.approx(adjusted_rand_score(target, pred), rel=1e-10)


@pytest.mark.parametrize(("k", "c"), [(3, 3), (4, 2), (2, 4), (5, 5)])
def test_hungarian_accuracy_matches_brute_force(k: int, c: int) -> None:
    rng = np.random.default_rng(k * 10 + c)
    for _ in range(4):
        target = rng.integers(0, c, 40)
        pred = np.where(rng.random(40) < 0.6, target % k, rng.integers(0, k, 40))
        assert hungarian_accuracy(pred, target) == pytest.approx(brute_force_accuracy(pred, target))


def test_contingency_counts() -> None:
    table = contingency(np.array([1, 1, 9, 9, 9]), np.array([0, 2, 2, 2, 0]))
    assert table.tolist() == [[1, 1], [1, 2]]
    with pytest.raises(ValueError, match="length"):
        contingency(np.array([0, 1]), np.array([0]))


# --- k-means ----------------------------------------------------------------------------------


def blobs(n: int, centers: int, d: int, std: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    x, y = make_blobs(n_samples=n, centers=centers, n_features=d, cluster_std=std, random_state=seed)
    return torch.from_numpy(x), y


def test_kmeans_recovers_separated_blobs() -> None:
    x, y = blobs(600, 5, 8, 0.5, seed=0)
    labels, centers, inertia = kmeans(x, 5, n_init=3, seed=0)
    assert ari(labels.numpy(), y) == 1.0
    assert labels.shape == (600,) and labels.dtype == torch.int64
    assert centers.shape == (5, 8) and centers.dtype == torch.float32
    expected = float(((x - centers.double()[labels]) ** 2).sum())
    assert inertia == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("k", "std"), [(4, 1.0), (8, 2.5), (6, 4.0)])
def test_kmeans_inertia_within_one_percent_of_sklearn(k: int, std: float) -> None:
    x, _ = blobs(1500, k, 10, std, seed=k)
    ours = kmeans(x, k, n_init=5, seed=0)[2]
    theirs = KMeans(n_clusters=k, n_init=5, random_state=0).fit(x.numpy()).inertia_
    assert ours == pytest.approx(theirs, rel=0.01)


def test_kmeans_from_given_centres_equals_sklearn_lloyd() -> None:
    # Same start, same Lloyd iterations: the same partition and inertia as scikit-learn.
    x, _ = blobs(800, 6, 5, 3.0, seed=3)
    init = x[:6].clone()
    labels, _, inertia = kmeans(x, 6, init=init, tol=0.0, iters=300)
    ref = KMeans(n_clusters=6, init=init.numpy(), n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(
        x.numpy()
    )
    assert ari(labels.numpy(), ref.labels_) == 1.0
    assert inertia == pytest.approx(ref.inertia_, rel=1e-9)


def test_kmeans_deterministic_for_a_seed_and_chunking() -> None:
    x, _ = blobs(400, 7, 6, 3.0, seed=1)
    a = kmeans(x, 7, n_init=2, seed=11)
    b = kmeans(x, 7, n_init=2, seed=11)
    chunked = kmeans(x, 7, n_init=2, seed=11, chunk_size=61)
    for other in (b, chunked):
        assert torch.equal(a[0], other[0])
        assert torch.allclose(a[1], other[1])
        assert a[2] == pytest.approx(other[2], rel=1e-12)
    # A different seed is allowed to differ; on overlapping blobs it does somewhere.
    seeds = {tuple(kmeans(x, 7, n_init=1, seed=s, iters=5)[0][:50].tolist()) for s in range(3)}
    assert len(seeds) > 1


def test_kmeans_float32_path_agrees_with_float64() -> None:
    # float32 is what accelerators use by default; on separated blobs it finds the same partition.
    x, y = blobs(900, 6, 12, 1.0, seed=5)
    labels64, _, inertia64 = kmeans(x, 6, n_init=2, seed=3)
    labels32, centers32, inertia32 = kmeans(x.float(), 6, n_init=2, seed=3, dtype=torch.float32)
    assert ari(labels32.numpy(), labels64.numpy()) == 1.0
    assert ari(labels32.numpy(), y) == 1.0
    assert centers32.dtype == torch.float32
    assert inertia32 == pytest.approx(inertia64, rel=1e-4)


def test_kmeans_reseeds_empty_clusters() -> None:
    x, _ = blobs(300, 3, 4, 0.5, seed=2)
    # One starting centre far from every point: it owns nothing after the first assignment.
    init = torch.cat([x[:2], torch.full((1, 4), 1e6, dtype=x.dtype)])
    labels, centers, _ = kmeans(x, 3, init=init)
    assert torch.isfinite(centers).all()
    assert torch.bincount(labels, minlength=3).min() > 0
    assert centers.abs().max() < 1e3
    # Fewer distinct points than clusters: no NaN, every centre is one of the points.
    dup = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    labels, centers, inertia = kmeans(dup, 3, n_init=2)
    assert torch.isfinite(centers).all() and inertia == pytest.approx(0.0)


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least k"):
        kmeans(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="positive integer"):
        kmeans(torch.randn(10, 2), 0)


# --- the probe --------------------------------------------------------------------------------


def test_cluster_probe_on_separated_directions() -> None:
    g = torch.Generator().manual_seed(0)
    directions = torch.eye(16)[:4] * 5
    labels = torch.arange(400) % 4
    scale = torch.rand(400, 1, generator=g) * 3 + 0.5  # norms vary; normalizing removes them
    x = directions[labels] * scale + 0.2 * torch.randn(400, 16, generator=g)
    probe = PROBES.create("cluster")
    assert isinstance(probe, ClusterProbe)
    metrics = probe.fit(x, labels).evaluate(x, labels)
    assert metrics == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0), "cluster_accuracy": 100.0}


def test_cluster_probe_matches_reference_pipeline() -> None:
    x, y = blobs(500, 5, 6, 2.5, seed=4)
    labels = torch.from_numpy(y)
    labels[::10] = -1  # unlabelled: clustered, but not scored
    probe = ClusterProbe(normalize=False, n_init=3, seed=1).fit(x, labels)
    assert probe.centers is not None and probe.centers.shape == (5, 6)
    metrics = probe.evaluate(x, labels)
    pred, _, _ = kmeans(x, 5, n_init=3, seed=1)
    keep = (labels != -1).numpy()
    p, t = pred.numpy()[keep], y[keep]
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(t, p))
    assert metrics["ari"] == pytest.approx(adjusted_rand_score(t, p))
    assert metrics["cluster_accuracy"] == pytest.approx(100.0 * brute_force_accuracy(p, t))


def test_cluster_probe_k_and_errors() -> None:
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 7] * 20)
    probe = ClusterProbe(n_init=1).fit(x, labels)
    assert probe.centers is not None and probe.centers.shape[0] == 3  # distinct classes, not max + 1
    assert ClusterProbe(k=5, n_init=1).fit(x, labels).centers.shape[0] == 5
    with pytest.raises(ValueError, match="needs k"):
        ClusterProbe().fit(x, torch.full((60,), -1))
    with pytest.raises(RuntimeError, match="before fit"):
        ClusterProbe().evaluate(x, labels)
    with pytest.raises(ValueError, match="every label is -1"):
        probe.evaluate(x, torch.full((60,), -1))
