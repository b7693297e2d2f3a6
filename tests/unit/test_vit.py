"""The Vision Transformer encoders: equal to timm's ViT forward, masks, positions, pooling, sizes.

timm cannot be installed here (it needs torchvision), so ``TimmViT`` below is timm's ``VisionTransformer``
(``timm/models/vision_transformer.py`` at huggingface/pytorch-image-models aa4b585: ``Block``,
``_pos_embed``, ``forward_features``, ``forward_head``; ``timm/layers/attention.py`` ``Attention`` with its
non-fused path; ``timm/layers/pos_embed.py`` ``resample_abs_pos_embed``) transcribed in plain torch with
timm's module names, written without importing our encoder: our state dict must load into it with
``strict=True`` and give the same tokens.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.base import DataInfo
from selfsup.encoders import ENCODERS
from selfsup.encoders.vit import (
    Block,
    VisionTransformer,
    default_patch_size,
    interpolate_pos_embed,
    sincos_2d_pos_embed,
)

# --- timm's ViT, transcribed (reference) -----------------------------------------------------------


class TimmAttention(nn.Module):
    """timm/layers/attention.py ``Attention`` (the explicit, non-fused branch)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TimmLayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class TimmMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float | None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, heads, qkv_bias)
        self.ls1 = TimmLayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TimmMlp(dim, int(dim * mlp_ratio))
        self.ls2 = TimmLayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def timm_resample_abs_pos_embed(
    posemb: Tensor, new_size: tuple[int, int], old_size: tuple[int, int], prefix: int
) -> Tensor:
    """timm/layers/pos_embed.py ``resample_abs_pos_embed`` (bicubic, antialias=True)."""
    if new_size[0] * new_size[1] + prefix == posemb.shape[1] and new_size[0] == new_size[1]:
        return posemb
    posemb_prefix, posemb = posemb[:, :prefix], posemb[:, prefix:]
    dim = posemb.shape[-1]
    posemb = posemb.float().reshape(1, old_size[0], old_size[1], -1).permute(0, 3, 1, 2)
    posemb = F.interpolate(posemb, size=new_size, mode="bicubic", antialias=True)
    posemb = posemb.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([posemb_prefix, posemb], dim=1)


class TimmViT(nn.Module):
    """timm's ``VisionTransformer(num_classes=0, global_pool='token' | 'avg', fc_norm=False,
    dynamic_img_size=True)``: patch_embed, _pos_embed, blocks, norm, pooling."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        init_values: float | None = None,
        qkv_bias: bool = True,
        global_pool: str = "token",
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.patch_size, self.grid = patch_size, (img_size // patch_size, img_size // patch_size)
        self.num_prefix_tokens = 1 + reg_tokens
        self.no_embed_class, self.global_pool = no_embed_class, global_pool
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        num_patches = self.grid[0] * self.grid[1]
        embed_len = num_patches if no_embed_class else num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        self.blocks = nn.Sequential(
            *[TimmBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _pos_embed(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        pos_embed = timm_resample_abs_pos_embed(self.pos_embed, (h, w), self.grid, prefix)
        x = x.view(b, -1, c)
        to_cat = [self.cls_token.expand(b, -1, -1)]
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(b, -1, -1))
        if self.no_embed_class:
            return torch.cat([*to_cat, x + pos_embed], dim=1)
        return torch.cat([*to_cat, x], dim=1) + pos_embed

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # NHWC (dynamic_img_size)
        return self.norm(self.blocks(self._pos_embed(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)


def mae_get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebookresearch/mae ``util/pos_embed.py`` ``get_2d_sincos_pos_embed`` (cls_token=False)."""

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


# --- helpers -------------------------------------------------------------------------------------------


def tiny(**options: object) -> VisionTransformer:
    """A 2-block width-32 ViT for 16 px images at patch 4 (a 4 x 4 grid)."""
    torch.manual_seed(0)
    info = DataInfo(modality="image", sample_shape=(3, 16, 16), dtype="uint8")
    args: dict[str, object] = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, **options}
    return ENCODERS.create("vit_small", info=info, **args).eval()


def images(b: int = 2, size: int = 16, seed: int = 1) -> Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def random_mask(b: int, n: int, masked: int, seed: int = 2) -> Tensor:
    """``(b, n)`` bool with exactly ``masked`` True per row."""
    order = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    return order < masked


