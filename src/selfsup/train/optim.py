"""Optimizers for self-supervised pre-training: SGD, AdamW and LARS, all without weight decay on
norm weights and biases.

Every optimizer is built from :func:`param_groups`, which splits the trainable parameters into
matrices/kernels (decayed, LARS-adapted) and vectors (norm scales and biases: no decay, no LARS
adaptation), as SimCLR (Chen et al. 2020) and BYOL (Grill et al. 2020) do. Each group carries an
``lr_scale`` so the trainer sets ``lr = schedule(step) * lr_scale`` through :func:`set_learning_rate`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from selfsup.registry import suggest

OPTIMIZER_NAMES = ("adamw", "lars", "sgd")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``module``'s trainable parameters into a decayed and a non-decayed group.

    Parameters with ``ndim <= 1`` (norm weights, biases, scalars such as a learnable temperature)
    get ``weight_decay=0`` and ``lars_exclude=True``; everything else gets ``weight_decay`` and
    ``lars_exclude=False``. Frozen parameters (``requires_grad=False``) are left out. The order is
    that of ``module.named_parameters()`` (shared parameters once), so the optimizer state lines
    up between runs. A group with no parameter is dropped; the groups are named ``"decay"`` and
    ``"no_decay"`` (key ``"name"``).
    """
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if not decay and not no_decay:
        raise ValueError(
            f"{type(module).__name__} has no trainable parameters (all are frozen or there are none); "
            "nothing to optimize"
        )
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"name": "decay", "params": decay, "weight_decay": weight_decay, "lars_exclude": False})
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017, arXiv:1708.03888) as used by SimCLR/BYOL.

    For each parameter ``w`` with gradient ``g`` (one tensor = one "layer"), in this order:

    1. ``g = g + weight_decay * w`` (L2 decay folded into the gradient, before adaptation);
    2. unless the group has ``lars_exclude=True``: ``g = trust * g`` with
       ``trust = eta * ||w|| / ||g||``, and ``trust = 1`` when ``||w|| == 0`` or ``||g|| == 0``;
       with ``clip_lr``, ``trust = min(trust / lr, 1)``, so that the step ``lr * trust * g`` is
       ``min(eta * ||w|| / ||g||, lr) * g``: a tensor whose gradient is small against its weights
       takes a plain SGD step instead of one of ``lr * eta * ||w||`` whatever its gradient
       (solo-learn's ``clip_lars_lr``, from Lightning Bolts, set in all its CIFAR LARS recipes);
    3. ``buf = momentum * buf + g`` (``buf`` starts at zero, state key ``"momentum_buffer"``);
    4. ``w = w - lr * buf``.

    This is the order of the BYOL authors' optax chain (``add_weight_decay`` → ``scale_by_lars`` →
    ``scale(-lr)``). The SimCLR authors' ``LARSOptimizer`` (``classic_momentum=True``) puts the
    learning rate inside the buffer (``buf = momentum * buf + lr * trust * g; w = w - buf``): the two
    are identical for a constant learning rate and differ only in how past steps are weighted
    while the schedule changes the rate. Excluded groups (norms, biases; built with
    ``weight_decay=0`` by :func:`param_groups`) get plain SGD with momentum. ``eta`` defaults to
    0.001 (SimCLR's ``EETA_DEFAULT``, BYOL's ``eta``), ``momentum`` to 0.9. Parameters of one
    group must live on one device. (solo-learn's trust ratio divides by ``||g|| + wd * ||w||``
    rather than ``||g + wd * w||``: equal when the decay is small or parallel to the gradient.)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        lars_exclude: bool = False,
        clip_lr: bool = False,
    ) -> None:
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"LARS: lr must be a finite number >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}")
        if not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"LARS: weight_decay must be a finite number >= 0, got {weight_decay}")
        if not math.isfinite(eta) or eta <= 0:
            raise ValueError(f"LARS: eta (trust coefficient) must be > 0, got {eta}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_exclude": lars_exclude,
            "clip_lr": clip_lr,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("LARS does not support sparse gradients")
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            # New tensors, so the .grad tensors the user may still inspect stay untouched.
            updates = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else list(grads)
            if not group["lars_exclude"]:
                # Norms in at least fp32 so low-precision parameters do not overflow the ratio.
                w_norm = _stack_norms(torch._foreach_norm(params))
                u_norm = _stack_norms(torch._foreach_norm(updates))
                usable = (w_norm > 0) & (u_norm > 0)
                trust = torch.where(usable, group["eta"] * w_norm / u_norm.clamp_min(1e-38), 1.0)
                if group["clip_lr"] and lr > 0:
                    trust = torch.where(usable, (trust / lr).clamp_max(1.0), 1.0)
                updates = torch._foreach_mul(updates, list(trust.unbind()))
            if momentum != 0:
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        # Zero start: the first step then applies the update itself, as in both references.
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, updates)
                updates = bufs
            torch._foreach_add_(params, updates, alpha=-lr)
        return loss


def _stack_norms(norms: list[Tensor]) -> Tensor:
    """0-dim norms → one vector in the widest of their dtypes (at least float32)."""
    dtype = functools.reduce(torch.promote_types, (n.dtype for n in norms), torch.float32)
    return torch.stack([n.to(dtype) for n in norms])


def build_optimizer(
    name: str,
    params: nn.Module | list[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eta: float = 0.001,
    clip_lr: bool = False,
) -> Optimizer:
    """Build ``"sgd"`` (momentum, no Nesterov), ``"adamw"`` or ``"lars"`` over parameter groups.

    ``params`` is a module (grouped by :func:`param_groups`: norm weights and biases get no weight
    decay with every optimizer, and no LARS adaptation) or ready groups, such as a method's
    :meth:`~selfsup.methods.base.Method.parameter_groups`. Each group keeps its ``lr_scale`` (1.0 when
    absent) and gets ``lr = lr * lr_scale``; the trainer then calls
    :func:`set_learning_rate` every step. ``momentum`` is used by SGD and LARS, ``betas`` by
    AdamW, ``eta`` and ``clip_lr`` by LARS.
    """
    key = name.strip().lower()
    if key not in OPTIMIZER_NAMES:
        raise ValueError(
            f"unknown optimizer {name!r}.{suggest(key, OPTIMIZER_NAMES)} Valid: {', '.join(OPTIMIZER_NAMES)}."
        )
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    groups = (
        param_groups(params, weight_decay) if isinstance(params, nn.Module) else [dict(g) for g in params]
    )
    if not groups:
        raise ValueError("no parameter groups to optimize")
    for group in groups:
        group.setdefault("lr_scale", 1.0)
        group["lr"] = lr * group["lr_scale"]
    if key == "sgd":
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"sgd: momentum must be in [0, 1), got {momentum}")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay)
    if key == "adamw":
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"adamw: betas must be two numbers in [0, 1), got {betas}")
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr)


def set_learning_rate(optimizer: Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * group["lr_scale"]`` (scale 1.0 when absent), except groups
    marked ``fixed_lr``, which keep the base rate :func:`build_optimizer` gave them for the whole run, without
    warm-up or decay (SimSiam's predictor, the authors' ``--fix-pred-lr``).

    A tensor-valued ``lr`` (capturable/fused optimizers) is filled in place so CUDA graphs that
    captured it see the new value.
    """
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"learning rate must be a finite number >= 0, got {lr}")
    for group in optimizer.param_groups:
        if group.get("fixed_lr"):
            continue
        value = lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
