"""The view-policy contract, and the deterministic input transform of each modality.

A view policy is a callable ``policy(batch, generator) -> Views`` where ``batch`` is a
:class:`~selfsup.data.base.Batch` already on the training device and ``generator`` is a
``torch.Generator`` on that device. Every random choice (crop box, flip, noise, feature mask, …) is
drawn per sample from ``generator`` and applied to the whole batch at once, so the same seed gives
the same views and one call is a handful of kernels, not B.

Policy factories are registered in :data:`VIEW_POLICIES` with their modality
(``@VIEW_POLICIES.register("simclr", modality="image")``) and receive, besides their own options,
``info`` (the data set's :class:`~selfsup.data.base.DataInfo`), ``transform`` (the run's
:class:`InputTransform`: the normalization every view ends with) and, for masking policies,
``encoder`` (its token grid / frame rate); each factory declares the ones it uses.

An :class:`InputTransform` is the deterministic path from stored samples to encoder inputs, used for
evaluation and embedding (and by the policies for their final normalization). It is fitted or
configured once when pretraining starts and stored in the run (``inputs.json``), so evaluation
normalizes exactly as training did: :class:`ImageTransform` here, the vector one in
:mod:`selfsup.augment.vector`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from selfsup.data.base import Batch
from selfsup.registry import Registry
from selfsup.views import Views

# ImageNet statistics; stored in every run so evaluation normalizes the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViewPolicy(Protocol):
    def __call__(self, batch: Batch, generator: torch.Generator) -> Views: ...


class InputTransform(Protocol):
    """``transform(batch) -> (inputs, padding_mask)``: the deterministic encoder input of a batch."""

    modality: str

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]: ...

    def to_dict(self) -> dict[str, Any]: ...


VIEW_POLICIES: Registry[ViewPolicy] = Registry("view policy")


def to_normalized_float(
    images: Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    size: int | None = None,
) -> Tensor:
    """uint8 ``(B, 3, H, W)`` → normalized float32 ``(B, 3, size, size)``.

    The deterministic evaluation transform (no crop, no flip): scale to [0, 1], resize with
    antialiased bilinear interpolation when ``size`` differs from the input, then normalize.
    """
    x = images.float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


@dataclass(frozen=True)
class ImageTransform:
    """Images: uint8 ``(B, 3, H, W)`` → float ``(B, 3, size, size)`` normalized with ``mean``/``std``."""

    size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    modality: str = "image"

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need one value per RGB channel, got {self.mean} and {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, got {self.std}")
        if self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size}")

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        if (
            not isinstance(batch.inputs, Tensor)
            or batch.inputs.ndim != 4
            or batch.inputs.dtype != torch.uint8
        ):
            raise ValueError("ImageTransform expects a batch of uint8 (B, 3, H, W) images")
        return to_normalized_float(batch.inputs, self.mean, self.std, self.size), None

    def normalize(self, images: Tensor) -> Tensor:
        """Float images in [0, 1] ``(B, 3, H, W)`` → normalized (the last step of every image view)."""
        mean = images.new_tensor(self.mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.std).view(1, -1, 1, 1)
        return (images - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageTransform:
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]))
