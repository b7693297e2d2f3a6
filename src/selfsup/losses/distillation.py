"""Self-distillation losses as pure functions: DINO's cross-entropy and centering, DINOv2's KoLeo
regulariser and iBOT masked-patch loss.

No state and no communication. The caller keeps the center (a buffer updated once per optimizer step
with :func:`dino_center_update` from the *global* batch mean of the teacher's logits) and gathers what a
global statistic needs (KoLeo's nearest neighbours over the global batch, with gradients). The
cross-entropies are means over this process's samples, so DDP's gradient average is the global mean.
Computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64), autocast off: a softmax over 65,536
prototypes at temperature 0.04 loses too much in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import compute_dtype

__all__ = ["dino", "dino_center_update", "dino_cross_entropy", "ibot_patch", "koleo"]


def _check_temperature(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_crops(tensors: Sequence[Tensor], name: str) -> tuple[int, int]:
    """``(B, K)`` shared by every crop of ``tensors``; a clear error otherwise."""
    if isinstance(tensors, Tensor) or len(tensors) == 0:
        raise ValueError(f"{name} must be a non-empty list of per-crop (B, K) tensors")
    shape = None
    for i, t in enumerate(tensors):
        if t.ndim != 2 or t.shape[0] == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty (B, K) tensor, got shape {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise TypeError(f"{name}[{i}] must be floating point, got {t.dtype}")
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(f"every crop of {name} must have one shape, got {shape} and {tuple(t.shape)}")
        shape = tuple(t.shape)
    assert shape is not None
    return shape[0], shape[1]


def dino_cross_entropy(
    student_logits: Sequence[Tensor], teacher_probs: Sequence[Tensor], student_temp: float = 0.1
) -> Tensor:
    """DINO's multi-crop cross-entropy from the teacher's target distributions (already centred).

    Args:
        student_logits: ``V`` tensors ``(B, K)``, one per crop, the ``G`` global crops first.
        teacher_probs: ``G`` tensors ``(B, K)``: the teacher's targets for the global crops (detached
            here); rows sum to 1 (softmax with a center, or Sinkhorn-Knopp codes as DINOv2's).
        student_temp: the student's softmax temperature.

    Returns:
        Scalar: ``Σ_{i<G} Σ_{v≠i} mean_b CE(teacher_i, student_v) / (G·V - G)``, the mean over every
        (teacher global crop, student crop) pair except a crop with itself, as ``DINOLoss.forward`` of
        facebookresearch/dino ``main_dino.py`` (``n_loss_terms``). DINOv2's split into a local-crop and a
        global-crop term (``ssl_meta_arch.py``), each divided by the same number of terms, sums to it.

    Computed as ``-Σ_b (Σ_i q_i)·(Σ_v log p_v) / B`` minus the ``v == i`` terms: the same sum, with one
    product per crop instead of one per pair (at ``K = 65536`` and 10 crops, 10x less work).
    """
    batch, k = _check_crops(student_logits, "student_logits")
    teachers, k_t = _check_crops(teacher_probs, "teacher_probs")
    if (teachers, k_t) != (batch, k):
        raise ValueError(
            f"teacher_probs crops are {(teachers, k_t)} but student_logits crops are {(batch, k)}"
        )
    num_teacher, num_student = len(teacher_probs), len(student_logits)
    if num_teacher > num_student:
        raise ValueError(
            f"{num_teacher} teacher crops but {num_student} student crops: the teacher sees the global "
            "crops, which the student sees too (they come first in student_logits)"
        )
    pairs = num_teacher * num_student - num_teacher
    if pairs == 0:
        raise ValueError("one crop gives no pair of different views: DINO needs at least two crops")
    student_temp = _check_temperature("student_temp", student_temp)
    dtype = compute_dtype(student_logits[0])
    with torch.autocast(device_type=student_logits[0].device.type, enabled=False):
        log_p = [F.log_softmax(s.to(dtype) / student_temp, dim=-1) for s in student_logits]
        q = [t.detach().to(dtype) for t in teacher_probs]
        total = (torch.stack(q).sum(0) * torch.stack(log_p).sum(0)).sum(-1).mean()
        same = sum((q[i] * log_p[i]).sum(-1).mean() for i in range(num_teacher))
        return -(total - same) / pairs


def dino(
    student_logits: Sequence[Tensor],
    teacher_logits: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO's loss (Caron et al., ICCV 2021, eq. 3 and algorithm 1).

    Args:
        student_logits: ``V`` tensors ``(B, K)``, one per crop, all global crops first, then local crops.
        teacher_logits: ``G`` tensors ``(B, K)``, the teacher's logits for the global crops (detached here).
        center: ``(K,)`` (or ``(1, K)``) the running center of the teacher's logits.
        student_temp, teacher_temp: softmax temperatures (DINO: 0.1 and 0.04 to 0.07).

    Returns:
        Scalar (fp32; float64 for float64 inputs): the cross-entropy between the teacher's targets
        ``softmax((t - center) / teacher_temp)`` and the student's ``log_softmax(s / student_temp)``,
        summed over K, averaged over the batch and over the ``G·V - G`` (teacher global ``i``, student
        crop ``v ≠ i``) pairs, as ``DINOLoss.forward`` (facebookresearch/dino ``main_dino.py``). Unlike
        it, the center is not updated here: see :func:`dino_center_update`.
    """
    _, k = _check_crops(teacher_logits, "teacher_logits")
    if center.shape not in ((k,), (1, k)):
        raise ValueError(f"center must be (K,) = ({k},), got shape {tuple(center.shape)}")
    teacher_temp = _check_temperature("teacher_temp", teacher_temp)
    dtype = compute_dtype(teacher_logits[0])
    with torch.no_grad(), torch.autocast(device_type=center.device.type, enabled=False):
        c = center.detach().to(dtype).reshape(1, k)
        probs = [F.softmax((t.detach().to(dtype) - c) / teacher_temp, dim=-1) for t in teacher_logits]
    return dino_cross_entropy(student_logits, probs, student_temp)


def dino_center_update(center: Tensor, teacher_logits_mean: Tensor, momentum: float = 0.9) -> Tensor:
    """The new center ``momentum · center + (1 - momentum) · mean`` (DINO's ``update_center``).

    ``teacher_logits_mean`` ``(K,)`` is the mean of the teacher's logits over every global crop of the
    *global* batch (DINO all-reduces the sum and divides by ``B · world_size``); the caller applies this
    once per optimizer step. Pure: returns a new detached tensor of ``center``'s shape and dtype.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"center momentum must be in [0, 1], got {momentum}")
    if teacher_logits_mean.numel() != center.numel():
        raise ValueError(
            f"teacher_logits_mean has {teacher_logits_mean.numel()} values but center has {center.numel()}"
        )
    with torch.no_grad():
        mean = teacher_logits_mean.detach().to(center.dtype).reshape(center.shape)
        return center.detach() * momentum + mean * (1.0 - momentum)


def koleo(x: Tensor, eps: float = 1e-8) -> Tensor:
    """The Kozachenko-Leonenko entropy estimator as a regulariser (Sablayrolles et al., ICLR 2019;
    DINOv2, Oquab et al. 2024, sec. 4): ``-mean_i log(||x̂_i - x̂_nn(i)|| + eps)`` with ``x̂`` the
    L2-normalised rows and ``nn(i)`` the nearest other row (largest dot product, itself excluded).

    Args:
        x: ``(B, D)`` features, B ≥ 2 (DINOv2: the student's class tokens of one global crop; pass the
            gathered global batch, with gradients, for the one-process value under DDP).
        eps: as ``KoLeoLoss`` (facebookresearch/dinov2 ``dinov2/loss/koleo_loss.py``): the normalisation's
            floor, the ``PairwiseDistance`` eps (added to the difference before its norm) and the floor
            inside the log.

    Coincident points (duplicates) give a distance of ``eps·sqrt(D)``, not 0, so value and gradient stay
    finite. The neighbour search is not differentiated (an index), as in the reference.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo needs (B, D) features with B >= 2, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be floating point, got {x.dtype}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = F.normalize(x.to(compute_dtype(x)), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = z @ z.T
            self_pairs = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
            neighbour = dots.masked_fill(self_pairs, -1.0).argmax(dim=1)  # -1: the reference's diagonal fill
        distances = F.pairwise_distance(z, z[neighbour], p=2, eps=eps)
        return -torch.log(distances + eps).mean()


def ibot_patch(
    student_patch_logits: Tensor, teacher_patch_probs: Tensor, mask: Tensor, student_temp: float = 0.1
) -> Tensor:
    """iBOT's masked-patch loss (Zhou et al., ICLR 2022) as DINOv2 computes it.

    Args:
        student_patch_logits: the student's head outputs for the masked patches: ``(M, K)``, the ``M =
            mask.sum()`` masked patches in row-major order of ``mask`` (``logits[mask]`` of a ``(B, N, K)``
            tensor), or the whole ``(B, N, K)``, from which the masked patches are taken.
        teacher_patch_probs: the teacher's targets for the same patches, ``(M, K)`` or ``(B, N, K)``
            (detached here; rows sum to 1).
        mask: ``(B, N)`` bool, True at the patches the student saw masked.
        student_temp: the student's softmax temperature.

    Returns:
        Scalar: ``-(1/B) Σ_b (1/M_b) Σ_{n masked in b} Σ_k t log softmax(s / τ)``: per image the mean
        cross-entropy over its masked patches, then the mean over all ``B`` images, an image without
        masked patches counting 0 (``iBOTPatchLoss.forward_masked``, facebookresearch/dinov2
        ``dinov2/loss/ibot_patch_loss.py``, with ``masks_weight = 1 / M_b`` as ``collate_data_and_cast``).
        DDP's gradient average over equal per-rank batches is then the global mean.
    """
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, N) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    batch, patches = mask.shape
    if batch == 0:
        raise ValueError("mask is an empty batch")

    def masked_rows(t: Tensor, name: str) -> Tensor:
        if t.ndim == 3:
            if t.shape[:2] != (batch, patches):
                raise ValueError(f"{name} is {tuple(t.shape)} but mask is {(batch, patches)}")
            return t[mask]
        if t.ndim != 2 or t.shape[0] != int(mask.sum()):
            raise ValueError(
                f"{name} must be (M, K) with M = mask.sum() = {int(mask.sum())} masked patches, or "
                f"(B, N, K); got shape {tuple(t.shape)}"
            )
        return t

    student = masked_rows(student_patch_logits, "student_patch_logits")
    teacher = masked_rows(teacher_patch_probs, "teacher_patch_probs")
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} patches differ")
    student_temp = _check_temperature("student_temp", student_temp)
    dtype = compute_dtype(student)
    with torch.autocast(device_type=mask.device.type, enabled=False):
        per_patch = (
            teacher.detach().to(dtype) * F.log_softmax(student.to(dtype) / student_temp, dim=-1)
        ).sum(-1)
        weights = (1.0 / mask.sum(dim=1).clamp_min(1).to(dtype)).unsqueeze(1).expand(batch, patches)[mask]
        return -(per_patch * weights).sum() / batch
