"""Regression losses as pure functions: BYOL's normalized mean squared error, SimSiam's negative cosine.

Computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64), with autocast switched off
inside. The target gets no gradient. Per-sample losses averaged over the local batch need no
communication: DDP's average over ranks is already the global mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import check_embeddings, compute_dtype, l2_normalize


def byol(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al., 2020, eq. 2): ``2 - 2·cos(p, z)``, averaged over the batch.

    Args:
        p: ``(B, D)`` online predictions.
        z: ``(B, D)`` target projections; detached here, so the target network gets no gradient.

    Returns:
        Scalar loss (fp32; float64 for float64 inputs) in ``[0, 4]``: 0 for aligned, 2 for
        orthogonal, 4 for opposite vectors.

    Computed as the authors' ``regression_loss`` (deepmind-research ``byol/utils/helpers.py``) does:
    ``||p̂ - ẑ||²`` with ``x̂ = x · rsqrt(max(Σx², 1e-12))``, which equals ``2 - 2·cos`` for non-zero
    vectors. Their ``loss_fn`` adds the two directions per sample and then takes the batch mean, so
    ``byol(p1, z2) + byol(p2, z1)`` equals their ``repr_loss``.
    """
    check_embeddings(p, z, ("p", "z"))
    with torch.autocast(device_type=p.device.type, enabled=False):
        dtype = compute_dtype(p)
        diff = l2_normalize(p.to(dtype)) - l2_normalize(z.detach().to(dtype))
        return diff.square().sum(dim=-1).mean()


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's ``D(p, z)`` (Chen & He, CVPR 2021, eq. 1 with the stop-gradient of eq. 3): minus the
    mean cosine similarity between predictions and targets.

    Args:
        p: ``(B, D)`` predictions (the predictor's outputs).
        z: ``(B, D)`` targets (the other view's projections); detached here, so they get no gradient.

    Returns:
        Scalar loss in ``[-1, 1]`` (fp32; float64 for float64 inputs): -1 for aligned vectors.

    As the authors' loss (facebookresearch/simsiam ``main_simsiam.py``: ``nn.CosineSimilarity(dim=1)``,
    eps 1e-8, averaged over the batch), so ``negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2``
    is their symmetrized loss. Per-sample terms averaged over the local batch need no communication.
    """
    check_embeddings(p, z, ("p", "z"))
    with torch.autocast(device_type=p.device.type, enabled=False):
        dtype = compute_dtype(p)
        return -F.cosine_similarity(p.to(dtype), z.detach().to(dtype), dim=-1).mean()
