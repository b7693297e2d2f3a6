"""W-MSE's whitening and loss against a transcription of the authors' code; the method's sub-batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.functional import conv2d

from selfsup.encoders import ENCODERS
from selfsup.losses import whiten, wmse
from selfsup.methods import METHODS, StepInfo, Views

# --------------------------------------------------------------------------- references


def reference_whitening2d(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """htdt/self-supervised ``methods/whitening.py``, ``Whitening2d.forward`` in training mode with
    ``track_running_stats=False`` (as ``WMSE`` builds it), transcribed: the mean, the unbiased covariance
    of the centred batch, its shrinkage, the inverse Cholesky factor applied as a 1x1 convolution."""
    num_features = x.shape[1]
    x = x.unsqueeze(2).unsqueeze(3)
    m = x.mean(0).view(num_features, -1).mean(-1).view(1, -1, 1, 1)
    xn = x - m
    t = xn.permute(1, 0, 2, 3).contiguous().view(num_features, -1)
    f_cov = torch.mm(t, t.permute(1, 0)) / (t.shape[-1] - 1)
    eye = torch.eye(num_features, dtype=f_cov.dtype)
    f_cov_shrinked = (1 - eps) * f_cov + eps * eye
    inv_sqrt = torch.linalg.solve_triangular(torch.linalg.cholesky(f_cov_shrinked), eye, upper=False)
    inv_sqrt = inv_sqrt.contiguous().view(num_features, num_features, 1, 1)
    return conv2d(xn, inv_sqrt).squeeze(2).squeeze(2)


def reference_norm_mse_loss(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """htdt/self-supervised ``methods/norm_mse.py``, ``norm_mse_loss``."""
    x0 = F.normalize(x0)
    x1 = F.normalize(x1)
    return 2 - 2 * (x0 * x1).sum(dim=-1).mean()


def reference_wmse(
    h: torch.Tensor, bs: int, w_size: int, perms: list[torch.Tensor], eps: float = 0.0, num_samples: int = 2
) -> torch.Tensor:
    """htdt/self-supervised ``methods/w_mse.py``, ``WMSE.forward`` after the head: ``h`` is the
    concatenated projections of the views, ``perms`` the ``torch.randperm(bs)`` of each ``w_iter``."""
    loss = 0
    num_pairs = num_samples * (num_samples - 1) // 2
    for perm in perms:
        z = torch.empty_like(h)
        for idx in perm.view(-1, w_size):
            for i in range(num_samples):
                z[idx + i * bs] = reference_whitening2d(h[idx + i * bs], eps)
        for i in range(num_samples - 1):
            for j in range(i + 1, num_samples):
                loss += reference_norm_mse_loss(z[i * bs : (i + 1) * bs], z[j * bs : (j + 1) * bs])
    return loss / (len(perms) * num_pairs)


def _views(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(
        d, d, generator=g, dtype=torch.float64
    )
    z2 = z1 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.requires_grad_(), z2.requires_grad_()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_whiten_equals_the_authors_and_whitens(eps: float) -> None:
    z, _ = _views(20, 5)
    ours = whiten(z, eps)
    torch.testing.assert_close(ours, reference_whitening2d(z, eps), rtol=1e-10, atol=1e-10)
    if eps == 0.0:
        covariance = ours.T @ ours / (ours.shape[0] - 1)
        torch.testing.assert_close(covariance, torch.eye(5, dtype=torch.float64), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    ("n", "w_size", "iterations", "eps"), [(16, 8, 1, 0.0), (24, 8, 3, 0.0), (12, 12, 2, 0.05)]
)
def test_wmse_equals_the_authors_value_and_gradient(n: int, w_size: int, iterations: int, eps: float) -> None:
    z1, z2 = _views(n, 4)
    g = torch.Generator().manual_seed(7)
    perms = [torch.randperm(n, generator=g) for _ in range(iterations)]
    ours = wmse(z1, z2, w_size, iterations, eps, permutations=torch.stack(perms))
    a1, a2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    theirs = reference_wmse(torch.cat([a1, a2]), n, w_size, perms, eps)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(z1.grad, a1.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(z2.grad, a2.grad, rtol=1e-8, atol=1e-10)


def test_wmse_draws_its_sub_batches_from_the_generator_only() -> None:
    z1, z2 = _views(16, 3)
    first = wmse(z1, z2, 8, 2, generator=torch.Generator().manual_seed(1))
    again = wmse(z1, z2, 8, 2, generator=torch.Generator().manual_seed(1))
    other = wmse(z1, z2, 8, 2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Without a generator: consecutive sub-batches, the identity permutation.
    in_order = wmse(z1, z2, 8, 1)
    torch.testing.assert_close(in_order, wmse(z1, z2, 8, 1, permutations=torch.arange(16)[None]))
    # The whole batch at once does not depend on the order.
    torch.testing.assert_close(
        wmse(z1, z2, 16, 1, generator=torch.Generator().manual_seed(3)),
        wmse(z1, z2, 16, 1),
        rtol=1e-10,
        atol=1e-12,
    )


def test_duplicated_embeddings_are_finite_with_eps_and_a_clear_error_without() -> None:
    z = torch.randn(1, 4, dtype=torch.float64).expand(8, 4).clone().requires_grad_()
    loss = wmse(z, z + 0, 8, eps=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="singular"):
        wmse(z, z + 0, 8, eps=0.0)


def test_batch_of_two_and_bf16_stay_finite() -> None:
    z1, z2 = _views(2, 3)
    loss = wmse(z1, z2, 2, eps=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all()
    b1, b2 = (x.detach().bfloat16() for x in _views(16, 4))
    value = wmse(b1, b2, 8)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(value, wmse(b1.float(), b2.float(), 8))


def test_wmse_rejects_bad_sub_batches() -> None:
    z1, z2 = _views(12, 3)
    with pytest.raises(ValueError, match="divides"):
        wmse(z1, z2, 5)
    with pytest.raises(ValueError, match="permutation"):
        wmse(z1, z2, 6, permutations=torch.zeros(1, 12, dtype=torch.int64))


def _method(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    encoder = ENCODERS.create("mlp", in_features=6, hidden_dim=16)
    return METHODS.get("wmse")(encoder=encoder, hidden_dim=16, projection_dim=3, **options)


def test_the_method_draws_the_same_sub_batches_for_a_step_and_new_ones_for_the_next() -> None:
    method = _method(whiten_size=4)
    g = torch.Generator().manual_seed(0)
    views = Views(inputs=[torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)])
    a = method(views, StepInfo(3, 10)).loss
    assert torch.equal(a, method(views, StepInfo(3, 10)).loss)
    assert not torch.equal(a, method(views, StepInfo(4, 10)).loss)


def test_the_method_explains_sizes_that_cannot_work() -> None:
    from selfsup.errors import ConfigError

    with pytest.raises(ConfigError, match="singular"):
        _method(whiten_size=3)
    views = Views(inputs=[torch.randn(6, 6), torch.randn(6, 6)])
    with pytest.raises(ConfigError, match="divide"):
        _method(whiten_size=4)(views, StepInfo(0, 1))
