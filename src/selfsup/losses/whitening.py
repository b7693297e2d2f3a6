"""Whitening losses as pure functions: W-MSE (Ermolov et al., ICML 2021).

No state and no communication: the caller passes the embeddings of the batch to whiten (the
``wmse`` method gathers them from every process with gradients, so the whole global batch is
whitened) and the random sub-batch order (drawn from a generator seeded by the step, identical on
every process). Whitening runs in float64 whatever the input (a Cholesky factor of a 64 x 64
covariance of 128 samples loses digits in fp32; the matrices are tiny), the loss in fp32 (float64
for float64 inputs), autocast off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import check_embeddings, compute_dtype


def whiten(z: Tensor, eps: float = 0.0) -> Tensor:
    """Cholesky whitening of a batch (Ermolov et al. 2021, eq. 3-4): ``(B, D) → (B, D)``.

    Centres ``z`` on its batch mean, estimates the unbiased covariance ``Σ`` (divided by ``B - 1``),
    shrinks it to ``(1 - eps)·Σ + eps·I``, factors it as ``L·Lᵀ`` and returns ``(z - mean)·L⁻ᵀ``, whose
    covariance is the identity. As the authors' ``Whitening2d`` (htdt/self-supervised
    ``methods/whitening.py``, ``track_running_stats=False``), computed in float64 and returned in the
    loss's compute dtype (fp32, or float64).

    ``eps`` (the authors' ``w_eps``, default 0) makes the shrunk covariance positive definite, so
    duplicated or collapsed embeddings, and sub-batches smaller than ``D + 1``, stay finite; with
    ``eps = 0`` such a batch has no Cholesky factor and raises a ``ValueError``.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"whiten needs (B, D) embeddings with B >= 2, got shape {tuple(z.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1] (covariance shrinkage), got {eps}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        x = z.to(torch.float64)
        centred = x - x.mean(dim=0, keepdim=True)
        covariance = centred.T @ centred / (x.shape[0] - 1)
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        shrunk = (1.0 - eps) * covariance + eps * eye
        factor, info = torch.linalg.cholesky_ex(shrunk)
        if int(info) != 0:
            raise ValueError(
                f"the covariance of {x.shape[0]} embeddings of dimension {x.shape[1]} is singular "
                "(duplicated or collapsed embeddings, or fewer samples than dimensions + 1): use eps > 0"
            )
        # (z - m) L^-T: solve L Y = (z - m)^T for Y, i.e. apply L^-1 to every centred sample.
        whitened = torch.linalg.solve_triangular(factor, centred.T, upper=False).T
        return whitened.to(compute_dtype(z))


def wmse(
    z1: Tensor,
    z2: Tensor,
    whiten_size: int = 128,
    iterations: int = 1,
    eps: float = 0.0,
    *,
    permutations: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The W-MSE loss (Ermolov et al., ICML 2021, eq. 6) of two views.

    Args:
        z1, z2: ``(N, D)`` projections of the two views of the same ``N`` samples (row ``i`` of each).
        whiten_size: sub-batch size ``w_size``: the batch is cut into ``N / whiten_size`` random
            sub-batches and each view is whitened within each sub-batch (128 in the authors' CIFAR
            commands); must divide ``N``.
        iterations: ``w_iter``, repeats with fresh sub-batches, averaged (1 in the authors' CIFAR runs).
        eps: covariance shrinkage of :func:`whiten` (the authors' ``w_eps``, default 0).
        permutations: ``(iterations, N)`` int64, the sample order of each repeat (consecutive runs of
            ``whiten_size`` form the sub-batches); the loss is a pure function of it.
        generator: draws the permutations when ``permutations`` is None. With neither, the sub-batches
            are consecutive rows in order (deterministic; the order is irrelevant when
            ``whiten_size == N``).

    Returns:
        Scalar loss (fp32; float64 for float64 inputs): ``2 - 2·cos`` between the whitened views,
        averaged over the samples and the repeats, as the authors' ``WMSE.forward`` with
        ``norm_mse_loss`` (htdt/self-supervised ``methods/w_mse.py``, ``methods/norm_mse.py``). Both
        views get gradients (no stop-gradient, as the authors; solo-learn's port detaches the second).
    """
    check_embeddings(z1, z2, ("z1", "z2"))
    n = z1.shape[0]
    if not isinstance(whiten_size, int) or whiten_size < 2 or n % whiten_size != 0:
        raise ValueError(
            f"whiten_size={whiten_size!r} must be an integer >= 2 that divides the batch size {n} "
            "(W-MSE whitens each view within sub-batches of that size)"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if permutations is None:
        if generator is None:
            permutations = torch.arange(n).expand(iterations, n)
        else:
            permutations = torch.stack([torch.randperm(n, generator=generator) for _ in range(iterations)])
    permutations = permutations.to(device=z1.device, dtype=torch.int64)
    if tuple(permutations.shape) != (iterations, n):
        raise ValueError(
            f"permutations must be (iterations, N) = ({iterations}, {n}), got {tuple(permutations.shape)}"
        )
    if not torch.equal(
        permutations.sort(dim=1).values, torch.arange(n, device=z1.device).expand(iterations, n)
    ):
        raise ValueError("every row of permutations must be a permutation of range(N)")
    dtype = compute_dtype(z1)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        loss = torch.zeros((), dtype=dtype, device=z1.device)
        for order in permutations:
            # Each view whitened within each sub-batch; rows stay in the permuted order, which the mean
            # over samples below does not see.
            sub_batches = order.view(-1, whiten_size)
            w1 = F.normalize(torch.cat([whiten(z1[index], eps) for index in sub_batches]), dim=1)
            w2 = F.normalize(torch.cat([whiten(z2[index], eps) for index in sub_batches]), dim=1)
            loss = loss + 2.0 - 2.0 * (w1 * w2).sum(dim=1).mean()
        return loss / iterations
