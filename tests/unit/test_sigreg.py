"""SIGReg and the LeJEPA objective against transcriptions of the authors' released code."""

from __future__ import annotations

import pytest
import torch

from selfsup.encoders import ENCODERS
from selfsup.losses import epps_pulley_grid, lejepa, random_directions, sigreg
from selfsup.methods import METHODS, StepInfo, Views

# --------------------------------------------------------------------------- references


def reference_epps_pulley(x: torch.Tensor, t_max: float = 3.0, n_points: int = 17) -> torch.Tensor:
    """rbalestr-lab/lejepa ``lejepa/univariate/epps_pulley.py``, ``EppsPulley`` (``__init__`` buffers and
    ``forward``, one process: ``world_size = 1``, the all-reduce the identity), in float64.
    ``x`` ``(*, N, K)`` -> ``(*, K)``."""
    t = torch.linspace(0, t_max, n_points, dtype=torch.float64)
    dt = t_max / (n_points - 1)
    weights = torch.full((n_points,), 2 * dt, dtype=torch.float64)
    weights[[0, -1]] = dt
    phi = t.square().mul(0.5).neg().exp()
    weights = weights * phi
    n = x.size(-2)
    x_t = x.unsqueeze(-1) * t
    cos_mean = torch.cos(x_t).mean(-3)
    sin_mean = torch.sin(x_t).mean(-3)
    err = (cos_mean - phi).square() + sin_mean.square()
    return (err @ weights) * n


