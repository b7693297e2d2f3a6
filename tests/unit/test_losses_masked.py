"""MAE and I-JEPA losses (and MAE's patchify) against transcriptions of the authors' code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import ijepa, mae, patchify, unpatchify


def reference_mae_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """facebookresearch/mae, models_mae.py, MaskedAutoencoderViT.patchify."""
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))


def reference_mae_forward_loss(
    target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool
):
    """facebookresearch/mae, models_mae.py, MaskedAutoencoderViT.forward_loss (target = patchify(imgs))."""
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def reference_ijepa_loss(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """facebookresearch/ijepa, src/train.py, forward_target (the layer norm) + loss_fn (one process)."""
    h = F.layer_norm(h, (h.size(-1),))
    return F.smooth_l1_loss(z, h)


def _inputs(b: int = 3, n: int = 16, p: int = 48, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, n, p, generator=g, dtype=dtype)
    target = torch.randn(b, n, p, generator=g, dtype=dtype) * 2 + 0.5
    mask = torch.rand(b, n, generator=g) < 0.75
    return pred, target, mask


def test_patchify_equals_mae_and_roundtrips() -> None:
    imgs = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ours = patchify(imgs, 4)
    assert torch.equal(ours, reference_mae_patchify(imgs, 4))
    assert ours.shape == (2, 16, 48)
    assert torch.equal(unpatchify(ours, 4), imgs)
    rect = torch.randn(2, 1, 8, 12)
    assert torch.equal(unpatchify(patchify(rect, 4), 4, grid=(2, 3), channels=1), rect)
    # Patch (0, 1) covers rows 0..3, columns 4..7; its vector is (row, column, channel) ordered.
    assert torch.equal(ours[0, 1].view(4, 4, 3), imgs[0, :, 0:4, 4:8].permute(1, 2, 0))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_equals_reference_value_and_grad(norm_pix: bool) -> None:
    pred, target, mask = _inputs()
    p1 = pred.clone().requires_grad_(True)
    p2 = pred.clone().requires_grad_(True)
    ours = mae(p1, target, mask, norm_pix=norm_pix)
    ref = reference_mae_forward_loss(target, p2, mask.double(), norm_pix)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-12, atol=1e-12)
    assert torch.all(p1.grad[~mask] == 0)  # visible patches get no gradient


def test_mae_only_masked_targets_matter() -> None:
    pred, target, mask = _inputs()
    base = mae(pred, target, mask, norm_pix=True)
    moved = target.clone()
    moved[~mask] += 10.0
    torch.testing.assert_close(mae(pred, moved, mask, norm_pix=True), base)
    moved[mask] += 1.0
    assert not torch.allclose(mae(pred, moved, mask), mae(pred, target, mask))


def test_mae_normalizer_and_empty_mask() -> None:
    pred, target, mask = _inputs()
    total = mae(pred, target, mask) * mask.sum()
    torch.testing.assert_close(mae(pred, target, mask, normalizer=torch.tensor(4.0)), total / 4)
    empty = torch.zeros_like(mask)
    p = pred.clone().requires_grad_(True)
    loss = mae(p, target, empty)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(p.grad).all()


def test_ijepa_equals_reference_value_and_grad() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, 12, generator=g, dtype=torch.float64)
    h = torch.randn(8, 5, 12, generator=g, dtype=torch.float64) * 3 + 1
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ours, ref = ijepa(z1, h), reference_ijepa_loss(z2, h)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-12, atol=1e-12)
    target = h.clone().requires_grad_(True)
    ijepa(z.clone().requires_grad_(True), target).backward()
    assert target.grad is None  # targets are detached


@pytest.mark.parametrize("loss", ["mae", "ijepa"])
def test_finite_on_batch_two_duplicates_and_bf16(loss: str) -> None:
    torch.manual_seed(0)
    same = torch.randn(1, 4, 48).expand(2, 4, 48).contiguous()
    constant = torch.ones(2, 4, 48)  # zero per-patch variance: norm_pix divides by sqrt(1e-6)
    mask = torch.tensor([[True, False, True, True], [True, True, False, True]])
    for pred, target in ((same, same), (same, constant), (same.bfloat16(), constant.bfloat16())):
        p = pred.clone().requires_grad_(True)
        value = mae(p, target, mask, norm_pix=True) if loss == "mae" else ijepa(p, target)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(p.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = mae(same, constant, mask) if loss == "mae" else ijepa(same, constant)
    assert value.dtype == torch.float32


def test_shape_errors() -> None:
    pred, target, mask = _inputs()
    with pytest.raises(ValueError):
        mae(pred, target[:, :3], mask)
    with pytest.raises(ValueError):
        mae(pred, target, mask[:, :3])
    with pytest.raises(ValueError):
        ijepa(pred, target[:, :3])
    with pytest.raises(ValueError):
        patchify(torch.zeros(1, 3, 10, 10), 4)
