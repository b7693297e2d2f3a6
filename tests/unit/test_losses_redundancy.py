"""Barlow Twins, VICReg and SimSiam's negative cosine against the authors' definitions.

Each reference below is the authors' released loss written out in plain torch (not their code): value
and gradient must agree in float64 on the same inputs. Then the degenerate inputs a run meets (batch 2,
duplicated embeddings: zero variance), bf16 inputs and autocast, and bad shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses import barlow_twins, barlow_twins_terms, negative_cosine, vicreg, vicreg_terms
from selfsup.losses.redundancy import off_diagonal


def _off_diagonal_by_mask(m: Tensor) -> Tensor:
    return m[~torch.eye(m.shape[0], dtype=torch.bool)]


def reference_barlow_twins(z1: Tensor, z2: Tensor, lambd: float) -> Tensor:
    """facebookresearch/barlowtwins ``main.py``, ``BarlowTwins.forward`` on one process (its
    ``all_reduce`` is then the identity): ``self.bn = nn.BatchNorm1d(D, affine=False)`` in training mode,
    ``c = bn(z1).T @ bn(z2) / batch_size``, ``(c_ii - 1)²`` summed plus ``lambd`` times the summed
    squared off-diagonal entries."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype).train()
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = _off_diagonal_by_mask(c).pow(2).sum()
    return on_diag + lambd * off_diag


def reference_vicreg(
    z1: Tensor, z2: Tensor, sim: float = 25.0, std: float = 25.0, cov: float = 1.0
) -> Tensor:
    """facebookresearch/vicreg ``main_vicreg.py``, ``VICReg.forward`` on one process (``FullGatherLayer``
    is then the identity and ``args.batch_size`` the batch): MSE; centre; ``sqrt(x.var(dim=0) + 0.0001)``
    (unbiased); hinge means halved and summed; ``x.T @ x / (batch_size - 1)``, squared off-diagonal sums
    divided by the number of features, summed over both branches."""
    repr_loss = F.mse_loss(z1, z2)
    x, y = z1 - z1.mean(dim=0), z2 - z2.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 0.0001), torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
    cov_loss = _off_diagonal_by_mask(cov_x).pow(2).sum() / d + _off_diagonal_by_mask(cov_y).pow(2).sum() / d
    return sim * repr_loss + std * std_loss + cov * cov_loss


