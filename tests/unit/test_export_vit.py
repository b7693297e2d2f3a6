"""The timm export of ViTs: timm's key names and shapes, ``model_args`` that rebuild the model in timm's
``VisionTransformer``, its forward equal to ours, and the exported file loading back into a fresh ViT.

timm cannot be installed here (it needs torchvision): ``TimmViT`` (tests/unit/test_vit.py) is timm's
``VisionTransformer`` transcribed in plain torch; ``timm_vit_shapes`` below lists timm's state dict of a
headless ViT (``num_classes=0``) from ``timm/models/vision_transformer.py`` (``VisionTransformer.__init__``,
``Block``, ``Attention``, ``Mlp``, ``LayerScale``) without looking at our encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_export import PRETRAINED_CFG_FIELDS
from test_vit import TimmViT, perturb, reference_for, tiny

import selfsup
from selfsup.api import Pretrained
from selfsup.build import build_encoder
from selfsup.encoders import ENCODERS
from selfsup.encoders.vit import VisionTransformer
from selfsup.export import export_run, working_formats
from selfsup.export.timm import (
    timm_architecture,
    timm_model_args,
    timm_unsupported_reason,
    to_timm_state_dict,
)
from selfsup.io import save_tensors_atomic


def timm_vit_shapes(
    dim: int,
    depth: int,
    patch: int,
    grid: int,
    *,
    class_token: bool = True,
    reg_tokens: int = 0,
    no_embed_class: bool = False,
    init_values: float | None = None,
    qkv_bias: bool = True,
    mlp_ratio: float = 4.0,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of timm's ``VisionTransformer(num_classes=0, global_pool='token' or 'avg' with
    fc_norm=False)``: ``fc_norm`` and ``head`` are Identity, so hold nothing."""
    prefix = int(class_token) + reg_tokens
    embed_len = grid * grid if no_embed_class else grid * grid + prefix
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, embed_len, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    if class_token:
        shapes["cls_token"] = (1, 1, dim)
    if reg_tokens:
        shapes["reg_token"] = (1, reg_tokens, dim)
    hidden = int(dim * mlp_ratio)
    for i in range(depth):
        b = f"blocks.{i}"
        shapes |= {
            f"{b}.norm1.weight": (dim,),
            f"{b}.norm1.bias": (dim,),
            f"{b}.attn.qkv.weight": (3 * dim, dim),
        }
        if qkv_bias:
            shapes[f"{b}.attn.qkv.bias"] = (3 * dim,)
        shapes |= {f"{b}.attn.proj.weight": (dim, dim), f"{b}.attn.proj.bias": (dim,)}
        shapes |= {f"{b}.norm2.weight": (dim,), f"{b}.norm2.bias": (dim,)}
        shapes |= {f"{b}.mlp.fc1.weight": (hidden, dim), f"{b}.mlp.fc1.bias": (hidden,)}
        shapes |= {f"{b}.mlp.fc2.weight": (dim, hidden), f"{b}.mlp.fc2.bias": (dim,)}
        if init_values is not None:
            shapes |= {f"{b}.ls1.gamma": (dim,), f"{b}.ls2.gamma": (dim,)}
    return shapes


