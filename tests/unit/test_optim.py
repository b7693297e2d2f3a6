"""Optimizers: LARS against a hand-written single-tensor reference and hand-computed steps,
parameter groups (no decay / no LARS on norms and biases), AdamW decay, learning-rate setting."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from selfsup.train.optim import LARS, build_optimizer, param_groups, set_learning_rate


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, bias=False))


def _lars_reference(
    w: Tensor, g: Tensor, buf: Tensor, *, lr: float, momentum: float, wd: float, eta: float
) -> tuple[Tensor, Tensor]:
    """One LARS step for one tensor, following the BYOL authors' chain (decay, trust, momentum, -lr)."""
    d = g + wd * w
    w_norm, d_norm = float(w.norm()), float(d.norm())
    trust = eta * w_norm / d_norm if w_norm > 0 and d_norm > 0 else 1.0
    buf = momentum * buf + trust * d
    return w - lr * buf, buf


def test_lars_two_steps_match_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(2)]
    lrs = [0.5, 0.2]  # the rate changes between steps: checks lr is applied after the momentum buffer
    p = nn.Parameter(w0.clone())
    opt = LARS([p], lr=lrs[0], momentum=0.9, weight_decay=0.01, eta=0.02)
    w, buf = w0.clone(), torch.zeros_like(w0)
    for lr, g in zip(lrs, grads):
        set_learning_rate(opt, lr)
        p.grad = g.clone()
        opt.step()
        w, buf = _lars_reference(w, g, buf, lr=lr, momentum=0.9, wd=0.01, eta=0.02)
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=1e-12, atol=1e-12)
    assert not torch.equal(p.grad, torch.zeros_like(p.grad))  # .grad itself was not rescaled in place
    torch.testing.assert_close(p.grad, grads[1])


def test_lars_hand_computed_step() -> None:
    # ||w|| = 5, ||g|| = 1 -> trust = 0.001 * 5 / 1 = 0.005; update = 0.005 * g; lr 1 -> w - [0.003, 0.004]
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    p.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    LARS([p], lr=1.0).step()
    torch.testing.assert_close(p.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64))


def _solo_learn_lars_step(w: Tensor, g: Tensor, *, lr: float, wd: float, eta: float) -> Tensor:
    """One momentum-free step of solo-learn's LARS with ``clip_lars_lr=True`` (solo/utils/lars.py, from
    Lightning Bolts), for a tensor with ``wd = 0``, where its trust ratio and ours coincide."""
    w_norm, g_norm = float(w.norm()), float(g.norm())
    lars_lr = eta * w_norm / (g_norm + w_norm * wd + 1e-8)
    lars_lr = min(lars_lr / lr, 1.0)
    return w - lr * (lars_lr * (g + wd * w))


@pytest.mark.parametrize("gradient_scale", [1.0, 1e-4])  # trust below lr (no clip), then far above it
def test_lars_clip_lr_matches_solo_learn(gradient_scale: float) -> None:
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    g = gradient_scale * torch.randn(6, 4, generator=gen, dtype=torch.float64)
    for lr in (1.0, 0.3):
        p = nn.Parameter(w0.clone())
        p.grad = g.clone()
        LARS([p], lr=lr, momentum=0.0, eta=0.02, clip_lr=True).step()
        expected = _solo_learn_lars_step(w0, g, lr=lr, wd=0.0, eta=0.02)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-7, atol=1e-12)
    # Hand-computed: ||w|| = 5, ||g|| = 1e-3, eta 0.02 -> trust 100 > lr: the step is plain SGD, lr * g.
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    p.grad = torch.tensor([6e-4, 8e-4], dtype=torch.float64)
    LARS([p], lr=0.5, momentum=0.0, eta=0.02, clip_lr=True).step()
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 3e-4, 4.0 - 4e-4], dtype=torch.float64))
    unclipped = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    unclipped.grad = torch.tensor([6e-4, 8e-4], dtype=torch.float64)
    LARS([unclipped], lr=0.5, momentum=0.0, eta=0.02).step()  # lr * eta * ||w|| = 0.05 along g
    torch.testing.assert_close(unclipped.detach(), torch.tensor([2.97, 3.96], dtype=torch.float64))


def test_lars_clip_lr_is_a_config_option() -> None:
    from selfsup.api import make_config

    config = make_config("byol_cifar10")
    assert config.optim.name == "lars" and config.optim.clip_lr is True
    optimizer = build_optimizer("lars", _net(), lr=0.1, weight_decay=0.0, clip_lr=True)
    assert all(group["clip_lr"] for group in optimizer.param_groups)


