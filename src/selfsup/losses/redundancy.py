"""Redundancy-reduction losses as pure functions: Barlow Twins and VICReg.

Both are functions of batch statistics (per-dimension means, variances, cross-correlations), so on
several processes they must see the *global* batch: the method gathers ``z1``/``z2`` from every rank
with :func:`selfsup.dist.all_gather_with_grad` and every rank evaluates the loss on the whole global
batch. DDP's average of the gradients then equals the one-process gradient (see :mod:`selfsup.dist`).
Nothing here communicates. Computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64), with
autocast switched off inside: the variances and the ``D x D`` matrices lose too much in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import check_embeddings, compute_dtype

# ``nn.BatchNorm1d``'s default eps, which the Barlow Twins authors' normalization layer keeps.
BARLOW_EPS = 1e-5
# VICReg's variance term floors the variance before the square root (facebookresearch/vicreg).
VICREG_EPS = 1e-4

__all__ = ["barlow_twins", "barlow_twins_terms", "off_diagonal", "vicreg", "vicreg_terms"]


def off_diagonal(m: Tensor) -> Tensor:
    """The ``D·(D-1)`` off-diagonal entries of a square ``(D, D)`` matrix, as a flat view (no copy).

    Dropping the first entry of the flattened matrix lines the diagonal up at the end of the rows of a
    ``(D - 1, D + 1)`` view; the last column is then the diagonal and the others are the rest.
    """
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"off_diagonal needs a square matrix, got shape {tuple(m.shape)}")
    d = m.shape[0]
    return m.flatten()[1:].view(d - 1, d + 1)[:, :-1].flatten()


def _check_batch(z1: Tensor, z2: Tensor, loss: str) -> None:
    check_embeddings(z1, z2, ("z1", "z2"))
    if z1.shape[0] < 2:
        raise ValueError(
            f"{loss} needs batch statistics: at least 2 samples, got {z1.shape[0]}; on several processes "
            "pass the gathered global batch"
        )


def _standardize(z: Tensor) -> Tensor:
    """``(z - mean) / sqrt(var + 1e-5)`` per dimension with the biased batch variance: the output of
    ``nn.BatchNorm1d(D, affine=False)`` in training mode."""
    var, mean = torch.var_mean(z, dim=0, correction=0)
    return (z - mean) * torch.rsqrt(var + BARLOW_EPS)


def barlow_twins_terms(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
    """The two sums of the Barlow Twins loss, unweighted: ``(on_diagonal, off_diagonal)``.

    ``C = ẑ1ᵀ ẑ2 / N`` with ``ẑ`` standardized per dimension (see :func:`barlow_twins`);
    ``on_diagonal = Σ_i (1 - C_ii)²``, ``off_diagonal = Σ_{i≠j} C_ij²``. Scalars in fp32 (float64
    for float64 inputs).
    """
    _check_batch(z1, z2, "barlow_twins")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dtype = compute_dtype(z1)
        a, b = _standardize(z1.to(dtype)), _standardize(z2.to(dtype))
        c = a.T @ b / z1.shape[0]  # (D, D) cross-correlation
        on = (torch.diagonal(c) - 1).square().sum()
        off = off_diagonal(c).square().sum()
        return on, off


def barlow_twins(z1: Tensor, z2: Tensor, lambda_: float = 5e-3) -> Tensor:
    """The Barlow Twins loss (Zbontar et al., ICML 2021, eq. 1).

    Args:
        z1, z2: ``(N, D)`` projections of the two views of the same ``N ≥ 2`` samples (the global batch
            when training on several processes), row ``i`` of each from sample ``i``.
        lambda_: weight of the off-diagonal (redundancy) term, ``≥ 0``. 5e-3 is the paper's value; the
            authors' released ``main.py`` defaults to ``--lambd 0.0051`` (the methods' default).

    Returns:
        ``Σ_i (1 - C_ii)² + lambda_ · Σ_{i≠j} C_ij²`` with ``C = ẑ1ᵀ ẑ2 / N``, a scalar in fp32 (float64
        for float64 inputs). ``ẑ`` is each dimension standardized over the batch with the *biased*
        variance and eps 1e-5, exactly ``nn.BatchNorm1d(D, affine=False)`` in training mode as the
        authors' code does (facebookresearch/barlowtwins ``main.py``, ``BarlowTwins.forward``); the eps
        keeps duplicated embeddings (zero variance) finite, value and gradient.

    Relation to the authors' code. On one process the value and the gradient are theirs. On ``W``
    processes they divide each rank's ``ẑ1ᵀ ẑ2`` by the global batch and sum it over ranks with a plain
    ``torch.distributed.all_reduce`` inside the graph: the forward is the global ``C``, but the
    all-reduce has no backward across ranks, so each rank's gradient is the one-process gradient of its
    own samples and DDP's average divides it by ``W`` (the test ``tests/distributed/test_ddp_redundancy.py``
    shows it). Here the method gathers the global batch with gradients instead, which is exact.
    Their early releases multiplied the loss by ``--scale-loss`` (1/32, with ``λ = 3.9e-3``); the current
    one has no loss scale (it gives biases a lower learning rate instead). solo-learn's ``scale_loss``
    (0.1 in its CIFAR recipe) is the methods' ``scale_loss`` option, not part of this function.
    """
    if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
        raise ValueError(f"lambda_ must be a finite number >= 0, got {lambda_!r}")
    on, off = barlow_twins_terms(z1, z2)
    return on + float(lambda_) * off


def vicreg_terms(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """VICReg's three terms, unweighted: ``(invariance, variance, covariance)``.

    * invariance: the mean squared error between ``z1`` and ``z2`` over all ``N·D`` entries;
    * variance: ``mean_d relu(1 - sqrt(Var(z_d) + 1e-4))`` for each view, averaged over the two views,
      with the *unbiased* batch variance (``torch.var``'s default, as the authors');
    * covariance: ``Σ_{i≠j} Cov(z)_ij² / D`` for each view, summed over the two views, with
      ``Cov = (z - mean)ᵀ (z - mean) / (N - 1)``.

    Scalars in fp32 (float64 for float64 inputs); see :func:`vicreg`.
    """
    _check_batch(z1, z2, "vicreg")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dtype = compute_dtype(z1)
        x, y = z1.to(dtype), z2.to(dtype)
        invariance = F.mse_loss(x, y)
        n, d = x.shape
        variance = x.new_zeros(())
        covariance = x.new_zeros(())
        for z in (x, y):
            centered = z - z.mean(dim=0)
            std = torch.sqrt(centered.var(dim=0) + VICREG_EPS)
            variance = variance + F.relu(1 - std).mean() / 2
            cov = centered.T @ centered / (n - 1)
            covariance = covariance + off_diagonal(cov).square().sum() / d
        return invariance, variance, covariance


def vicreg(
    z1: Tensor, z2: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
) -> Tensor:
    """The VICReg loss (Bardes, Ponce & LeCun, ICLR 2022, eq. 6).

    Args:
        z1, z2: ``(N, D)`` embeddings (the expander's outputs) of the two views of ``N ≥ 2`` samples:
            the global batch when training on several processes.
        sim_coeff, std_coeff, cov_coeff: the weights λ, μ, ν of the invariance, variance and covariance
            terms (25, 25, 1: the paper's and the authors' defaults).

    Returns:
        ``sim_coeff · invariance + std_coeff · variance + cov_coeff · covariance``
        (:func:`vicreg_terms`), a scalar in fp32 (float64 for float64 inputs).

    Equal, value and gradient, to the authors' ``VICReg.forward`` (facebookresearch/vicreg
    ``main_vicreg.py``) on one process. On several processes they take the invariance term on the local
    batch (its mean over ranks is the global one) and gather the embeddings with ``FullGatherLayer``
    (a gather whose backward sums over ranks) for the other two, dividing the covariance by the global
    batch size minus one: a method that passes the gathered global batch here gets the same loss and
    gradients. The 1e-4 inside the square root keeps duplicated embeddings (zero variance) finite.
    solo-learn's ``variance_loss`` *sums* the two views' hinge terms where the authors average them, so
    its ``var_loss_weight`` 25 is ``std_coeff = 50`` here.
    """
    for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    invariance, variance, covariance = vicreg_terms(z1, z2)
    return float(sim_coeff) * invariance + float(std_coeff) * variance + float(cov_coeff) * covariance
