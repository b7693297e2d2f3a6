"""Weighted kNN (Wu et al. 2018; DINO's eval_knn.py) against hand-computed votes and a numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.eval import PROBES, KNNProbe, knn_scores


def reference_scores(
    train: np.ndarray, labels: np.ndarray, test: np.ndarray, k: int, temperature: float, num_classes: int
) -> np.ndarray:
    """Straight from the definition: full cosine matrix, stable sort, exp-weighted class votes."""
    keep = labels != -1
    train, labels = train[keep], labels[keep]
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = test.astype(np.float64) @ train.astype(np.float64).T
    k = min(k, len(train))
    scores = np.zeros((len(test), num_classes))
    for row in range(len(test)):
        order = np.argsort(-sim[row], kind="stable")[:k]
        for i in order:
            scores[row, labels[i]] += math.exp(sim[row, i] / temperature)
    return scores


def reference_accuracy(scores: np.ndarray, targets: np.ndarray, top: int) -> float:
    hits = 0
    for row, target in zip(scores, targets):
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))[:top]
        hits += int(target in ranked and row[target] > 0)
    return 100.0 * hits / len(targets)


def random_problem(n: int, m: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g),
        torch.randint(0, classes, (n,), generator=g),
        torch.randn(m, d, generator=g),
        torch.randint(0, classes, (m,), generator=g),
    )


# --- hand-computed cases -------------------------------------------------------------------


def test_hand_computed_votes_2d() -> None:
    # Points on the plane; the test point (1, 0) has cosines 1, 0, -1, 1/sqrt(2) to them.
    train = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 3.0]])
    labels = torch.tensor([0, 1, 2, 1])
    test = torch.tensor([[1.0, 0.0]])
    t = 0.5
    s = 1 / math.sqrt(2)

    got = knn_scores(train, labels, test, k=2, temperature=t, num_classes=3)
    # Nearest two: (2, 0) class 0 with cos 1, then (3, 3) class 1 with cos 1/sqrt(2).
    expected = torch.tensor([[math.exp(1 / t), math.exp(s / t), 0.0]])
    torch.testing.assert_close(got, expected)

    got = knn_scores(train, labels, test, k=3, temperature=t, num_classes=3)
    # The third neighbour (0, 1) with cos 0 adds exp(0) = 1 to class 1.
    expected = torch.tensor([[math.exp(1 / t), math.exp(s / t) + 1.0, 0.0]])
    torch.testing.assert_close(got, expected)


def test_weighting_beats_majority() -> None:
    # Two class-1 neighbours at cos 0.6 against one class-0 neighbour at cos 1, T = 0.1:
    # exp(10) = 22026 > 2 exp(6) = 807, so the weighted vote picks class 0 (a majority vote would not).
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    scores = knn_scores(train, labels, test, k=3, temperature=0.1, num_classes=2)
    torch.testing.assert_close(scores, torch.tensor([[math.exp(10.0), 2 * math.exp(6.0)]]))
    probe = KNNProbe(k=3, temperature=0.1).fit(train, labels)
    assert probe.evaluate(test, torch.tensor([0]))["knn_top1@3"] == 100.0
    assert probe.evaluate(test, torch.tensor([1]))["knn_top1@3"] == 0.0


def test_ties_go_to_the_lower_training_index() -> None:
    # Three identical training points with different labels: k=1 must always pick index 0,
    # whatever the chunking.
    train = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 2, 1, 0])
    test = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    for chunk_size in (1, 2, 3, 1024):
        scores = knn_scores(train, labels, test, k=1, temperature=1.0, num_classes=3, chunk_size=chunk_size)
        torch.testing.assert_close(scores, torch.tensor([[0.0, 0.0, math.e], [0.0, 0.0, math.e]]))
        # k=2 takes indices 1 and 2 (classes 2 and 1), never index 3.
        scores = knn_scores(train, labels, test, k=2, temperature=1.0, num_classes=3, chunk_size=chunk_size)
        torch.testing.assert_close(scores[0], torch.tensor([0.0, math.e, math.e]))


def test_score_ties_rank_the_lower_class_first() -> None:
    # Class 1 and class 2 get exactly the same weight: top-1 predicts class 1.
    train = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    labels = torch.tensor([2, 1])
    probe = KNNProbe(k=2, temperature=1.0).fit(train, labels)
    test = torch.tensor([[1.0, 0.0]])
    assert probe.evaluate(test, torch.tensor([1]))["knn_top1@2"] == 100.0
    assert probe.evaluate(test, torch.tensor([2]))["knn_top1@2"] == 0.0


def test_top5_by_hand() -> None:
    # Seven classes, one training point each at decreasing cosine to the test point (1, 0):
    # class c sits at angle c * 10 degrees, so the ranking is 0, 1, 2, ..., 6.
    angles = torch.deg2rad(torch.arange(7) * 10.0)
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.arange(7)
    probe = KNNProbe(k=7, temperature=0.07).fit(train, labels)
    test = torch.tensor([[1.0, 0.0]] * 4)
    # Targets ranked 1st, 4th, 5th and 6th: top-1 hits 1/4, top-5 hits 3/4.
    metrics = probe.evaluate(test, torch.tensor([0, 3, 4, 5]))
    assert metrics == {"knn_top1@7": 25.0, "knn_top5@7": 75.0}


def test_top5_ignores_classes_without_votes() -> None:
    # k=1: only class 0 gets a vote; class 1 (score 0) is never counted as a top-5 hit.
    train = torch.eye(6)
    probe = KNNProbe(k=1).fit(train, torch.arange(6))
    query = torch.tensor([[1.0, 0.1, 0.0, 0.0, 0.0, 0.0]])
    metrics = probe.evaluate(query, torch.tensor([1]))
    assert metrics == {"knn_top1@1": 0.0, "knn_top5@1": 0.0}


def test_top5_is_reported_only_with_more_than_five_classes() -> None:
    """With five classes or fewer, every test sample is a top-5 hit: the number says nothing."""
    train, labels, test, targets = random_problem(n=30, m=10, d=4, classes=5, seed=3)
    assert list(KNNProbe(k=5).fit(train, labels).evaluate(test, targets)) == ["knn_top1@5"]


# --- chunking and references ---------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16])
def test_chunked_equals_unchunked(chunk_size: int) -> None:
    train, labels, test, _ = random_problem(n=37, m=23, d=8, classes=5, seed=0)
    k = 10  # larger than most chunk sizes, and 37, 23 are not multiples of them
    full = knn_scores(train, labels, test, k=k, temperature=0.07, num_classes=5, chunk_size=1024)
    chunked = knn_scores(train, labels, test, k=k, temperature=0.07, num_classes=5, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (5, 0.07), (20, 0.5), (60, 0.07)])
def test_matches_numpy_reference(k: int, temperature: float) -> None:
    train, labels, test, _ = random_problem(n=50, m=19, d=6, classes=4, seed=1)
    got = knn_scores(train, labels, test, k=k, temperature=temperature, num_classes=4, chunk_size=8)
    ref = reference_scores(train.numpy(), labels.numpy(), test.numpy(), k, temperature, 4)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


def test_probe_matches_reference_accuracy() -> None:
    train, labels, test, targets = random_problem(n=60, m=41, d=5, classes=8, seed=2)
    probe = PROBES.create("knn", k=(3, 20), temperature=0.1, chunk_size=7).fit(train, labels)
    metrics = probe.evaluate(test, targets)
    assert set(metrics) == {"knn_top1@3", "knn_top5@3", "knn_top1@20", "knn_top5@20"}
    for k in (3, 20):
        ref = reference_scores(train.numpy(), labels.numpy(), test.numpy(), k, 0.1, 8)
        assert metrics[f"knn_top1@{k}"] == pytest.approx(reference_accuracy(ref, targets.numpy(), 1))
        assert metrics[f"knn_top5@{k}"] == pytest.approx(reference_accuracy(ref, targets.numpy(), 5))


def test_default_probe_reports_k20_and_k200() -> None:
    train, labels, test, targets = random_problem(n=30, m=10, d=4, classes=7, seed=3)
    metrics = KNNProbe().fit(train, labels).evaluate(test, targets)
    assert list(metrics) == ["knn_top1@20", "knn_top5@20", "knn_top1@200", "knn_top5@200"]
    # k=200 is clamped to the 30 samples.
    ref = reference_scores(train.numpy(), labels.numpy(), test.numpy(), 30, 0.07, 7)
    assert metrics["knn_top1@200"] == pytest.approx(reference_accuracy(ref, targets.numpy(), 1))
    assert metrics["knn_top5@200"] == pytest.approx(reference_accuracy(ref, targets.numpy(), 5))


def test_k_larger_than_train_set_is_clamped() -> None:
    train, labels, test, _ = random_problem(n=6, m=4, d=3, classes=2, seed=4)
    big = knn_scores(train, labels, test, k=100, temperature=0.07, num_classes=2, chunk_size=4)
    exact = knn_scores(train, labels, test, k=6, temperature=0.07, num_classes=2)
    torch.testing.assert_close(big, exact)


# --- unlabeled samples ---------------------------------------------------------------------


def test_unlabeled_train_samples_are_ignored() -> None:
    train, labels, test, targets = random_problem(n=40, m=12, d=4, classes=3, seed=5)
    labels[::3] = -1
    # Put an unlabeled copy of each test point into the train set: it would be the nearest neighbour.
    train = torch.cat([train, test])
    labels = torch.cat([labels, torch.full((12,), -1)])
    keep = labels != -1
    for chunk_size in (5, 1024):
        got = knn_scores(train, labels, test, k=7, temperature=0.07, num_classes=3, chunk_size=chunk_size)
        ref = knn_scores(train[keep], labels[keep], test, k=7, temperature=0.07, num_classes=3)
        torch.testing.assert_close(got, ref)
    probe = KNNProbe(k=(7,), chunk_size=5).fit(train, labels)
    assert probe.train_features is not None and probe.train_features.shape[0] == int(keep.sum())
    ref_metrics = KNNProbe(k=(7,)).fit(train[keep], labels[keep]).evaluate(test, targets)
    assert probe.evaluate(test, targets) == ref_metrics


@pytest.mark.parametrize("chunk_size", [4, 16, 1024])
def test_mostly_unlabeled_train_set(chunk_size: int) -> None:
    # Fewer labeled samples per chunk than k: the chunk's top-k holds unlabeled (-inf) entries.
    train, labels, test, _ = random_problem(n=40, m=9, d=4, classes=3, seed=8)
    labels[torch.arange(40) % 7 != 0] = -1  # 6 labeled samples
    got = knn_scores(train, labels, test, k=5, temperature=0.2, num_classes=3, chunk_size=chunk_size)
    ref = reference_scores(train.numpy(), labels.numpy(), test.numpy(), 5, 0.2, 3)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


def test_unlabeled_test_samples_are_not_counted() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    probe = KNNProbe(k=1).fit(train, torch.tensor([0, 1]))
    test = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0]])
    # Two labeled test samples, one right and one wrong: 50 %, whatever the -1 sample would score.
    assert probe.evaluate(test, torch.tensor([0, 0, -1]))["knn_top1@1"] == 50.0


def test_all_unlabeled_is_a_clear_error() -> None:
    train = torch.randn(5, 3)
    unlabeled = torch.full((5,), -1)
    with pytest.raises(ValueError, match="every training label is -1"):
        knn_scores(train, unlabeled, torch.randn(2, 3), k=3, temperature=0.07, num_classes=2)
    with pytest.raises(ValueError, match="every label is -1"):
        KNNProbe().fit(train, unlabeled)
    probe = KNNProbe().fit(train, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labeled test samples"):
        probe.evaluate(torch.randn(2, 3), torch.full((2,), -1))


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_errors() -> None:
    train, labels, test, _ = random_problem(n=8, m=3, d=4, classes=2, seed=6)
    kw = {"k": 3, "temperature": 0.07, "num_classes": 2}
    with pytest.raises(ValueError, match="differ in width"):
        knn_scores(train, labels, torch.randn(3, 5), **kw)
    with pytest.raises(ValueError, match="integers"):
        knn_scores(train, labels.float(), test, **kw)
    with pytest.raises(ValueError, match="num_classes is 1"):
        knn_scores(train, labels, test, k=3, temperature=0.07, num_classes=1)
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(train, labels, test, k=3, temperature=0.0, num_classes=2)
    with pytest.raises(ValueError, match="k must be"):
        knn_scores(train, labels, test, k=0, temperature=0.07, num_classes=2)
    with pytest.raises(ValueError, match="-1 for unlabeled"):
        knn_scores(train, torch.full((8,), -2), test, **kw)
    bad = test.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn_scores(train, labels, bad, **kw)
    with pytest.raises(RuntimeError, match="before fit"):
        KNNProbe().evaluate(test, labels[:3])


def test_empty_test_set() -> None:
    train, labels, _, _ = random_problem(n=8, m=3, d=4, classes=2, seed=7)
    out = knn_scores(train, labels, torch.zeros(0, 4), k=3, temperature=0.07, num_classes=2)
    assert out.shape == (0, 2)


def test_predict_agrees_with_top1_accuracy() -> None:
    from selfsup.eval.knn import KNNProbe

    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 8, generator=g)
    labels = (train[:, 0] > 0).long() + 2 * (train[:, 1] > 0).long()
    test = torch.randn(50, 8, generator=g)
    test_labels = (test[:, 0] > 0).long() + 2 * (test[:, 1] > 0).long()
    probe = KNNProbe(k=(5, 20)).fit(train, labels)
    for k in (5, 20):
        predicted = probe.predict(test, k=k)
        accuracy = 100.0 * (predicted == test_labels).float().mean().item()
        assert accuracy == pytest.approx(probe.evaluate(test, test_labels)[f"knn_top1@{k}"])
    # Brute force for k = 5: the weighted vote of the 5 most similar training samples.
    sims = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    top = sims.topk(5, dim=1)
    votes = torch.zeros(50, 4).scatter_add_(1, labels[top.indices], (top.values / 0.07).exp())
    assert torch.equal(probe.predict(test, k=5), votes.argmax(dim=1))
