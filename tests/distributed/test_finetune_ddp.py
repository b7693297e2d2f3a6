"""Two gloo processes equal one process for fine-tuning (global-count cross-entropy, early-stopping
decisions shared) and for the online probe (its gradients summed over processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _launch import run_in_processes
from safetensors.torch import load_file

# Whole-image crops, no flip: the views do not depend on the per-process seeds.
FINETUNE = [
    "data.source=digits:train",
    "data.image_size=16",
    "data.labels_per_class=8",
    "encoder=small_cnn",
    "encoder.width=4",
    "method=finetune",
    "method.layer_decay=0.7",
    "optim.name=sgd",
    "optim.lr=0.05",
    "train.steps=4",
    "train.batch_size=32",
    "train.precision=fp32",
    "train.val_fraction=0.25",
    "train.val_every=2",
    "train.progress=false",
    "train.knn_every=0",
    "train.device=cpu",
    "eval.online_probe=false",
    "augment.params={crop_scale: [1.0, 1.0], crop_ratio: [1.0, 1.0], flip_p: 0.0}",
]
# SimCLR with the online probe (the ddp_training test's deterministic settings).
PROBE = [
    "data.source=digits:train",
    "data.image_size=16",
    "data.max_samples=128",
    "encoder=small_cnn",
    "encoder.width=4",
    "method=simclr",
    "method.hidden_dim=32",
    "method.projection_dim=16",
    "method.head_last_bn=false",
    "method.temperature=0.5",
    "train.steps=3",
    "train.batch_size=32",
    "optim.name=sgd",
    "train.precision=fp32",
    "train.progress=false",
    "train.knn_every=0",
    "train.device=cpu",
    "eval.online_probe=true",
    "eval.online_probe_lr=0.05",
    "augment.params={crop_scale: [1.0, 1.0], crop_ratio: [1.0, 1.0], flip_p: 0.0, jitter_p: 0.0, "
    "grayscale_p: 0.0, blur_p: 0.0}",
]


def _weights(out: str, name: str) -> dict[str, np.ndarray]:
    if name == "probe":
        from selfsup.train import checkpoint as ckpt

        extra = ckpt.load_checkpoint(ckpt.latest_checkpoint(Path(out) / "checkpoints")).extra_tensors
        return {k: v.numpy() for k, v in extra.items() if k.startswith("online_probe/")}
    return {k: v.numpy() for k, v in load_file(str(Path(out) / name)).items() if v.is_floating_point()}


def _worker(rank: int, world: int, options: list[str], out: str, name: str) -> dict[str, np.ndarray]:
    from selfsup.api import make_config
    from selfsup.methods import finetune as _finetune  # noqa: F401
    from selfsup.train.loop import pretrain_run

    pretrain_run(make_config(overrides=options), out)
    return _weights(out, name)


def _compare(tmp_path: Path, options: list[str], name: str) -> None:
    single = _worker(0, 1, options, str(tmp_path / "one"), name)
    ranks = run_in_processes(_worker, 2, options, str(tmp_path / "two"), name)
    assert single and ranks[0].keys() == single.keys()
    for key, value in single.items():
        scale = float(np.abs(value).max()) + 1e-12
        np.testing.assert_allclose(ranks[0][key], value, rtol=1e-4, atol=1e-4 * scale, err_msg=key)
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])


def test_finetune_on_two_processes_matches_one(tmp_path: Path) -> None:
    _compare(tmp_path, FINETUNE, "best.safetensors")


def test_online_probe_on_two_processes_matches_one(tmp_path: Path) -> None:
    _compare(tmp_path, PROBE, "probe")
