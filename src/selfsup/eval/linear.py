"""Linear probe on frozen features: a grid of linear heads trained jointly, selected on a validation
split carved from the training data.

The protocol of DINOv2's linear evaluation (Oquab et al. 2023, ``dinov2/eval/linear.py``): many
linear heads — one per (feature set x learning rate [x weight decay]) — see the same mini-batches of
cached features, are trained with SGD (momentum 0.9) under a cosine learning-rate schedule decaying
to 0, and the head with the best validation top-1 is kept. Deliberate differences, and why:

* **Standardized features.** Each feature set is standardized with the mean and variance of the
  split it is fitted on (MAE's linear probe puts a ``BatchNorm1d(affine=False, eps=1e-6)`` before
  the head for the same reason: feature scales differ wildly between encoders and layers). So
  DINOv2's learning rates (13 values from 1e-5 to 0.1, scaled by batch/256, for raw ViT features)
  are shifted here to 13 values from 1e-4 to 1.0 and not scaled with the batch size: the stable
  step of a softmax head on unit-variance features is about ``1 / lambda_max(X^T X / N)``, between
  ~1 (uncorrelated dimensions) and ~1/D (strongly correlated ones).
* **A weight-decay grid** (DINOv2 trains with none): L2 on the weights, never the bias, so one head
  minimizes exactly scikit-learn's ``LogisticRegression(C=1 / (weight_decay * N))`` objective
  ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (regression: ``Ridge(alpha=weight_decay * N)``
  on standardized targets, per output).
* **Zero-initialized heads** (DINOv2: normal, std 0.01). The objective is convex, so the start does
  not change the optimum, and each head then depends only on its own settings and the batches —
  training a grid jointly gives the same heads as training each alone (tested).
* **Gradients by hand.** All ``H`` heads of a feature set are one ``(D, H*K)`` weight matrix, so a
  step is two GEMMs (``(B, D) @ (D, H*K)`` forward, ``X^T @ G`` backward) with per-head learning
  rate and weight decay, and no autograd graph.
* **Model selection.** The validation split (``val_fraction`` of the training data, stratified by
  class, seeded) is never the test set; ties go to the earlier grid entry (feature sets in the given
  order, then learning rates, then weight decays, each ascending as given). With ``refit=True`` the
  chosen setting is retrained on all the training data (train + validation), as is usual once
  hyper-parameters are fixed. A grid of one setting needs no validation split and trains on all.

Feature sets let one probe compare layers and poolings: ``fit`` takes a ``(N, D)`` tensor or
``{name: (N, D_name)}`` over the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL
from selfsup.errors import DataError
from selfsup.eval.base import PROBES
from selfsup.eval.metrics import classification_metrics, confusion_matrix, regression_metrics, topk_pred
from selfsup.eval.splits import random_split, train_val_split

# DINOv2's 1-2-5 grid shifted by a decade for standardized features (see the module docstring).
DEFAULT_LEARNING_RATES = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)
# 0 (DINOv2's choice) up to strong shrinkage; 1 / N (scikit-learn's default C = 1) lies inside for N
# between 100 and 10,000.
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
BN_EPS = 1e-6  # MAE's BatchNorm1d(eps=1e-6) before the head
TASKS = ("auto", "classification", "regression")
FeatureInput = Tensor | Mapping[str, Tensor]
SINGLE = "features"  # the name of a feature set given as a plain tensor


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / scale`` per dimension; ``mean``, ``scale`` ``(D,)``."""

    mean: Tensor
    scale: Tensor

    @classmethod
    def fit(cls, x: Tensor, enabled: bool = True) -> Standardizer:
        if not enabled:
            return cls(x.new_zeros(x.shape[1]), x.new_ones(x.shape[1]))
        var, mean = torch.var_mean(x, dim=0, correction=0)  # biased, as BatchNorm normalizes
        return cls(mean, (var + BN_EPS).sqrt())

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.scale


def epoch_batches(n: int, batch_size: int, epochs: int, seed: int) -> list[Tensor]:
    """Mini-batch indices for ``epochs`` passes over ``range(n)``: a fresh permutation each epoch
    (seeded), cut into batches of ``batch_size`` (the last one of an epoch may be smaller)."""
    generator = torch.Generator().manual_seed(seed)
    batches: list[Tensor] = []
    for _ in range(epochs):
        batches.extend(torch.randperm(n, generator=generator).split(batch_size))
    return batches


