"""Contrastive losses as pure functions: SimCLR's NT-Xent.

No state and no communication: a caller that trains on several processes gathers the candidates
itself (``selfsup.dist.all_gather_with_grad``) and passes them in with this rank's ``offset``.
Computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64) with autocast switched off inside,
because a softmax over thousands of candidates at temperature 0.1 loses too much in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / ||x||`` along the last dimension, as the authors' code does it.

    ``x · rsqrt(max(Σx², eps))``: the formula of TensorFlow's ``tf.math.l2_normalize`` (SimCLR) and of
    BYOL's ``helpers.l2_normalize``; the floor sits on the squared norm, so tiny vectors differ from
    ``F.normalize`` (which floors the norm itself).
    """
    return x * torch.rsqrt(x.square().sum(dim=-1, keepdim=True).clamp_min(eps))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a loss is computed in: fp32 for half-precision inputs, float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


def check_embeddings(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    """Raise a clear error unless ``a`` and ``b`` are floating ``(B, D)`` tensors of one shape, B ≥ 1."""
    for t, name in zip((a, b), names):
        if t.ndim != 2:
            raise ValueError(
                f"{name} must be (B, D) embeddings, got shape {tuple(t.shape)}; flatten or pool first"
            )
        if not torch.is_floating_point(t):
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{names[0]} is an empty batch")


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al., 2020, eq. 1).

    Args:
        z1, z2: ``(B, D)`` projections of the two views of this process's ``B`` samples; L2-normalized
            here. Row ``i`` of ``z1`` and row ``i`` of ``z2`` come from the same sample.
        temperature: ``τ > 0``; logits are cosine similarities divided by ``τ``.
        z1_all, z2_all: ``(N, D)`` the global batch gathered from all processes *with gradients*, in rank
            order (``N = W·B``); default ``z1``, ``z2`` (one process, ``N = B``).
        offset: index of this process's first sample in ``z1_all``/``z2_all`` (``rank · B``).

    Returns:
        Scalar loss in fp32 (float64 for float64 inputs): the mean cross-entropy over the ``2B``
        local anchors. Anchor ``z1[i]`` is scored against the ``2N`` candidates ``[z1_all; z2_all]``
        without itself (``z1_all[offset+i]``): its positive is ``z2_all[offset+i]`` and the other
        ``2N - 2`` are negatives; symmetrically for ``z2[i]``.

    With ``offset = rank · B`` the mean over ranks of the per-rank losses equals the single-process
    loss on the global batch, and (with ``all_gather_with_grad``) DDP's averaged gradient equals the
    single-process gradient.

    Relation to the authors' code (google-research/simclr ``objective.py``, ``add_contrastive_loss``):
    the same logits (they mask the anchor by subtracting 1e9, we by ``-inf``; both give it zero
    weight) and the same normalization (``tf.math.l2_normalize``), but they return
    ``loss_a + loss_b``, the *sum* of the two directions' means over the local batch, which is
    ``2 ×`` our mean over the ``2B`` anchors. Gradients are therefore half of theirs: LARS normalizes
    the step size away, but weight decay then weighs twice as much against the loss gradient
    (multiply the loss by 2 to reproduce their runs exactly). Their ``run.py`` defaults to
    ``τ = 0.1`` (ImageNet); the default here is 0.5.
    """
    check_embeddings(z1, z2, ("z1", "z2"))
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    temperature = float(temperature)
    batch = z1.shape[0]
    if (z1_all is None) != (z2_all is None):
        raise ValueError("pass both z1_all and z2_all (the gathered global batch) or neither")
    if z1_all is None or z2_all is None:
        if offset != 0:
            raise ValueError(f"offset={offset} needs z1_all and z2_all (the gathered global batch)")
    else:
        check_embeddings(z1_all, z2_all, ("z1_all", "z2_all"))
        if z1_all.shape[1] != z1.shape[1]:
            raise ValueError(f"z1_all has dimension {z1_all.shape[1]} but z1 has {z1.shape[1]}")
        if not 0 <= offset <= z1_all.shape[0] - batch:
            raise ValueError(
                f"offset={offset} does not place {batch} local rows inside a global batch of "
                f"{z1_all.shape[0]}; use offset = rank * local_batch_size"
            )

    dtype = compute_dtype(z1)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchors = l2_normalize(torch.cat([z1, z2]).to(dtype))  # (2B, D)
        if z1_all is None or z2_all is None:
            candidates, total = anchors, batch
        else:
            candidates = l2_normalize(torch.cat([z1_all, z2_all]).to(dtype))  # (2N, D)
            total = z1_all.shape[0]
        logits = anchors @ candidates.T / temperature  # (2B, 2N)

        local = torch.arange(batch, device=z1.device) + offset
        self_column = torch.cat([local, local + total])  # where each anchor sits among the candidates
        positive_column = torch.cat([local + total, local])
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self.scatter_(1, self_column[:, None], True)
        logits = logits.masked_fill(is_self, float("-inf"))
        return F.cross_entropy(logits, positive_column)
