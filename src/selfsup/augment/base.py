"""The view-policy contract: uint8 image batches in, :class:`~selfsup.methods.base.Views` out.

A view policy is a callable ``policy(images, generator) -> Views`` where ``images`` is a
``(B, 3, H, W)`` uint8 tensor already on the training device and ``generator`` is a
``torch.Generator`` on that device. Every random choice (crop box, flip, jitter factors, …)
is drawn per sample from ``generator`` and applied to the whole batch at once, so the same
seed gives the same views and one call is a handful of kernels, not B.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from selfsup.registry import Registry
from selfsup.views import Views

# ImageNet statistics; stored in every run's config so evaluation normalizes the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViewPolicy(Protocol):
    def __call__(self, images: Tensor, generator: torch.Generator) -> Views: ...


# Factories take ``(size: int, mean, std, **policy_options)`` and return a ViewPolicy.
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
