"""Label draws and validation splits, seeded and stratified: the one place every protocol takes its
subsets from (few-label draws, the linear probe's validation split, fine-tuning's label fractions).

Each function is a pure function of ``(labels, options, seed)``: the same seed gives the same
indices on every machine, so a protocol's numbers can be reproduced from its recorded seed. Samples
labelled ``-1`` (unknown) are never drawn. Indices are returned sorted, so a subset keeps the
source's order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL, Dataset
from selfsup.errors import DataError


def _classes(labels: Tensor) -> list[tuple[int, Tensor]]:
    """``[(class, indices of its samples)]`` for every class present, in class order."""
    labels = labels.cpu().long()
    present = torch.unique(labels[labels != UNKNOWN_LABEL]).tolist()
    return [(c, torch.nonzero(labels == c).flatten()) for c in present]


def _shuffled(indices: Tensor, generator: torch.Generator) -> Tensor:
    return indices[torch.randperm(indices.numel(), generator=generator)]


def stratified_draw(
    labels: Tensor, *, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> Tensor:
    """Indices ``(M,)`` of a labelled draw: ``per_class`` samples of every class, or ``fraction`` of
    every class (at least one each, rounded to the nearest count), chosen uniformly with ``seed``.

    labels: ``(N,)`` int, ``-1`` = unknown. Exactly one of ``per_class`` / ``fraction`` is given.
    A class with fewer samples than ``per_class`` raises :class:`DataError` (a silently smaller draw
    would make "5 labels per class" mean something else for that class).
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class or fraction")
    if per_class is not None and (isinstance(per_class, bool) or per_class < 1):
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    classes = _classes(labels)
    if not classes:
        raise DataError("cannot draw labelled samples: every label is -1 (unknown)")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, members in classes:
        count = per_class if per_class is not None else max(1, math.floor(fraction * members.numel() + 0.5))
        if count > members.numel():
            raise DataError(
                f"class {c} has {members.numel()} labelled samples, fewer than the {count} per class asked"
            )
        chosen.append(_shuffled(members, generator)[:count])
    return torch.cat(chosen).sort().values


def train_val_split(labels: Tensor, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Stratified split of the labelled samples into ``(train indices, validation indices)``.

    Each class gives ``round(val_fraction * n_c)`` samples to validation, but always keeps at least
    one for training; a class with a single sample gives none. Raises :class:`DataError` when the
    validation split would be empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for _, members in _classes(labels):
        order = _shuffled(members, generator)
        count = min(math.floor(val_fraction * members.numel() + 0.5), members.numel() - 1)
        val.append(order[:count])
        train.append(order[count:])
    if not val or sum(v.numel() for v in val) == 0:
        raise DataError(
            "too few labelled samples to carve a validation split "
            f"(val_fraction={val_fraction}); give more labels or a separate validation source"
        )
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def random_split(n: int, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Unstratified split of ``range(n)`` (regression targets): ``(train indices, validation indices)``,
    ``round(val_fraction * n)`` of them (at least one, and at least one left for training) to validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if n < 2:
        raise DataError(f"cannot carve a validation split from {n} sample(s)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    count = min(max(1, math.floor(val_fraction * n + 0.5)), n - 1)
    return order[count:].sort().values, order[:count].sort().values


def random_subset(dataset: Dataset, count: int, seed: int = 0) -> Dataset:
    """At most ``count`` samples of ``dataset`` drawn uniformly with ``seed`` (labels unused), in source
    order; the data set itself when it is no larger (the samples scored by label-free metrics, mapped
    in the report's embedding map)."""
    if len(dataset) <= count:
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return dataset.subset(order.sort().values)


__all__ = ["random_split", "random_subset", "stratified_draw", "train_val_split"]
