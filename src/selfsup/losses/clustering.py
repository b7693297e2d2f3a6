"""Clustering losses as pure functions: Sinkhorn-Knopp codes and SwAV's swapped prediction.

No state and no communication. :func:`sinkhorn_knopp` takes the prototype scores of the *global*
batch (the caller gathers them; they are detached targets, so a plain gather is enough) and returns
the codes; :func:`swav` is a mean over this process's samples, so DDP's gradient average is already
the global mean. Computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64), autocast off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import compute_dtype


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Soft equipartitioned assignments of samples to prototypes (Caron et al., SwAV, NeurIPS 2020, sec. 3.1).

    Args:
        scores: ``(B, K)`` prototype scores (logits) of the *global* batch: gathered from every process
            by the caller (the authors all-reduce the sums inside instead; the result is the same), with
            any queued samples' scores included (SwAV prepends its queue's).
        epsilon: entropic regularisation; the scores are divided by it before the exponential
            (0.05 is SwAV's default). DINOv2's ``sinkhorn_knopp_teacher(teacher_output, teacher_temp,
            n_iterations)`` is this function with ``epsilon=teacher_temp`` and ``iterations=n_iterations``.
        iterations: alternations of the prototype (row of Q) and sample (column of Q) normalisations
            (3 in both SwAV and DINOv2).

    Returns:
        ``(B, K)`` codes, detached (they are targets), in the compute dtype (fp32, or float64): every
        row sums to 1 and, as ``iterations`` grows, every column to ``B / K`` (equipartition).

    The algorithm is the authors' (facebookresearch/swav ``main_swav.py``, ``distributed_sinkhorn``;
    DINOv2 ``dino_clstoken_loss.py``, ``sinkhorn_knopp_teacher``, which is the same code): with
    ``Q = exp(scores / eps)ᵀ`` ``(K, B)``, divide by its total, then ``iterations`` times divide each row
    by its sum and by ``K``, each column by its sum and by ``B``; finally multiply by ``B``.
    Here every step runs on ``log Q`` (subtracting log-sum-exps), which is the same arithmetic in exact
    maths but never overflows or underflows: the authors' ``exp(scores / 0.05)`` is ``inf`` in fp32 for a
    score above ~4.4 (DINOv2's unnormalised teacher logits) and every later division gives NaN.
    """
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (B, K) matrix, got shape {tuple(scores.shape)}")
    if not torch.is_floating_point(scores):
        raise TypeError(f"scores must be floating point, got {scores.dtype}")
    epsilon = _check_positive("epsilon", epsilon)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    batch, prototypes = scores.shape
    with torch.no_grad(), torch.autocast(device_type=scores.device.type, enabled=False):
        log_q = scores.detach().to(compute_dtype(scores)) / epsilon  # (B, K): the transpose of the authors' Q
        # Dividing by the total is subtracting the log-sum-exp of all entries.
        log_q = log_q - torch.logsumexp(log_q.reshape(-1), dim=0)
        for _ in range(iterations):
            # Per prototype (the authors' rows): total weight 1 / K.
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(prototypes)
            # Per sample (the authors' columns): total weight 1 / B.
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(batch)
        # Times B: each sample's code sums to 1.
        return torch.exp(log_q + math.log(batch))


def swav(
    scores: Sequence[Tensor],
    assignments: Sequence[Tensor],
    temperature: float = 0.1,
    crops_for_assign: Sequence[int] = (0, 1),
) -> Tensor:
    """SwAV's swapped prediction loss (Caron et al., NeurIPS 2020, eq. 1-2).

    Args:
        scores: one ``(B, K)`` tensor per crop (global crops first, then local ones): the scores of the
            L2-normalised projections against the L2-normalised prototypes (cosine similarities).
        assignments: one ``(B, K)`` code per entry of ``crops_for_assign`` (e.g. from
            :func:`sinkhorn_knopp`); detached here.
        temperature: ``τ`` of the softmax over prototypes (0.1 in the paper).
        crops_for_assign: the crops whose codes are computed (SwAV's default: the two global crops).

    Returns:
        Scalar loss (fp32; float64 for float64 inputs): for each assigned crop ``i``, the mean over the
        batch of the cross-entropy between its code ``q_i`` and ``softmax(scores_v / τ)`` of every other
        crop ``v ≠ i``, summed over ``v`` and divided by ``(num crops - 1)``; then averaged over the
        assigned crops. This is the normalisation of the authors' training loop (facebookresearch/swav
        ``main_swav.py``, ``train``: ``subloss / (sum(nmb_crops) - 1)``, then ``/ len(crops_for_assign)``).
    """
    if len(scores) < 2:
        raise ValueError(f"swav needs at least two crops, got {len(scores)}")
    if len(assignments) != len(crops_for_assign):
        raise ValueError(
            f"got {len(assignments)} assignments for crops_for_assign={tuple(crops_for_assign)}; "
            "pass one code per assigned crop"
        )
    if not crops_for_assign:
        raise ValueError("crops_for_assign is empty")
    shape = tuple(scores[0].shape)
    for index, tensor in enumerate([*scores, *assignments]):
        if tensor.ndim != 2 or tuple(tensor.shape) != shape:
            raise ValueError(
                f"every score and code must be (B, K) = {shape}, got {tuple(tensor.shape)} at {index}"
            )
        if not torch.is_floating_point(tensor):
            raise TypeError(f"scores and codes must be floating point, got {tensor.dtype}")
    for crop in crops_for_assign:
        if not 0 <= crop < len(scores):
            raise ValueError(f"crops_for_assign names crop {crop}, but there are {len(scores)} crops")
    temperature = _check_positive("temperature", temperature)
    dtype = compute_dtype(scores[0])
    with torch.autocast(device_type=scores[0].device.type, enabled=False):
        log_probs = [F.log_softmax(s.to(dtype) / temperature, dim=1) for s in scores]
        loss = torch.zeros((), dtype=dtype, device=scores[0].device)
        for crop, code in zip(crops_for_assign, assignments):
            q = code.detach().to(dtype)
            others = [v for v in range(len(scores)) if v != crop]
            subloss = sum(-(q * log_probs[v]).sum(dim=1).mean() for v in others)
            loss = loss + subloss / len(others)
        return loss / len(crops_for_assign)
