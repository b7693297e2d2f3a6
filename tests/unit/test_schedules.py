"""Schedules: hand-computed values and the BYOL authors' definitions re-implemented directly."""

from __future__ import annotations

import math

import pytest

from selfsup.train.schedules import cosine_momentum, warmup_cosine

COS_QUARTER = 0.5 * (1.0 + math.cos(math.pi / 4))  # 0.853553...


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (4, COS_QUARTER), (6, 0.5), (10, 0.0), (15, 0.0)],
)
def test_warmup_cosine_hand_values(step: int, expected: float) -> None:
    assert warmup_cosine(step, 10, 1.0, warmup_steps=2) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_start_and_final() -> None:
    kw = {"warmup_steps": 2, "final": 0.1, "warmup_start": 0.2}
    assert warmup_cosine(0, 10, 1.0, **kw) == pytest.approx(0.2)
    assert warmup_cosine(1, 10, 1.0, **kw) == pytest.approx(0.6)
    assert warmup_cosine(6, 10, 1.0, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(10, 10, 1.0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(99, 10, 1.0, **kw) == pytest.approx(0.1)


def _byol_learning_schedule(step: int, base: float, total: int, warmup: int) -> float:
    """The BYOL authors' ``learning_schedule`` (batch-size scaling left out), written out plainly."""
    lr = step / warmup * base if warmup > 0 else base
    if step < warmup:
        return lr
    k = min(step - warmup, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * k / (total - warmup)))


@pytest.mark.parametrize("warmup", [0, 3, 7])
def test_warmup_cosine_matches_byol_reference(warmup: int) -> None:
    for step in range(0, 25):
        got = warmup_cosine(step, 20, 0.3, warmup_steps=warmup)
        assert got == pytest.approx(_byol_learning_schedule(step, 0.3, 20, warmup), abs=1e-12)


def test_warmup_cosine_warmup_equal_to_total() -> None:
    assert warmup_cosine(2, 4, 1.0, warmup_steps=4) == pytest.approx(0.5)
    assert warmup_cosine(4, 4, 1.0, warmup_steps=4, final=0.25) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": 0, "total_steps": 0}, "total_steps"),
        ({"step": -1, "total_steps": 10}, "step must be"),
        ({"step": 0, "total_steps": 10, "warmup_steps": 11}, "warmup_steps"),
        ({"step": 0, "total_steps": 10, "warmup_steps": -1}, "warmup_steps"),
        ({"step": 0, "total_steps": 10, "final": math.nan}, "final"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        warmup_cosine(base=1.0, **kwargs)


def test_cosine_momentum_hand_values() -> None:
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(25, 100) == pytest.approx(1 - 0.004 * COS_QUARTER)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(250, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, base=0.99, final=0.999) == pytest.approx(0.999 - 0.009 * 0.5)


def test_cosine_momentum_matches_byol_target_ema() -> None:
    """Grill et al. 2020 sec. 3.2 / the authors' ``target_ema``: 1 - (1 - base) * cosine_decay(k, K)."""
    for k in range(0, 40, 3):
        decay = 0.5 * (1 + math.cos(math.pi * min(k, 30) / 30))
        assert cosine_momentum(k, 30, base=0.99) == pytest.approx(1 - (1 - 0.99) * decay, abs=1e-12)


def test_cosine_momentum_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="base momentum"):
        cosine_momentum(0, 10, base=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_momentum(0, 0)