def reference_slicing(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """rbalestr-lab/lejepa ``lejepa/multivariate/slicing.py``, ``SlicingUnivariateTest.forward`` with
    ``EppsPulley`` and ``reduction="mean"``, given its (already normalised) projection matrix ``A``."""
    return reference_epps_pulley(x @ a).mean()


def reference_minimal_lejepa(proj: torch.Tensor, a: torch.Tensor, lamb: float) -> torch.Tensor:
    """rbalestr-lab/lejepa ``MINIMAL.md``: the training step's loss, ``proj`` ``(V, N, K)`` (every view
    global), ``SIGReg.forward`` with its random ``A`` replaced by ``a``."""
    t = torch.linspace(0, 3, 17, dtype=torch.float64)
    dt = 3 / (17 - 1)
    weights = torch.full((17,), 2 * dt, dtype=torch.float64)
    weights[[0, -1]] = dt
    window = torch.exp(-t.square() / 2.0)
    x_t = (proj @ a).unsqueeze(-1) * t
    err = (x_t.cos().mean(-3) - window).square() + x_t.sin().mean(-3).square()
    statistic = (err @ (weights * window)) * proj.size(-2)
    sigreg_loss = statistic.mean()
    inv_loss = (proj.mean(0) - proj).square().mean()
    return sigreg_loss * lamb + inv_loss * (1 - lamb)


def reference_paper_lejepa(
    g_emb: torch.Tensor, a_emb: torch.Tensor, bs: int, a: torch.Tensor, lambd: float
) -> torch.Tensor:
    """The LeJEPA algorithm of the paper (arXiv:2511.08544, its ``LeJEPA`` listing) with global and local
    views: ``centers`` the mean of the global views, the squared error averaged over every view, sample
    and dimension, SIGReg averaged over views; SIGReg as the released code above."""
    k = g_emb.shape[-1]
    centers = g_emb.view(-1, bs, k).mean(0)
    a_emb = a_emb.view(-1, bs, k)
    sim = (centers - a_emb).square().mean()
    sig = torch.stack([reference_slicing(emb, a) for emb in a_emb]).mean()
    return (1 - lambd) * sim + lambd * sig


def _embeddings(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5 + 0.2).requires_grad_()


def _directions(d: int, m: int, seed: int = 1) -> torch.Tensor:
    return random_directions(d, m, torch.Generator().manual_seed(seed)).double()


# --------------------------------------------------------------------------- sigreg


def test_the_grid_is_the_released_one() -> None:
    t, phi, weights = epps_pulley_grid()
    assert t.shape == (17,) and float(t[0]) == 0.0 and float(t[-1]) == 3.0
    torch.testing.assert_close(phi, torch.exp(-0.5 * t**2))
    dt = 3 / 16
    assert float(weights[0]) == pytest.approx(dt * 1.0) and float(weights[8]) == pytest.approx(
        2 * dt * phi[8].item()
    )


@pytest.mark.parametrize(("n", "d", "m"), [(32, 6, 10), (5, 3, 64)])
def test_sigreg_equals_the_released_slicing_test_value_and_gradient(n: int, d: int, m: int) -> None:
    z, a = _embeddings(n, d), _directions(d, m)
    ours = sigreg(z, a)
    twin = z.detach().clone().requires_grad_()
    theirs = reference_slicing(twin, a)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(z.grad, twin.grad, rtol=1e-10, atol=1e-12)


def test_sigreg_is_small_for_gaussian_samples_and_large_for_collapsed_ones() -> None:
    a = random_directions(16, 64, torch.Generator().manual_seed(0))
    gaussian = torch.randn(8192, 16, generator=torch.Generator().manual_seed(1))
    _, phi, weights = epps_pulley_grid()
    expected = float((weights * (1 - phi**2)).sum())  # E[statistic] under N(0, 1), whatever N
    assert abs(float(sigreg(gaussian, a)) - expected) < 0.3
    collapsed = torch.full((8192, 16), 0.5)
    assert float(sigreg(collapsed, a)) > 500
    # A Gaussian with the wrong scale is penalised too, and more with more samples.
    assert float(sigreg(gaussian * 3, a)) > 100 * expected


def test_lejepa_equals_minimal_md_when_every_view_is_global() -> None:
    proj = torch.randn(
        4, 16, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    ).requires_grad_()
    a = _directions(8, 32)
    ours = lejepa(list(proj), a, num_global=4, lambda_=0.02)
    twin = proj.detach().clone().requires_grad_()
    theirs = reference_minimal_lejepa(twin, a, 0.02)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(proj.grad, twin.grad, rtol=1e-10, atol=1e-12)


def test_lejepa_equals_the_paper_listing_with_local_views() -> None:
    views = [_embeddings(6, 5, seed=v) for v in range(5)]  # 2 global + 3 local
    a = _directions(5, 16)
    ours = lejepa(views, a, num_global=2, lambda_=0.05)
    twins = [v.detach().clone().requires_grad_() for v in views]
    theirs = reference_paper_lejepa(torch.cat(twins[:2]), torch.cat(twins), 6, a, 0.05)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.backward()
    theirs.backward()
    for v, twin in zip(views, twins):
        torch.testing.assert_close(v.grad, twin.grad, rtol=1e-10, atol=1e-12)


def test_batch_of_two_duplicates_and_bf16_stay_finite() -> None:
    a = _directions(4, 8)
    two = _embeddings(2, 4)
    loss = lejepa([two, two * 0.9], a)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(two.grad).all()
    same = torch.randn(1, 4, dtype=torch.float64).expand(6, 4).clone().requires_grad_()
    loss = lejepa([same, same + 0], a)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()
    b = [_embeddings(8, 4, seed=s).detach().bfloat16() for s in range(3)]
    value = lejepa(b, a.float())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(value, lejepa([x.float() for x in b], a.float()))


def test_random_directions_are_unit_and_seeded() -> None:
    a = random_directions(7, 5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.norm(dim=0), torch.ones(5))
    assert torch.equal(a, random_directions(7, 5, torch.Generator().manual_seed(3)))


def test_sigreg_rejects_mismatched_directions() -> None:
    with pytest.raises(ValueError, match="directions"):
        sigreg(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="lambda_"):
        lejepa([torch.zeros(4, 3)] * 2, torch.zeros(3, 2), lambda_=2.0)


# --------------------------------------------------------------------------- the method


def test_the_method_draws_its_directions_from_the_step() -> None:
    torch.manual_seed(0)
    method = METHODS.get("lejepa")(
        encoder=ENCODERS.create("mlp", in_features=6, hidden_dim=16),
        hidden_dim=16,
        projection_dim=8,
        num_slices=4,
    )
    g = torch.Generator().manual_seed(0)
    views = Views(inputs=[torch.randn(8, 6, generator=g) for _ in range(4)], num_global=2)
    out = method(views, StepInfo(5, 10))
    assert torch.equal(out.loss, method(views, StepInfo(5, 10)).loss)
    assert not torch.equal(out.logs["sigreg"], method(views, StepInfo(6, 10)).logs["sigreg"])
    expected = 0.95 * out.logs["prediction"] + 0.05 * out.logs["sigreg"]
    torch.testing.assert_close(out.loss, expected)