def reference_simsiam(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """facebookresearch/simsiam ``main_simsiam.py``, ``train``: ``criterion = nn.CosineSimilarity(dim=1)``
    and ``-(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5``, with ``z`` detached by the
    model (``builder.py`` returns ``z1.detach(), z2.detach()``)."""
    criterion = nn.CosineSimilarity(dim=1)
    return -(criterion(p1, z2.detach()).mean() + criterion(p2, z1.detach()).mean()) * 0.5


def _pair(batch: int = 6, dim: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Offsets and scales per dimension, so the standardization and the variance hinge both matter.
    scale = torch.linspace(0.3, 3.0, dim, dtype=torch.float64)
    z1 = torch.randn(batch, dim, generator=g, dtype=torch.float64) * scale + 2.0
    z2 = z1 + 0.5 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return [z.to(dtype).requires_grad_() for z in (z1, z2)]


def _value_and_grads(fn, inputs: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value.detach(), [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]


def _assert_same_value_and_grads(ours, reference, inputs: list[Tensor]) -> None:
    value, grads = _value_and_grads(ours, inputs)
    ref_value, ref_grads = _value_and_grads(reference, inputs)
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in grads)  # the comparison is not between zeros


# ---------------------------------------------------------------- off_diagonal


def test_off_diagonal_is_every_entry_but_the_diagonal_in_row_order() -> None:
    m = torch.arange(16.0).view(4, 4)
    torch.testing.assert_close(off_diagonal(m), _off_diagonal_by_mask(m))
    assert off_diagonal(torch.ones(1, 1)).numel() == 0
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.ones(2, 3))


# ---------------------------------------------------------------- Barlow Twins


@pytest.mark.parametrize("lambda_", [5e-3, 0.0051, 1.0])
@pytest.mark.parametrize(("batch", "dim"), [(6, 5), (2, 3), (9, 12)])
def test_barlow_twins_equals_the_authors_value_and_gradient(lambda_: float, batch: int, dim: int) -> None:
    inputs = _pair(batch, dim)
    _assert_same_value_and_grads(
        lambda a, b: barlow_twins(a, b, lambda_=lambda_),
        lambda a, b: reference_barlow_twins(a, b, lambda_),
        inputs,
    )


def test_barlow_twins_default_lambda_and_terms() -> None:
    z1, z2 = (z.detach() for z in _pair())
    on, off = barlow_twins_terms(z1, z2)
    torch.testing.assert_close(barlow_twins(z1, z2), on + 5e-3 * off)
    torch.testing.assert_close(barlow_twins(z1, z2), reference_barlow_twins(z1, z2, 5e-3))


def test_barlow_twins_uses_the_biased_variance_and_eps_1e5() -> None:
    """Perfectly correlated views of unit biased variance give C = I up to the eps: on-diagonal terms
    ``(1 - 1/(1 + 1e-5))²`` each; the unbiased variance or another eps would move the value."""
    z = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    on, off = barlow_twins_terms(z, z)
    expected_c = 1 / (1 + 1e-5)
    torch.testing.assert_close(on, torch.tensor(2 * (1 - expected_c) ** 2, dtype=torch.float64))
    torch.testing.assert_close(off, torch.tensor(0.0, dtype=torch.float64))


def test_barlow_twins_duplicated_embeddings_are_finite_with_finite_gradients() -> None:
    # Every sample the same: zero variance in every dimension; only the eps keeps the division finite.
    z1 = torch.ones(4, 6, dtype=torch.float64).mul(3.0).requires_grad_()
    z2 = torch.randn(4, 6, dtype=torch.float64).requires_grad_()
    loss = barlow_twins(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(6.0)  # C = 0: Σ (1 - 0)² = D
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    both = torch.full((2, 3), 0.7, requires_grad=True)
    value = barlow_twins(both, both)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(both.grad).all()


def test_barlow_twins_batch_of_two_is_finite() -> None:
    z1, z2 = _pair(batch=2, dim=4, dtype=torch.float32)
    loss = barlow_twins(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


# ---------------------------------------------------------------- VICReg


@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 0.0, 3.0), (0.0, 2.0, 0.0)])
@pytest.mark.parametrize(("batch", "dim"), [(6, 5), (2, 3), (9, 12)])
def test_vicreg_equals_the_authors_value_and_gradient(
    coeffs: tuple[float, float, float], batch: int, dim: int
) -> None:
    inputs = _pair(batch, dim)
    sim, std, cov = coeffs
    _assert_same_value_and_grads(
        lambda a, b: vicreg(a, b, sim_coeff=sim, std_coeff=std, cov_coeff=cov),
        lambda a, b: reference_vicreg(a, b, sim, std, cov),
        inputs,
    )


def test_vicreg_variance_hinge_is_active_in_the_reference_comparison() -> None:
    """The inputs above have dimensions with std below and above 1, so the hinge's both sides are met."""
    z1, _ = _pair()
    std = z1.detach().std(dim=0)
    assert (std < 1).any() and (std > 1).any()


def test_vicreg_defaults_and_terms() -> None:
    z1, z2 = (z.detach() for z in _pair())
    invariance, variance, covariance = vicreg_terms(z1, z2)
    torch.testing.assert_close(vicreg(z1, z2), 25.0 * invariance + 25.0 * variance + covariance)
    torch.testing.assert_close(vicreg(z1, z2), reference_vicreg(z1, z2))
    torch.testing.assert_close(invariance, F.mse_loss(z1, z2))


def test_vicreg_duplicated_embeddings_are_finite_with_finite_gradients() -> None:
    z = torch.full((4, 6), 2.0, dtype=torch.float64, requires_grad=True)
    invariance, variance, covariance = vicreg_terms(z, z)
    # Zero variance: each hinge is 1 - sqrt(1e-4) = 0.99; nothing to decorrelate, nothing to match.
    assert variance.item() == pytest.approx(0.99) and covariance.item() == 0 and invariance.item() == 0
    loss = vicreg(z, z)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # The hinge's gradient at zero variance through sqrt(var + 1e-4) is finite but not zero for
    # duplicated rows that are not exactly equal.
    near = (torch.full((4, 6), 2.0) + 1e-6 * torch.randn(4, 6)).requires_grad_()
    vicreg(near, near.detach().clone()).backward()
    assert torch.isfinite(near.grad).all() and near.grad.abs().sum() > 0


