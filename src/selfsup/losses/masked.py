"""Masked image modelling losses as pure functions: MAE's pixel regression and I-JEPA's latent regression.

:func:`patchify` / :func:`unpatchify` convert images to MAE's per-patch pixel vectors and back. Every loss
is computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64) with autocast off; targets get no
gradient. No communication: a caller on several processes passes ``normalizer`` (e.g.
:func:`selfsup.dist.per_process_share` of the masked count) where ranks may hold different counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import compute_dtype

__all__ = ["ijepa", "mae", "patchify", "unpatchify"]


def patchify(images: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` → ``(B, (H/p)(W/p), p·p·C)``: patches in row-major order, each flattened as
    ``(p_row, p_col, channel)`` -- MAE's ``patchify`` (``models_mae.py``: ``nchpwq -> nhwpqc``), extended to
    any channel count and to non-square images."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, height, width = images.shape
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"image size {(height, width)} is not a multiple of the patch size {patch}")
    h, w = height // patch, width // patch
    x = images.reshape(b, c, h, patch, w, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, h * w, patch * patch * c)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int] | None = None, channels: int = 3) -> Tensor:
    """The inverse of :func:`patchify`: ``(B, h·w, p·p·C)`` → ``(B, C, h·p, w·p)`` (``grid = (h, w)``;
    None: square)."""
    if patches.ndim != 3:
        raise ValueError(f"patches must be (B, N, p*p*C), got shape {tuple(patches.shape)}")
    b, n, d = patches.shape
    if d != patch * patch * channels:
        raise ValueError(f"patch vectors have {d} values, expected {patch}*{patch}*{channels}")
    if grid is None:
        side = round(n**0.5)
        grid = (side, side)
    h, w = grid
    if h * w != n:
        raise ValueError(f"{n} patches do not form a {h}x{w} grid")
    x = patches.reshape(b, h, w, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, h * patch, w * patch)


def mae(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    norm_pix: bool = False,
    *,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """MAE's reconstruction loss (He et al., CVPR 2022): mean squared error per patch, averaged over the
    masked patches.

    Args:
        pred: ``(B, N, P)`` the decoder's pixel predictions for every patch.
        target: ``(B, N, P)`` the patchified input (:func:`patchify` of the normalised image, as MAE);
            detached.
        mask: ``(B, N)`` bool or 0/1, True (1) where a patch was masked: only those count.
        norm_pix: normalise each target patch by its own mean and variance first (MAE's ``norm_pix_loss``:
            unbiased variance, as ``Tensor.var``, plus 1e-6 under the square root).
        normalizer: what the masked sum is divided by (default: the number of masked patches here). Under
            data parallelism with unequal counts per rank, pass the global count over the world size.

    Returns:
        Scalar, fp32 (float64 for float64 input): ``Σ_masked mean_P (pred - target)² / normalizer``.

    As MAE's ``forward_loss`` (``models_mae.py``); the one difference is that a batch without masked
    patches gives 0 (theirs divides by zero).
    """
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must be (B, N, P) of one shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be (B, N) = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        dtype = compute_dtype(pred)
        p, t = pred.to(dtype), target.detach().to(dtype)
        if norm_pix:
            mean = t.mean(dim=-1, keepdim=True)
            var = t.var(dim=-1, keepdim=True)
            t = (t - mean) / (var + 1.0e-6) ** 0.5
        per_patch = (p - t).square().mean(dim=-1)  # (B, N)
        weight = mask.to(dtype)
        if normalizer is None:
            normalizer = weight.sum().clamp_min(1.0)
        elif isinstance(normalizer, Tensor):
            normalizer = normalizer.to(dtype)
        return (per_patch * weight).sum() / normalizer


def ijepa(pred: Tensor, target: Tensor) -> Tensor:
    """I-JEPA's loss (Assran et al., CVPR 2023): smooth L1 between the predictions and the layer-normalised
    target-encoder tokens, averaged over every element.

    Args:
        pred: ``(..., D)`` the predictor's outputs at the target patches (I-JEPA: ``(M·B, K, D)``).
        target: ``(..., D)`` the target encoder's output tokens at the same patches (before normalisation);
            detached here.

    Returns:
        Scalar, fp32 (float64 for float64 input).

    As I-JEPA's ``src/train.py``: ``forward_target`` normalises ``h`` with ``F.layer_norm(h, (D,))`` (no
    affine, eps 1e-5) -- per token, so before or after selecting the target patches is the same -- and
    ``loss_fn`` is ``F.smooth_l1_loss(z, h)`` (beta 1, mean over all target tokens and dimensions). Their
    ``AllReduce`` then averages the loss over ranks, which DDP's gradient average already does here.
    """
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(
            f"pred and target must be (..., D) of one shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    with torch.autocast(device_type=pred.device.type, enabled=False):
        dtype = compute_dtype(pred)
        t = target.detach().to(dtype)
        t = F.layer_norm(t, t.shape[-1:])
        return F.smooth_l1_loss(pred.to(dtype), t)
