"""Heads that methods put on top of an encoder: projection and prediction MLPs.

Later families add their heads here too (DINO/SwAV prototypes, the MAE decoder, quantizers),
so a method file only composes them.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLPHead(nn.Module):
    """Linear → BN → ReLU blocks, then a final Linear: ``(B, in_dim) → (B, out_dim)``.

    ``num_layers`` counts the Linear layers (2 = SimCLR v1's and BYOL's projector/predictor).
    ``last_bn`` adds a BatchNorm without affine parameters after the last Linear (SimCLR v2,
    Barlow Twins-style heads). Hidden Linear layers have no bias when followed by BN (the bias
    would be cancelled by the normalization).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, *, num_layers: int = 2, last_bn: bool = False
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
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
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
