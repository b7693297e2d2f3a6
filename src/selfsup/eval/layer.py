"""Weighted-layer probe (SUPERB style) on cached per-layer features.

SUPERB (Yang et al. 2021, "SUPERB: Speech processing Universal PERformance Benchmark") freezes the
encoder and learns, per task, a softmax weighting of all its hidden states plus a light head. S3PRL's
``Featurizer`` (``s3prl/nn/upstream.py``, and ``upstream/interfaces.py`` before it) holds a weight
vector initialised to zeros; the features are ``sum_l softmax(w)_l * h_l``. Its ``normalize`` option
(layer norm of each hidden state before the sum) is off by default and, in its own words, "not used
in SUPERB to ensure the fidelity of each upstream's extracted representation", so there is no layer
norm here either.

Heads, as S3PRL's downstream models. Utterance level: the speaker-id, emotion and keyword-spotting
configs (``downstream/{voxceleb1,emotion,speech_commands}/config.yaml``) project the frames to
``projector_dim: 256``, mean-pool them per sample (``UtteranceLevel`` with ``MeanPooling``) and apply a
linear layer, with no activation in between: a linear map. Here the frames are mean-pooled per
sample and the head is a linear layer (default; that map without the rank-256 bottleneck) or a
one-hidden-layer ReLU MLP (``hidden_dim``, 256 as ``projector_dim``). Frame level
(``downstream/phone_linear``): the same head on every frame.

Deliberate differences, because this probe trains on cached features in seconds rather than on
audio for 30k–500k steps:

* Each layer is **standardised** per dimension with training statistics (``standardize=True``).
  Within a layer this is an affine change a linear head absorbs; across layers it removes scale,
  so the weights say which layer is informative rather than which is largest (ResNet stages or
  residual streams grow by orders of magnitude). ``standardize=False`` is S3PRL's exact featurizer.
* AdamW with a larger learning rate (3e-3 for the head) than SUPERB's Adam/AdamW at 1e-4 / 2e-4
  (``voxceleb1``, ``emotion``, ``speech_commands``, ``phone_linear`` configs), and a separate,
  larger one (``weights_lr``, 5e-2) for the layer logits, which must move by O(1) in a few hundred
  steps;
  no weight decay on the logits (it would pull them back to uniform). Gradients clipped to norm 1
  (SUPERB's ``gradient_clipping: 1``).
* Utterance-level frames are pooled *before* the weighted sum. The weighted sum and the mean are
  both linear, so ``mean_t(sum_l a_l h_lt) = sum_l a_l mean_t(h_lt)`` exactly; pooling once
  instead of every epoch is what makes large sets cheap.
* The training length is chosen on a validation split carved from the training data (SUPERB
  keeps the checkpoint best on ``dev``); the test set is never looked at before ``evaluate``.
* Cosine-decayed learning rate (DINOv2's linear evaluation; SUPERB's is constant), so the short run
  settles; at least ``min_steps`` (1000) steps however small the set.

Shapes: ``L`` hidden states of width ``D``; ``N`` samples; ``T`` frames of all samples concatenated
(:class:`~selfsup.eval.features.FrameFeatures`, from ``extract_features(..., layers=[...],
stack=True, pooling="none")``). Everything runs per mini-batch of samples: only a batch of
features is ever copied (gathered) at a time; the standardisation is folded into the weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.base import UNKNOWN_LABEL
from selfsup.errors import ConfigError, DataError
from selfsup.eval.base import PROBES
from selfsup.eval.features import FrameFeatures
from selfsup.eval.splits import random_split, train_val_split

LEVELS = ("auto", "utterance", "frame")
HEADS = ("linear", "mlp")


# --- pure functions -------------------------------------------------------------------------


def weighted_layer_sum(hidden: Tensor, logits: Tensor) -> Tensor:
    """S3PRL's featurizer: ``sum_l softmax(logits)_l * hidden[:, l]``.

    hidden ``(B, L, D)``, logits ``(L,)`` → ``(B, D)``.
    """
    if hidden.ndim != 3 or logits.shape != (hidden.shape[1],):
        raise ValueError(
            f"need hidden (B, L, D) and logits (L,), got {tuple(hidden.shape)}, {tuple(logits.shape)}"
        )
    return torch.einsum("bld,l->bd", hidden, logits.softmax(dim=0))


def frame_rows(offsets: Tensor, lengths: Tensor, samples: Tensor) -> Tensor:
    """Row indices ``(sum lengths[samples],)`` of the frames of ``samples`` ``(B,)``, sample after sample.

    offsets ``(N + 1,)`` and lengths ``(N,)`` as in :class:`FrameFeatures`.
    """
    counts = lengths[samples]
    starts = offsets[samples]
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    # Position within the batch minus the batch offset of each sample's first frame, plus its row.
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(total) + torch.repeat_interleave(starts - first, counts)


def mean_pool_frames(values: Tensor, lengths: Tensor, *, chunk: int = 256) -> Tensor:
    """Mean of each sample's frames: values ``(T, ...)`` and lengths ``(N,)`` → ``(N, ...)`` float32.

    The frames of sample ``i`` are rows ``offsets[i]:offsets[i + 1]``; a sample never sees another's
    frames. Samples with no frames give zeros. Works ``chunk`` samples at a time (slices, no copy of
    ``values``).
    """
    lengths = _check_lengths(lengths, values.shape[0])
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    out = torch.zeros((lengths.shape[0], *values.shape[1:]), dtype=torch.float32)
    for start in range(0, lengths.shape[0], chunk):
        end = min(start + chunk, lengths.shape[0])
        rows = values[int(offsets[start]) : int(offsets[end])].float()
        owner = torch.repeat_interleave(torch.arange(end - start), lengths[start:end])
        sums = torch.zeros((end - start, *values.shape[1:]), dtype=torch.float64)
        sums.index_add_(0, owner, rows.double())
        shape = (-1,) + (1,) * (values.ndim - 1)
        out[start:end] = (sums / lengths[start:end].clamp_min(1).view(shape)).float()
    return out


def plot_layer_weights(
    weights: Tensor | Sequence[float],
    path: str | Path,
    *,
    title: str = "weighted-layer probe",
    layers: Sequence[int | str] | None = None,
) -> Path:
    """Write a PNG bar chart of the softmax layer weights ``(L,)`` (dashed line: uniform ``1/L``); the
    same drawing as the report's (:func:`selfsup.report.plots.plot_layer_weights`)."""
    from selfsup.report.plots import plot_layer_weights as draw

    values = [float(w) for w in (weights.tolist() if isinstance(weights, Tensor) else weights)]
    if not values:
        raise ValueError("no layer weights to plot")
    written = draw(values, layers, Path(path), title)
    assert written is not None
    return written


