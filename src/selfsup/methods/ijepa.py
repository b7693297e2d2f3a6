"""I-JEPA: Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture (Assran et
al., CVPR 2023).

The context encoder (a ViT, ``mask_mode="drop"``) sees one large context block of its view; an EMA copy
of it (the target encoder) sees the whole view; a narrow Transformer predictor, given the context tokens
and a mask token at each patch of a target block (both with fixed sine-cosine positions), predicts the
target encoder's layer-normalised output there (:func:`selfsup.losses.ijepa`, smooth L1). The ``ijepa``
view policy draws the blocks (:func:`~selfsup.augment.image_masks.multi_block_masks`): 4 targets and a
context disjoint from them.

Facts reproduced from the authors' code (facebookresearch/ijepa):

* ``src/models/vision_transformer.py`` ``VisionTransformerPredictor``: ``predictor_embed`` Linear(D, 384),
  fixed 2-D sine-cosine ``predictor_pos_embed`` over the patch grid, ``mask_token`` (truncated normal std
  0.02), pre-norm blocks with the encoder's head count, ``predictor_norm``, ``predictor_proj`` Linear(384,
  D); every target block is predicted in its own sequence (context + that block's mask tokens: the batch
  is repeated per block); Linear layers truncated normal std 0.02 with zero bias, and block ``i``'s
  ``attn.proj`` / ``mlp.fc2`` weights divided by ``sqrt(2 (i + 1))`` (``fix_init_weight``).
  ``src/helper.py`` ``init_model`` defaults: depth 6, width 384 (the ViT-H configs use depth 12).
* ``src/train.py``: the target encoder (a deep copy, all parameters averaged) runs without grad on the
  full image; its output is layer-normalised and gathered at the target patches; the momentum rises
  *linearly* from 0.996 to 1.0 over training (``momentum_scheduler``: update ``k`` uses
  ``0.996 + k · 0.004 / total``), one update per optimizer step -- here in :meth:`on_optimizer_step`.
* Encoders without a class token are what I-JEPA uses (``vit_* class_token=false pool=mean``); a class or
  register token, if the encoder has one, is dropped from the context and target tokens.
* Difference: the target encoder runs in eval mode (no stochastic depth in the targets; the authors'
  models train without drop path, where the two agree).

``MethodOutput.features`` / ``embeddings`` are the context encoder's pooled output on its context block
(no second pass over the full view).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.encoders.base import Encoder
from selfsup.encoders.vit import LAYER_NORM_EPS, Block, init_vit_weights, sincos_2d_pos_embed
from selfsup.errors import ConfigError
from selfsup.losses.masked import ijepa as ijepa_loss
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.methods.mae import NEEDS, check_vit
from selfsup.teacher import EMATeacher

__all__ = ["IJEPA", "IJEPAPredictor", "linear_momentum", "mask_indices"]


def linear_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """I-JEPA's EMA momentum of the update after optimizer step ``step`` (0-based) of ``total_steps``:
    ``base + step · (final - base) / total_steps`` (their ``momentum_scheduler``), ``final`` at the end."""
    if total_steps <= 0:
        return final
    return base + min(step, total_steps) * (final - base) / total_steps


def mask_indices(mask: Tensor) -> Tensor:
    """``(..., N)`` bool with the same number K of True per row → ``(..., K)`` their positions, ascending."""
    counts = mask.sum(-1)
    k = int(counts.flatten()[0]) if counts.numel() else 0
    if bool((counts != k).any()):
        raise ValueError(
            f"every mask row must select as many patches, got counts {sorted(set(counts.flatten().tolist()))}"
        )
    return mask.nonzero()[:, -1].reshape(*mask.shape[:-1], k)


def _gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens`` ``(B, N, D)`` at ``index`` ``(B, K)`` → ``(B, K, D)`` (I-JEPA's ``apply_masks``)."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class IJEPAPredictor(nn.Module):
    """Context tokens ``(B, Kc, D)`` at ``context`` ``(B, Kc)`` and target positions ``(B, M, K)`` →
    predictions ``(B, M, K, D)``."""

    def __init__(
        self, embed_dim: int, grid: tuple[int, int], dim: int, depth: int, num_heads: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d_pos_embed(dim, grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.proj = nn.Linear(dim, embed_dim)
        init_vit_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        with torch.no_grad():  # I-JEPA's fix_init_weight
            for i, block in enumerate(self.blocks):
                block.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    def forward(self, context_tokens: Tensor, context: Tensor, targets: Tensor) -> Tensor:
        b, m, k = targets.shape
        pos = self.pos_embed.to(context_tokens.dtype).expand(b, -1, -1)
        x = self.embed(context_tokens) + _gather_tokens(pos, context)  # (B, Kc, d)
        kc = x.shape[1]
        # One sequence per (sample, target block): mask-major as I-JEPA's x.repeat(len(masks), 1, 1).
        x = x.repeat(m, 1, 1)  # (M·B, Kc, d)
        target_pos = _gather_tokens(pos.repeat(m, 1, 1), targets.transpose(0, 1).reshape(m * b, k))
        queries = self.mask_token.to(x.dtype) + target_pos  # (M·B, K, d)
        x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        out = self.proj(self.norm(x)[:, kc:])  # (M·B, K, D)
        return out.reshape(m, b, k, -1).transpose(0, 1)


@METHODS.register("ijepa", needs=NEEDS)
class IJEPA(Method):
    """I-JEPA (Assran et al. 2023) on a ViT.

    Args:
        encoder: a ViT (``mask_modes`` with ``"drop"``); I-JEPA's has no class token.
        predictor_dim: predictor width (384).
        predictor_depth: predictor blocks (6, ``init_model``'s default; 12 in the ViT-H configs).
        predictor_heads: predictor heads (None: the encoder's, as I-JEPA).
        mlp_ratio: predictor MLP ratio (4).
        base_momentum, final_momentum: the target encoder's EMA momentum, linear between them (0.996, 1.0).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "ijepa"}

    def __init__(
        self,
        encoder: Encoder,
        predictor_dim: int = 384,
        predictor_depth: int = 6,
        predictor_heads: int | None = None,
        mlp_ratio: float = 4.0,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        check_vit("ijepa", encoder)
        heads = int(predictor_heads or getattr(encoder, "num_heads", 0) or 1)
        if isinstance(predictor_depth, bool) or not isinstance(predictor_depth, int) or predictor_depth < 1:
            raise ConfigError(f"method.predictor_depth must be a positive integer, got {predictor_depth!r}")
        if predictor_dim % heads or predictor_dim % 4:
            raise ConfigError(
                f"method.predictor_dim {predictor_dim} must be divisible by the predictor's {heads} heads "
                "(method.predictor_heads; default: the encoder's) and by 4 (2-D sine-cosine positions)"
            )
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ConfigError(
                f"need 0 <= method.base_momentum <= method.final_momentum <= 1, got {base_momentum}, "
                f"{final_momentum}"
            )
        self.grid: tuple[int, int] = tuple(encoder.token_grid)  # type: ignore[arg-type,assignment]
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 0))
        self.predictor = IJEPAPredictor(
            encoder.embed_dim, self.grid, predictor_dim, predictor_depth, heads, float(mlp_ratio)
        )
        self.target = EMATeacher(encoder, eval_mode=True)
        self.base_momentum, self.final_momentum = float(base_momentum), float(final_momentum)
        self.last_momentum = self.base_momentum

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        context_mask = views.mask(0)
        targets = views.aux.get("target_masks")
        if context_mask is None or targets is None:
            raise ValueError(
                "I-JEPA needs a context mask (Views.masks) and target blocks (Views.aux['target_masks']); "
                "use the 'ijepa' view policy"
            )
        x = views.inputs[0]
        context_mask, targets = context_mask.flatten(1).bool(), targets.bool()
        p = self.num_prefix_tokens
        encoder: Any = self.encoder
        out = encoder(x, mask=context_mask, mask_mode="drop")
        context_tokens = out.last_hidden_state[:, p:]  # (B, Kc, D)
        context = mask_indices(~context_mask)  # (B, Kc): the ViT keeps patches in ascending order
        target_index = mask_indices(targets)  # (B, M, K)
        with torch.no_grad():
            full = self.target(x).last_hidden_state[:, p:]  # (B, N, D)
            b, m, k = target_index.shape
            h = _gather_tokens(full, target_index.reshape(b, m * k)).reshape(b, m, k, -1)
        pred = self.predictor(context_tokens, context, target_index)  # (B, M, K, D)
        loss = ijepa_loss(pred, h)
        features = out.pooled.detach().float()
        logs = {
            "target_momentum": torch.tensor(self.last_momentum),
            "context_fraction": torch.tensor(context.shape[1] / context_mask.shape[1]),
        }
        return MethodOutput(loss=loss, logs=logs, embeddings=features, features=features)

    def on_optimizer_step(self, step: StepInfo) -> None:
        self.last_momentum = linear_momentum(
            step.step, step.total_steps, self.base_momentum, self.final_momentum
        )
        self.target.update(self.encoder, self.last_momentum)
