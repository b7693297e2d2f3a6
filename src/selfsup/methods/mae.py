"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022).

The encoder (a ViT, ``mask_mode="drop"``) sees only the visible patches of its view (the ``mae`` view
policy masks 75% at random); a light Transformer decoder gets the encoded visible tokens projected to
``decoder_dim``, a learned mask token at every masked position, fixed 2-D sine-cosine positions, and
regresses each patch's pixels; the loss (:func:`selfsup.losses.mae`) counts the masked patches only.

Facts reproduced from the authors' code (facebookresearch/mae ``models_mae.py``):

* Decoder: ``decoder_embed`` Linear(D, 512), ``mask_token`` (normal std 0.02), ``decoder_pos_embed`` the
  fixed sine-cosine table with a zero row for the class token, 8 pre-norm blocks of 16 heads (mlp ratio
  4, qkv bias, LayerNorm eps 1e-6), ``decoder_norm``, ``decoder_pred`` Linear(512, p·p·3); Linear layers
  Xavier-uniform with zero bias (``_init_weights``). The class token goes through the decoder and is
  dropped before the loss; register tokens (if any) are treated like it (zero positions).
* Targets: the patchified *normalised* view (MAE computes ``patchify(imgs)`` on the transformed batch),
  per-patch normalised with ``norm_pix_loss`` (on here: the paper's best setting, Table 1d, and
  solo-learn's CIFAR recipe; MAE's script defaults to off).
* Differences: the visible tokens stay in ascending patch order (the ViT's ``"drop"``) and are scattered
  back to their positions, where MAE keeps them in shuffled order and un-shuffles with ``ids_restore``:
  the same decoder input. Under data parallelism the masked count is normalised globally
  (:func:`selfsup.dist.per_process_share`), equal to MAE's per-rank mean when every image masks the same
  number (the ``mae`` policy always does).

``MethodOutput.features`` / ``embeddings`` are the encoder's pooled output on the *masked* view (its
class token, or the mean of the visible patches with ``pool="mean"``): no second, unmasked pass, so
the online probe is a little pessimistic against a probe on full images (documented choice).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder, require_capabilities
from selfsup.encoders.vit import LAYER_NORM_EPS, Block, sincos_2d_pos_embed
from selfsup.errors import ConfigError
from selfsup.losses.masked import mae as mae_loss
from selfsup.losses.masked import patchify
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views

__all__ = ["MAE", "MAEDecoder", "check_vit", "scatter_visible"]

NEEDS = ("mask:drop",)


def check_vit(method: str, encoder: Encoder) -> int:
    """The encoder's patch size, after checking it is a ViT-like encoder that can drop masked tokens."""
    require_capabilities(method, encoder, NEEDS)
    patch = getattr(encoder, "patch_size", None)
    if not isinstance(patch, int) or getattr(encoder, "token_grid", None) is None:
        raise ConfigError(
            f"{method} needs a Vision Transformer encoder with a patch_size and token_grid "
            f"(vit_tiny / vit_small / vit_base); {type(encoder).__name__} has none"
        )
    # Dropped tokens never meet the mask token: leave it frozen rather than without a gradient
    # (a trainable parameter without one stalls DDP).
    for parameter in encoder.mask_parameters():
        parameter.requires_grad_(False)
    return patch


def scatter_visible(visible: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
    """``(B, N, D)``: ``visible`` ``(B, K, D)`` (ascending patch order) at the unmasked positions of ``mask``
    ``(B, N)`` (True = masked), ``fill`` ``(1, 1, D)`` (a mask token) everywhere else; differentiable in
    both."""
    b, n = mask.shape
    d = visible.shape[-1]
    keep = (~mask).unsqueeze(-1).expand(b, n, d)
    return fill.to(visible.dtype).expand(b, n, d).masked_scatter(keep, visible)


class MAEDecoder(nn.Module):
    """MAE's decoder: encoder tokens ``(B, P + K, D)`` and mask ``(B, N)`` → pixels ``(B, N, p·p·C)``."""

    def __init__(
        self,
        embed_dim: int,
        patch_dim: int,
        grid: tuple[int, int],
        num_prefix_tokens: int,
        decoder_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = grid
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        # Fixed positions (MAE: requires_grad=False), a buffer: zero rows for the prefix tokens.
        table = torch.zeros(1, num_prefix_tokens + grid[0] * grid[1], decoder_dim)
        table[0, num_prefix_tokens:] = sincos_2d_pos_embed(decoder_dim, grid)
        self.register_buffer("pos_embed", table, persistent=False)
        self.blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=LAYER_NORM_EPS)
        self.pred = nn.Linear(decoder_dim, patch_dim)
        for m in self.modules():  # MAE's _init_weights
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        x = self.embed(tokens)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        full = scatter_visible(visible, mask, self.mask_token)
        x = torch.cat([prefix, full], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, self.num_prefix_tokens :]


@METHODS.register("mae", needs=NEEDS)
class MAE(Method):
    """MAE (He et al. 2022) on a ViT.

    Args:
        encoder: a ViT (``mask_modes`` with ``"drop"``, ``patch_size``, ``token_grid``).
        decoder_dim: decoder width (512 in the paper and solo-learn's CIFAR recipe).
        decoder_depth: decoder blocks (8).
        decoder_heads: decoder attention heads (16).
        mlp_ratio: decoder MLP ratio (4).
        norm_pix_loss: regress per-patch normalised pixels (True: the paper's best setting).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "mae"}

    def __init__(
        self,
        encoder: Encoder,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__(encoder)
        self.patch_size = check_vit("mae", encoder)
        for name, value in (("decoder_dim", decoder_dim), ("decoder_depth", decoder_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"method.{name} must be a positive integer, got {value!r}")
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise ConfigError(
                f"method.decoder_dim {decoder_dim} must be divisible by method.decoder_heads {decoder_heads} "
                "and by 4 (2-D sine-cosine positions)"
            )
        self.in_channels = int(getattr(encoder, "in_channels", 3))
        self.grid: tuple[int, int] = tuple(encoder.token_grid)  # type: ignore[arg-type,assignment]
        self.decoder = MAEDecoder(
            encoder.embed_dim,
            self.patch_size**2 * self.in_channels,
            self.grid,
            int(getattr(encoder, "num_prefix_tokens", 0)),
            decoder_dim,
            decoder_depth,
            decoder_heads,
            float(mlp_ratio),
        )
        self.norm_pix_loss = bool(norm_pix_loss)

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        mask = views.mask(0)
        if mask is None:
            raise ValueError("MAE needs a patch mask on its view (Views.masks); use the 'mae' view policy")
        x = views.inputs[0]
        mask = mask.flatten(1).bool()
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if grid != self.grid:
            raise ValueError(
                f"MAE's decoder positions are for a {self.grid} patch grid; the view gives {grid} "
                "(set the data's image size to the encoder's)"
            )
        encoder: Any = self.encoder
        out = encoder(x, mask=mask, mask_mode="drop")
        pred = self.decoder(out.last_hidden_state, mask)
        target = patchify(x, self.patch_size)
        count = mask.sum()
        loss = mae_loss(
            pred, target, mask, norm_pix=self.norm_pix_loss, normalizer=dist.per_process_share(count)
        )
        features = out.pooled.detach().float()
        logs = {"masked_fraction": (count / mask.numel()).detach().float()}
        return MethodOutput(loss=loss, logs=logs, embeddings=features, features=features)