# --- inputs -------------------------------------------------------------------------------


def _check_lengths(lengths: Tensor, total: int) -> Tensor:
    if lengths.ndim != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise DataError(f"lengths must be (N,) integers, got {tuple(lengths.shape)} {lengths.dtype}")
    lengths = lengths.long().cpu()
    if lengths.numel() and int(lengths.min()) < 0:
        raise DataError("lengths must be >= 0")
    if int(lengths.sum()) != total:
        raise DataError(
            f"the lengths sum to {int(lengths.sum())} frames but the features have {total} rows; "
            "pass the FrameFeatures that extract_features returned, unmodified"
        )
    return lengths


def _as_layers(name: str, values: Tensor) -> Tensor:
    """``(R, L, D)`` floating features; ``(R, D)`` is one layer."""
    if not isinstance(values, Tensor) or not torch.is_floating_point(values) or values.ndim not in (2, 3):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise DataError(
            f"{name} must be (N, L, D) floating-point features (extract_features(..., layers=[...], "
            f"stack=True)), (N, D) for one layer, or FrameFeatures; got {shape}"
        )
    return values.unsqueeze(1) if values.ndim == 2 else values


def _check_labels(labels: Tensor, rows: int, what: str) -> Tensor:
    if (
        not isinstance(labels, Tensor)
        or labels.ndim != 1
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
    ):
        raise DataError(f"labels must be a 1-D integer tensor (-1 = unknown), got {labels!r:.80}")
    if labels.shape[0] != rows:
        raise DataError(f"labels has {labels.shape[0]} entries but there are {rows} {what}")
    labels = labels.long().cpu()
    if labels.numel() and int(labels.min()) < UNKNOWN_LABEL:
        raise DataError(f"labels contain {int(labels.min())}; labels are >= 0, or -1 for unknown")
    return labels


