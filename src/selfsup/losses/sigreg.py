"""LeJEPA's losses as pure functions: SIGReg and the LeJEPA objective (Balestriero & LeCun, 2025).

SIGReg (Sketched Isotropic Gaussian Regularisation) pushes embeddings towards an isotropic Gaussian:
it projects them on random unit directions and measures, for every 1-D projection, how far its
empirical characteristic function is from that of N(0, 1) (the Epps-Pulley statistic). No state and
no communication: the caller passes the global batch (the ``lejepa`` method gathers it with
gradients) and the directions (drawn from a generator seeded by the step, so every process uses the
same ones, as the authors' ``SlicingUnivariateTest`` seeds its generator with a synchronised step).
Computed in fp32 for fp32/bf16/fp16 inputs (float64 stays float64), autocast off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from selfsup.losses.contrastive import compute_dtype


def random_directions(dim: int, num_slices: int, generator: torch.Generator | None = None) -> Tensor:
    """``(dim, num_slices)`` float32 directions with unit-norm columns: Gaussian draws divided by their
    norms, as the authors' ``SlicingUnivariateTest`` (``sampler="gaussian"``), on the CPU (move them to
    the embeddings' device)."""
    if dim < 1 or num_slices < 1:
        raise ValueError(f"need dim >= 1 and num_slices >= 1, got {dim}, {num_slices}")
    a = torch.randn(dim, num_slices, generator=generator)
    return a / a.norm(dim=0, keepdim=True)


def epps_pulley_grid(num_points: int = 17, t_max: float = 3.0) -> tuple[Tensor, Tensor, Tensor]:
    """The quadrature of the released Epps-Pulley test: ``(t, phi, weights)``, each ``(num_points,)`` float64.

    ``t`` is ``num_points`` equally spaced knots on ``[0, t_max]``; ``phi = exp(-t²/2)`` is the N(0, 1)
    characteristic function; ``weights`` are the trapezoid weights doubled (the integrand is even in
    ``t``, so ``[0, t_max]`` counted twice is ``[-t_max, t_max]``: ``2·dt`` inside, ``dt`` at both ends)
    times the window ``exp(-t²/2)`` (rbalestr-lab/lejepa ``lejepa/univariate/epps_pulley.py``,
    ``EppsPulley``: ``t_max=3``, ``n_points=17``; the same grid as the class ``SIGReg`` of MINIMAL.md).
    """
    if not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}")
    if not (math.isfinite(t_max) and t_max > 0):
        raise ValueError(f"t_max must be positive and finite, got {t_max}")
    t = torch.linspace(0.0, t_max, num_points, dtype=torch.float64)
    dt = t_max / (num_points - 1)
    trapezoid = torch.full((num_points,), 2.0 * dt, dtype=torch.float64)
    trapezoid[0] = trapezoid[-1] = dt
    phi = torch.exp(-0.5 * t.square())
    return t, phi, trapezoid * phi