def train_linear_heads(
    x: Tensor,
    targets: Tensor,
    *,
    num_outputs: int,
    learning_rates: Tensor,
    weight_decays: Tensor,
    batches: Sequence[Tensor],
    classification: bool,
    momentum: float = 0.9,
) -> tuple[Tensor, Tensor]:
    """Train ``H`` linear heads jointly on the same mini-batches; returns weights ``(D, H, K)`` and
    biases ``(H, K)`` (``K = num_outputs``).

    x: ``(N, D)`` float (already standardized); targets: ``(N,)`` int64 classes in ``[0, K)`` or
    ``(N, K)`` float regression targets; learning_rates, weight_decays: ``(H,)``.
    Head ``h`` minimizes ``mean_i loss_i + wd_h / 2 * ||W_h||^2`` (loss: softmax cross-entropy, or
    ``1/2 ||y - W x - b||^2``) by SGD with momentum, PyTorch's semantics (``v = mu v + g``,
    ``W -= lr_t v``, weight decay folded into ``g``, none on the bias) and the cosine schedule of
    ``CosineAnnealingLR(T = len(batches), eta_min=0)``: ``lr_t = lr_h (1 + cos(pi t / T)) / 2``.
    A head whose step is too large diverges to non-finite values without touching the others.
    """
    n, d = x.shape
    h = learning_rates.numel()
    k = num_outputs
    weight = x.new_zeros(d, h, k)
    bias = x.new_zeros(h, k)
    velocity_w = torch.zeros_like(weight)
    velocity_b = torch.zeros_like(bias)
    lr = learning_rates.to(x).view(1, h, 1)
    wd = weight_decays.to(x).view(1, h, 1)
    total = len(batches)
    for t, index in enumerate(batches):
        b = index.numel()
        if b == n:
            # Full batch: the gradient is a sum over all samples, so skip the gather.
            xb, yb = x, targets
        else:
            index = index.to(x.device)
            xb, yb = x[index], targets[index]
        out = torch.addmm(bias.view(1, h * k), xb, weight.view(d, h * k)).view(b, h, k)
        if classification:
            # d(cross-entropy)/d(logits) = softmax - one_hot. A hand-written softmax: torch.softmax
            # over a last dimension of ~10 classes was 5x slower on CPU (our measurement).
            grad_out = (out - out.amax(dim=2, keepdim=True)).exp_()
            grad_out /= grad_out.sum(dim=2, keepdim=True)
            grad_out[torch.arange(b, device=x.device), :, yb] -= 1.0
        else:
            grad_out = out - yb.unsqueeze(1)
        grad_out /= b
        grad_w = (xb.T @ grad_out.view(b, h * k)).view(d, h, k).addcmul_(weight, wd)
        grad_b = grad_out.sum(dim=0)
        velocity_w.mul_(momentum).add_(grad_w)
        velocity_b.mul_(momentum).add_(grad_b)
        step = lr * (0.5 * (1.0 + math.cos(math.pi * t / total)))
        weight.addcmul_(velocity_w, step, value=-1.0)
        bias.addcmul_(velocity_b, step.view(h, 1), value=-1.0)
    return weight, bias


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _grid_values(name: str, values: float | Sequence[float], minimum_inclusive: bool) -> tuple[float, ...]:
    values = (values,) if isinstance(values, int | float) else tuple(values)
    if not values:
        raise ValueError(f"{name} must hold at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name} must be finite numbers, got {v!r}")
        if v < 0 or (v == 0 and not minimum_inclusive):
            raise ValueError(f"{name} must be {'>= 0' if minimum_inclusive else '> 0'}, got {v!r}")
    return tuple(float(v) for v in dict.fromkeys(values))


def _feature_sets(features: FeatureInput) -> dict[str, Tensor]:
    sets = {SINGLE: features} if isinstance(features, Tensor) else dict(features)
    if not sets:
        raise ValueError("features must be a (N, D) tensor or a non-empty {name: (N, D)} mapping")
    n = None
    for name, x in sets.items():
        if not isinstance(x, Tensor) or x.ndim != 2 or not torch.is_floating_point(x):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"feature set {name!r} must be a (N, D) floating-point tensor, got {shape}")
        if n is not None and x.shape[0] != n:
            raise ValueError(f"feature sets differ in their number of samples: {x.shape[0]} vs {n}")
        n = x.shape[0]
        if not bool(torch.isfinite(x).all()):
            raise DataError(
                f"feature set {name!r} contains NaN or infinite values; check the encoder output "
                "(e.g. an fp16 overflow)"
            )
    return sets