@dataclass
class _Rows:
    """Features as rows ``values`` ``(R, L, D)`` with ``labels`` ``(R,)``; sample ``i`` owns rows
    ``offsets[i]:offsets[i + 1]`` (one row per sample at utterance level)."""

    values: Tensor
    labels: Tensor
    lengths: Tensor | None  # None: one row per sample

    def __post_init__(self) -> None:
        lengths = self.lengths
        self.offsets = None if lengths is None else torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])

    @property
    def num_samples(self) -> int:
        return self.values.shape[0] if self.lengths is None else self.lengths.shape[0]

    def rows(self, samples: Tensor) -> Tensor:
        if self.lengths is None or self.offsets is None:
            return samples
        return frame_rows(self.offsets, self.lengths, samples)

    def labelled_samples(self) -> Tensor:
        """Samples with at least one labelled row."""
        known = (self.labels != UNKNOWN_LABEL).long()
        if self.lengths is None:
            return torch.nonzero(known).flatten()
        owner = torch.repeat_interleave(torch.arange(self.lengths.shape[0]), self.lengths)
        per_sample = torch.zeros(self.lengths.shape[0], dtype=torch.long).index_add_(0, owner, known)
        return torch.nonzero(per_sample).flatten()


def _resolve(features: Tensor | FrameFeatures, labels: Tensor, level: str) -> tuple[_Rows, str]:
    """Turn the caller's features into rows at the asked (or inferred) level."""
    if not isinstance(features, FrameFeatures):
        values = _as_layers("features", features)
        if level == "frame":
            raise DataError("a frame-level probe needs FrameFeatures (extract_features(..., pooling='none'))")
        return _Rows(values, _check_labels(labels, values.shape[0], "samples"), None), "utterance"
    if isinstance(features.values, dict):
        raise DataError(
            "FrameFeatures holds one tensor per layer; extract with stack=True to get (T, L, D) frames"
        )
    values = _as_layers("FrameFeatures.values", features.values)
    lengths = _check_lengths(features.lengths, values.shape[0])
    n, t = lengths.shape[0], values.shape[0]
    if not isinstance(labels, Tensor) or labels.ndim != 1:
        raise DataError(f"labels must be (N,) per sample or (T,) per frame, got {labels!r:.80}")
    if level == "auto":
        if labels.shape[0] not in (n, t):
            raise DataError(
                f"labels has {labels.shape[0]} entries: give one per sample ({n}) or one per frame ({t})"
            )
        if n == t and not bool((lengths == 1).all()):
            raise ConfigError(
                f"{n} labels fit both {n} samples and {t} frames; say level='utterance' or level='frame'"
            )
        level = "utterance" if labels.shape[0] == n else "frame"
    if level == "utterance":
        # Pooling before the weighted sum equals pooling after it (both are linear): done once here.
        labels = _check_labels(labels, n, "samples (one label per sample at utterance level)")
        return _Rows(mean_pool_frames(values, lengths), labels, None), level
    labels = _check_labels(labels, t, "frames (one label per frame at frame level)")
    return _Rows(values, labels, lengths), level


# --- model --------------------------------------------------------------------------------


