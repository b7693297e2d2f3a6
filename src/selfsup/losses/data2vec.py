"""data2vec's target construction and regression loss as pure functions (Baevski et al., ICML 2022).

The teacher's top-K layer outputs are each normalised, averaged, optionally normalised again, and the
student regresses that average at its masked positions. Every step here mirrors fairseq's
``examples/data2vec/models/data2vec_audio.py`` / ``data2vec_vision.py`` (``Data2VecAudioModel.forward``,
``compute_var``), with one deliberate difference: the instance norm over time excludes padded frames
from its statistics (:func:`instance_norm_over_time`). fairseq can ignore padding because its audio
pretraining batches crop every clip to the shortest one (``RawAudioDataset.collater`` with
``pad=False``), so nothing is padded; batches bucketed by duration here are padded, and padding must not
change a target.

All computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64) with autocast off, as fairseq
casts every target layer with ``.float()``. No state and no communication: a caller on several processes
all-reduces the moments itself (:func:`mean_std_from_moments`) and normalises the summed loss by the
global count (:func:`regression_loss` with ``normalizer``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import compute_dtype

__all__ = [
    "data2vec_regression",
    "data2vec_targets",
    "instance_norm_over_time",
    "mean_std",
    "mean_std_from_moments",
]


def instance_norm_over_time(x: Tensor, padding_mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of each sequence over its valid positions: ``(x - mean) / sqrt(var + eps)``.

    Args:
        x: ``(B, T, D)`` a layer's output.
        padding_mask: ``(B, T)`` bool, True at padded positions (None: nothing padded).
        eps: added to the variance (``F.instance_norm``'s default 1e-5, which fairseq uses).

    Returns:
        ``(B, T, D)`` in fp32 (float64 for float64 input); padded positions are 0.

    Without padding this is exactly fairseq's ``F.instance_norm(tl.permute(1, 2, 0))`` (per sample and
    channel, biased variance over time, no affine). With padding the mean and variance are taken over
    the valid positions only, so a clip's targets do not depend on how much its batch padded it.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (B, T, D), got shape {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(compute_dtype(x))
        if padding_mask is None:
            return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
        if padding_mask.shape != x.shape[:2]:
            raise ValueError(
                f"padding_mask must be {tuple(x.shape[:2])} for x of shape {tuple(x.shape)}, "
                f"got {tuple(padding_mask.shape)}"
            )
        keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        count = keep.sum(dim=1, keepdim=True).clamp_min(1.0)
        mean = (x * keep).sum(dim=1, keepdim=True) / count
        centred = (x - mean) * keep
        var = centred.square().sum(dim=1, keepdim=True) / count  # biased, as F.instance_norm
        return centred * torch.rsqrt(var + eps)


def data2vec_targets(
    layers: Sequence[Tensor],
    padding_mask: Tensor | None = None,
    *,
    instance_norm_target_layer: bool = True,
    layer_norm_target_layer: bool = False,
    instance_norm_targets: bool = False,
    layer_norm_targets: bool = False,
) -> Tensor:
    """data2vec's regression targets: the normalised average of the teacher's top-K layer outputs.

    Args:
        layers: K tensors ``(B, T, D)``, the teacher's top-K layer outputs (fairseq ``layer_results``).
        padding_mask: ``(B, T)`` bool, True at padded positions (excluded from the instance norms).
        instance_norm_target_layer: instance-normalise each layer over time first (audio: True).
        layer_norm_target_layer: then layer-normalise each layer over channels (text: True).
        instance_norm_targets: instance-normalise the average over time (fairseq option, off everywhere).
        layer_norm_targets: layer-normalise the average over channels (vision, data2vec v1: True).

    Returns:
        ``(B, T, D)`` targets, fp32 (float64 for float64 input), no gradient.

    The order is fairseq's: per layer instance norm then layer norm (no affine, eps 1e-5), the mean
    over layers, then ``layer_norm_targets``, then ``instance_norm_targets``. fairseq's
    ``batch_norm_target_layer`` and ``group_norm_target_layer`` (unused by its released configs) are
    not offered.
    """
    if not layers:
        raise ValueError("data2vec_targets needs at least one layer")
    shape = layers[0].shape
    if any(layer.shape != shape for layer in layers) or len(shape) != 3:
        shapes = [tuple(t.shape) for t in layers]
        raise ValueError(f"every layer must be (B, T, D) of one shape, got {shapes}")
    with torch.no_grad(), torch.autocast(device_type=layers[0].device.type, enabled=False):
        dtype = compute_dtype(layers[0])
        normed = []
        for layer in layers:
            y = layer.detach().to(dtype)
            if instance_norm_target_layer:
                y = instance_norm_over_time(y, padding_mask)
            if layer_norm_target_layer:
                y = F.layer_norm(y, y.shape[-1:])
            normed.append(y)
        target = torch.stack(normed).mean(dim=0)
        if layer_norm_targets:
            target = F.layer_norm(target, target.shape[-1:])
        if instance_norm_targets:
            target = instance_norm_over_time(target, padding_mask)
        return target


def data2vec_regression(
    pred: Tensor,
    target: Tensor,
    *,
    loss_beta: float = 0.0,
    loss_scale: float | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """data2vec's loss: squared error (or smooth L1) summed over dims, scaled, averaged over positions.

    Args:
        pred: ``(N, D)`` the regression head's outputs at the N masked, non-padded positions.
        target: ``(N, D)`` the targets at the same positions; detached here.
        loss_beta: 0 for the squared error (fairseq's audio default), ``> 0`` for
            ``F.smooth_l1_loss(beta=loss_beta)`` (vision data2vec v1 uses 2, text 4).
        loss_scale: multiplies the per-position loss; None means ``1 / sqrt(D)`` (fairseq's default).
        normalizer: what the summed loss is divided by (default N). Under data parallelism pass the
            global count over the world size, so that the average of the ranks' losses (what DDP
            optimises) is the sum over all ranks divided by the global count, as fairseq's trainer does.

    Returns:
        Scalar, fp32 (float64 for float64 input): ``scale · Σ_n Σ_d ℓ(pred, target) / normalizer``.

    fairseq returns ``loss.sum() * scale`` with ``sample_size = N``, and its trainer divides the gradient
    by the sample size (``optimizer.multiply_grads``) and logs ``loss_sum / sample_size``: that is this
    value, and its gradient. With N = 0 the loss is a zero that still depends on ``pred``.
    """
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must be (N, D) of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if not (math.isfinite(loss_beta) and loss_beta >= 0):
        raise ValueError(f"loss_beta must be >= 0, got {loss_beta}")
    scale = 1.0 / math.sqrt(pred.shape[1]) if loss_scale is None else float(loss_scale)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        dtype = compute_dtype(pred)
        p, t = pred.to(dtype), target.detach().to(dtype)
        if loss_beta == 0:
            per_position = F.mse_loss(p, t, reduction="none").sum(dim=-1)
        else:
            per_position = F.smooth_l1_loss(p, t, reduction="none", beta=loss_beta).sum(dim=-1)
        if normalizer is None:
            normalizer = float(max(pred.shape[0], 1))
        elif isinstance(normalizer, Tensor):
            normalizer = normalizer.to(dtype)  # a float64 count must not promote the loss to float64
        return per_position.sum() * scale / normalizer


def mean_std_from_moments(count: Tensor, total: Tensor, total_sq: Tensor, eps: float = 1e-6) -> Tensor:
    """fairseq's ``compute_var``: the mean over dimensions of ``sqrt(unbiased var + eps)``.

    Args:
        count: scalar, the number of rows N; total, total_sq: ``(D,)`` sums of the rows and of their squares
            (all-reduced over processes by the caller when distributed, as fairseq does).

    Returns:
        Scalar in float64; NaN when ``N < 2``. fairseq logs it as ``target_var`` / ``pred_var`` (it is a
        standard deviation despite the name) and stops training when it falls below a threshold.
    """
    n, s, ss = count.double().to(total.device), total.double(), total_sq.double()
    # No host synchronisation: N < 2 turns into NaN through torch.where rather than a Python branch.
    var = (ss - s.square() / n.clamp_min(1.0)) / (n - 1).clamp_min(1.0)
    std = torch.sqrt(var.clamp_min(0.0) + eps).mean()
    return torch.where(n >= 2, std, torch.full_like(std, float("nan")))


def mean_std(y: Tensor, eps: float = 1e-6) -> Tensor:
    """:func:`mean_std_from_moments` of the rows of ``y`` ``(N, D)`` on one process."""
    y = y.detach().double()
    return mean_std_from_moments(torch.tensor(y.shape[0]), y.sum(dim=0), y.square().sum(dim=0), eps)
