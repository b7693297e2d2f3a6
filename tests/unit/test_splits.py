"""Label draws and validation splits: counts per class, no unknown labels, seeded, disjoint."""

from __future__ import annotations

import pytest
import torch

from selfsup.errors import DataError
from selfsup.eval.splits import random_split, stratified_draw, train_val_split


def _labels() -> torch.Tensor:
    # class 0: 10 samples, class 1: 4, class 2: 1, and 3 unknown
    return torch.tensor([0] * 10 + [1] * 4 + [2] + [-1] * 3)[
        torch.randperm(18, generator=torch.Generator().manual_seed(1))
    ]


def test_per_class_draw_counts_each_class_and_skips_unknown() -> None:
    labels = _labels()
    drawn = stratified_draw(labels, per_class=1, seed=3)
    assert sorted(labels[drawn].tolist()) == [0, 1, 2]
    assert torch.equal(drawn, drawn.sort().values)
    with pytest.raises(DataError, match="class 2 has 1"):
        stratified_draw(labels, per_class=2)


def test_fraction_draw_rounds_per_class_and_keeps_one() -> None:
    labels = _labels()
    drawn = stratified_draw(labels, fraction=0.5, seed=0)
    counts = torch.bincount(labels[drawn], minlength=3).tolist()
    assert counts == [5, 2, 1]
    assert (labels[stratified_draw(labels, fraction=1.0)] != -1).all()
    assert stratified_draw(labels, fraction=1.0).numel() == 15


def test_draws_are_seeded() -> None:
    labels = _labels()
    with pytest.raises(DataError):
        stratified_draw(labels, per_class=3, seed=0)  # class 2 has one sample
    assert torch.equal(
        stratified_draw(labels, fraction=0.5, seed=7), stratified_draw(labels, fraction=0.5, seed=7)
    )
    seeds = {tuple(stratified_draw(labels, fraction=0.5, seed=s).tolist()) for s in range(6)}
    assert len(seeds) > 1


def test_train_val_split_is_disjoint_stratified_and_complete() -> None:
    labels = _labels()
    train, val = train_val_split(labels, 0.25, seed=0)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == torch.nonzero(labels != -1).flatten().tolist()
    assert torch.bincount(labels[val], minlength=3).tolist() == [3, 1, 0]  # 2.5 rounds up; a lone one stays
    with pytest.raises(DataError, match="validation split"):
        train_val_split(torch.tensor([0, 1, 2]), 0.2)


def test_random_split() -> None:
    train, val = random_split(10, 0.2, seed=0)
    assert val.numel() == 2 and sorted(train.tolist() + val.tolist()) == list(range(10))
    assert torch.equal(val, random_split(10, 0.2, seed=0)[1])
    with pytest.raises(DataError):
        random_split(1, 0.5)