class _LayerProbe(nn.Module):
    """Softmax layer weights (zeros at init, as S3PRL) then a linear or MLP head, on raw ``(B, L, D)``.

    The standardisation is folded into the weighted sum: ``sum_l a_l (x_l - mu_l) / s_l =
    sum_l (a_l / s_l) x_l - sum_l (a_l / s_l) mu_l``, so a batch is read once forward and once
    backward and never rewritten (equal to :func:`weighted_layer_sum` on standardised rows).
    """

    def __init__(self, mean: Tensor, inv_std: Tensor, num_classes: int, head: str, hidden_dim: int) -> None:
        super().__init__()
        num_layers, dim = mean.shape
        self.register_buffer("mean", mean.clone())
        self.register_buffer("inv_std", inv_std.clone())
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        if head == "linear":
            linear = nn.Linear(dim, num_classes)
            # DINOv2's LinearClassifier initialisation: N(0, 0.01) weights, zero bias.
            nn.init.normal_(linear.weight, std=0.01)
            nn.init.zeros_(linear.bias)
            self.head: nn.Module = linear
        else:
            self.head = nn.Sequential(
                nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_classes)
            )

    def mix(self, hidden: Tensor) -> Tensor:
        """``(B, L, D)`` raw features → ``(B, D)`` weighted sum of the standardised layers."""
        scale = self.layer_logits.softmax(dim=0).unsqueeze(1) * self.inv_std  # (L, D)
        return (hidden * scale).sum(dim=1) - (scale * self.mean).sum(dim=0)

    def forward(self, hidden: Tensor) -> Tensor:
        if not isinstance(self.head, nn.Linear):
            return self.head(self.mix(hidden))
        # Linear head: fold the layer weights, the standardisation and the head into one
        # (L * D, C) matrix, so a batch costs one GEMM forward and one backward (same result as
        # head(mix(hidden)), about twice as fast for L = 25, D = 1024 as the elementwise sum).
        scale = self.layer_logits.softmax(dim=0).unsqueeze(1) * self.inv_std  # (L, D)
        weight = self.head.weight  # (C, D)
        folded = (scale.unsqueeze(2) * weight.T.unsqueeze(0)).flatten(0, 1)  # (L * D, C)
        bias = self.head.bias - weight @ (scale * self.mean).sum(dim=0)
        return hidden.flatten(1) @ folded + bias


