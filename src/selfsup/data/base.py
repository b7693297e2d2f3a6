"""The in-memory data contract: a small data set decoded once into a uint8 tensor.

Every image source yields an :class:`ImageDataset`; the trainer, the evaluators and
``embed`` only ever see this type, so adding a source never touches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from selfsup.registry import Registry

UNKNOWN_LABEL = -1


@dataclass
class ImageDataset:
    """Decoded images and their (optional) labels.

    images: ``(N, 3, H, W)`` uint8, RGB (grayscale inputs are replicated, alpha is dropped).
    labels: ``(N,)`` int64, ``-1`` where unknown.
    ids:    ``N`` strings naming each sample in its source (relative path, tar key, array index).
    classes: class names indexed by label, when the source has them.
    skipped: ``(id, reason)`` for every unreadable input that was left out.
    """

    images: Tensor
    labels: Tensor
    ids: list[str]
    source: str
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be (N, 3, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}"
            )
        if self.labels.shape != (n,) or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be ({n},) int64, got {tuple(self.labels.shape)} {self.labels.dtype}"
            )
        if len(self.ids) != n:
            raise ValueError(f"expected {n} ids, got {len(self.ids)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])

    @property
    def has_labels(self) -> bool:
        return bool((self.labels != UNKNOWN_LABEL).any())

    @property
    def labeled_fraction(self) -> float:
        return float((self.labels != UNKNOWN_LABEL).float().mean()) if len(self) else 0.0


class DataError(ValueError):
    """Bad input data: the message says what was wrong and what to do about it."""


# Factories registered here take ``(spec: str, *, image_size, max_samples, strict)`` and return an
# ImageDataset; each also exposes a ``detect(spec) -> bool`` used for auto-detection.
SOURCES: Registry = Registry("data source")
