"""I-JEPA on a ViT: predictor equals a transcription of I-JEPA's, the loss a direct computation, the target
encoder gets no gradient and moves once per optimizer step, and the context never sees the targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.augment.image_masks import multi_block_masks
from selfsup.data.base import DataInfo
from selfsup.encoders import ENCODERS
from selfsup.losses import patchify
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.ijepa import IJEPA, linear_momentum, mask_indices

SIZE, PATCH = 16, 2  # an 8x8 grid: room for disjoint context and target blocks
INFO = DataInfo(modality="image", sample_shape=(3, SIZE, SIZE), dtype="uint8")
STEP = StepInfo(0, 10)


def _method(class_token: bool = False, **options) -> IJEPA:
    torch.manual_seed(0)
    encoder = ENCODERS.create(
        "vit_tiny",
        info=INFO,
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=PATCH,
        pos_embed="sincos",
        class_token=class_token,
        pool="cls" if class_token else "mean",
    )
    return METHODS.get("ijepa")(encoder=encoder, **{"predictor_dim": 16, "predictor_depth": 2, **options})


def _views(batch: int = 3, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    context, targets = multi_block_masks(batch, (8, 8), g, min_keep=4)
    return Views(inputs=[x], num_global=1, masks=[context], aux={"target_masks": targets})


def _apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """facebookresearch/ijepa, src/masks/utils.py, apply_masks."""
    all_x = []
    for m in masks:
        mask_keep = m.unsqueeze(-1).repeat(1, 1, x.size(-1))
        all_x += [torch.gather(x, dim=1, index=mask_keep)]
    return torch.cat(all_x, dim=0)


def reference_predictor(predictor, x: torch.Tensor, masks_x: torch.Tensor, masks: list[torch.Tensor]):
    """facebookresearch/ijepa, src/models/vision_transformer.py, VisionTransformerPredictor.forward
    (one context mask), on our predictor's weights."""
    b = len(x)
    x = predictor.embed(x)
    x_pos_embed = predictor.pos_embed.repeat(b, 1, 1)
    x = x + _apply_masks(x_pos_embed, [masks_x])
    _, n_ctxt, _ = x.shape
    pos_embs = _apply_masks(predictor.pos_embed.repeat(b, 1, 1), masks)
    pred_tokens = predictor.mask_token.repeat(pos_embs.size(0), pos_embs.size(1), 1)
    pred_tokens = pred_tokens + pos_embs
    x = x.repeat(len(masks), 1, 1)
    x = torch.cat([x, pred_tokens], dim=1)
    for blk in predictor.blocks:
        x = blk(x)
    x = predictor.norm(x)
    return predictor.proj(x[:, n_ctxt:])  # (M·B, K, D), mask-major


@pytest.mark.parametrize("class_token", [False, True])
def test_loss_equals_transcription_of_ijepa_train_step(class_token: bool) -> None:
    method = _method(class_token=class_token)
    views = _views()
    out = method(views, STEP)
    x, context, targets = views.inputs[0], views.masks[0], views.aux["target_masks"]
    p = int(class_token)
    masks_enc = mask_indices(~context)  # (B, Kc) indices, as I-JEPA's collator returns them
    masks_pred = [mask_indices(targets[:, m]) for m in range(targets.shape[1])]
    with torch.no_grad():
        # src/train.py: forward_target, forward_context, loss_fn
        h = method.target.module(x).last_hidden_state[:, p:]
        h = F.layer_norm(h, (h.size(-1),))
        h = _apply_masks(h, masks_pred)
        z = method.encoder(x, mask=context, mask_mode="drop").last_hidden_state[:, p:]
        z = reference_predictor(method.predictor, z, masks_enc, masks_pred)
        expected = F.smooth_l1_loss(z, h)
    torch.testing.assert_close(out.loss, expected)
    assert out.features.shape == (3, 32)


def test_target_encoder_gets_no_gradient_and_context_never_sees_targets() -> None:
    method = _method()
    views = _views()
    x = views.inputs[0].clone().requires_grad_(True)
    context = views.masks[0]
    out = method(Views(inputs=[x], num_global=1, masks=[context], aux=views.aux), STEP)
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in method.target.parameters())
    for prefix in ("encoder.blocks.", "predictor.blocks.", "predictor.mask_token", "predictor.embed."):
        grads = [q.grad for n, q in method.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), prefix
    # Only the context patches reach the loss with a gradient (the targets come from the frozen teacher).
    per_patch = patchify(x.grad, PATCH).abs().sum(-1)
    assert torch.all(per_patch[context] == 0) and torch.all(per_patch[~context] > 0)


def test_ema_moves_once_per_optimizer_step_with_the_linear_schedule() -> None:
    assert linear_momentum(0, 100) == 0.996
    assert linear_momentum(50, 100) == pytest.approx(0.998)
    assert linear_momentum(100, 100) == 1.0
    method = _method()
    views = _views()
    before = {n: t.clone() for n, t in method.target.module.state_dict().items()}
    with torch.no_grad():
        for parameter in method.encoder.parameters():
            parameter.add_(0.1)
    for _ in range(2):  # micro-batches
        method(views, StepInfo(50, 100)).loss.backward()
    assert all(torch.equal(before[n], t) for n, t in method.target.module.state_dict().items())
    method.on_optimizer_step(StepInfo(50, 100))
    m = linear_momentum(50, 100)
    student = dict(method.encoder.named_parameters())
    for name, t in method.target.module.named_parameters():
        torch.testing.assert_close(t, m * before[name] + (1 - m) * student[name].detach())
    assert method.last_momentum == m


def test_needs_the_policys_masks_and_equal_counts() -> None:
    method = _method()
    x = torch.randn(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="target"):
        method(Views(inputs=[x], num_global=1, masks=[torch.zeros(2, 64, dtype=torch.bool)]), STEP)
    uneven = torch.zeros(2, 1, 64, dtype=torch.bool)
    uneven[0, 0, :3] = True
    uneven[1, 0, :4] = True
    with pytest.raises(ValueError, match="as many"):
        mask_indices(uneven)