def _layer_statistics(source: _Rows, samples: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Per-(layer, dimension) mean and ``1 / std`` ``(L, D)`` of the rows of ``samples``.

    One pass, a batch at a time: each batch's mean and centred sum of squares in float32, merged
    in float64 with Chan et al.'s pairwise update, so no ``E[x^2] - E[x]^2`` cancellation.
    """
    _, num_layers, dim = source.values.shape
    mean = torch.zeros(num_layers, dim, dtype=torch.float64)
    square = torch.zeros(num_layers, dim, dtype=torch.float64)
    count = 0
    for chunk in _chunks(samples, batch):
        rows = source.values.index_select(0, source.rows(chunk).to(source.values.device)).float().cpu()
        if rows.shape[0] == 0:
            continue
        if not bool(torch.isfinite(rows).all()):
            raise DataError("the features contain NaN or infinite values; check the encoder output")
        m = rows.shape[0]
        chunk_mean = rows.mean(dim=0)
        chunk_square = rows.sub_(chunk_mean).square_().sum(dim=0).double()
        delta = chunk_mean.double() - mean
        total = count + m
        mean += delta * (m / total)
        square += chunk_square + delta.square() * (count * m / total)
        count = total
    std = (square / max(count, 1)).sqrt()
    # A constant dimension carries nothing: leave it centred (zero) instead of dividing by 0.
    inv_std = torch.where(std > 1e-8, 1.0 / std, torch.ones_like(std))
    return mean.float(), inv_std.float()


@dataclass(frozen=True)
class _Schedule:
    """Learning-rate factor at step ``n`` of ``total``: half a cosine from 1 to 0, or constant 1."""

    total: int
    cosine: bool

    def __call__(self, n: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(n, self.total) / self.total)) if self.cosine else 1.0


def _chunks(samples: Tensor, size: int) -> Iterator[Tensor]:
    for start in range(0, samples.shape[0], size):
        yield samples[start : start + size]


# --- the probe ----------------------------------------------------------------------------


@PROBES.register("layer")
class WeightedLayerProbe:
    """SUPERB-style weighted-layer probe: softmax weights over ``L`` hidden states and a light head.

    ``fit(features, labels)`` with ``features`` ``(N, L, D)`` (pooled per layer) and labels ``(N,)``, or
    :class:`FrameFeatures` ``(T, L, D)`` with labels ``(N,)`` (utterance level: frames mean-pooled per
    sample) or ``(T,)`` (frame level: the head classifies every frame). ``evaluate`` returns
    ``{"top1": %, "top5": %}`` (top-5 only with more than 5 classes) over rows whose label is not -1;
    ``layer_weights`` is the learned softmax ``(L,)``. See the module docstring for the protocol.

    Options: ``level`` "auto" (from the labels' length) | "utterance" | "frame"; ``head`` "linear" |
    "mlp" (one hidden layer of ``hidden_dim``); ``epochs`` over the training samples in batches of
    ``batch_size`` samples (a sample's frames stay in its batch), but at least ``min_steps`` steps
    (small sets); AdamW with ``lr`` / ``weight_decay`` for the head and ``weights_lr`` for the layer
    logits, cosine-decayed (``cosine``); ``val_fraction`` of the training samples (stratified at
    utterance level, whole samples at frame level) held out and scored ``epochs`` times, evenly
    spaced, the best state kept (0 = train on everything, keep the last); ``patience`` scorings
    without improvement before stopping (None = never); ``standardize`` each layer with training
    statistics; ``seed`` fixes the initialisation, the split and the batch order; ``layers`` names
    the L hidden states (encoder layer indices) in the summary and the plot; ``device`` where the
    batches are computed (the features stay where they are).
    """

    def __init__(
        self,
        *,
        level: str = "auto",
        head: str = "linear",
        hidden_dim: int = 256,
        epochs: int = 20,
        min_steps: int = 1000,
        batch_size: int = 256,
        lr: float = 3e-3,
        weights_lr: float = 5e-2,
        weight_decay: float = 1e-4,
        val_fraction: float = 0.1,
        patience: int | None = None,
        standardize: bool = True,
        cosine: bool = True,
        seed: int = 0,
        device: str = "cpu",
        layers: Sequence[int] | None = None,
    ) -> None:
        if level not in LEVELS:
            raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        if head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        for name, value in (("hidden_dim", hidden_dim), ("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
            raise ConfigError(f"min_steps must be an integer >= 0, got {min_steps!r}")
        for name, value in (("lr", lr), ("weights_lr", weights_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
            raise ConfigError(
                f"val_fraction must be in [0, 1) (0 = no validation split), got {val_fraction!r}"
            )
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ConfigError(f"patience must be a positive integer or None, got {patience!r}")
        if patience is not None and val_fraction == 0:
            raise ConfigError("early stopping (patience) needs a validation split: set val_fraction > 0")
        self.level = level
        self.head = head
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.lr = float(lr)
        self.weights_lr = float(weights_lr)
        self.weight_decay = float(weight_decay)
        self.val_fraction = float(val_fraction)
        self.patience = patience
        self.standardize = bool(standardize)
        self.cosine = bool(cosine)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.layers = None if layers is None else [int(x) for x in layers]
        self.model: _LayerProbe | None = None
        self.fitted_level: str | None = None
        self.num_classes = 0
        self.history: list[dict[str, float]] = []
        self.best_step = 0

    # -- public API -------------------------------------------------------------------------

    @property
    def layer_weights(self) -> Tensor:
        """The learned softmax weights over the hidden states, ``(L,)`` (sums to 1)."""
        model = self._fitted()
        return model.layer_logits.detach().softmax(dim=0).cpu()

    def fit(self, features: Tensor | FrameFeatures, labels: Tensor) -> WeightedLayerProbe:
        """Train the layer weights and the head on ``features`` / ``labels`` (shapes: class docstring)."""
        source, level = _resolve(features, labels, self.level)
        if self.layers is not None and len(self.layers) != source.values.shape[1]:
            raise ConfigError(
                f"layers names {len(self.layers)} hidden states, the features have {source.values.shape[1]}"
            )
        samples = source.labelled_samples()
        if samples.numel() == 0:
            raise DataError("WeightedLayerProbe.fit needs labelled samples, but every label is -1 (unknown)")
        train, val = self._split(source, samples, level)
        self.num_classes = int(source.labels.max()) + 1
        _, num_layers, dim = source.values.shape
        if self.standardize:
            mean, inv_std = _layer_statistics(source, train, self.batch_size)
        else:
            mean, inv_std = torch.zeros(num_layers, dim), torch.ones(num_layers, dim)
        self.fitted_level = level
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(self.seed)
            model = _LayerProbe(mean, inv_std, self.num_classes, self.head, self.hidden_dim)
        self.model = model.to(self.device)
        self._train(source, train, val)
        return self

    @torch.no_grad()
    def evaluate(self, features: Tensor | FrameFeatures, labels: Tensor) -> dict[str, float]:
        """Top-1 (and, with more than 5 classes, top-5) accuracy in % over rows labelled != -1."""
        source = self._test_rows(features, labels)
        known = int((source.labels != UNKNOWN_LABEL).sum())
        if known == 0:
            raise DataError(
                "WeightedLayerProbe.evaluate needs labelled samples, but every label is -1 (unknown)"
            )
        hits1, hits5, _ = self._score(source, torch.arange(source.num_samples))
        metrics = {"top1": 100.0 * hits1 / known}
        if self.num_classes > 5:
            metrics["top5"] = 100.0 * hits5 / known
        return metrics

    @torch.no_grad()
    def predict(self, features: Tensor | FrameFeatures) -> Tensor:
        """Predicted classes: ``(N,)`` per sample at utterance level, ``(T,)`` per frame at frame level."""
        model = self._fitted()
        if isinstance(features, FrameFeatures) and self.fitted_level == "utterance":
            rows = features.lengths.shape[0]
        else:
            rows = features.values.shape[0] if isinstance(features, FrameFeatures) else features.shape[0]
        source = self._test_rows(features, torch.zeros(rows, dtype=torch.long))
        out = torch.empty(source.values.shape[0], dtype=torch.long)
        for chunk in _chunks(torch.arange(source.num_samples), self.batch_size * 4):
            index = source.rows(chunk)
            out[index] = model(self._batch(source, index)).argmax(dim=1).cpu()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: the layer weights, the settings, the validation curve and the chosen step."""
        weights = self.layer_weights.tolist()
        return {
            "protocol": "layer",
            "level": self.fitted_level,
            "layer_weights": weights,
            "layers": self.layers if self.layers is not None else list(range(len(weights))),
            "num_classes": self.num_classes,
            "best_step": self.best_step,
            "history": [dict(row) for row in self.history],
            "settings": {
                "head": self.head,
                "hidden_dim": self.hidden_dim,
                "epochs": self.epochs,
                "min_steps": self.min_steps,
                "batch_size": self.batch_size,
                "optimizer": "AdamW",
                "lr": self.lr,
                "weights_lr": self.weights_lr,
                "weight_decay": self.weight_decay,
                "val_fraction": self.val_fraction,
                "patience": self.patience,
                "standardize": self.standardize,
                "cosine": self.cosine,
                "seed": self.seed,
            },
        }

    # -- internals --------------------------------------------------------------------------

    def _fitted(self) -> _LayerProbe:
        if self.model is None:
            raise RuntimeError("WeightedLayerProbe used before fit")
        return self.model

    def _split(self, source: _Rows, samples: Tensor, level: str) -> tuple[Tensor, Tensor]:
        if self.val_fraction == 0:
            return samples, samples[:0]
        try:
            if level == "utterance":
                return train_val_split(source.labels, self.val_fraction, seed=self.seed)
            train, val = random_split(samples.shape[0], self.val_fraction, seed=self.seed)  # whole samples
        except DataError as error:
            raise DataError(f"{error} (or set val_fraction=0 to train on every sample)") from None
        return samples[train], samples[val]

    def _test_rows(self, features: Tensor | FrameFeatures, labels: Tensor) -> _Rows:
        model = self._fitted()
        level = self.fitted_level or "utterance"
        if level == "frame" and not isinstance(features, FrameFeatures):
            raise DataError(
                "this probe was fitted at frame level: evaluate it on FrameFeatures with (T,) labels"
            )
        source, _ = _resolve(features, labels, level)
        expected = tuple(model.mean.shape)
        if tuple(source.values.shape[1:]) != expected:
            raise DataError(
                f"the probe was fitted on (L, D) = {expected} features, got {tuple(source.values.shape[1:])}"
            )
        return source

    def _batch(self, source: _Rows, rows: Tensor) -> Tensor:
        rows = rows.to(source.values.device)
        return source.values.index_select(0, rows).to(device=self.device, dtype=torch.float32)

    def _optimizer(self, model: _LayerProbe) -> torch.optim.AdamW:
        matrices = [p for p in model.head.parameters() if p.ndim > 1]
        vectors = [p for p in model.head.parameters() if p.ndim <= 1]
        return torch.optim.AdamW(
            [
                # No decay on the layer logits (it would pull the weights back to uniform) nor biases.
                {"params": [model.layer_logits], "lr": self.weights_lr, "weight_decay": 0.0},
                {"params": matrices, "lr": self.lr, "weight_decay": self.weight_decay},
                {"params": vectors, "lr": self.lr, "weight_decay": 0.0},
            ]
        )

    def _batches(self, train: Tensor) -> Iterator[Tensor]:
        """Mini-batches of training samples, one seeded permutation after another."""
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield from _chunks(train[torch.randperm(train.shape[0], generator=generator)], self.batch_size)

    def _train(self, source: _Rows, train: Tensor, val: Tensor) -> None:
        """``max(epochs x steps per epoch, min_steps)`` AdamW steps, validated ``epochs`` times (evenly
        spaced), keeping the state that was best on validation."""
        model = self._fitted()
        optimizer = self._optimizer(model)
        per_epoch = math.ceil(train.shape[0] / self.batch_size)
        # Small sets make short epochs: run at least min_steps steps so that the head converges,
        # and still validate only `epochs` times.
        total = max(self.epochs * per_epoch, self.min_steps)
        ends = [math.ceil(total * k / self.epochs) for k in range(1, self.epochs + 1)]
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(total, self.cosine))
        batches = self._batches(train)
        self.history, self.best_step = [], 0
        best: tuple[float, float] | None = None
        best_state: dict[str, Tensor] | None = None
        stale = done = 0
        for end in ends:
            model.train()
            loss_sum, rows_seen = 0.0, 0
            for _ in range(end - done):
                index = source.rows(next(batches))
                targets = source.labels[index].to(self.device)
                labelled = int((targets != UNKNOWN_LABEL).sum())
                if labelled:  # a batch of frames that are all unknown still counts as a step
                    logits = model(self._batch(source, index))
                    loss = F.cross_entropy(logits, targets, ignore_index=UNKNOWN_LABEL)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # SUPERB's gradient_clipping: 1
                    optimizer.step()
                    loss_sum += float(loss.detach()) * labelled
                    rows_seen += labelled
                schedule.step()
            done = end
            row = {"step": end, "epoch": end / per_epoch, "train_loss": loss_sum / max(rows_seen, 1)}
            if val.numel():
                row.update(self._validate(source, val))
                # Best validation accuracy; equal accuracy goes to the lower validation loss.
                key = (row["val_top1"], -row["val_loss"])
                if best is None or key > best:
                    best, best_state, self.best_step, stale = key, copy.deepcopy(model.state_dict()), end, 0
                else:
                    stale += 1
            else:
                self.best_step = end
            self.history.append(row)
            if self.patience is not None and stale >= self.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()

    def _validate(self, source: _Rows, val: Tensor) -> dict[str, float]:
        hits1, _, loss = self._score(source, val)
        known = max(int((source.labels[source.rows(val)] != UNKNOWN_LABEL).sum()), 1)
        return {"val_top1": 100.0 * hits1 / known, "val_loss": loss / known}

    @torch.no_grad()
    def _score(self, source: _Rows, samples: Tensor) -> tuple[int, int, float]:
        """(top-1 hits, top-5 hits, summed cross-entropy) over the labelled rows of ``samples``."""
        model = self._fitted()
        was_training = model.training
        model.eval()
        top = min(5, self.num_classes)
        hits1 = hits5 = 0
        loss = 0.0
        for chunk in _chunks(samples, self.batch_size * 4):
            index = source.rows(chunk)
            targets = source.labels[index].to(self.device)
            keep = targets != UNKNOWN_LABEL
            if not bool(keep.any()):
                continue
            logits = model(self._batch(source, index[keep.cpu()]))
            targets = targets[keep]
            ranked = logits.topk(top, dim=1).indices
            hits1 += int((ranked[:, 0] == targets).sum())
            hits5 += int((ranked == targets.unsqueeze(1)).any(dim=1).sum())
            inside = targets < self.num_classes  # a class unseen in training cannot be scored by the loss
            if bool(inside.any()):
                loss += float(F.cross_entropy(logits[inside], targets[inside], reduction="sum"))
        model.train(was_training)
        return hits1, hits5, loss


__all__ = [
    "HEADS",
    "LEVELS",
    "WeightedLayerProbe",
    "frame_rows",
    "mean_pool_frames",
    "plot_layer_weights",
    "weighted_layer_sum",
]
