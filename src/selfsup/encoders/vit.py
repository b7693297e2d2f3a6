"""Vision Transformers (``vit_tiny`` / ``vit_small`` / ``vit_base``) with timm's parameter names.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"; the layout is timm's ``VisionTransformer``
(``timm/models/vision_transformer.py``, huggingface/pytorch-image-models) so that a checkpoint exports to
timm by dropping ``mask_token`` (:mod:`selfsup.export.timm`):

* **Patches**: a ``patch_size`` x ``patch_size`` stride-``patch_size`` convolution ``patch_embed.proj``;
  tokens in row-major order of the ``(H / p, W / p)`` grid. ``patch_size=None`` picks 4 for images of at
  most 64 px on their longer side (CIFAR's 32 px -> an 8 x 8 grid, as the ViT-on-CIFAR recipes of
  solo-learn / MoCo v3 use) and 16 otherwise (ImageNet's 224 px -> 14 x 14).
* **Prefix tokens**: ``cls_token`` (1, 1, D) then ``num_registers`` register tokens ``reg_token``
  (1, R, D) (Darcet et al. 2024, "Vision Transformers Need Registers"), before the patch tokens;
  ``num_prefix_tokens = class_token + num_registers`` (timm's name).
* **Positions**: ``pos_embed``, learned (``pos_embed="learned"``, ViT / DINO / iBOT) or the fixed 2-D
  sine-cosine table of MAE / I-JEPA (``"sincos"``: a buffer, not trained). As timm: without registers
  ``pos_embed`` is ``(1, 1 + N, D)`` and the class token has a position of its own (timm's default
  ``no_embed_class=False``: ``vit_small_patch16_224``); with registers it is ``(1, N, D)`` and no prefix
  token gets a position (timm's ``*_reg*`` models set ``no_embed_class=True``). At another grid than the
  configured one the patch positions are resized bicubically (:func:`interpolate_pos_embed`, timm's
  ``resample_abs_pos_embed``; DINO's ``interpolate_pos_encoding``), so local crops of 16 px at patch 4 work.
* **Blocks**: pre-norm (:class:`Block`: LayerNorm eps 1e-6, multi-head self-attention through
  ``F.scaled_dot_product_attention``, optional LayerScale ``ls1`` / ``ls2``, stochastic depth increasing
  linearly from 0 to ``drop_path`` over the blocks as timm's ``calculate_drop_path_rates``, MLP with GELU),
  then a final LayerNorm ``norm``.
* **Masks** (``mask`` ``(B, N)`` bool over the input's patches, True = masked), two modes:
  ``"replace"`` (default; BEiT / iBOT / data2vec) puts the learned ``mask_token`` in place of the masked
  patch embeddings *before* the positions are added; ``"drop"`` (MAE / I-JEPA) removes the masked patches
  *after* the positions are added, keeping the others in ascending patch order; every row must keep as
  many patches.

Outputs: ``last_hidden_state`` ``(B, P + N_kept, D)`` (prefix tokens, then patch tokens) after the final
norm; ``hidden_states`` ``num_layers + 1`` tensors: the embedded tokens (positions added, before block 0),
then each block's output -- the last entry is ``last_hidden_state`` itself, i.e. *after* the final norm, as
the Encoder contract has ``hidden_states[-1] is last_hidden_state`` (the earlier blocks' outputs are
un-normed, as timm's ``forward_intermediates(norm=False)``). ``pooled`` ``(B, D)``: the normed class token
(``pool="cls"``) or the mean of the normed patch tokens that were neither dropped nor replaced
(``pool="mean"``; registers are never pooled).

Initialisation as timm / DINO: ``nn.Linear`` truncated-normal std 0.02 with zero bias, LayerNorm (1, 0),
``pos_embed`` (learned), ``cls_token`` and ``mask_token`` truncated-normal std 0.02 (DINO / BEiT; timm draws
its cls token with std 1e-6), register tokens normal std 1e-6 (DINOv2's ``register_tokens``, timm's
``reg_token``). The patch convolution is initialised like a Linear layer of its flattened weight
``(D, 3 p p)`` with Xavier-uniform and a zero bias, as MAE's ``initialize_weights`` (timm and DINO keep
PyTorch's default convolution init).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.base import DataInfo
from selfsup.encoders.base import ENCODERS, Encoder, EncoderOutput, check_image_batch, pool_hidden_state
from selfsup.registry import suggest

LAYER_NORM_EPS = 1e-6  # timm's LayerNorm default (DINO / MAE use the same)
SIZES: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}
POOLS = ("cls", "mean")
POS_EMBEDS = ("learned", "sincos")
DEFAULT_IMAGE_SIZE = 224  # when the data declares no fixed sample shape
SMALL_IMAGE_MAX = 64  # images up to this size get patch 4 by default, larger ones patch 16


def default_patch_size(image_size: tuple[int, int]) -> int:
    """4 for images of at most 64 px (CIFAR 32 -> 8 x 8 patches), 16 otherwise (224 -> 14 x 14)."""
    return 4 if max(image_size) <= SMALL_IMAGE_MAX else 16


# --- position embeddings ---------------------------------------------------------------------------


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """``(M,)`` float64 positions -> ``(M, dim)``: sines then cosines at frequencies ``10000^(-2i/dim)``."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = positions.reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_pos_embed(dim: int, grid: tuple[int, int], dtype: torch.dtype = torch.float32) -> Tensor:
    """MAE's fixed 2-D sine-cosine table (``util/pos_embed.py``, ``get_2d_sincos_pos_embed``) for a
    ``(rows, cols)`` patch grid: ``(rows * cols, dim)``, tokens in row-major order.

    The first ``dim / 2`` channels encode the column index, the last ``dim / 2`` the row index (MAE's
    ``np.meshgrid(grid_w, grid_h)`` puts the width coordinate first), each as :func:`_sincos_1d`;
    computed in float64 as MAE's numpy code, returned as ``dtype``. ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = grid
    row, col = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64, device="cpu"),
        torch.arange(cols, dtype=torch.float64, device="cpu"),
        indexing="ij",
    )
    table = torch.cat([_sincos_1d(dim // 2, col), _sincos_1d(dim // 2, row)], dim=1)
    return table.to(dtype)


def interpolate_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resize patch position embeddings ``(1, old_rows * old_cols, D)`` to ``(1, new_rows * new_cols, D)``.

    Bicubic with antialiasing, in float32, as timm's ``resample_abs_pos_embed`` (DINO's
    ``interpolate_pos_encoding`` is also bicubic, without antialiasing, with a 0.1 offset on the scale
    factor); the identity (the same tensor) at the same grid. Prefix-token positions are not part of
    ``pos_embed`` here: split them off first.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)  # type: ignore[assignment]
    if pos_embed.ndim != 3 or pos_embed.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed {tuple(pos_embed.shape)} is not (1, {old_grid[0]} * {old_grid[1]}, D)")
    if new_grid == old_grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    table = pos_embed.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)


# --- blocks ------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a sample's residual branch with
    probability ``p`` and scale the kept ones by ``1 / (1 - p)`` (timm's ``DropPath``); identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma`` initialised to ``init_value`` (Touvron et al. 2021, CaiT)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` (D -> 3D), scaled dot-product attention per head, ``proj``.
    ``(B, T, D)`` -> ``(B, T, D)``; ``attn_mask`` as ``F.scaled_dot_product_attention`` takes it
    (bool: True = attend)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """``fc1`` (D -> hidden), GELU, ``fc2`` (hidden -> D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm Transformer block (timm's ``Block``): ``x + drop_path1(ls1(attn(norm1(x))))``, then
    ``x + drop_path2(ls2(mlp(norm2(x))))``; ``(B, T, D)`` -> ``(B, T, D)``. Also the block of decoders and
    predictors (MAE, I-JEPA). ``layer_scale``: LayerScale init value (None: no LayerScale)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1: nn.Module = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path1: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2: nn.Module = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path2: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def init_vit_weights(module: nn.Module) -> None:
    """timm's ``init_weights_vit_timm`` for every submodule: Linear truncated-normal std 0.02 and zero
    bias, LayerNorm (1, 0). For decoders and predictors built of :class:`Block` too."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` -> ``(B, H/p * W/p, D)``: one ``proj`` convolution, stride = kernel = ``p``."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# --- the encoder ---------------------------------------------------------------------------------------


def _positive_int(name: str, value: object, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


class VisionTransformer(Encoder):
    """ViT encoder: ``(B, 3, H, W)`` with H, W multiples of ``patch_size`` -> tokens ``(B, P + N, D)``
    (see the module docstring for layout, masking, outputs and initialisation)."""

    modality = "image"
    mask_mode = "replace"
    mask_modes = ("drop", "replace")

    def __init__(
        self,
        *,
        image_size: tuple[int, int] = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        num_registers: int = 0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        pool: str = "cls",
        pos_embed: str = "learned",
        name: str = "vit",
    ) -> None:
        super().__init__()
        for key, value in (("patch_size", patch_size), ("embed_dim", embed_dim), ("depth", depth)):
            _positive_int(key, value, name)
        _positive_int("num_heads", num_heads, name)
        _positive_int("in_channels", in_channels, name)
        if isinstance(num_registers, bool) or not isinstance(num_registers, int) or num_registers < 0:
            raise ValueError(f"{name}: num_registers must be a non-negative integer, got {num_registers!r}")
        if embed_dim % num_heads:
            raise ValueError(f"{name}: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if pool not in POOLS:
            raise ValueError(f"{name}: unknown pool {pool!r}.{suggest(pool, POOLS)} Choose one of {POOLS}.")
        if pool == "cls" and not class_token:
            raise ValueError(
                f"{name}: pool='cls' needs class_token=True; use pool='mean' without a class token"
            )
        if pos_embed not in POS_EMBEDS:
            raise ValueError(
                f"{name}: unknown pos_embed {pos_embed!r}.{suggest(pos_embed, POS_EMBEDS)} "
                f"Choose one of {POS_EMBEDS}."
            )
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"{name}: drop_path must be in [0, 1), got {drop_path!r}")
        if mlp_ratio <= 0:
            raise ValueError(f"{name}: mlp_ratio must be positive, got {mlp_ratio!r}")
        if image_size[0] % patch_size or image_size[1] % patch_size:
            raise ValueError(
                f"{name}: the image size {tuple(image_size)} is not a multiple of patch_size {patch_size}; "
                "choose encoder.patch_size dividing it (or set data.image_size)"
            )
        self.name = name
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.num_layers = depth
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = qkv_bias
        self.layer_scale = layer_scale
        self.pool = pool
        self.pos_embed_kind = pos_embed
        self.token_grid = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.has_class_token = class_token
        self.num_registers = num_registers
        self.num_prefix_tokens = int(class_token) + num_registers
        # timm: registers -> no_embed_class=True (no prefix token has a position); else the class token
        # has one, stored first in pos_embed.
        self.no_embed_class = num_registers > 0
        self.num_pos_prefix = 0 if self.no_embed_class else int(class_token)
        num_patches = self.token_grid[0] * self.token_grid[1]

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_registers, embed_dim)) if num_registers else None
        table = torch.zeros(1, self.num_pos_prefix + num_patches, embed_dim)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(table)
        else:  # MAE / I-JEPA: fixed, the class token's position zero (MAE's cls_token=True row)
            table[0, self.num_pos_prefix :] = sincos_2d_pos_embed(embed_dim, self.token_grid)
            self.register_buffer("pos_embed", table)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # timm's calculate_drop_path_rates (on the CPU: the model may be built under torch.device("meta")).
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], layer_scale) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        init_vit_weights(self)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))  # MAE: the conv as a Linear
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    # --- geometry ----------------------------------------------------------------------------------
    def grid_of(self, x: Tensor) -> tuple[int, int]:
        """The patch grid ``(H / p, W / p)`` of an image batch; ValueError unless p divides H and W."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"{self.name}: image size {(h, w)} is not a multiple of the patch size {self.patch_size}"
            )
        return h // self.patch_size, w // self.patch_size

    def patch_pos_embed(self, grid: tuple[int, int] | None = None) -> Tensor:
        """Position embeddings of the patch tokens of a ``grid`` (default: :attr:`token_grid`):
        ``(1, rows * cols, D)``, resized bicubically from the configured grid when it differs."""
        table = self.pos_embed[:, self.num_pos_prefix :]
        return interpolate_pos_embed(table, self.token_grid, tuple(grid) if grid else self.token_grid)

    def layer_id(self, name: str) -> int:
        """Embedding parameters (patch embedding, positions, class / register / mask tokens) 0,
        ``blocks.i`` ``i + 1``, the final ``norm`` ``num_layers`` (BEiT's ``get_layer_id_for_vit``)."""
        if name.startswith(("patch_embed.", "pos_embed", "cls_token", "reg_token", "mask_token")):
            return 0
        if name.startswith("blocks."):
            index = int(name.split(".")[1])
            if index < self.num_layers:
                return index + 1
        if name.startswith("norm."):
            return self.num_layers
        raise ValueError(f"{self.name} has no parameter {name!r} to place at a layer")

    # --- forward -----------------------------------------------------------------------------------
    def _resolve_mask_mode(self, mask_mode: str | None) -> str:
        mode = self.mask_mode if mask_mode is None else mask_mode
        if mode not in self.mask_modes:
            raise ValueError(f"{self.name}: mask_mode must be one of {self.mask_modes}, got {mode!r}")
        return mode

    def embed(self, x: Tensor, *, mask: Tensor | None = None, mask_mode: str | None = None) -> Tensor:
        """The tokens before block 0: ``(B, P + N_kept, D)``, prefix tokens then patch tokens, positions
        added, the mask applied as ``mask_mode`` says (see :meth:`forward`)."""
        check_image_batch(x, self.in_channels)
        grid = self.grid_of(x)
        tokens = self.patch_embed(x)  # (B, N, D)
        b, n, _ = tokens.shape
        mode = self._resolve_mask_mode(mask_mode)
        if mask is not None:
            if mask.shape != (b, n) or mask.dtype != torch.bool:
                raise ValueError(
                    f"{self.name}: mask must be a (B, N) = {(b, n)} bool tensor over the {grid[0]}x{grid[1]} "
                    f"patches of the input, got {tuple(mask.shape)} {mask.dtype}"
                )
            if mode == "replace":
                tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.patch_pos_embed(grid).to(tokens.dtype)
        if mask is not None and mode == "drop":
            kept = (~mask).sum(dim=1)
            if bool((kept != kept[0]).any()):
                raise ValueError(
                    f"{self.name}: mask_mode='drop' needs the same number of masked patches in every row, "
                    f"got {sorted(set(kept.tolist()))} kept patches"
                )
            if int(kept[0]) == 0 and self.num_prefix_tokens == 0:
                raise ValueError(
                    f"{self.name}: mask_mode='drop' masks every patch and there is no prefix token"
                )
            # Boolean indexing walks each row in order: the kept patches stay in ascending patch order.
            tokens = tokens[~mask].reshape(b, int(kept[0]), tokens.shape[-1])
        prefix = []
        if self.cls_token is not None:
            cls = self.cls_token
            if self.num_pos_prefix:
                cls = cls + self.pos_embed[:, :1]
            prefix.append(cls.to(tokens.dtype).expand(b, -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.to(tokens.dtype).expand(b, -1, -1))
        return torch.cat([*prefix, tokens], dim=1) if prefix else tokens

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        mask_mode: str | None = None,
    ) -> EncoderOutput:
        """``x`` ``(B, 3, H, W)``; ``mask`` ``(B, N)`` bool over the ``N = H/p * W/p`` patches, True =
        masked, applied as ``mask_mode`` (default :attr:`mask_mode`, ``"replace"``) says."""
        hidden = self._run_blocks(x, padding_mask, mask, mask_mode)
        last = self.norm(hidden[-1])
        hidden[-1] = last  # the contract: hidden_states[-1] is last_hidden_state
        return EncoderOutput(
            pooled=self._pool(last, mask, self._resolve_mask_mode(mask_mode)),
            last_hidden_state=last,
            hidden_states=tuple(hidden),
        )

    def block_outputs(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        mask_mode: str | None = None,
    ) -> list[Tensor]:
        """Each block's output ``(B, P + N_kept, D)`` before the final norm, ``depth`` tensors: data2vec's
        targets (fairseq vision's block outputs; ``hidden_states[-1]`` is after the final norm)."""
        return self._run_blocks(x, padding_mask, mask, mask_mode)[1:]

    def _run_blocks(
        self, x: Tensor, padding_mask: Tensor | None, mask: Tensor | None, mask_mode: str | None
    ) -> list[Tensor]:
        """The embedding output, then every block's output (none normed)."""
        if padding_mask is not None:
            raise ValueError(f"{self.name} takes fixed-size images and no padding_mask")
        h = self.embed(x, mask=mask, mask_mode=mask_mode)
        hidden = [h]
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        return hidden

    def _pool(self, last: Tensor, mask: Tensor | None, mode: str) -> Tensor:
        if self.pool == "cls":
            return last[:, 0]
        patches = last[:, self.num_prefix_tokens :]
        if mask is None or mode == "drop":
            return pool_hidden_state(patches)
        # Replaced patches hold the mask token's outputs, not a view of the input (cf pool_unmasked).
        excluded = torch.where(mask.all(dim=1, keepdim=True), torch.zeros_like(mask), mask)
        return pool_hidden_state(patches, excluded)


def _image_size(info: DataInfo | None) -> tuple[int, int]:
    shape = None if info is None else info.sample_shape
    if shape is None or len(shape) != 3:
        return (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    return (int(shape[1]), int(shape[2]))


def build_vit(
    size: str,
    info: DataInfo | None,
    *,
    patch_size: int | None,
    overrides: dict[str, Any],
    **options: Any,
) -> VisionTransformer:
    """A :class:`VisionTransformer` of ``size`` (:data:`SIZES`) for images of ``info.sample_shape``."""
    image_size = _image_size(info)
    dims = {**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
    patch = default_patch_size(image_size) if patch_size is None else patch_size
    in_channels = int(info.sample_shape[0]) if info is not None and info.sample_shape else 3
    return VisionTransformer(
        image_size=image_size, patch_size=patch, in_channels=in_channels, name=size, **dims, **options
    )


def _vit_factory(size: str, doc: str) -> Callable[..., VisionTransformer]:
    """The registered factory of one ViT size: one signature for the three (the registry reads it)."""

    def factory(
        info: DataInfo | None = None,
        patch_size: int | None = None,
        num_registers: int = 0,
        class_token: bool = True,
        drop_path: float = 0.0,
        pool: str = "cls",
        layer_scale: float | None = None,
        qkv_bias: bool = True,
        pos_embed: str = "learned",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> VisionTransformer:
        return build_vit(
            size,
            info,
            patch_size=patch_size,
            overrides={"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads},
            **_options(
                num_registers, class_token, drop_path, pool, layer_scale, qkv_bias, pos_embed, mlp_ratio
            ),
        )

    factory.__name__ = factory.__qualname__ = size
    factory.__doc__ = doc
    return factory


vit_tiny = ENCODERS.register("vit_tiny", modality="image")(
    _vit_factory("vit_tiny", "ViT-Tiny (192 x 12 blocks, 3 heads); patch 4 for images <= 64 px, else 16.")
)
vit_small = ENCODERS.register("vit_small", modality="image")(
    _vit_factory(
        "vit_small",
        "ViT-Small (384 x 12 blocks, 6 heads; 22.05M at patch 16, 224 px); patch 4 for images <= 64 px.",
    )
)
vit_base = ENCODERS.register("vit_base", modality="image")(
    _vit_factory(
        "vit_base",
        "ViT-Base (768 x 12 blocks, 12 heads; 86.57M at patch 16, 224 px); patch 4 for images <= 64 px.",
    )
)


def _options(
    num_registers: int,
    class_token: bool,
    drop_path: float,
    pool: str,
    layer_scale: float | None,
    qkv_bias: bool,
    pos_embed: str,
    mlp_ratio: float,
) -> dict[str, Any]:
    """The options every registered ViT takes (each factory keeps its own signature for the registry)."""
    return {
        "num_registers": num_registers,
        "class_token": class_token,
        "drop_path": float(drop_path),
        "pool": pool,
        "layer_scale": None if layer_scale is None else float(layer_scale),
        "qkv_bias": qkv_bias,
        "pos_embed": pos_embed,
        "mlp_ratio": float(mlp_ratio),
    }