def test_vicreg_batch_of_two_is_finite() -> None:
    z1, z2 = _pair(batch=2, dim=4, dtype=torch.float32)
    loss = vicreg(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


# ---------------------------------------------------------------- SimSiam's negative cosine


def test_negative_cosine_equals_the_authors_symmetrized_loss_and_stops_the_target_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(4))
    _assert_same_value_and_grads(
        lambda a, b, c, d: negative_cosine(a, d) / 2 + negative_cosine(b, c) / 2,
        reference_simsiam,
        [p1, p2, z1, z2],
    )
    z = z1.clone().requires_grad_()
    p = p1.clone().requires_grad_()
    negative_cosine(p, z).backward()
    assert z.grad is None and p.grad is not None


def test_negative_cosine_hand_values() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert negative_cosine(x, x).item() == pytest.approx(-1.0)
    assert negative_cosine(x, -3 * x).item() == pytest.approx(1.0)
    assert negative_cosine(x, x.flip(1)).item() == pytest.approx(0.0)


def test_negative_cosine_degenerate_inputs_are_finite() -> None:
    # batch 2 (and 1: no batch statistic), duplicated rows, and a zero prediction (cosine's eps)
    for p, z in [
        (torch.randn(2, 4), torch.randn(2, 4)),
        (torch.randn(1, 4), torch.randn(1, 4)),
        (torch.ones(3, 4), torch.ones(3, 4)),
        (torch.zeros(3, 4), torch.randn(3, 4)),
    ]:
        p = p.requires_grad_()
        loss = negative_cosine(p, z)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


# ---------------------------------------------------------------- precision, autocast, errors

LOSSES = {
    "barlow_twins": lambda a, b: barlow_twins(a, b),
    "vicreg": lambda a, b: vicreg(a, b),
    "negative_cosine": lambda a, b: negative_cosine(a, b),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_inputs_give_an_fp32_loss_close_to_fp32(name: str) -> None:
    z1, z2 = (z.detach() for z in _pair(batch=8, dim=6, dtype=torch.float32))
    a, b = z1.bfloat16().requires_grad_(), z2.bfloat16()
    loss = LOSSES[name](a, b)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert a.grad is not None and a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad).all()
    # fp32 maths on the rounded inputs: the same number as an fp32 call on those inputs.
    torch.testing.assert_close(loss, LOSSES[name](a.detach().float(), b.float()), rtol=1e-5, atol=1e-5)
    dup = torch.ones(4, 6, dtype=torch.bfloat16, requires_grad=True)
    value = LOSSES[name](dup, dup.detach())
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(dup.grad).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_autocast_is_switched_off_inside(name: str) -> None:
    z1, z2 = (z.detach() for z in _pair(batch=8, dim=6, dtype=torch.float32))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = LOSSES[name](z1, z2)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, LOSSES[name](z1, z2))


def test_float64_stays_float64() -> None:
    z1, z2 = (z.detach() for z in _pair())
    for fn in LOSSES.values():
        assert fn(z1, z2).dtype == torch.float64


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((4, 3), (4, 2)), "same shape"),
        (((4, 3, 1), (4, 3, 1)), r"\(B, D\)"),
        (((0, 3), (0, 3)), "empty"),
    ],
)
def test_bad_shapes_are_clear_errors(name: str, shapes: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LOSSES[name](torch.randn(shapes[0]), torch.randn(shapes[1]))


@pytest.mark.parametrize("fn", [barlow_twins, vicreg])
def test_batch_statistics_need_two_samples(fn) -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        fn(torch.randn(1, 3), torch.randn(1, 3))


def test_integer_inputs_and_bad_coefficients_are_rejected() -> None:
    with pytest.raises(TypeError, match="floating point"):
        barlow_twins(torch.ones(3, 2, dtype=torch.int64), torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="lambda_"):
        barlow_twins(torch.randn(3, 2), torch.randn(3, 2), lambda_=-1.0)
    with pytest.raises(ValueError, match="std_coeff"):
        vicreg(torch.randn(3, 2), torch.randn(3, 2), std_coeff=float("nan"))