def perturb(model: nn.Module, seed: int = 3) -> None:
    """Non-trivial norms, biases and layer scales (fresh ones are 1 / 0, which hides swapped names)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name in ("reg_token",):
                p.copy_(torch.randn(p.shape, generator=g))


def reference_for(model: VisionTransformer, global_pool: str = "token") -> TimmViT:
    ref = TimmViT(
        img_size=model.image_size[0],
        patch_size=model.patch_size,
        embed_dim=model.embed_dim,
        depth=model.num_layers,
        num_heads=model.num_heads,
        reg_tokens=model.num_registers,
        no_embed_class=model.no_embed_class,
        init_values=model.layer_scale,
        qkv_bias=model.qkv_bias,
        global_pool=global_pool,
        mlp_ratio=model.mlp_ratio,
    )
    state = {k: v for k, v in model.state_dict().items() if k != "mask_token"}
    ref.load_state_dict(state, strict=True)
    return ref.eval()


# --- equality with timm ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_registers": 2, "layer_scale": 0.1},
        {"qkv_bias": False, "pool": "mean", "mlp_ratio": 2.0},
    ],
    ids=["default", "registers+layerscale", "no-qkv-bias+mean+mlp2"],
)
@pytest.mark.parametrize("size", [16, 24, 8])
def test_forward_equals_timms_vision_transformer(options: dict[str, object], size: int) -> None:
    model = tiny(**options).double()
    perturb(model)
    ref = reference_for(model, "avg" if options.get("pool") == "mean" else "token").double()
    x = images(size=size).double()
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.last_hidden_state, ref.forward_features(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.pooled, ref(x), rtol=1e-10, atol=1e-10)
    grid = (size // 4) ** 2
    assert out.last_hidden_state.shape == (2, model.num_prefix_tokens + grid, 32)


def test_pos_embed_layout_follows_timm() -> None:
    # No registers: the class token has a position (timm's no_embed_class=False, vit_small_patch16_224).
    assert tiny().pos_embed.shape == (1, 1 + 16, 32) and not tiny().no_embed_class
    # Registers: no prefix token has a position (timm's *_reg* models, no_embed_class=True).
    model = tiny(num_registers=4)
    assert model.pos_embed.shape == (1, 16, 32) and model.no_embed_class
    assert model.reg_token.shape == (1, 4, 32) and model.num_prefix_tokens == 5
    no_cls = tiny(class_token=False, pool="mean")
    assert (
        no_cls.cls_token is None and no_cls.pos_embed.shape == (1, 16, 32) and no_cls.num_prefix_tokens == 0
    )


def test_state_dict_names_are_timms() -> None:
    names = set(tiny(num_registers=1, layer_scale=1e-5).state_dict())
    block = {
        f"blocks.0.{n}"
        for n in (
            *("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight"),
            *("attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias"),
            *("mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"),
        )
    }
    expected = {"cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    expected |= {"norm.weight", "norm.bias", "mask_token"} | block | {k.replace(".0.", ".1.") for k in block}
    assert names == expected


# --- sizes ------------------------------------------------------------------------------------------------


def _timm_vit_parameters(dim: int, depth: int, patch: int, grid: int, classes: int = 1000) -> int:
    """timm's VisionTransformer parameters layer by layer (class token, no registers, MLP ratio 4)."""
    embed = 3 * patch * patch * dim + dim + dim + (1 + grid * grid) * dim  # conv, cls, pos
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * 4 * dim + 4 * dim)
    block += 4 * dim * dim + dim
    return embed + depth * block + 2 * dim + (dim * classes + classes)


