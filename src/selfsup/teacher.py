"""EMA teacher for BYOL, MoCo and DINO: a frozen copy of the student updated by exponential
moving average once per optimizer step (never per micro-batch, so gradient accumulation does not
change the method).

``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter, in one fused
``torch._foreach_lerp_`` over all tensors (DINOv2 style) instead of a Python loop of B kernels.
The momentum usually follows :func:`selfsup.train.schedules.cosine_momentum`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
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

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.grad = None  # deepcopy also copies any gradient the student had accumulated

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``t = momentum * t + (1 - momentum) * s`` for all parameters; buffers copied from ``student``.

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
        t_params = _matched(self.module.named_parameters(), student.named_parameters(), "parameter")
        t_bufs = _matched(self.module.named_buffers(), student.named_buffers(), "buffer")
        if t_params[0]:
            torch._foreach_lerp_(t_params[0], t_params[1], 1.0 - momentum)
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
