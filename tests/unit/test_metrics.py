"""Classification and regression metrics against scikit-learn and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, r2_score, root_mean_squared_error
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from selfsup.eval.metrics import (
    classification_metrics,
    confusion_matrix,
    per_class_accuracy,
    regression_metrics,
    topk_correct,
    topk_pred,
)


def test_confusion_matrix_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (200,), generator=g)
    pred = torch.randint(0, 6, (200,), generator=g)
    got = confusion_matrix(pred, target, 7)  # class 6 never occurs: an all-zero row and column
    assert got.dtype == torch.int64 and got.shape == (7, 7)
    expected = sk_confusion_matrix(target.numpy(), pred.numpy(), labels=list(range(7)))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_per_class_accuracy_hand_computed_and_nan_for_absent_class() -> None:
    # class 0: 2 of 3 right; class 1: 1 of 1; class 2 absent from the targets
    pred = torch.tensor([0, 0, 2, 1])
    target = torch.tensor([0, 0, 0, 1])
    acc = per_class_accuracy(confusion_matrix(pred, target, 3))
    assert acc[0].item() == pytest.approx(200 / 3) and acc[1].item() == 100.0
    assert math.isnan(acc[2].item())


def _brute_topk(scores: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    out = []
    for row, t in zip(scores, target):
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))  # ties: lower class first
        out.append(t in ranked[:k])
    return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_correct_with_ties_matches_brute_force(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (300, 8), generator=g).float()  # many ties
    target = torch.randint(0, 8, (300,), generator=g)
    got = topk_correct(scores, target, k)
    np.testing.assert_array_equal(got.numpy(), _brute_topk(scores.numpy(), target.numpy(), k))
    if k == 1:
        np.testing.assert_array_equal(
            (topk_pred(scores) == target).numpy(), _brute_topk(scores.numpy(), target.numpy(), 1)
        )


def test_classification_metrics_match_sklearn() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 9, (400,), generator=g)  # class 9 absent from the targets
    scores = torch.randn(400, 10, generator=g)
    scores[torch.arange(400), target] += 1.0
    m = classification_metrics(scores, target, 10)
    pred = scores.argmax(1).numpy()
    assert m["top1"] == pytest.approx(100 * float(np.mean(pred == target.numpy())))
    assert m["top5"] == pytest.approx(100 * float(_brute_topk(scores.numpy(), target.numpy(), 5).mean()))
    with pytest.warns(UserWarning):  # sklearn warns about the predicted class absent from y_true
        expected = balanced_accuracy_score(target.numpy(), pred)
    assert m["balanced_accuracy"] == pytest.approx(100 * expected)
    small = classification_metrics(scores[:, :5], target.clamp(max=4), 5)
    assert set(small) == {"top1", "balanced_accuracy"}  # top-5 of 5 classes would always be 100


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        topk_correct(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="columns"):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(torch.zeros(3), torch.zeros(3, 1))


def test_regression_metrics_match_sklearn_single_and_multi_output() -> None:
    g = torch.Generator().manual_seed(4)
    target = torch.randn(50, 3, generator=g)
    pred = target + 0.5 * torch.randn(50, 3, generator=g)
    m = regression_metrics(pred, target)
    assert m["r2"] == pytest.approx(r2_score(target.numpy(), pred.numpy()), rel=1e-6)
    assert m["rmse"] == pytest.approx(root_mean_squared_error(target.numpy(), pred.numpy()), rel=1e-6)
    one = regression_metrics(pred[:, 0], target[:, 0])
    assert one["r2"] == pytest.approx(r2_score(target[:, 0].numpy(), pred[:, 0].numpy()), rel=1e-6)
    # A constant target column: R² forced finite (1 when exact, else 0), as scikit-learn does.
    const = torch.stack([target[:, 0], torch.ones(50)], dim=1)
    for p in (torch.stack([pred[:, 0], torch.ones(50)], 1), torch.stack([pred[:, 0], torch.zeros(50)], 1)):
        assert regression_metrics(p, const)["r2"] == pytest.approx(
            r2_score(const.numpy(), p.numpy()), rel=1e-6
        )
