"""Loss functions against hand-computed values and a plain loop over the definition."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import byol, l2_normalize, nt_xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """NT-Xent written anchor by anchor from eq. 1 of Chen et al. (2020), in float64."""
    views = [z1.double(), z2.double()]
    n = z1.shape[0]
    total = 0.0
    for v in range(2):
        for i in range(n):
            anchor = views[v][i] / views[v][i].norm()
            numerator, denominator = 0.0, 0.0
            for w in range(2):
                for j in range(n):
                    if (w, j) == (v, i):
                        continue
                    other = views[w][j] / views[w][j].norm()
                    e = math.exp(float(anchor @ other) / temperature)
                    denominator += e
                    if w != v and j == i:
                        numerator = e
            total += -math.log(numerator / denominator)
    return total / (2 * n)


# ---------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_nt_xent_hand_computed_two_samples(temperature: float) -> None:
    # Sample 0: both views along x; sample 1: both views along y. Every anchor then sees its
    # positive at cosine 1 and the two other candidates at cosine 0.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = temperature
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0.0)))
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_nt_xent_hand_computed_opposite_negative(temperature: float) -> None:
    # Sample 1 points the opposite way: positives at cosine 1, the other sample's views at -1.
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    t = temperature
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(-1 / t)))
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_hand_computed_asymmetric() -> None:
    # Anchors differ in their logits: z1 = [x, y], z2 = [y, x] at temperature 1.
    # z1[0]=x: positive z2[0]=y (cos 0); negatives z1[1]=y (0), z2[1]=x (1).
    # z1[1]=y: positive z2[1]=x (0); negatives z1[0]=x (0), z2[0]=y (1). Same for the z2 anchors.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    expected = -math.log(1.0 / (1.0 + 1.0 + math.e))
    assert nt_xent(z1, z2, 1.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_loop_reference(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(
        reference_nt_xent(z1, z2, temperature), rel=1e-5
    )


def test_nt_xent_is_scale_invariant_per_row() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    scales = torch.tensor([[0.01], [3.0], [100.0], [0.5]])
    torch.testing.assert_close(nt_xent(z1 * scales, z2 / scales), nt_xent(z1, z2))


def test_nt_xent_explicit_candidates_equal_plain_form() -> None:
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    torch.testing.assert_close(nt_xent(z1, z2, 0.3, z1_all=z1, z2_all=z2, offset=0), nt_xent(z1, z2, 0.3))


def test_nt_xent_split_batch_equals_full_batch_values_and_gradients() -> None:
    # What two processes compute: each takes half the anchors against all candidates with its offset.
    g = torch.Generator().manual_seed(3)
    x1, x2 = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    )
    full_1, full_2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    full = nt_xent(full_1, full_2, 0.2)
    full.backward()

    split_1, split_2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    halves = [
        nt_xent(split_1[s : s + 3], split_2[s : s + 3], 0.2, z1_all=split_1, z2_all=split_2, offset=s)
        for s in (0, 3)
    ]
    averaged = (halves[0] + halves[1]) / 2
    averaged.backward()

    torch.testing.assert_close(averaged, full)
    torch.testing.assert_close(split_1.grad, full_1.grad)
    torch.testing.assert_close(split_2.grad, full_2.grad)
    assert not torch.allclose(halves[0], halves[1])  # the halves differ, so the check is not vacuous


def test_nt_xent_returns_fp32_for_bf16_inputs() -> None:
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(4, 8, generator=g).bfloat16(), torch.randn(4, 8, generator=g).bfloat16()
    loss = nt_xent(z1, z2, 0.1)
    assert loss.dtype == torch.float32
    # The same bf16 values, upcast first: the loss must not lose precision in bf16 arithmetic.
    torch.testing.assert_close(loss, nt_xent(z1.float(), z2.float(), 0.1), rtol=1e-6, atol=1e-6)


def test_nt_xent_ignores_autocast() -> None:
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1, z2, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, nt_xent(z1, z2, 0.1), rtol=1e-6, atol=1e-6)


def test_nt_xent_single_sample_has_no_negatives() -> None:
    # With N = 1 the positive is the only candidate left, whatever its cosine: loss 0.
    assert nt_xent(torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 0.5]])).item() == pytest.approx(
        0.0, abs=1e-7
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"z1": torch.randn(3), "z2": torch.randn(3)}, "must be \\(B, D\\)"),
        ({"z1": torch.randn(3, 2), "z2": torch.randn(4, 2)}, "same shape"),
        ({"z1": torch.ones(3, 2, dtype=torch.int64), "z2": torch.ones(3, 2, dtype=torch.int64)}, "floating"),
        ({"z1": torch.randn(3, 2), "z2": torch.randn(3, 2), "temperature": 0.0}, "temperature"),
        ({"z1": torch.randn(3, 2), "z2": torch.randn(3, 2), "z1_all": torch.randn(6, 2)}, "both"),
        ({"z1": torch.randn(3, 2), "z2": torch.randn(3, 2), "offset": 3}, "offset"),
        (
            {
                "z1": torch.randn(3, 2),
                "z2": torch.randn(3, 2),
                "z1_all": torch.randn(6, 2),
                "z2_all": torch.randn(6, 2),
                "offset": 4,
            },
            "offset=4",
        ),
    ],
)
def test_nt_xent_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        nt_xent(**kwargs)


# ---------------------------------------------------------------- BYOL


def test_byol_hand_computed_values() -> None:
    p = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    z_same = torch.tensor([[5.0, 0.0], [1.0, 0.0], [0.0, 0.1]])
    z_opposite = -z_same
    z_orthogonal = torch.tensor([[0.0, 1.0], [0.0, -4.0], [2.0, 0.0]])
    assert byol(p, z_same).item() == pytest.approx(0.0, abs=1e-7)
    assert byol(p, z_opposite).item() == pytest.approx(4.0, rel=1e-6)
    assert byol(p, z_orthogonal).item() == pytest.approx(2.0, rel=1e-6)
    # Mixed batch: the mean of 0, 4 and 2.
    mixed = torch.stack([z_same[0], z_opposite[1], z_orthogonal[2]])
    assert byol(p, mixed).item() == pytest.approx(2.0, rel=1e-6)


def test_byol_equals_two_minus_two_cosine() -> None:
    g = torch.Generator().manual_seed(6)
    p, z = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    expected = (2 - 2 * torch.nn.functional.cosine_similarity(p, z, dim=-1)).mean()
    torch.testing.assert_close(byol(p, z), expected)


def test_byol_target_gets_no_gradient_and_prediction_gradient_matches_formula() -> None:
    g = torch.Generator().manual_seed(7)
    p = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = byol(p, z)
    loss.backward()
    assert z.grad is None
    # d/dp of (2 - 2 p̂·ẑ) / B is -(2/B) (ẑ - (p̂·ẑ) p̂) / ||p||.
    with torch.no_grad():
        p_norm = p.norm(dim=-1, keepdim=True)
        p_hat, z_hat = p / p_norm, z / z.norm(dim=-1, keepdim=True)
        cos = (p_hat * z_hat).sum(dim=-1, keepdim=True)
        expected = -(2.0 / p.shape[0]) * (z_hat - cos * p_hat) / p_norm
    torch.testing.assert_close(p.grad, expected)
    assert loss.dtype == torch.float64  # float64 input is not rounded down to fp32


def test_byol_returns_fp32_for_bf16_inputs() -> None:
    g = torch.Generator().manual_seed(8)
    p, z = torch.randn(4, 8, generator=g).bfloat16(), torch.randn(4, 8, generator=g).bfloat16()
    loss = byol(p, z)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, byol(p.float(), z.float()), rtol=1e-6, atol=1e-6)


def test_byol_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        byol(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="must be \\(B, D\\)"):
        byol(torch.randn(2, 3, 4), torch.randn(2, 3, 4))


def test_l2_normalize_matches_definition() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-8, 0.0]])
    out = l2_normalize(x)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(out[1], torch.zeros(2))  # the floor keeps zero vectors finite
    # Below the floor (squared norm < 1e-12) the authors' formula divides by 1e-6, not by the norm.
    torch.testing.assert_close(out[2], torch.tensor([1e-2, 0.0]))
