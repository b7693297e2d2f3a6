"""EMA teacher for BYOL, MoCo, DINO and data2vec: a frozen copy of the student updated by
exponential moving average once per optimizer step (never per micro-batch, so gradient
accumulation does not change the method).

A teacher follows whatever module it is built from, so it can follow a subset of the student (e.g.
MoCo v3's momentum encoder = backbone + projector, without the predictor); within it,
``ema_filter`` can restrict the averaging to some parameters and let the others track the student
exactly (data2vec averages the Transformer blocks only). ``eval_mode=True`` keeps the teacher in
evaluation mode whatever mode the method is in (data2vec, DINO's teacher with dropout or stochastic
depth), instead of normalizing with batch statistics as BYOL's target does.

``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter, in one fused
``torch._foreach_lerp_`` over all tensors (DINOv2 style) instead of a Python loop of B kernels.
The momentum usually follows :func:`selfsup.train.schedules.cosine_momentum`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn


class EMATeacher(nn.Module):
    """A deep copy of ``student`` (``self.module``) with ``requires_grad=False``, run without grad.

    ``forward(*args, **kwargs)`` calls the copy under :func:`torch.no_grad`. The teacher is a
    submodule of the method, so ``method.train()`` / ``method.eval()`` switch it too: in train
    mode the teacher normalizes with batch statistics, as BYOL's target network does (Grill et
    al. 2020). Only :meth:`update` changes its weights.
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        eval_mode: bool = False,
        ema_filter: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__()
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.grad = None  # deepcopy also copies any gradient the student had accumulated
        self.eval_mode = eval_mode
        self.ema_filter = ema_filter
        if eval_mode:
            self.module.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        """Follow the method's mode, except that an ``eval_mode`` teacher always stays in eval mode."""
        super().train(mode)
        if self.eval_mode:
            self.module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``t = momentum * t + (1 - momentum) * s`` for all parameters; buffers copied from ``student``.

        With an ``ema_filter``, only the parameters whose name it accepts are averaged; the others are
        copied from the student (momentum 0), so that part of the teacher tracks the student exactly.

        ``momentum=1`` leaves the teacher unchanged, ``momentum=0`` copies the student (both
        exactly: ``lerp`` is exact at weights 0 and 1). Floating-point buffers (BatchNorm
        running mean/var) are copied rather than averaged: they are already exponential averages
        over batches, so averaging them again would only make them lag, and a copy keeps the
        teacher's eval-mode normalization consistent with the student's (and, under DDP, equal on
        every rank, since DDP broadcasts the student's buffers). Integer buffers
        (``num_batches_tracked``) are copied too.
        """
        if not (math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        names = [name for name, _ in self.module.named_parameters()]
        t_params, s_params = _matched(self.module.named_parameters(), student.named_parameters(), "parameter")
        t_bufs = _matched(self.module.named_buffers(), student.named_buffers(), "buffer")
        averaged = [True] * len(names) if self.ema_filter is None else [self.ema_filter(n) for n in names]
        t_avg = [t for t, keep in zip(t_params, averaged) if keep]
        s_avg = [s for s, keep in zip(s_params, averaged) if keep]
        if t_avg:
            torch._foreach_lerp_(t_avg, s_avg, 1.0 - momentum)
        for t, s, keep in zip(t_params, s_params, averaged):
            if not keep:
                t.copy_(s)
        for t, s in zip(*t_bufs):
            t.copy_(s)


def _matched(
    teacher: Iterable[tuple[str, Tensor]], student: Iterable[tuple[str, Tensor]], kind: str
) -> tuple[list[Tensor], list[Tensor]]:
    """Pair teacher and student tensors by name; raise a clear error on any mismatch."""
    t_items = list(teacher)
    s_items = list(student)
    t_names = [n for n, _ in t_items]
    s_names = [n for n, _ in s_items]
    if t_names != s_names:
        missing = sorted(set(t_names) - set(s_names))
        extra = sorted(set(s_names) - set(t_names))
        raise ValueError(
            f"EMATeacher.update: the student's {kind}s do not match the teacher's "
            f"(missing from student: {missing[:5]}, not in teacher: {extra[:5]}"
            f"{', same names in another order' if not missing and not extra else ''}). "
            "Pass the same module the teacher was built from."
        )
    for (name, t), (_, s) in zip(t_items, s_items):
        if t.shape != s.shape or t.dtype != s.dtype:
            raise ValueError(
                f"EMATeacher.update: {kind} {name!r} is {tuple(s.shape)} {s.dtype} in the student but "
                f"{tuple(t.shape)} {t.dtype} in the teacher; the teacher must be built from this student "
                "(convert dtypes before building it)"
            )
    return [t for _, t in t_items], [s.detach() for _, s in s_items]