def sigreg(z: Tensor, directions: Tensor, num_points: int = 17, t_max: float = 3.0) -> Tensor:
    """SIGReg: the Epps-Pulley statistic of random 1-D projections against N(0, 1), averaged over them.

    Args:
        z: ``(N, D)`` embeddings of the global batch, or ``(V, N, D)``: one batch per view, the statistic
            then computed per view and averaged over views too.
        directions: ``(D, M)`` projection directions, unit-norm columns (:func:`random_directions`);
            used as given.
        num_points, t_max: the integration grid (:func:`epps_pulley_grid`; 17 knots on ``[0, 3]``).

    Returns:
        Scalar (fp32; float64 for float64 inputs): the mean over the ``M`` directions (and views) of
        ``N · Σ_k w_k · |φ̂(t_k) - exp(-t_k²/2)|²``, with ``φ̂(t) = mean_n exp(i·t·x_n)`` the empirical
        characteristic function of the projected batch ``x = z @ a``: ``|φ̂ - φ|² = (mean cos(t x) - φ)² +
        (mean sin(t x))²``. ``N`` is the number of samples the statistic sees (the authors' ``N·world_size``
        after their all-reduce of the means: the same number on the gathered batch). Of order 1 for
        Gaussian samples whatever N (its expectation under N(0, 1) is ``Σ_k w_k (1 - φ(t_k)²)``), growing
        like ``N`` for collapsed ones.

    Equal to the authors' ``SlicingUnivariateTest(EppsPulley(), num_slices=M)`` with these directions
    (rbalestr-lab/lejepa ``lejepa/multivariate/slicing.py``, ``lejepa/univariate/epps_pulley.py``). The
    paper's listing integrates on ``[-5, 5]`` with ``torch.trapz``; the released code and MINIMAL.md use
    this grid, which we follow.
    """
    if z.ndim not in (2, 3) or z.shape[-2] == 0:
        raise ValueError(f"z must be (N, D) or (V, N, D) with N >= 1, got shape {tuple(z.shape)}")
    if not torch.is_floating_point(z):
        raise TypeError(f"z must be floating point, got {z.dtype}")
    if directions.ndim != 2 or directions.shape[0] != z.shape[-1]:
        raise ValueError(
            f"directions must be (D, M) with D = {z.shape[-1]} (the embedding size), "
            f"got {tuple(directions.shape)}"
        )
    dtype = compute_dtype(z)
    t, phi, weights = (x.to(device=z.device, dtype=dtype) for x in epps_pulley_grid(num_points, t_max))
    with torch.autocast(device_type=z.device.type, enabled=False):
        projected = z.to(dtype) @ directions.detach().to(device=z.device, dtype=dtype)  # (..., N, M)
        x_t = projected.unsqueeze(-1) * t  # (..., N, M, T)
        error = (x_t.cos().mean(dim=-3) - phi).square() + x_t.sin().mean(dim=-3).square()  # (..., M, T)
        statistic = (error @ weights) * z.shape[-2]  # (..., M)
        return statistic.mean()


def lejepa_terms(
    projections: Sequence[Tensor],
    directions: Tensor,
    num_global: int = 2,
    num_points: int = 17,
    t_max: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """The two terms of :func:`lejepa`, ``(prediction, sigreg)``, before weighting (same arguments)."""
    if len(projections) < 2:
        raise ValueError(f"LeJEPA needs at least two views, got {len(projections)}")
    if not 1 <= num_global <= len(projections):
        raise ValueError(f"num_global={num_global} but there are {len(projections)} views")
    shape = tuple(projections[0].shape)
    if len(shape) != 2 or any(tuple(p.shape) != shape for p in projections):
        shapes = [tuple(p.shape) for p in projections]
        raise ValueError(f"every projection must be (N, K) of one shape, got {shapes}")
    dtype = compute_dtype(projections[0])
    with torch.autocast(device_type=projections[0].device.type, enabled=False):
        views = torch.stack([p.to(dtype) for p in projections])  # (V, N, K)
        centres = views[:num_global].mean(dim=0)
        prediction = (centres - views).square().mean()
        return prediction, sigreg(views, directions, num_points, t_max)


def lejepa(
    projections: Sequence[Tensor],
    directions: Tensor,
    num_global: int = 2,
    lambda_: float = 0.05,
    num_points: int = 17,
    t_max: float = 3.0,
) -> Tensor:
    """The LeJEPA objective (Balestriero & LeCun 2025, algorithm 1): prediction + λ·SIGReg.

    Args:
        projections: one ``(N, K)`` projection per view, the ``num_global`` global views first.
        directions: ``(K, M)`` unit-norm SIGReg directions.
        num_global: how many leading views are global: their mean is every view's target.
        lambda_: the trade-off λ (0.05, the paper's default; its MINIMAL.md example uses 0.02).
        num_points, t_max: SIGReg's integration grid.

    Returns:
        Scalar (fp32; float64 for float64 inputs):
        ``(1 - λ) · mean_{v, n, k} (c_{n,k} - z^v_{n,k})² + λ · mean_v SIGReg(z^v)`` with ``c`` the mean of
        the global views' projections. The prediction term is a mean over views, samples *and*
        dimensions, as the authors' ``(centers - a_emb).square().mean()`` (paper listing) and
        ``(proj.mean(0) - proj).square().mean()`` (MINIMAL.md, where every view is global). No
        stop-gradient: the centres get gradients too, as the authors'.
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
    prediction, regulariser = lejepa_terms(projections, directions, num_global, num_points, t_max)
    return (1.0 - lambda_) * prediction + lambda_ * regulariser