@PROBES.register("linear")
class LinearProbe:
    """Linear probe (DINOv2-style grid of heads trained jointly, selected on a validation split of the
    training data): ``evaluate`` returns top-1 / top-5 / balanced accuracy (%), or R² / RMSE.

    ``task="auto"`` treats integer labels as classes (``-1`` = unlabeled, ignored) and floating
    targets ``(N,)`` or ``(N, K)`` as regression. After ``fit``: ``grid`` (one dict per head:
    ``features``, ``lr``, ``weight_decay`` and ``val_top1`` / ``val_r2``, None where the head
    diverged or no validation was needed) and ``selected`` (the chosen entry, plus ``refit`` and the
    split sizes). After ``evaluate`` (classification): ``last_predictions`` ``(M,)`` and
    ``last_confusion`` ``(C, C)`` for the labelled test samples.
    """

    def __init__(
        self,
        learning_rates: float | Sequence[float] = DEFAULT_LEARNING_RATES,
        weight_decays: float | Sequence[float] = DEFAULT_WEIGHT_DECAYS,
        epochs: int = 100,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        task: str = "auto",
        refit: bool = True,
        standardize: bool = True,
        momentum: float = 0.9,
        device: str = "cpu",
    ) -> None:
        self.learning_rates = _grid_values("learning_rates", learning_rates, minimum_inclusive=False)
        self.weight_decays = _grid_values("weight_decays", weight_decays, minimum_inclusive=True)
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.task = task
        self.refit = bool(refit)
        self.standardize = bool(standardize)
        self.momentum = float(momentum)
        self.device = torch.device(device)
        self.grid: list[dict[str, object]] = []
        self.selected: dict[str, object] = {}
        self.num_classes = 0
        self.last_predictions: Tensor | None = None
        self.last_confusion: Tensor | None = None
        self._fitted_task = ""
        self._target_ndim = 1
        self._input_was_tensor = False
        self._single_set = False
        self._head: tuple[Standardizer, Tensor, Tensor] | None = None
        self._target_scaler: Standardizer | None = None

    # --- fitting --------------------------------------------------------------------------

    def _targets(self, labels: Tensor, n: int) -> tuple[str, Tensor, Tensor]:
        """``(task, kept row indices, targets of the kept rows)``: int64 classes or ``(n', K)`` floats."""
        if not isinstance(labels, Tensor) or labels.shape[:1] != (n,) or labels.ndim > 2:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be ({n},) classes or ({n},) / ({n}, K) targets, got {shape}")
        task = self.task
        if task == "auto":
            task = "regression" if labels.dtype.is_floating_point else "classification"
        if task == "regression":
            targets = labels.double().reshape(n, -1)
            if not bool(torch.isfinite(targets).all()):
                raise DataError("regression targets contain NaN or infinite values")
            if n < 2:
                raise DataError(f"a regression probe needs at least 2 samples, got {n}")
            return task, torch.arange(n), targets
        if labels.ndim != 1 or labels.dtype == torch.bool or labels.dtype.is_complex:
            raise ValueError(f"classification labels must be ({n},) integers, got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point and not bool((labels == labels.round()).all()):
            raise ValueError("task='classification' needs integral labels; use task='regression'")
        labels = labels.long().cpu()
        if n and int(labels.min()) < UNKNOWN_LABEL:
            raise ValueError(f"labels contain {int(labels.min())}; classes are >= 0, or -1 for unlabeled")
        keep = torch.nonzero(labels != UNKNOWN_LABEL).flatten()
        if torch.unique(labels[keep]).numel() < 2:
            raise DataError(
                f"a linear classifier needs labelled samples of at least 2 classes, got {keep.numel()} "
                f"labelled sample(s) of {torch.unique(labels[keep]).numel()} class(es)"
            )
        return task, keep, labels[keep]

    def _train(
        self, x: Tensor, targets: Tensor, settings: Sequence[tuple[float, float]], num_outputs: int
    ) -> tuple[Standardizer, Tensor, Tensor]:
        """Standardize ``x`` with its own statistics and train one head per (lr, wd) setting."""
        scaler = Standardizer.fit(x, self.standardize)
        batches = epoch_batches(x.shape[0], self.batch_size, self.epochs, self.seed)
        lrs = torch.tensor([lr for lr, _ in settings], dtype=x.dtype)
        wds = torch.tensor([wd for _, wd in settings], dtype=x.dtype)
        weight, bias = train_linear_heads(
            scaler(x),
            targets,
            num_outputs=num_outputs,
            learning_rates=lrs,
            weight_decays=wds,
            batches=batches,
            classification=self._fitted_task == "classification",
            momentum=self.momentum,
        )
        return scaler, weight, bias

    def _prepare_targets(self, targets: Tensor, rows: Tensor) -> tuple[Tensor, Standardizer | None]:
        """Targets on the device: classes as they are, regression targets standardized with ``rows``."""
        if self._fitted_task == "classification":
            return targets.to(self.device), None
        scaler = Standardizer.fit(targets[rows].float())
        # A constant target column is left at scale 1 rather than blown up by 1/sqrt(eps).
        scaler = Standardizer(scaler.mean, torch.where(scaler.scale > 1e-3, scaler.scale, 1.0))
        return scaler(targets.float()).to(self.device), scaler

    def _val_metrics(
        self, scaler: Standardizer, weight: Tensor, bias: Tensor, x: Tensor, y: Tensor
    ) -> list[float | None]:
        d, h, k = weight.shape
        out = torch.addmm(bias.view(1, h * k), scaler(x), weight.view(d, h * k)).view(-1, h, k)
        values: list[float | None] = []
        for j in range(h):
            if not (bool(torch.isfinite(weight[:, j]).all()) and bool(torch.isfinite(out[:, j]).all())):
                values.append(None)  # diverged: never selected
            elif self._fitted_task == "classification":
                values.append(100.0 * float((topk_pred(out[:, j]) == y).double().mean()))
            else:
                values.append(regression_metrics(out[:, j], y)["r2"])
        return values

    def fit(self, features: FeatureInput, labels: Tensor) -> LinearProbe:
        """Train the grid on ``features`` (``(N, D)`` or ``{name: (N, D_name)}``) and ``labels``
        (``(N,)`` int64 classes with -1 = unlabeled, or ``(N,)`` / ``(N, K)`` float targets)."""
        sets = _feature_sets(features)
        n = next(iter(sets.values())).shape[0]
        task, keep, targets = self._targets(labels, n)
        self._fitted_task = task
        self._target_ndim = labels.ndim
        self._input_was_tensor = isinstance(features, Tensor)
        self._single_set = len(sets) == 1
        if task == "classification":
            self.num_classes = int(targets.max()) + 1
            num_outputs = self.num_classes
        else:
            self.num_classes = 0
            num_outputs = targets.shape[1]
        sets = {name: x[keep.to(x.device)].to(self.device, torch.float32) for name, x in sets.items()}
        settings = [(lr, wd) for lr in self.learning_rates for wd in self.weight_decays]
        metric = "val_top1" if task == "classification" else "val_r2"
        all_rows = torch.arange(keep.numel())
        self.grid = []
        if len(sets) * len(settings) == 1:
            # Nothing to choose between: no validation split, train on everything.
            y, self._target_scaler = self._prepare_targets(targets, all_rows)
            (name, x), (lr, wd) = next(iter(sets.items())), settings[0]
            self._head = self._train_one(x, y, lr, wd, num_outputs)
            self.grid = [{"features": name, "lr": lr, "weight_decay": wd, metric: None}]
            self.selected = {**self.grid[0], "refit": False, "train_samples": keep.numel(), "val_samples": 0}
            return self
        try:
            if task == "classification":
                train_rows, val_rows = train_val_split(targets, self.val_fraction, self.seed)
            else:
                train_rows, val_rows = random_split(keep.numel(), self.val_fraction, self.seed)
        except DataError as error:
            raise DataError(
                f"{error}; or give a single learning rate and weight decay (no selection needed)"
            ) from None
        y, target_scaler = self._prepare_targets(targets, train_rows)
        best: tuple[float, int, tuple[Standardizer, Tensor, Tensor]] | None = None
        for name, x in sets.items():
            scaler, weight, bias = self._train(x[train_rows], y[train_rows], settings, num_outputs)
            values = self._val_metrics(scaler, weight, bias, x[val_rows], y[val_rows])
            for j, ((lr, wd), value) in enumerate(zip(settings, values)):
                self.grid.append({"features": name, "lr": lr, "weight_decay": wd, metric: value})
                if value is not None and (best is None or value > best[0]):  # ties: the earlier entry
                    best = (value, len(self.grid) - 1, (scaler, weight[:, j].clone(), bias[j].clone()))
        if best is None:
            raise DataError("every linear head diverged; give smaller learning_rates")
        chosen = self.grid[best[1]]
        self.selected = {
            **chosen,
            "refit": self.refit,
            "train_samples": keep.numel() if self.refit else train_rows.numel(),
            "val_samples": val_rows.numel(),
        }
        if self.refit:
            y, target_scaler = self._prepare_targets(targets, all_rows)
            x = sets[str(chosen["features"])]
            self._head = self._train_one(
                x, y, float(chosen["lr"]), float(chosen["weight_decay"]), num_outputs
            )
        else:
            self._head = best[2]
        self._target_scaler = target_scaler
        return self

    def _train_one(
        self, x: Tensor, y: Tensor, lr: float, wd: float, num_outputs: int
    ) -> tuple[Standardizer, Tensor, Tensor]:
        scaler, weight, bias = self._train(x, y, [(lr, wd)], num_outputs)
        if not (bool(torch.isfinite(weight).all()) and bool(torch.isfinite(bias).all())):
            raise DataError(f"the linear head diverged with lr={lr}; give a smaller learning rate")
        return scaler, weight[:, 0], bias[0]

    # --- inference ------------------------------------------------------------------------

    def _select_features(self, features: FeatureInput) -> Tensor:
        if self._head is None:
            raise RuntimeError("LinearProbe used before fit")
        name = str(self.selected["features"])
        if isinstance(features, Tensor):
            if not (self._input_was_tensor or self._single_set):
                raise ValueError(
                    f"the probe was fitted on several feature sets and selected {name!r}; pass the "
                    "same {name: features} mapping (or at least that entry)"
                )
            x = features
        else:
            if name not in features:
                raise ValueError(
                    f"feature set {name!r} (selected on validation) is missing; got {sorted(features)}"
                )
            x = features[name]
        x = _feature_sets({name: x})[name]
        width = self._head[1].shape[0]
        if x.shape[1] != width:
            raise ValueError(
                f"feature set {name!r} has width {x.shape[1]}, but the probe was fitted on {width}"
            )
        return x.to(self.device, torch.float32)

    @torch.no_grad()
    def scores(self, features: FeatureInput) -> Tensor:
        """``(M, K)`` float32 outputs of the selected head on the CPU: class logits
        (classification) or standardized-then-restored predictions (regression)."""
        x = self._select_features(features)
        scaler, weight, bias = self._head  # type: ignore[misc]
        out = torch.addmm(bias.unsqueeze(0), scaler(x), weight)
        if self._target_scaler is not None:
            out = out * self._target_scaler.scale.to(out) + self._target_scaler.mean.to(out)
        return out.cpu()

    @torch.no_grad()
    def predict(self, features: FeatureInput) -> Tensor:
        """``(M,)`` int64 classes (ties to the lower class), or ``(M,)`` / ``(M, K)`` float predictions."""
        out = self.scores(features)
        if self._fitted_task == "classification":
            return topk_pred(out)
        return out.squeeze(1) if self._target_ndim == 1 else out

    @torch.no_grad()
    def evaluate(self, features: FeatureInput, labels: Tensor) -> dict[str, float]:
        """Classification: ``{"top1", "top5" (C > 5), "balanced_accuracy"}`` in % over the samples
        labelled != -1 (a class never seen in training counts as an error, with score below all);
        regression: ``{"r2", "rmse"}``."""
        out = self.scores(features)
        m = out.shape[0]
        if self._fitted_task == "regression":
            if not isinstance(labels, Tensor) or labels.shape[:1] != (m,) or labels.ndim > 2:
                raise ValueError(f"labels must be ({m},) or ({m}, K) targets, got {tuple(labels.shape)}")
            targets = labels.double().reshape(m, -1)
            if targets.shape[1] != out.shape[1]:
                raise ValueError(f"targets have {targets.shape[1]} outputs, the probe {out.shape[1]}")
            return regression_metrics(out.double(), targets)
        if not isinstance(labels, Tensor) or labels.shape != (m,) or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be ({m},) integers (-1 = unlabeled), got {tuple(labels.shape)}")
        labels = labels.long().cpu()
        keep = labels != UNKNOWN_LABEL
        if not bool(keep.any()):
            raise DataError("LinearProbe.evaluate needs labelled test samples, but every label is -1")
        if int(labels.min()) < UNKNOWN_LABEL:
            raise ValueError(f"labels contain {int(labels.min())}; classes are >= 0, or -1 for unlabeled")
        out, target = out[keep], labels[keep]
        num_classes = max(self.num_classes, int(target.max()) + 1)
        if num_classes > out.shape[1]:  # classes the head never saw: scored below every trained class
            pad = out.new_full((out.shape[0], num_classes - out.shape[1]), float(out.min()) - 1.0)
            out = torch.cat([out, pad], dim=1)
        self.last_predictions = topk_pred(out)
        self.last_confusion = confusion_matrix(self.last_predictions, target, num_classes)
        return classification_metrics(out, target, num_classes)


__all__ = [
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_WEIGHT_DECAYS",
    "LinearProbe",
    "Standardizer",
    "epoch_batches",
    "train_linear_heads",
]
