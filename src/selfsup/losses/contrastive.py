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


def _check_temperature(temperature: float, name: str = "temperature") -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{name} must be a positive finite number, got {temperature!r}")
    return float(temperature)


def info_nce(
    q: Tensor,
    k: Tensor,
    queue: Tensor | None = None,
    temperature: float = 0.2,
    *,
    offset: int = 0,
) -> Tensor:
    """MoCo's query-key InfoNCE (He et al., 2020, eq. 1; Chen, Xie & He, 2021, MoCo v3).

    Two forms, chosen by ``queue``:

    * **With a queue** (MoCo v1/v2): ``q`` and ``k`` are ``(B, D)`` and aligned (``k[i]`` is the positive
      key of ``q[i]``); ``queue`` ``(K, D)`` holds the negatives. The logits of query ``i`` are
      ``[q̂_i·k̂_i, q̂_i·queue_1, ..., q̂_i·queue_K] / τ`` and the target is column 0.
    * **Without a queue** (MoCo v3): ``k`` is ``(N, D)``, the keys of the global batch gathered from all
      processes in rank order (``N >= B``; ``k = keys`` and ``offset = 0`` in one process). The positive of
      ``q[i]`` is ``k[offset + i]``, every other key is a negative: logits ``q̂ k̂ᵀ / τ`` ``(B, N)``.

    Args:
        q: ``(B, D)`` queries; L2-normalized here.
        k: ``(B, D)`` positive keys (with a queue) or ``(N, D)`` all keys (without); L2-normalized here.
            Gradients flow to ``q`` and ``k`` wherever they require them (MoCo's keys come from the
            momentum encoder without gradients; NNCLR's "keys" are its predictions, with gradients).
        queue: ``(K, D)`` negatives, used **as given**: their rows must already be unit vectors, as MoCo
            stores them (keys are normalized when enqueued, and the random initial queue is normalized
            once), so nothing is normalized twice. Detached here.
        temperature: ``τ > 0`` (MoCo v2 and the issue's default: 0.2).
        offset: without a queue, the index of this process's first query among the keys
            (``rank · B``); must be 0 with a queue.

    Returns:
        Scalar mean cross-entropy over the ``B`` queries, in fp32 (float64 for float64 inputs), with
        autocast off inside. With ``offset = rank · B`` and DDP's gradient average, N processes equal one
        process on the global batch (the keys carry no gradient in MoCo; NNCLR gathers its keys with
        ``selfsup.dist.all_gather_with_grad``).

    Relation to the authors' code: facebookresearch/moco ``moco/builder.py`` (``MoCo.forward``: logits
    ``[l_pos, l_neg] / T`` with ``F.normalize`` on q and k and the queue stored normalized) and
    facebookresearch/moco-v3 ``moco/builder.py`` (``contrastive_loss``). The latter returns
    ``CE · 2τ``; that factor is **not** applied here (the MoCo v3 method multiplies by it, as the authors
    do). We normalize with :func:`l2_normalize` (floor on the squared norm, as ``nt_xent``) where they use
    ``F.normalize`` (floor on the norm): equal except for vectors of norm below 1e-6.
    """
    temperature = _check_temperature(temperature)
    for t, name in ((q, "q"), (k, "k")):
        if t.ndim != 2:
            raise ValueError(f"{name} must be (rows, D) embeddings, got shape {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if q.shape[0] == 0:
        raise ValueError("q is an empty batch")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"k has dimension {k.shape[1]} but q has {q.shape[1]}")
    batch = q.shape[0]
    if queue is not None:
        if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"queue must be (K, {q.shape[1]}), got shape {tuple(queue.shape)}")
        if k.shape != q.shape:
            raise ValueError(
                f"with a queue, k must be aligned with q (the positive key of each query): got k "
                f"{tuple(k.shape)} for q {tuple(q.shape)}"
            )
        if offset != 0:
            raise ValueError(f"offset={offset} is only meaningful without a queue (MoCo v3's gathered keys)")
    elif not 0 <= offset <= k.shape[0] - batch:
        raise ValueError(
            f"offset={offset} does not place {batch} queries inside {k.shape[0]} keys; "
            "use offset = rank * local_batch_size"
        )

    dtype = compute_dtype(q)
    with torch.autocast(device_type=q.device.type, enabled=False):
        qn = l2_normalize(q.to(dtype))
        kn = l2_normalize(k.to(dtype))
        if queue is None:
            logits = qn @ kn.T / temperature  # (B, N)
            target = torch.arange(batch, device=q.device) + offset
        else:
            positive = (qn * kn).sum(dim=-1, keepdim=True)  # (B, 1)
            negative = qn @ queue.detach().to(dtype).T  # (B, K)
            logits = torch.cat([positive, negative], dim=1) / temperature
            target = torch.zeros(batch, dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target)