@pytest.mark.parametrize(
    ("name", "published"),
    # timm's vit_small_patch16_224 and vit_base_patch16_224 (torchvision's vit_b_16: 86.6M; timm's model
    # cards: 22.1M), with the 1000-class head, which our headless encoder lacks.
    [("vit_small", 22_050_664), ("vit_base", 86_567_656), ("vit_tiny", 5_717_416)],
)
def test_parameter_counts_at_224_patch_16_equal_timms(name: str, published: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = ENCODERS.create(name)  # no data info: 224 px, so patch 16
    dim = model.embed_dim
    assert (model.patch_size, model.token_grid, model.num_layers) == (16, (14, 14), 12)
    assert _timm_vit_parameters(dim, 12, 16, 14) == published
    count = sum(p.numel() for n, p in model.named_parameters() if n != "mask_token")
    assert count == published - (dim * 1000 + 1000)
    assert model.mask_token.shape == (1, 1, dim)


def test_sizes_and_default_patch_size() -> None:
    with torch.device("meta"):
        built = [ENCODERS.create(n, depth=1) for n in ("vit_tiny", "vit_small", "vit_base")]
    assert [(m.embed_dim, m.num_heads) for m in built] == [(192, 3), (384, 6), (768, 12)]
    assert ENCODERS.create("vit_tiny", embed_dim=64, num_heads=4).num_layers == 12
    cifar = DataInfo(modality="image", sample_shape=(3, 32, 32), dtype="uint8")
    model = ENCODERS.create("vit_tiny", info=cifar, depth=1)
    assert (model.patch_size, model.token_grid) == (4, (8, 8))
    assert default_patch_size((64, 64)) == 4 and default_patch_size((96, 96)) == 16
    assert ENCODERS.create("vit_tiny", info=cifar, depth=1, patch_size=8).token_grid == (4, 4)


def test_bad_options_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        tiny(patch_size=5)
    with pytest.raises(ValueError, match="pool='cls' needs class_token=True"):
        tiny(class_token=False)
    with pytest.raises(ValueError, match="Did you mean 'mean'"):
        tiny(pool="maen")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        tiny(num_heads=3)
    with pytest.raises(ValueError, match="padding_mask"):
        tiny()(images(), padding_mask=torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        tiny()(images(size=18))


# --- masks -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "replace"])
def test_shapes_for_each_mask_mode(mode: str) -> None:
    model = tiny(num_registers=1)
    mask = random_mask(2, 16, 6)
    out = model(images(), mask=mask, mask_mode=mode)
    tokens = 2 + (10 if mode == "drop" else 16)
    assert out.last_hidden_state.shape == (2, tokens, 32) and out.pooled.shape == (2, 32)
    assert len(out.hidden_states) == model.num_layers + 1 == 3
    assert all(h.shape == (2, tokens, 32) for h in out.hidden_states)
    assert out.hidden_states[-1] is out.last_hidden_state
    assert model.mask_mode == "replace" and model.mask_modes == ("drop", "replace")


def test_drop_mode_equals_the_blocks_on_the_kept_tokens() -> None:
    model = tiny(num_registers=1).double()
    perturb(model)
    x, mask = images().double(), random_mask(2, 16, 7)
    with torch.no_grad():
        out = model(x, mask=mask, mask_mode="drop")
        # By hand: patch embeddings plus positions, the kept ones in patch order, prefix in front.
        patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2) + model.pos_embed
        kept = torch.stack([patches[i, (~mask[i]).nonzero().squeeze(1)] for i in range(2)])
        cls = (model.cls_token).expand(2, -1, -1)  # registers: no position for any prefix token
        h = torch.cat([cls, model.reg_token.expand(2, -1, -1), kept], dim=1)
        torch.testing.assert_close(out.hidden_states[0], h)
        for block in model.blocks:
            h = block(h)
        torch.testing.assert_close(out.last_hidden_state, model.norm(h))
        torch.testing.assert_close(out.pooled, model.norm(h)[:, 0])


def test_replace_mode_equals_substituting_the_mask_token() -> None:
    model = tiny().double()
    perturb(model)
    x, mask = images().double(), random_mask(2, 16, 5)
    with torch.no_grad():
        out = model(x, mask=mask)  # replace is the default
        patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        patches = patches.clone()
        patches[mask] = model.mask_token.reshape(-1)
        h = torch.cat([model.cls_token.expand(2, -1, -1), patches], dim=1) + model.pos_embed
        for block in model.blocks:
            h = block(h)
        torch.testing.assert_close(out.last_hidden_state, model.norm(h))
        unmasked = model(x)
    # The mask changed the masked positions' inputs, so it changed the output.
    assert not torch.allclose(out.last_hidden_state, unmasked.last_hidden_state)


def test_drop_mode_needs_equal_kept_counts_and_masks_must_fit() -> None:
    model = tiny()
    mask = random_mask(2, 16, 4)
    mask[0, (~mask[0]).nonzero()[0]] = True  # row 0 masks one patch more
    with pytest.raises(ValueError, match="same number of masked patches"):
        model(images(), mask=mask, mask_mode="drop")
    model(images(), mask=mask, mask_mode="replace")  # fine when replacing
    with pytest.raises(ValueError, match=r"\(B, N\) = \(2, 16\) bool"):
        model(images(), mask=torch.zeros(2, 17, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_mode must be one of"):
        model(images(), mask=mask, mask_mode="none")
    everything = torch.ones(2, 16, dtype=torch.bool)
    assert model(images(), mask=everything, mask_mode="drop").last_hidden_state.shape == (2, 1, 32)
    with pytest.raises(ValueError, match="masks every patch"):
        tiny(class_token=False, pool="mean")(images(), mask=everything, mask_mode="drop")


def test_mean_pool_excludes_registers_and_replaced_patches() -> None:
    model = tiny(num_registers=2, pool="mean")
    perturb(model)
    x, mask = images(), random_mask(2, 16, 5)
    with torch.no_grad():
        out = model(x)
        assert model.num_prefix_tokens == 3  # cls + 2 registers
        torch.testing.assert_close(out.pooled, out.last_hidden_state[:, 3:].mean(dim=1))
        assert not torch.allclose(out.pooled, out.last_hidden_state[:, 1:].mean(dim=1))
        masked = model(x, mask=mask)
        expected = torch.stack([masked.last_hidden_state[i, 3:][~mask[i]].mean(0) for i in range(2)])
        torch.testing.assert_close(masked.pooled, expected)
        dropped = model(x, mask=mask, mask_mode="drop")
        torch.testing.assert_close(dropped.pooled, dropped.last_hidden_state[:, 3:].mean(dim=1))
        # Fully masked rows fall back to every patch rather than dividing by zero.
        everything = model(x, mask=torch.ones(2, 16, dtype=torch.bool))
        torch.testing.assert_close(everything.pooled, everything.last_hidden_state[:, 3:].mean(dim=1))


def test_registers_are_prefix_tokens_that_change_the_output() -> None:
    model = tiny(num_registers=3)
    x = images()
    with torch.no_grad():
        before = model(x)
        model.reg_token.add_(torch.randn_like(model.reg_token))
        after = model(x)
    assert before.last_hidden_state.shape[1] == 1 + 3 + 16
    assert not torch.allclose(before.pooled, after.pooled)  # the cls token attends to the registers


# --- positions ---------------------------------------------------------------------------------------------


def test_position_interpolation_is_the_identity_at_the_native_grid() -> None:
    model = tiny()
    table = model.pos_embed[:, 1:]
    assert interpolate_pos_embed(table, (4, 4), (4, 4)) is table
    torch.testing.assert_close(model.patch_pos_embed(), table)
    torch.testing.assert_close(model.patch_pos_embed((4, 4)), table)


def test_position_interpolation_at_other_grids() -> None:
    model = tiny()
    for grid in [(2, 2), (6, 6), (3, 5)]:
        assert model.patch_pos_embed(grid).shape == (1, grid[0] * grid[1], 32)
    # A constant table stays constant; a table varying along columns only keeps rows equal.
    constant = torch.full((1, 16, 8), 0.5)
    torch.testing.assert_close(interpolate_pos_embed(constant, (4, 4), (6, 6)), torch.full((1, 36, 8), 0.5))
    cols = torch.arange(4.0).repeat(4).reshape(1, 16, 1).expand(1, 16, 8)
    resized = interpolate_pos_embed(cols, (4, 4), (7, 5)).reshape(7, 5, 8)
    torch.testing.assert_close(resized, resized[:1].expand(7, 5, 8))
    assert resized[0, :, 0].diff().gt(0).all()  # still increasing along the columns
    # A local crop of 8 px at patch 4 (2 x 2 grid) and a non-square input run through the encoder.
    assert model(images(size=8)).last_hidden_state.shape == (2, 1 + 4, 32)
    assert model(torch.randn(1, 3, 8, 20)).last_hidden_state.shape == (1, 1 + 10, 32)
    with pytest.raises(ValueError, match="is not"):
        interpolate_pos_embed(constant, (3, 4), (4, 4))


def test_sincos_table_equals_maes() -> None:
    for dim, grid in [(32, 4), (384, 8)]:
        ours = sincos_2d_pos_embed(dim, (grid, grid), dtype=torch.float64)
        torch.testing.assert_close(ours, torch.from_numpy(mae_get_2d_sincos_pos_embed(dim, grid)))
    # Rectangular grids: the first half encodes the column, the second the row.
    rect = sincos_2d_pos_embed(8, (2, 3), dtype=torch.float64).reshape(2, 3, 8)
    torch.testing.assert_close(rect[0, :, :4], rect[1, :, :4])
    torch.testing.assert_close(rect[:, 0, 4:], rect[:, 2, 4:])
    assert sincos_2d_pos_embed(8, (2, 3)).dtype == torch.float32
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_pos_embed(6, (2, 2))


def test_fixed_sincos_positions_are_a_buffer() -> None:
    model = tiny(pos_embed="sincos")
    assert "pos_embed" not in dict(model.named_parameters()) and "pos_embed" in model.state_dict()
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_2d_pos_embed(32, (4, 4)))
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(32))  # MAE: the class token's row is 0


# --- stochastic depth, layers, init -----------------------------------------------------------------------


def test_drop_path_is_random_in_training_and_off_in_eval() -> None:
    model = tiny(drop_path=0.5, depth=4)
    rates = [getattr(b.drop_path1, "p", 0.0) for b in model.blocks]
    assert rates[0] == 0.0 and rates[1:] == pytest.approx([0.5 / 3, 1.0 / 3, 0.5])  # linear, as timm
    assert all(b.drop_path1 is not b.drop_path2 for b in model.blocks)
    x = images(b=8)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x).pooled, model(x).pooled)
        model.train()
        torch.manual_seed(0)
        a = model(x).pooled
        torch.manual_seed(1)
        b = model(x).pooled
    assert not torch.allclose(a, b)
    assert isinstance(tiny(drop_path=0.0).blocks[1].drop_path1, nn.Identity)