def test_lars_zero_norm_edge_cases() -> None:
    # ||w|| == 0: trust 1, so the raw gradient is applied.
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad = torch.tensor([1.0, -2.0], dtype=torch.float64)
    LARS([p], lr=0.1).step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.2], dtype=torch.float64))
    # ||g|| == 0 and no decay: trust 1 times a zero update, nothing moves, nothing becomes NaN.
    q = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    q.grad = torch.zeros(2, dtype=torch.float64)
    LARS([q], lr=0.1).step()
    torch.testing.assert_close(q.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64))
    # Zero gradient with decay: d = 0.5 w = [1.5, 2], trust = 0.001 * 5 / 2.5 = 0.002, update [0.003, 0.004].
    r = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    r.grad = torch.zeros(2, dtype=torch.float64)
    LARS([r], lr=1.0, weight_decay=0.5).step()
    torch.testing.assert_close(r.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64))


def test_lars_excluded_params_get_plain_sgd_momentum_without_decay() -> None:
    net = _net()
    twin = _net()
    opt = build_optimizer("lars", net, lr=0.3, weight_decay=0.1, momentum=0.9)
    biases = [p for p in net.parameters() if p.ndim <= 1]
    twin_biases = [p for p in twin.parameters() if p.ndim <= 1]
    sgd = torch.optim.SGD(twin_biases, lr=0.3, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        for p, q in zip(net.parameters(), twin.parameters()):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
    for p, q in zip(biases, twin_biases):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_lars_skips_params_without_grad_and_validates() -> None:
    p = nn.Parameter(torch.ones(2, 2))
    LARS([p], lr=1.0).step()
    assert torch.equal(p.detach(), torch.ones(2, 2))
    with pytest.raises(ValueError, match="momentum"):
        LARS([p], lr=1.0, momentum=1.0)
    with pytest.raises(ValueError, match="eta"):
        LARS([p], lr=1.0, eta=0.0)


def test_param_groups_split() -> None:
    net = _net()
    net[0].bias.requires_grad_(False)  # frozen: left out
    net.extra = nn.Linear(2, 2)
    net.extra.weight = net[3].weight  # shared with net[3]: listed once (shapes (2, 4) vs (2, 2) irrelevant)
    groups = param_groups(net, 0.05)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    decay, no_decay = groups
    assert [id(p) for p in decay["params"]] == [id(net[0].weight), id(net[3].weight)]
    assert [id(p) for p in no_decay["params"]] == [id(net[1].weight), id(net[1].bias), id(net.extra.bias)]
    assert (decay["weight_decay"], decay["lars_exclude"]) == (0.05, False)
    assert (no_decay["weight_decay"], no_decay["lars_exclude"]) == (0.0, True)


def test_param_groups_errors() -> None:
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(frozen, 0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(nn.Linear(2, 2), -1.0)


def test_adamw_decays_only_matrices() -> None:
    net = nn.Linear(3, 2)
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    opt = build_optimizer("adamw", net, lr=0.1, weight_decay=0.5, betas=(0.8, 0.9))
    assert isinstance(opt, torch.optim.AdamW)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # Zero gradients: the Adam update is 0 / (0 + eps) = 0, so only decoupled decay acts: w *= 1 - lr * wd.
    torch.testing.assert_close(net.weight.detach(), w0 * (1 - 0.1 * 0.5))
    assert torch.equal(net.bias.detach(), b0)
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)


def test_build_sgd_and_set_learning_rate() -> None:
    net = _net()
    opt = build_optimizer("SGD", net, lr=0.4, weight_decay=1e-4, momentum=0.8)
    assert isinstance(opt, torch.optim.SGD)
    assert [(g["lr"], g["lr_scale"], g["momentum"], g["nesterov"]) for g in opt.param_groups] == [
        (0.4, 1.0, 0.8, False)
    ] * 2
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    opt.param_groups[1]["lr_scale"] = 0.5
    set_learning_rate(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]
    with pytest.raises(ValueError, match="learning rate"):
        set_learning_rate(opt, float("nan"))


def test_build_lars_and_unknown_name() -> None:
    opt = build_optimizer("lars", _net(), lr=1.0, weight_decay=1e-6, eta=0.002)
    assert isinstance(opt, LARS)
    assert [(g["eta"], g["lars_exclude"]) for g in opt.param_groups] == [(0.002, False), (0.002, True)]
    with pytest.raises(ValueError, match=r"Did you mean 'lars'\?.*Valid: adamw, lars, sgd"):
        build_optimizer("lasr", _net(), lr=1.0, weight_decay=0.0)


def test_fixed_lr_groups_keep_their_base_rate() -> None:
    """SimSiam's fixed predictor rate: the schedule moves the other groups, never a ``fixed_lr`` one."""
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    groups = [{"params": list(a.parameters())}, {"params": list(b.parameters()), "fixed_lr": True}]
    opt = build_optimizer("sgd", groups, lr=0.05, weight_decay=0.0)
    for lr in (0.0, 0.01, 0.2):
        set_learning_rate(opt, lr)
        assert [g["lr"] for g in opt.param_groups] == [lr, 0.05]
