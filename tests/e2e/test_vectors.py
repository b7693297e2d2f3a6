"""The vector modality end to end through the unchanged CLI: defaults chosen from the data (MLP,
SimCLR, feature-noise views), the standardization fitted at pretraining and used by embed / eval,
NaN rows counted and skipped, and clear errors for image-only options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def selfsup(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args], capture_output=True, text=True, timeout=timeout
    )


def clustered(path: Path, n: int, seed: int, nan_rows: int = 0) -> np.ndarray:
    """Four Gaussian clusters in 12 features on wildly different scales (as table columns are)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(4, 12)) * 3
    labels = rng.integers(0, 4, n)
    x = (centres[labels] + rng.normal(size=(n, 12))) * np.logspace(-3, 3, 12)
    x[:nan_rows, 2] = np.nan
    np.savez(
        path, features=x.astype(np.float32), labels=labels, columns=np.array([f"c{i}" for i in range(12)])
    )
    return x


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("vectors")
    train, test = root / "train.npz", root / "test.npz"
    clustered(train, 600, seed=0, nan_rows=3)
    clustered(test, 200, seed=1)
    run = root / "run"
    done = selfsup(
        "pretrain",
        "--data",
        str(train),
        "--out",
        str(run),
        "--steps",
        "30",
        "--batch-size",
        "128",
        "--device",
        "cpu",
        "train.log_every=5",
        "train.knn_every=15",
        "encoder.hidden_dim=64",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "597 vectors of 12 features" in done.stderr and "skipped 3 unreadable" in done.stderr
    return run, train, test


def test_defaults_come_from_the_modality(vector_run: tuple[Path, Path, Path]) -> None:
    import yaml

    run, _, _ = vector_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"]["name"] == "simclr" and config["encoder"]["name"] == "mlp"
    inputs = json.loads((run / "inputs.json").read_text())
    assert inputs["info"]["modality"] == "vector" and inputs["info"]["sample_shape"] == [12]
    assert inputs["info"]["columns"][0] == "c0"
    std = np.array(inputs["transform"]["std"])
    assert std[-1] / std[0] > 1e5  # fitted on the data: the columns' scales are kept apart
    summary = json.loads((run / "summary.json").read_text())
    assert summary["modality"] == "vector" and summary["skipped_inputs"] == 3 and summary["samples"] == 597


def test_embed_and_eval_use_the_fitted_standardization(
    vector_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    run, train, test = vector_run
    out = tmp_path / "emb.npz"
    done = selfsup("embed", "--run", str(run), "--data", str(test), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out, allow_pickle=False) as data:
        assert data["embeddings"].shape == (200, 64) and data["labels"].shape == (200,)
    knn = selfsup("eval", "knn", "--run", str(run), "--train", str(train), "--test", str(test))
    assert knn.returncode == 0, knn.stderr[-3000:]
    top1 = json.loads((run / "eval" / "knn.json").read_text())["metrics"]["knn_top1@20"]
    assert top1 > 80  # four well-separated clusters, once standardized


def test_image_options_on_vectors_are_clear_errors(
    vector_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, train, _ = vector_run
    for extra, needle in (
        (["--encoder", "resnet18"], "encoder 'resnet18' takes image inputs, but the data holds vector"),
        (["data.image_size=16"], "data.image_size does not apply"),
        (["augment.mean=[0.5,0.5,0.5]"], "augment.mean applies to images"),
        (["augment.policy=simclr"], "view policy 'simclr' makes image views"),
    ):
        done = selfsup("pretrain", "--data", str(train), "--out", str(tmp_path / "x"), "--steps", "1", *extra)
        assert done.returncode == 2 and "Traceback" not in done.stderr and needle in done.stderr, done.stderr
    strict = selfsup(
        "pretrain", "--data", str(train), "--out", str(tmp_path / "y"), "--steps", "1", "--strict"
    )
    assert strict.returncode == 2 and "NaN" in strict.stderr


def test_embedding_data_of_another_width_is_a_clear_error(
    vector_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    run, _, _ = vector_run
    other = tmp_path / "narrow.npy"
    np.save(other, np.zeros((5, 3), np.float32))
    done = selfsup("embed", "--run", str(run), "--data", str(other), "--out", str(tmp_path / "e.npz"))
    assert done.returncode == 2 and "trained on vector samples of shape (12,)" in done.stderr


def test_list_shows_modalities_and_the_vector_components() -> None:
    done = selfsup("list")
    assert done.returncode == 0
    assert "vector" in done.stdout and "default encoder mlp" in done.stdout
    assert "vector_noise" in done.stdout and "[vector]" in done.stdout
