"""Heads that methods put on top of an encoder: projection and prediction MLPs.

Later families add their heads here too (DINO/SwAV prototypes, the MAE decoder, quantizers),
so a method file only composes them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
    normalization would cancel it); ``last_bias=False`` drops the last Linear's bias without a BN after it
    (the Barlow Twins / VICReg projectors, MoCo v3's ``_build_mlp``). ``init_std`` draws the Linear
    weights from N(0, init_std²) (SimCLR's code uses 0.01); None keeps PyTorch's default initialisation.
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
        last_bias: bool = True,
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
        layers.append(nn.Linear(dim, out_dim, bias=last_bias and not last_bn))
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


class WeightNormLinear(nn.Module):
    """A Linear layer without bias whose weight is weight-normalised per output row (Salimans & Kingma
    2016): ``W = g · v / ||v||``, ``v`` ``(out, in)``, ``g`` ``(out, 1)``.

    Written out by hand instead of ``torch.nn.utils.weight_norm`` (deprecated; its hooks recompute ``W``
    as a plain attribute) so that the state dict holds just the two tensors ``weight_v`` and ``weight_g``
    (the names of DINO's checkpoints), storable with safetensors; numerically the same as
    ``weight_norm(nn.Linear(in, out, bias=False))`` (dim 0, no epsilon). ``learn_scale=False`` freezes
    ``g`` (DINO's ``norm_last_layer``: ``g`` stays 1, every row of ``W`` unit-norm). ``v`` starts as
    ``nn.Linear``'s default initialisation, ``g`` at 1, as DINO's ``DINOHead``.
    """

    def __init__(self, in_dim: int, out_dim: int, *, learn_scale: bool = True) -> None:
        super().__init__()
        weight = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear.reset_parameters
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_scale)
        self.in_features, self.out_features = in_dim, out_dim

    @property
    def weight(self) -> Tensor:
        """The effective ``(out, in)`` weight ``g · v / ||v||``."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021; facebookresearch/dino ``vision_transformer.py``
    ``DINOHead``): ``(B, in_dim) → (B, out_dim)`` logits over ``out_dim`` prototypes.

    An MLP of ``num_layers`` Linear layers (``in → hidden → … → bottleneck``, GELU between, optional
    BatchNorm before each GELU with ``use_bn``; ``num_layers=1`` is a single ``in → bottleneck`` Linear),
    the L2-normalised bottleneck, then a weight-normalised Linear without bias (:class:`WeightNormLinear`,
    ``last_layer``) whose scale is frozen to 1 with ``norm_last_layer`` (DINO's default). The MLP's Linear
    weights are drawn from a normal of std 0.02 truncated at ±2 (DINO's ``trunc_normal_``), biases 0.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), p=2, dim=-1)
        return self.last_layer(x)


class EncoderWithHead(nn.Module):
    """encoder → pooled ``(B, D)`` → head: the branch that an EMA teacher copies (BYOL's target, MoCo's key
    encoder, DINO's teacher). Methods build it on demand from their own ``encoder`` and head, so each
    parameter is registered once in the method's state dict."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.head(self.encoder(x, padding_mask=padding_mask).pooled)
