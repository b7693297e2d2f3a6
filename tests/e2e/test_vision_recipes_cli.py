"""The image method zoo from the command line, as a user runs it: a packaged CIFAR-10 recipe on real CIFAR-10
images, then probes and a timm export of the ViT run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import selfsup
from tiny_data import first_samples_of_shard

from selfsup.api import load

# Recipe sizes shrunk so that two steps take seconds; everything else (loss, views, optimizer, schedules) is
# the recipe's.
TINY = {
    "mae_cifar10": [
        "encoder.depth=2",
        "method.decoder_dim=32",
        "method.decoder_depth=1",
        "method.decoder_heads=2",
    ],
    "dino_cifar10": [
        "encoder=small_cnn",
        "encoder.width=8",
        "method.hidden_dim=32",
        "method.bottleneck_dim=16",
        "method.out_dim=64",
    ],
    "mocov2_cifar10": [
        "encoder=small_cnn",
        "encoder.width=8",
        "method.hidden_dim=32",
        "method.projection_dim=16",
        "method.queue_size=64",
    ],
}


@pytest.fixture(scope="module")
def shards(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cifar")
    train = first_samples_of_shard(cifar10_dir / "train-000.tar", folder / "train.tar", 96)
    test = first_samples_of_shard(cifar10_dir / "test-000.tar", folder / "test.tar", 64)
    return train, test


def _pretrain(recipe: str, train: Path, run: Path) -> dict:
    done = selfsup(
        "pretrain",
        "--config",
        recipe,
        "--data",
        str(train),
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "train.knn_every=0",
        "train.precision=fp32",
        *TINY[recipe],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pretraining finished" in done.stdout
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("recipe", ["dino_cifar10", "mocov2_cifar10"])
def test_a_zoo_recipe_pretrains_and_probes_from_the_cli(
    recipe: str, shards: tuple[Path, Path], tmp_path: Path
) -> None:
    train, test = shards
    summary = _pretrain(recipe, train, tmp_path / "run")
    assert summary["method"] == recipe.removesuffix("_cifar10") and summary["steps"] == 2
    assert summary["encoder"] == "small_cnn" and summary["samples"] == 96
    knn = selfsup("eval", "knn", "--run", str(tmp_path / "run"), "--train", str(train), "--test", str(test))
    assert knn.returncode == 0, knn.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "eval" / "knn.json").read_text())["metrics"]
    assert 0 <= saved["knn_top1@20"] <= 100


def test_a_vit_recipe_exports_to_timm_from_the_cli(shards: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = shards
    run = tmp_path / "mae"
    summary = _pretrain("mae_cifar10", train, run)
    assert summary["method"] == "mae" and summary["encoder"] == "vit_small"
    out = tmp_path / "timm"
    done = selfsup("export", str(run), "--format", "timm", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"].startswith("vit_small_patch16")
    args = config["model_args"]
    assert (args["patch_size"], args["img_size"], args["depth"], args["embed_dim"]) == (4, [32, 32], 2, 384)
    weights = load_file(str(out / "model.safetensors"))
    # timm's VisionTransformer names (timm/models/vision_transformer.py).
    timm_keys = (
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.1.attn.qkv.weight",
        "norm.weight",
    )
    assert set(timm_keys) <= set(weights)
    assert all(
        key.split(".")[0] in {"cls_token", "pos_embed", "patch_embed", "blocks", "norm"} for key in weights
    )
    assert weights["pos_embed"].shape == (1, 1 + 8 * 8, 384)
    encoder = load(run).encoder.state_dict()
    qkv = [value for key, value in encoder.items() if key.endswith("blocks.0.attn.qkv.weight")]
    assert len(qkv) == 1 and torch.equal(qkv[0], weights["blocks.0.attn.qkv.weight"])
