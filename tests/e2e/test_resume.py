"""Resume: N steps, stop, resume for N more == 2N uninterrupted steps, weights compared exactly (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfsup.api import make_config
from selfsup.config import ConfigError
from selfsup.train import checkpoint as ckpt
from selfsup.train.loop import pretrain_run

TINY = [
    "data.source=digits:train",
    "data.image_size=16",
    "data.max_samples=192",
    "encoder=small_cnn",
    "encoder.width=4",
    "train.batch_size=32",
    "train.precision=fp32",
    "train.progress=false",
    "train.log_every=1",
    "train.knn_every=0",
    "train.checkpoint_every=2",
]


def config(method: str, steps: int, extra: list[str]):
    params = ["method.hidden_dim=32", "method.projection_dim=16"]
    return make_config(method=method, steps=steps, device="cpu", overrides=TINY + params + extra)


def final_model(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).model


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        (
            "simclr",
            ["optim.name=lars", "train.accumulate=2", "augment.params={blur_p: 0.0}"],
        ),  # LARS momentum + accumulation
        (
            "byol",
            [
                "optim.name=adamw",
                "optim.lr=0.001",
                "optim.lr_scaling=none",
                "augment.params={blur_p: [0.0, 0.0]}",
            ],
        ),  # EMA target + Adam moments
    ],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, method: str, extra: list[str]) -> None:
    steps = 6
    straight = pretrain_run(config(method, steps, extra), tmp_path / "straight")
    assert straight.finished and straight.step == steps

    first = pretrain_run(config(method, steps, [*extra, "train.stop_after=3"]), tmp_path / "resumed")
    assert not first.finished and first.step == 3
    assert not (tmp_path / "resumed" / "encoder.safetensors").exists()
    second = pretrain_run(config(method, steps, extra), tmp_path / "resumed", resume=True)
    assert second.finished and second.step == steps

    a, b = final_model(tmp_path / "straight"), final_model(tmp_path / "resumed")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    enc_a = load_file(str(tmp_path / "straight" / "encoder.safetensors"))
    enc_b = load_file(str(tmp_path / "resumed" / "encoder.safetensors"))
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    # The resumed run logs continue where the first stopped, with no gap.
    steps_logged = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
        if '"kind": "train"' in line
    ]
    assert steps_logged == list(range(1, steps + 1))


def test_existing_run_needs_resume_and_same_config(tmp_path: Path) -> None:
    pretrain_run(config("simclr", 2, []), tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        pretrain_run(config("simclr", 2, []), tmp_path / "run")
    with pytest.raises(ConfigError, match="optim.lr"):
        pretrain_run(config("simclr", 4, ["optim.lr=0.5"]), tmp_path / "run", resume=True)