VIT_OVERRIDES = ["encoder.embed_dim=32", "encoder.depth=2", "encoder.num_heads=2", "encoder.num_registers=1"]


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0-step vit_small run on 32 px images (patch 4 by default: an 8 x 8 grid) with perturbed weights."""
    root = tmp_path_factory.mktemp("vit_export")
    data = root / "images32.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    run = root / "vit"
    overrides = ["train.progress=false", "train.device=cpu", *VIT_OVERRIDES]
    selfsup.pretrain(data=str(data), encoder="vit_small", out=run, steps=0, overrides=overrides)
    model = selfsup.load(run)
    perturb(model.encoder)
    save_tensors_atomic(run / "encoder.safetensors", model.encoder.state_dict())
    return run


@pytest.fixture(scope="module")
def vit_model(vit_run: Path) -> Pretrained:
    return selfsup.load(vit_run)


def test_vit_export_has_timms_keys_and_reproduces_timms_forward(vit_run: Path, vit_model: Pretrained) -> None:
    encoder = vit_model.encoder
    assert isinstance(encoder, VisionTransformer) and encoder.token_grid == (8, 8)
    out = export_run(vit_run, "timm")
    weights = load_file(str(out / "model.safetensors"))
    expected = timm_vit_shapes(32, 2, 4, 8, reg_tokens=1, no_embed_class=True)
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected  # no mask_token
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"]) == (
        "vit_tiny_patch16_224",
        0,
        32,
    )
    args = config["model_args"]
    assert args == {
        "img_size": [32, 32],
        "patch_size": 4,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "class_token": True,
        "reg_tokens": 1,
        "no_embed_class": True,
        "global_pool": "token",
        "dynamic_img_size": True,
    }
    cfg = config["pretrained_cfg"]
    assert set(cfg) <= PRETRAINED_CFG_FIELDS
    transform = json.loads((vit_run / "inputs.json").read_text())["transform"]
    assert cfg["input_size"] == [3, 32, 32] and (cfg["mean"], cfg["std"]) == (
        transform["mean"],
        transform["std"],
    )
    assert (cfg["first_conv"], cfg["classifier"], cfg["num_classes"]) == ("patch_embed.proj", "head", 0)
    assert "pool_size" not in cfg

    # timm's VisionTransformer built from model_args takes the file strictly and computes our output,
    # at the exported size and at a local-crop size (dynamic_img_size resizes the positions as we do).
    reference = TimmViT(
        img_size=args["img_size"][0],
        patch_size=args["patch_size"],
        embed_dim=args["embed_dim"],
        depth=args["depth"],
        num_heads=args["num_heads"],
        reg_tokens=args["reg_tokens"],
        no_embed_class=args["no_embed_class"],
        qkv_bias=args["qkv_bias"],
        global_pool=args["global_pool"],
    )
    reference.load_state_dict(weights, strict=True)
    reference.eval()
    dataset = vit_model.load_data(vit_model.config.data.source)
    x = vit_model.transform(dataset.batch(torch.arange(4)))[0]
    with torch.no_grad():
        torch.testing.assert_close(reference(x), encoder(x).pooled, rtol=1e-5, atol=1e-5)
        crop = x[:, :, :16, :16]
        torch.testing.assert_close(reference(crop), encoder(crop).pooled, rtol=1e-5, atol=1e-5)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["model_args"] == args and "local-dir:" in manifest["usage"]
    assert str(out) in manifest["usage"]


def test_the_exported_file_loads_back_into_a_fresh_vit(vit_run: Path, vit_model: Pretrained) -> None:
    out = export_run(vit_run, "timm", vit_run / "export" / "timm_again")
    weights = load_file(str(out / "model.safetensors"))
    torch.manual_seed(123)  # other initial weights than the run's
    fresh = build_encoder(vit_model.config, vit_model.info).eval()
    assert isinstance(fresh, VisionTransformer)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(fresh(x).pooled, vit_model.encoder(x).pooled)
    missing, unexpected = fresh.load_state_dict(weights, strict=False)
    assert (missing, unexpected) == (["mask_token"], [])
    with torch.no_grad():
        a, b = vit_model.encoder(x), fresh(x)
    assert torch.equal(a.pooled, b.pooled)
    assert all(torch.equal(p, q) for p, q in zip(a.hidden_states, b.hidden_states))


@pytest.mark.parametrize(
    "options",
    [
        {"pool": "mean", "class_token": False, "layer_scale": 0.1},
        {"pool": "mean", "num_registers": 2},
        {"qkv_bias": False, "mlp_ratio": 2.0},
        {"pos_embed": "sincos"},
    ],
    ids=["gap-no-cls-layerscale", "gap-registers", "no-qkv-bias-mlp2", "sincos"],
)
def test_model_args_rebuild_every_variant_in_timm(options: dict[str, object]) -> None:
    encoder = tiny(**options)
    perturb(encoder)
    weights, args = to_timm_state_dict(encoder), timm_model_args(encoder)
    expected_shapes = timm_vit_shapes(
        args["embed_dim"],
        args["depth"],
        args["patch_size"],
        args["img_size"][0] // args["patch_size"],
        class_token=args["class_token"],
        reg_tokens=args["reg_tokens"],
        no_embed_class=args["no_embed_class"],
        init_values=args.get("init_values"),
        qkv_bias=args["qkv_bias"],
        mlp_ratio=args["mlp_ratio"],
    )
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected_shapes
    assert args["global_pool"] == ("avg" if options.get("pool") == "mean" else "token")
    assert args.get("fc_norm", None) is (False if options.get("pool") == "mean" else None)
    if "layer_scale" in options:
        assert args["init_values"] == 0.1
    if options.get("class_token") is False:
        return  # the transcribed reference always has a class token; shapes are checked above
    reference = reference_for(encoder, args["global_pool"])
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(reference(x), encoder(x).pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("dims", "architecture"),
    [
        ({"embed_dim": 32, "num_heads": 2}, "vit_tiny_patch16_224"),
        ({}, "vit_small_patch16_224"),
        ({"embed_dim": 600, "num_heads": 6}, "vit_base_patch16_224"),
    ],
)
def test_architecture_is_the_nearest_registered_timm_vit(dims: dict[str, int], architecture: str) -> None:
    encoder = ENCODERS.create("vit_small", depth=1, **dims)
    assert timm_unsupported_reason(encoder) is None
    assert timm_architecture(encoder) == architecture
    # Exactly timm's model at 224 px / patch 16: the arguments are timm's own defaults for it.
    args = timm_model_args(encoder)
    assert (args["img_size"], args["patch_size"], args["reg_tokens"]) == ([224, 224], 16, 0)
    assert args["no_embed_class"] is False and args["class_token"] is True


def test_vit_runs_list_timm_among_their_formats(vit_model: Pretrained) -> None:
    assert "timm" in working_formats(vit_model)
