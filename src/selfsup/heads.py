"""Heads that methods put on top of an encoder: projection and prediction MLPs.

Later families add their heads here too (DINO/SwAV prototypes, the MAE decoder, quantizers),
so a method file only composes them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureScale(nn.Module):
    """A learnable per-feature scale ``x * weight`` (``weight`` starts at 1): BatchNorm's gamma without
    its beta, as TensorFlow's ``batch_normalization(center=False, scale=True)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


class MLPHead(nn.Module):
    """Linear → BN → ReLU blocks, then a final Linear: ``(B, in_dim) → (B, out_dim)``.

    ``num_layers`` counts the Linear layers (2 = SimCLR v1's and BYOL's projector/predictor).
    ``last_bn`` adds a BatchNorm without shift after the last Linear; ``last_bn_scale`` gives it a
    learnable scale (SimCLR's authors' head: their last layer is ``linear_layer(use_bias=False,
    use_bn=True)``, a BN with ``center=False, scale=True``); without it the BN has no affine
    parameters (Barlow Twins-style heads). Linear layers followed by BN have no bias (the
    normalization would cancel it). ``init_std`` draws the Linear weights from N(0, init_std²)
    (SimCLR's code uses 0.01); None keeps PyTorch's default initialisation.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        *,
        num_layers: int = 2,
        last_bn: bool = False,
        last_bn_scale: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if last_bn_scale and not last_bn:
            raise ValueError("last_bn_scale needs last_bn=True")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [
                nn.Linear(dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
            if last_bn_scale:
                layers.append(FeatureScale(out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
        if init_std is not None:
            for module in self.layers:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=init_std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
