"""SimCLR and BYOL against their definitions: the loss on the heads' outputs, the authors' head, the
loss scale of the authors' code, and the EMA target with the authors' momentum timing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.encoders import ENCODERS
from selfsup.heads import FeatureScale
from selfsup.losses import byol as byol_loss
from selfsup.losses import nt_xent
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.train.schedules import cosine_momentum


def views(batch: int = 8, size: int = 12) -> Views:
    g = torch.Generator().manual_seed(0)
    return Views(inputs=[torch.randn(batch, 3, size, size, generator=g) for _ in range(2)])


def step(k: int, total: int = 10) -> StepInfo:
    return StepInfo(step=k, total_steps=total)


def test_simclr_loss_is_nt_xent_of_the_projections_of_both_views() -> None:
    torch.manual_seed(0)
    method = METHODS.get("simclr")(
        ENCODERS.create("small_cnn", width=4), hidden_dim=16, projection_dim=8, temperature=0.3
    )
    v = views()
    out = method(v, step(0))
    z = method.projector(method.encoder(torch.cat(v.inputs)).pooled)
    expected = nt_xent(z[:8], z[8:], temperature=0.3)
    torch.testing.assert_close(out.loss, expected)


def test_simclr_head_is_the_authors() -> None:
    """google-research/simclr model_util.py: Linear(no bias)-BN-ReLU, then Linear(no bias) and a BN with
    a learnable scale and no shift (``linear_layer(use_bias=False, use_bn=True)``), weights N(0, 0.01²)."""
    torch.manual_seed(0)
    method = METHODS.get("simclr")(ENCODERS.create("resnet18", width=64), projection_dim=128)
    layers = list(method.projector.layers)
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, FeatureScale]
    first, last_bn, scale = layers[0], layers[4], layers[5]
    assert first.in_features == first.out_features == 512 and first.bias is None and layers[3].bias is None
    assert layers[1].affine and not last_bn.affine and scale.weight.shape == (128,)
    std = torch.cat([first.weight.flatten(), layers[3].weight.flatten()]).std().item()
    assert abs(std - 0.01) < 0.0005
    # The paper's head, on request: Linear-BN-ReLU-Linear with a bias and no last BN.
    paper = METHODS.get("simclr")(ENCODERS.create("small_cnn", width=4), head_last_bn=False)
    assert [type(m) for m in paper.projector.layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert paper.projector.layers[3].bias is not None


def test_simclr_loss_scale_two_is_the_authors_sum_of_both_directions() -> None:
    """The authors' add_contrastive_loss returns loss_a + loss_b, each a mean over the local batch."""
    torch.manual_seed(0)
    encoder = ENCODERS.create("small_cnn", width=4)
    mean = METHODS.get("simclr")(encoder, hidden_dim=16, projection_dim=8, temperature=0.5)
    authors = METHODS.get("simclr")(encoder, hidden_dim=16, projection_dim=8, temperature=0.5, loss_scale=2.0)
    authors.projector.load_state_dict(mean.projector.state_dict())
    v = views()
    z = mean.projector(mean.encoder(torch.cat(v.inputs)).pooled)
    a, b = F.normalize(z[:8], dim=1), F.normalize(z[8:], dim=1)
    logits_aa = a @ a.T / 0.5 - 1e9 * torch.eye(8)
    logits_bb = b @ b.T / 0.5 - 1e9 * torch.eye(8)
    labels = torch.arange(8)
    loss_a = F.cross_entropy(torch.cat([a @ b.T / 0.5, logits_aa], 1), labels)
    loss_b = F.cross_entropy(torch.cat([b @ a.T / 0.5, logits_bb], 1), labels)
    torch.testing.assert_close(authors(v, step(0)).loss, loss_a + loss_b)
    torch.testing.assert_close(mean(v, step(0)).loss, (loss_a + loss_b) / 2)


def test_byol_loss_and_target_update() -> None:
    torch.manual_seed(0)
    method = METHODS.get("byol")(
        ENCODERS.create("small_cnn", width=4), hidden_dim=16, projection_dim=8, base_momentum=0.9
    )
    v = views()
    out = method(v, step(0))
    online = lambda x: method.predictor(method.projector(method.encoder(x).pooled))  # noqa: E731
    target = lambda x: method.target.module.head(method.target.module.encoder(x).pooled)  # noqa: E731
    with torch.no_grad():
        expected = byol_loss(online(v.inputs[0]), target(v.inputs[1])) + byol_loss(
            online(v.inputs[1]), target(v.inputs[0])
        )
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is None for p in method.target.parameters())  # the target is never trained

    # Change the online weights, then one target update must follow the cosine momentum formula.
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(0.5)
    before = {k: v.clone() for k, v in method.target.module.encoder.state_dict().items()}
    student = method.encoder.state_dict()
    method.on_optimizer_step(step(3))
    m = cosine_momentum(3, 10, 0.9, 1.0)
    for key, new in method.target.module.encoder.state_dict().items():
        if new.is_floating_point() and "running" not in key:
            torch.testing.assert_close(new, m * before[key] + (1 - m) * student[key])
    assert abs(method.last_momentum - m) < 1e-12


def test_byol_registers_the_encoder_once() -> None:
    method = METHODS.get("byol")(ENCODERS.create("small_cnn", width=4), hidden_dim=16, projection_dim=8)
    keys = list(method.state_dict())
    assert any(k.startswith("encoder.") for k in keys)
    assert not any(k.startswith("online.") for k in keys)
    assert any(k.startswith("target.module.encoder.") for k in keys)


def test_byol_momentum_is_taken_at_the_step_before_the_update() -> None:
    """deepmind-research byol_experiment.py: ``tau = target_ema(global_step)`` before the step counter is
    incremented, like the learning rate: the first update uses the base momentum, and the last one
    tau((K - 1) / K) < 1, which still moves the target."""
    torch.manual_seed(0)
    method = METHODS.get("byol")(
        ENCODERS.create("small_cnn", width=4), hidden_dim=16, projection_dim=8, base_momentum=0.9
    )
    method.on_optimizer_step(step(0))
    assert method.last_momentum == pytest.approx(0.9)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target.module.encoder.parameters()]
    method.on_optimizer_step(step(9))
    assert (
        method.last_momentum == pytest.approx(cosine_momentum(9, 10, 0.9, 1.0)) and method.last_momentum < 1
    )
    after = list(method.target.module.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