def test_layer_id_numbers_the_layers_as_hidden_states() -> None:
    model = tiny(num_registers=1, layer_scale=0.1)
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    for name in ("cls_token", "reg_token", "pos_embed", "mask_token", "patch_embed.proj.weight"):
        assert ids[name] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.ls2.gamma"] == 2
    assert ids["norm.weight"] == ids["norm.bias"] == model.num_layers == 2
    with pytest.raises(ValueError, match="no parameter"):
        model.layer_id("head.weight")
    assert [p.shape for p in model.mask_parameters()] == [(1, 1, 32)]


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = ENCODERS.create("vit_small", depth=2)
    qkv = model.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.001 and torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    assert abs(model.pos_embed.std().item() - 0.02) < 0.001
    # Xavier-uniform of the (384, 768) flattened patch convolution: bound sqrt(6 / (384 + 768)).
    bound = math.sqrt(6 / (384 + 3 * 16 * 16))
    weight = model.patch_embed.proj.weight
    assert weight.abs().max().item() <= bound and weight.abs().max().item() > 0.99 * bound
    assert torch.equal(model.norm.weight, torch.ones(384)) and torch.equal(model.norm.bias, torch.zeros(384))
    regs = ENCODERS.create("vit_tiny", depth=1, num_registers=4).reg_token
    assert 0 < regs.std().item() < 1e-5  # DINOv2 / timm: normal std 1e-6


