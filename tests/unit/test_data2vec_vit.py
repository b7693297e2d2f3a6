"""The ``data2vec`` method on a ViT (data2vec vision, Baevski et al. 2022): block-masked view, masked patches
replaced by the ViT's mask token, targets from the EMA teacher's top-K block outputs without the class
token, fairseq vision v1's normalisation (layer norm of the average) and smooth L1 loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.augment.image_masks import block_mask
from selfsup.data.base import DataInfo
from selfsup.encoders import ENCODERS
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.data2vec import Data2Vec
from tests.tiny_data import build_parts, make_views

SIZE, PATCH = 16, 4
INFO = DataInfo(modality="image", sample_shape=(3, SIZE, SIZE), dtype="uint8")
STEP = StepInfo(0, 10)
VISION = {  # fairseq config/vision/pretraining/base_imagenet_d2v1.yaml + Data2VecVisionConfig defaults
    "top_k": 2,
    "instance_norm_target_layer": False,
    "layer_norm_targets": True,
    "loss_beta": 2.0,
    "ema_end_decay": 0.9998,
}


def _method(**options) -> Data2Vec:
    torch.manual_seed(0)
    encoder = ENCODERS.create("vit_tiny", info=INFO, embed_dim=32, depth=3, num_heads=2, patch_size=PATCH)
    return METHODS.get("data2vec")(encoder=encoder, **{**VISION, **options})


def _views(batch: int = 4, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    return Views(inputs=[x], num_global=1, masks=[block_mask(batch, (4, 4), g, ratio_range=(0.5, 0.5))])


def _expected_loss(method: Data2Vec, x: torch.Tensor, mask: torch.Tensor, layers: list[torch.Tensor]):
    """fairseq data2vec_vision.py forward with our student / head: y = layer_norm(mean of the top-K block
    outputs without the class token)[mask]; smooth L1 (beta 2) summed over dims, scaled by 1/sqrt(D),
    averaged over masked patches."""
    y = F.layer_norm(sum(t[:, 1:] for t in layers) / len(layers), (32,))[mask]
    student = method.encoder(x, mask=mask, mask_mode="replace").last_hidden_state[:, 1:]
    pred = method.head(student[mask])
    return F.smooth_l1_loss(pred, y, reduction="none", beta=2.0).sum(-1).sum() / math.sqrt(32) / mask.sum()


def test_image_policy_and_contract_build() -> None:
    assert Data2Vec.default_view_policies["image"] == "masked_image"
    method, policy, _, data = build_parts("data2vec", "vit_tiny")
    views = make_views(policy, data)
    assert views.masks[0].shape == (len(data), 16) and views.masks[0].any()
    assert torch.isfinite(method(views, STEP).loss)


def test_loss_equals_fairseq_vision_targets_with_hidden_states() -> None:
    method = _method()
    method.eval()
    views = _views()
    x, mask = views.inputs[0], views.masks[0]
    out = method(views, STEP)
    with torch.no_grad():
        layers = list(method.teacher.module(x).hidden_states[1:])[-2:]
        expected = _expected_loss(method, x, mask, layers)
    torch.testing.assert_close(out.loss, expected)
    assert out.logs["masked_fraction"] == mask.float().mean()


def test_teacher_block_outputs_are_used_when_the_encoder_offers_them() -> None:
    """The ViT's ``block_outputs`` (every block's output before the final norm: fairseq's ``"end"`` targets)
    are the targets: the top target layer is the last block's raw output, not the normed
    ``last_hidden_state``."""
    method = _method()
    method.eval()
    vit = method.teacher.module
    with torch.no_grad():  # a trained final norm: its affine makes the two top layers differ
        vit.norm.weight.uniform_(0.5, 3.0)
        vit.norm.bias.uniform_(-1.0, 1.0)
    views = _views(seed=2)
    x, mask = views.inputs[0], views.masks[0]
    out = method(views, STEP)
    with torch.no_grad():
        expected = _expected_loss(method, x, mask, vit.block_outputs(x)[-2:])
        normed = _expected_loss(method, x, mask, list(vit(x).hidden_states[-2:]))
    torch.testing.assert_close(out.loss, expected)
    assert not torch.allclose(out.loss, normed)  # the final norm really differs


def test_gradients_and_frozen_teacher() -> None:
    method = _method()
    views = _views()
    out = method(views, STEP)
    out.loss.backward()
    assert method.encoder.mask_token.grad is not None and method.encoder.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    before = {n: t.clone() for n, t in method.teacher.module.state_dict().items()}
    method(views, STEP).loss.backward()
    assert all(torch.equal(before[n], t) for n, t in method.teacher.module.state_dict().items())