def dcl(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    *,
    weight_sigma: float | None = None,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Decoupled Contrastive Learning (Yeh et al., ECCV 2022, eq. 6): NT-Xent without the positive in
    the denominator; with ``weight_sigma``, DCLW's negative von Mises-Fisher weighting of the positive.

    For the anchor ``a = ẑ1_i`` (and symmetrically ``ẑ2_i``), with ``p = ẑ2_i`` its positive::

        ℓ(a) = -w_i · a·p / τ + log Σ_{c ∈ negatives(a)} exp(a·c / τ)

    where the negatives are the ``2N - 2`` candidates of ``[z1_all; z2_all]`` other than the anchor itself
    and its positive (NT-Xent's denominator also contains the positive). ``w_i = 1`` for DCL; for DCLW
    ``w_i = 2 - N · softmax_j(ẑ1_j·ẑ2_j / σ)_i`` over the ``N`` samples of the global batch (so the
    weights average to 1), **detached**: a per-sample coefficient, not an objective.

    Args:
        z1, z2: ``(B, D)`` projections of the two views of this process's samples; L2-normalized here.
        temperature: ``τ > 0``; 0.1 in the DCL paper's SimCLR experiments and lightly's default.
        weight_sigma: None for DCL; ``σ > 0`` for DCLW (0.5 in the paper).
        z1_all, z2_all, offset: the global batch gathered with gradients and this rank's offset, exactly as
            in :func:`nt_xent`.

    Returns:
        Scalar fp32 loss (float64 for float64 inputs): the mean of ``ℓ`` over the ``2B`` local anchors.
        It can be negative (no positive in the denominator).

    Relation to reference code (the paper's authors released none): lightly ``lightly/loss/dcl_loss.py``
    (``DCLLoss`` / ``DCLWLoss`` with ``negative_mises_fisher_weights``) returns ``0.5 · (loss0 + loss1)``,
    the same value and gradient as here in one process (it also detaches the weights). Under DDP it
    computes the DCLW weights over the local batch only; here they come from the global batch, so N
    processes equal one process. raminnakhli/Decoupled-Contrastive-Learning ``loss/dcl.py`` (which lightly
    follows) is called as ``l(z1, z2) + l(z2, z1)`` in its training script: twice our value, and its weight
    is not detached.
    """
    check_embeddings(z1, z2, ("z1", "z2"))
    temperature = _check_temperature(temperature)
    if weight_sigma is not None:
        weight_sigma = _check_temperature(weight_sigma, "weight_sigma")
    batch = z1.shape[0]
    if (z1_all is None) != (z2_all is None):
        raise ValueError("pass both z1_all and z2_all (the gathered global batch) or neither")
    if z1_all is None or z2_all is None:
        if offset != 0:
            raise ValueError(f"offset={offset} needs z1_all and z2_all (the gathered global batch)")
        z1_all, z2_all = z1, z2
    else:
        check_embeddings(z1_all, z2_all, ("z1_all", "z2_all"))
        if z1_all.shape[1] != z1.shape[1]:
            raise ValueError(f"z1_all has dimension {z1_all.shape[1]} but z1 has {z1.shape[1]}")
        if not 0 <= offset <= z1_all.shape[0] - batch:
            raise ValueError(
                f"offset={offset} does not place {batch} local rows inside a global batch of "
                f"{z1_all.shape[0]}; use offset = rank * local_batch_size"
            )
    total = z1_all.shape[0]
    if total < 2:
        raise ValueError("DCL needs at least 2 samples in the (global) batch: one has no negatives")

    dtype = compute_dtype(z1)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchors = l2_normalize(torch.cat([z1, z2]).to(dtype))  # (2B, D)
        candidates = l2_normalize(torch.cat([z1_all, z2_all]).to(dtype))  # (2N, D)
        logits = anchors @ candidates.T / temperature  # (2B, 2N)
        local = torch.arange(batch, device=z1.device) + offset
        self_column = torch.cat([local, local + total])
        positive_column = torch.cat([local + total, local])
        positive = logits.gather(1, positive_column[:, None]).squeeze(1)  # (2B,)
        excluded = torch.zeros_like(logits, dtype=torch.bool)
        excluded.scatter_(1, self_column[:, None], True)
        excluded.scatter_(1, positive_column[:, None], True)
        negative = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1)  # (2B,)
        if weight_sigma is not None:
            with torch.no_grad():
                n1, n2 = candidates[:total], candidates[total:]
                similarity = (n1 * n2).sum(dim=-1) / weight_sigma  # (N,)
                weights = 2.0 - total * torch.softmax(similarity, dim=0)
                weights = weights[local].repeat(2)
            positive = positive * weights
        return (negative - positive).mean()