def test_block_is_a_standalone_predictor_block() -> None:
    torch.manual_seed(0)
    block = Block(16, 4, mlp_ratio=2.0, qkv_bias=False, layer_scale=1e-4).eval()
    x = torch.randn(3, 7, 16)
    assert block(x).shape == (3, 7, 16) and block.mlp.fc1.out_features == 32 and block.attn.qkv.bias is None
    torch.testing.assert_close(block(x), x, atol=1e-2, rtol=0)  # LayerScale 1e-4: near the identity
    # An attention mask (True = attend) restricts what each token sees: token 0 alone sees only itself.
    allowed = torch.ones(7, 7, dtype=torch.bool)
    allowed[0, 1:] = False
    out = block(x, attn_mask=allowed)
    alone = block(x[:, :1])
    torch.testing.assert_close(out[:, 0], alone[:, 0])


def test_block_outputs_are_the_blocks_before_the_final_norm() -> None:
    """data2vec's targets: every block's un-normed output; the last one normed is last_hidden_state."""
    torch.manual_seed(0)
    encoder = ENCODERS.create("vit_tiny", embed_dim=32, depth=3, num_heads=2, patch_size=4).eval()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    blocks = encoder.block_outputs(x, mask=mask)
    out = encoder(x, mask=mask)
    assert len(blocks) == 3
    torch.testing.assert_close(blocks[0], out.hidden_states[1])
    torch.testing.assert_close(blocks[1], out.hidden_states[2])
    torch.testing.assert_close(encoder.norm(blocks[2]), out.last_hidden_state)
    assert not torch.allclose(blocks[2], out.last_hidden_state)
