"""Schedules as pure functions of the optimizer step.

The trainer calls them once per optimizer step with ``step`` = the number of optimizer steps
taken so far (0 before the first update); nothing is stored, so resuming from a checkpoint only
needs the step count and gradient accumulation never changes a schedule.
"""

from __future__ import annotations

import math


def _check_steps(step: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0 (optimizer steps counted from 0), got {step}")


def _half_cosine(progress: float) -> float:
    """1 at ``progress == 0``, 0 at ``progress >= 1``: the TF1 ``cosine_decay`` shape."""
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_cosine(
    step: int,
    total_steps: int,
    base: float,
    *,
    warmup_steps: int = 0,
    final: float = 0.0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up then half-cosine decay (Goyal et al. 2017; Loshchilov & Hutter 2017).

    * ``step < warmup_steps``: ``warmup_start + (base - warmup_start) * step / warmup_steps``;
    * then ``final + (base - final) * (1 + cos(pi * t)) / 2`` with
      ``t = (step - warmup_steps) / (total_steps - warmup_steps)``;
    * ``step >= total_steps``: ``final`` (clamped, so running past the planned length is safe).

    With ``warmup_start=0`` and ``final=0`` this is the schedule of SimCLR and BYOL (the BYOL
    authors' ``learning_schedule``: the value at step 0 is 0, the cosine restarts from ``base``
    at ``step == warmup_steps``).
    """
    _check_steps(step, total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    for name, value in (("base", base), ("final", final), ("warmup_start", warmup_start)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    if step >= total_steps:
        return final
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final + (base - final) * _half_cosine(progress)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's target-network decay rate, increased from ``base`` to ``final`` along a half cosine.

    Grill et al. 2020, sec. 3.2: ``tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2``, here
    generalised to ``tau_k = final - (final - base) * (cos(pi k / K) + 1) / 2`` (identical for
    ``final = 1``). As in the authors' ``target_ema``, ``k`` is clamped to ``K`` so the value stays
    at ``final`` after ``total_steps``. DINO uses the same shape for its teacher momentum.
    """
    _check_steps(step, total_steps)
    for name, value in (("base", base), ("final", final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} momentum must be in [0, 1], got {value}")
    return final - (final - base) * _half_cosine(step / total_steps)


def steps_of(value: float, total_steps: int) -> int:
    """A duration option as a number of optimizer steps: a float in ``[0, 1)`` is a fraction of
    ``total_steps`` (rounded), an integer a number of steps (DINO's frozen last layer, SwAV's frozen
    prototypes: "the first epoch" in the papers, which a run defined by steps expresses either way)."""
    if isinstance(value, float) and value < 1.0:
        return round(value * total_steps)
    return int(value)


def check_steps_option(name: str, value: object) -> float:
    """``value`` checked for :func:`steps_of`: a number >= 0; a float >= 1 must be a whole number."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if isinstance(value, float) and value >= 1.0 and not value.is_integer():
        raise ValueError(
            f"{name}={value!r}: a float must be a fraction of the steps in [0, 1), "
            "an integer a number of steps"
        )
    return value
