"""Resume: N steps, stop, resume for N more == 2N uninterrupted steps, weights compared exactly (CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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


# ------------------------------------------------------------------ a real kill between checkpoints

KILL_RUN = [
    "--data",
    "digits:train",
    "--encoder",
    "small_cnn",
    "--steps",
    "30",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "data.image_size=16",
    "encoder.width=4",
    "method.hidden_dim=32",
    "method.projection_dim=16",
    "train.checkpoint_every=10",
    "train.log_every=1",
    "train.knn_every=5",
    "train.progress=false",
]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfsup", "pretrain", *args]


def _train_steps(run: Path) -> list[int]:
    from selfsup.train.monitor import read_metrics

    return [int(r["step"]) for r in read_metrics(run)]


def test_sigkill_between_checkpoints_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Default settings (no precision pinned); the process is killed with SIGKILL after logging steps
    the next checkpoint never saved, so a naive resume would log them twice."""
    straight = tmp_path / "straight"
    done = subprocess.run(
        _cli(*KILL_RUN, "--out", str(straight)), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _cli(*KILL_RUN, "--out", str(killed)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (killed / "metrics.jsonl").exists() and max(_train_steps(killed), default=0) >= 13:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    latest = ckpt.latest_checkpoint(killed / "checkpoints")
    assert latest is not None and latest.name == "step_00000010.json"
    assert max(_train_steps(killed)) > 10  # steps that the resumed run will repeat

    resumed = subprocess.run(
        _cli(*KILL_RUN, "--out", str(killed), "--resume"), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(straight / "encoder.safetensors"))
    b = load_file(str(killed / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    assert _train_steps(killed) == list(range(1, 31))
    from selfsup.train.monitor import read_metrics

    assert [r["step"] for r in read_metrics(killed, kind="knn")] == [5, 10, 15, 20, 25, 30]
    # TensorBoard: the events logged after step 10 by the killed run are purged on reading.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(1, 31))
    straight_events = EventAccumulator(str(straight / "tensorboard"))
    straight_events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == [
        e.value for e in straight_events.Scalars("train/loss")
    ]


def test_vector_run_resumes_exactly_with_its_fitted_standardization(tmp_path: Path) -> None:
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "vectors.npz"
    np.savez(data, features=rng.normal(size=(200, 9)) * 50 + 7, labels=np.arange(200) % 4)
    options = [
        f"data.source={data}",
        "method=byol",
        "method.hidden_dim=32",
        "method.projection_dim=16",
        "encoder.hidden_dim=16",
        "train.batch_size=32",
        "train.progress=false",
        "train.log_every=1",
        "train.knn_every=0",
        "train.checkpoint_every=2",
    ]

    def config(extra: list[str]):
        return make_config(steps=6, device="cpu", overrides=options + extra)

    pretrain_run(config([]), tmp_path / "straight")
    pretrain_run(config(["train.stop_after=3"]), tmp_path / "resumed")
    saved = json.loads((tmp_path / "resumed" / "inputs.json").read_text())
    assert saved["info"]["modality"] == "vector" and len(saved["transform"]["mean"]) == 9
    pretrain_run(config([]), tmp_path / "resumed", resume=True)
    a, b = final_model(tmp_path / "straight"), final_model(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
