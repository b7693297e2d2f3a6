"""SimCLR and BYOL against their definitions: the loss on the heads' outputs, the EMA target."""

from __future__ import annotations

import torch

from selfsup.encoders import ENCODERS
from selfsup.losses import byol as byol_loss
from selfsup.losses import nt_xent
from selfsup.methods import METHODS, Views
from selfsup.train.schedules import cosine_momentum


def views(batch: int = 8, size: int = 12) -> Views:
    g = torch.Generator().manual_seed(0)
    return Views(crops=[torch.randn(batch, 3, size, size, generator=g) for _ in range(2)])


def test_simclr_loss_is_nt_xent_of_the_projections_of_both_views() -> None:
    torch.manual_seed(0)
    method = METHODS.get("simclr")(
        ENCODERS.create("small_cnn", width=4), hidden_dim=16, projection_dim=8, temperature=0.3
    )
    v = views()
    out = method(v, 0)
    z = method.projector(method.encoder(torch.cat(v.crops)).pooled)
    expected = nt_xent(z[:8], z[8:], temperature=0.3)
    torch.testing.assert_close(out.loss, expected)


def test_byol_loss_and_target_update() -> None:
    torch.manual_seed(0)
    method = METHODS.get("byol")(
        ENCODERS.create("small_cnn", width=4), hidden_dim=16, projection_dim=8, base_momentum=0.9
    )
    v = views()
    out = method(v, 0)
    online = lambda x: method.predictor(method.projector(method.encoder(x).pooled))  # noqa: E731
    target = lambda x: method.target.module.projector(method.target.module.encoder(x).pooled)  # noqa: E731
    with torch.no_grad():
        expected = byol_loss(online(v.crops[0]), target(v.crops[1])) + byol_loss(
            online(v.crops[1]), target(v.crops[0])
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
    method.on_optimizer_step(3, 10)
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
