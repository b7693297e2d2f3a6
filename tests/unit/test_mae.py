"""MAE on a ViT: the decoder's input equals MAE's un-shuffling, the loss a direct computation, and nothing
but the masked patches' pixels enters the loss."""

from __future__ import annotations

import pytest
import torch

from selfsup.augment.image_masks import random_patch_mask
from selfsup.data.base import DataInfo
from selfsup.encoders import ENCODERS
from selfsup.errors import ConfigError
from selfsup.losses import patchify, unpatchify
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.mae import MAE, scatter_visible

SIZE, PATCH = 16, 4
INFO = DataInfo(modality="image", sample_shape=(3, SIZE, SIZE), dtype="uint8")
STEP = StepInfo(0, 10)


def _method(**options) -> MAE:
    torch.manual_seed(0)
    encoder = ENCODERS.create(
        "vit_tiny", info=INFO, embed_dim=32, depth=2, num_heads=2, patch_size=PATCH, pos_embed="sincos"
    )
    defaults = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
    return METHODS.get("mae")(encoder=encoder, **{**defaults, **options})


def _views(batch: int = 4, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    return Views(inputs=[x], num_global=1, masks=[random_patch_mask(batch, 16, 0.75, g)])


def test_scatter_visible_equals_mae_unshuffle() -> None:
    """facebookresearch/mae, models_mae.py: forward_decoder's un-shuffle of [visible (shuffled), mask tokens]
    with ids_restore gives what scatter_visible gives from the visible tokens in ascending order."""
    g = torch.Generator().manual_seed(0)
    b, n, d, keep = 3, 16, 5, 4
    tokens = torch.randn(b, n, d, generator=g)
    token = torch.randn(1, 1, d, generator=g)
    noise = torch.rand(b, n, generator=g)
    # MAE's random_masking + forward_decoder (transcribed)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x_masked = torch.gather(tokens, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d))
    mask_tokens = token.repeat(b, n - keep, 1)
    x_ = torch.cat([x_masked, mask_tokens], dim=1)
    reference = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones(b, n)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore).bool()
    visible = tokens[~mask].reshape(b, keep, d)  # the ViT's "drop": ascending patch order
    torch.testing.assert_close(scatter_visible(visible, mask, token), reference, rtol=0, atol=0)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_equals_direct_computation(norm_pix: bool) -> None:
    method = _method(norm_pix_loss=norm_pix)
    views = _views()
    out = method(views, STEP)
    x, mask = views.inputs[0], views.masks[0]
    with torch.no_grad():
        tokens = method.encoder(x, mask=mask, mask_mode="drop").last_hidden_state
        pred = method.decoder(tokens, mask)
        target = patchify(x, PATCH)
        if norm_pix:  # MAE's forward_loss
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(out.loss, expected)
    assert out.features.shape == (4, 32) and not out.features.requires_grad
    assert out.logs["masked_fraction"] == 0.75


def test_gradients_reach_encoder_and_decoder_and_only_masked_pixels_matter() -> None:
    method = _method()
    views = _views()
    x = views.inputs[0].clone().requires_grad_(True)
    mask = views.masks[0]
    out = method(Views(inputs=[x], num_global=1, masks=[mask]), STEP)
    out.loss.backward()
    for prefix in ("encoder.blocks.", "encoder.patch_embed.", "decoder.blocks.", "decoder.mask_token"):
        grads = [p.grad for n, p in method.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), prefix
    assert method.encoder.mask_token.grad is None and not method.encoder.mask_token.requires_grad
    # The encoder never sees masked patches and targets are detached: their pixels get no gradient.
    per_patch = patchify(x.grad, PATCH).abs().sum(-1)  # (B, N)
    assert torch.all(per_patch[mask] == 0) and torch.all(per_patch[~mask] > 0)
    # A masked patch's pixels enter the loss (as targets): changing them changes it (not by a constant per
    # patch: norm_pix_loss removes that).
    patches = patchify(x.detach(), PATCH)
    patches[mask] += torch.randn(patches[mask].shape, generator=torch.Generator().manual_seed(1))
    changed = unpatchify(patches, PATCH)
    assert not torch.allclose(
        method(Views(inputs=[changed], num_global=1, masks=[mask]), STEP).loss, out.loss
    )


def test_rejects_other_encoders_and_other_grids() -> None:
    with pytest.raises(ConfigError, match="drop"):
        METHODS.get("mae")(encoder=ENCODERS.create("small_cnn", width=4))
    method = _method()
    x = torch.randn(2, 3, 24, 24)
    with pytest.raises(ValueError, match="grid"):
        method(
            Views(inputs=[x], num_global=1, masks=[random_patch_mask(2, 36, 0.75, torch.Generator())]), STEP
        )
    with pytest.raises(ValueError, match="mask"):
        method(Views(inputs=[torch.randn(2, 3, SIZE, SIZE)], num_global=1), STEP)


def test_short_run_decreases_the_loss() -> None:
    method = _method()
    views = _views(batch=4, seed=3)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for k in range(6):
        optimizer.zero_grad()
        loss = method(views, StepInfo(k, 6)).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
