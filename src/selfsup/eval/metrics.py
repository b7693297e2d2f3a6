"""Classification and regression metrics shared by every probe, as pure functions of tensors.

Conventions follow scikit-learn, which the tests use as the reference: a confusion matrix has the
true class in rows and the predicted class in columns (``sklearn.metrics.confusion_matrix``);
balanced accuracy is the mean recall over the classes present in the targets
(``balanced_accuracy_score``, which also drops classes absent from ``y_true``); R² and RMSE of
multi-output targets are averaged uniformly over the outputs (``multioutput="uniform_average"``,
with R² of a constant target column forced finite: 1 if predicted exactly, else 0). Accuracies are
percentages, as in the kNN probe. Top-k ranks equal scores with the lower class first, so the
result never depends on a sort's tie order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_target(target: Tensor, m: int, num_classes: int, name: str = "target") -> Tensor:
    if target.shape != (m,) or target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"{name} must be ({m},) integer classes, got {tuple(target.shape)} {target.dtype}")
    target = target.long()
    if m and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"{name} holds classes in [{int(target.min())}, {int(target.max())}], outside [0, {num_classes})"
        )
    return target


def _check_scores(scores: Tensor) -> None:
    if scores.ndim != 2 or not torch.is_floating_point(scores):
        raise ValueError(f"scores must be a (M, C) floating-point tensor, got {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        # A NaN compares false with everything, so it would silently rank first.
        raise ValueError("scores contain NaN or infinite values")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` int64 counts: entry ``[i, j]`` is the number of samples of true class ``i``
    predicted as ``j`` (rows true, columns predicted, as ``sklearn.metrics.confusion_matrix``).

    pred, target: ``(M,)`` integer classes in ``[0, num_classes)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if target.ndim != 1 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be (M,), got {tuple(pred.shape)} and {tuple(target.shape)}")
    target = _check_target(target, target.shape[0], num_classes)
    pred = _check_target(pred, target.shape[0], num_classes, name="pred")
    flat = target.cpu() * num_classes + pred.cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: Tensor) -> Tensor:
    """``(C,)`` float64 recall of each class in %, from a confusion matrix (rows true); NaN for a
    class with no test sample (there is nothing to be right about)."""
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got {tuple(confusion.shape)}")
    confusion = confusion.double()
    support = confusion.sum(dim=1)
    return torch.where(support > 0, 100.0 * confusion.diagonal() / support.clamp_min(1), math.nan)


def topk_correct(scores: Tensor, target: Tensor, k: int) -> Tensor:
    """``(M,)`` bool: whether ``target`` is among the ``k`` best-scored classes of each row of
    ``scores`` ``(M, C)``. Equal scores rank the lower class first: the target's rank is the number
    of classes scored above it plus the lower classes scored equal, so no sort order is involved."""
    _check_scores(scores)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    target = _check_target(target, scores.shape[0], scores.shape[1]).to(scores.device)
    own = scores.gather(1, target.unsqueeze(1))
    lower = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) < target.unsqueeze(1)
    rank = (scores > own).sum(dim=1) + ((scores == own) & lower).sum(dim=1)
    return rank < k


def classification_metrics(scores: Tensor, target: Tensor, num_classes: int) -> dict[str, float]:
    """``{"top1", "top5" (only when C > 5, else it is always 100), "balanced_accuracy"}`` in %.

    scores: ``(M, C)`` with ``C == num_classes`` (any monotone scores: logits, probabilities, votes);
    target: ``(M,)`` classes. Balanced accuracy is the mean of :func:`per_class_accuracy` over the
    classes present in ``target`` (``sklearn.metrics.balanced_accuracy_score``).
    """
    _check_scores(scores)
    if scores.shape[1] != num_classes:
        raise ValueError(f"scores have {scores.shape[1]} columns but num_classes is {num_classes}")
    if scores.shape[0] == 0:
        raise ValueError("classification_metrics needs at least one sample")
    target = _check_target(target, scores.shape[0], num_classes)
    pred = topk_pred(scores)
    metrics = {"top1": 100.0 * float((pred == target.to(pred.device)).double().mean())}
    if num_classes > 5:
        metrics["top5"] = 100.0 * float(topk_correct(scores, target, 5).double().mean())
    per_class = per_class_accuracy(confusion_matrix(pred, target, num_classes))
    metrics["balanced_accuracy"] = float(per_class[~per_class.isnan()].mean())
    return metrics


def topk_pred(scores: Tensor) -> Tensor:
    """``(M,)`` int64 argmax of each row, the lower class on ties (``torch.argmax`` does not
    promise which of equal maxima it returns)."""
    best = scores.max(dim=1, keepdim=True).values
    classes = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    return torch.where(scores == best, classes, scores.shape[1]).min(dim=1).values


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """``{"r2", "rmse"}`` of predictions against targets, both ``(M,)`` or ``(M, K)``.

    Per output ``k``: ``R²_k = 1 - SS_res / SS_tot`` and ``RMSE_k = sqrt(mean squared error)``;
    both are averaged uniformly over the outputs, as scikit-learn's ``r2_score`` and
    ``root_mean_squared_error`` default to. A constant target column has ``R² = 1`` when predicted
    exactly, else 0 (scikit-learn's ``force_finite``). Computed in float64.
    """
    if pred.shape != target.shape or pred.ndim not in (1, 2):
        raise ValueError(
            f"pred and target must share a (M,) or (M, K) shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if pred.shape[0] < 2:
        raise ValueError("regression_metrics needs at least two samples (R² is undefined for one)")
    pred = pred.double().reshape(pred.shape[0], -1)
    target = target.double().reshape(target.shape[0], -1).to(pred.device)
    if not (bool(torch.isfinite(pred).all()) and bool(torch.isfinite(target).all())):
        raise ValueError("pred and target must be finite")
    residual = ((target - pred) ** 2).sum(dim=0)
    total = ((target - target.mean(dim=0)) ** 2).sum(dim=0)
    r2 = torch.where(total > 0, 1.0 - residual / total.where(total > 0, 1.0), (residual == 0).double())
    rmse = (residual / pred.shape[0]).sqrt()
    return {"r2": float(r2.mean()), "rmse": float(rmse.mean())}


__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "per_class_accuracy",
    "regression_metrics",
    "topk_correct",
    "topk_pred",
]
