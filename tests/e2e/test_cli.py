"""The ``selfsup`` command end to end, as a user runs it: digits, and real CIFAR-10 images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from tiny_data import first_samples_of_shard

TINY_DIGITS = [
    "data.image_size=16",
    "encoder.width=4",
    "method.hidden_dim=32",
    "method.projection_dim=16",
    "train.knn_every=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
]


def selfsup(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "digits"
    done = selfsup(
        "pretrain",
        "--data",
        "digits:train",
        "--method",
        "simclr",
        "--encoder",
        "small_cnn",
        "--out",
        str(run),
        "--steps",
        "4",
        "--batch-size",
        "64",
        "--seed",
        "3",
        "--device",
        "cpu",
        *TINY_DIGITS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pretraining finished" in done.stdout and "knn_top1@20" in done.stdout
    return run


def test_pretrain_writes_a_complete_run_directory(digits_run: Path) -> None:
    import yaml

    config = yaml.safe_load((digits_run / "config.yaml").read_text())
    assert config["train"]["seed"] == 3 and config["encoder"] == {"name": "small_cnn", "params": {"width": 4}}
    info = json.loads((digits_run / "run.json").read_text())
    assert info["selfsup_version"] and info["seed"] == 3 and info["world_size"] == 1
    records = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train)
    assert [r["step"] for r in records if r["kind"] == "knn"] == [2, 4]
    assert list((digits_run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (digits_run / "checkpoints").glob("*.json")) == [
        "step_00000002.json",
        "step_00000004.json",
    ]
    summary = json.loads((digits_run / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 <= summary["knn_top1@20"] <= 100
    assert (digits_run / "plots" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (digits_run / "report.html").exists()
    assert "knn_top1@20" in (digits_run / "report.md").read_text()
    from selfsup.encoders import ENCODERS

    weights = load_file(str(digits_run / "encoder.safetensors"))
    assert set(weights) == set(ENCODERS.create("small_cnn", width=4).state_dict())


def test_embed_writes_embeddings_labels_and_ids(digits_run: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    out = tmp_path / "test.npz"
    done = selfsup("embed", "--run", str(digits_run), "--data", "digits:test", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out, allow_pickle=False) as data:
        embeddings, labels, ids = data["embeddings"], data["labels"], data["ids"]
    assert embeddings.dtype == np.float32 and embeddings.shape == (359, 16)  # small_cnn width 4: 4 * 4
    assert labels.dtype == np.int64 and ids.shape == (359,)
    targets = load_digits().target
    indices = [int(i.rsplit("/", 1)[1]) for i in ids]
    assert np.array_equal(labels, targets[indices])  # labels follow the ids


def test_eval_knn_prints_and_saves(digits_run: Path) -> None:
    done = selfsup(
        "eval", "knn", "--run", str(digits_run), "--train", "digits:train", "--test", "digits:test"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((digits_run / "eval" / "knn.json").read_text())
    saved = record["metrics"]
    for key in ("knn_top1@20", "knn_top5@20", "knn_top1@200", "knn_top5@200"):
        assert key in done.stdout and 0 <= saved[key] <= 100
    assert saved["knn_top5@20"] >= saved["knn_top1@20"]
    # The confusion matrix counts every test sample once and its diagonal is the top-1 accuracy (k=20).
    confusion = np.array(record["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 359
    assert 100 * np.trace(confusion) / 359 == pytest.approx(saved["knn_top1@20"])
    assert len(record["per_class"]["accuracy"]) == 10 and record["protocol"] == "knn"


def test_python_api_mirrors_the_cli(digits_run: Path) -> None:
    import selfsup as api

    model = api.load(digits_run)
    via_api = api.embed(model, "digits:test")
    assert via_api.embeddings.shape == (359, 16)
    assert api.evaluate_knn(model, "digits:train", "digits:test", out=digits_run / "eval" / "api.json")


def test_list_shows_every_registry() -> None:
    done = selfsup("list")
    assert done.returncode == 0
    for name in (
        "simclr",
        "byol",
        "finetune",
        "linear",
        "cluster",
        "onnx",
        "timm",
        "resnet18",
        "resnet50",
        "small_cnn",
        "digits",
        "shards",
        "folder",
        "simclr_digits",
    ):
        assert name in done.stdout
    verbose = selfsup("list", "methods", "-v")
    assert verbose.returncode == 0 and "temperature = 0.1" in verbose.stdout
    assert "base_momentum = 0.996" in verbose.stdout


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    typo = selfsup("pretrain", "--data", "digits", "--out", str(tmp_path / "a"), "optim.weight_decy=0.1")
    assert (
        typo.returncode == 2
        and "Did you mean 'weight_decay'" in typo.stderr
        and "Traceback" not in typo.stderr
    )
    missing = selfsup("pretrain", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    unknown = selfsup("pretrain", "--data", "digits", "--encoder", "resnet19", "--out", str(tmp_path / "c"))
    assert unknown.returncode == 2 and "Did you mean 'resnet18'" in unknown.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = selfsup("pretrain", "--data", str(empty), "--out", str(tmp_path / "d"))
    assert no_images.returncode == 2 and "Traceback" not in no_images.stderr


def clean_failure(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, no traceback, and a message that names the problem."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.startswith("selfsup: error:"), done.stderr[-2000:]
    for needle in needles:
        assert needle in done.stderr, done.stderr[-2000:]


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    clean_failure(
        selfsup("pretrain", "--data", "digits", "--out", str(target), "--steps", "1", *TINY_DIGITS),
        "is a file",
    )


def test_a_batch_larger_than_the_data_is_a_clear_error(tmp_path: Path) -> None:
    done = selfsup(
        "pretrain", "--data", "digits:test", "--out", str(tmp_path / "r"), "--batch-size", "512", *TINY_DIGITS
    )
    clean_failure(done, "359 samples, fewer than one batch of 512", "--batch-size")


def test_cuda_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = selfsup(
        "pretrain", "--data", "digits", "--out", str(tmp_path / "r"), "--device", "cuda", *TINY_DIGITS
    )
    clean_failure(done, "no usable CUDA device", "--device cpu")


def test_resuming_from_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--data", "digits:train", "--encoder", "small_cnn", "--out", str(run), "--batch-size", "64"]
    first = selfsup("pretrain", *args, "--steps", "4", *TINY_DIGITS, "train.stop_after=2")
    assert first.returncode == 0, first.stderr[-2000:]
    tensors = run / "checkpoints" / "step_00000002.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])  # truncated, as by a full disk
    clean_failure(selfsup("pretrain", *args, "--steps", "4", "--resume", *TINY_DIGITS), "step_00000002")


def test_zero_steps_saves_the_random_initialisation_as_a_usable_run(tmp_path: Path) -> None:
    """The random-initialisation row of every SSL table: `--steps 0` writes the initial encoder."""
    import torch

    from selfsup.build import build_encoder, resolve_components
    from selfsup.config import load_config
    from selfsup.data import load_dataset

    run = tmp_path / "random"
    done = selfsup(
        "pretrain",
        "--data",
        "digits:train",
        "--encoder",
        "small_cnn",
        "--out",
        str(run),
        "--steps",
        "0",
        "--seed",
        "5",
        *TINY_DIGITS,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pretraining finished" in done.stdout and "knn_top1@20" in done.stdout  # the baseline's kNN
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["final_loss"] is None
    weights = load_file(str(run / "encoder.safetensors"))
    config = load_config(run / "config.yaml")
    torch.manual_seed(5)  # the initial weights are those of seed 5, as in a real run's first step
    fresh = build_encoder(
        resolve_components(config, load_dataset("digits:train").info), load_dataset("digits").info
    )
    assert all(torch.equal(weights[k], v) for k, v in fresh.state_dict().items())
    embedded = selfsup("embed", "--run", str(run), "--data", "digits:test", "--out", str(tmp_path / "e.npz"))
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    knn = selfsup("eval", "knn", "--run", str(run), "--train", "digits:train", "--test", "digits:test")
    assert knn.returncode == 0 and "knn_top1@20" in knn.stdout


# --------------------------------------------------------------------------- real CIFAR-10 images


def test_cifar10_shards_end_to_end(cifar10_dir: Path, tmp_path: Path) -> None:
    train = first_samples_of_shard(
        cifar10_dir / "train-000.tar", tmp_path / "train-000.tar", 300, corrupt=True
    )
    test = first_samples_of_shard(cifar10_dir / "test-000.tar", tmp_path / "test-000.tar", 200)
    run = tmp_path / "run"
    overrides = ["encoder.stem=cifar", "encoder.width=8", "method.hidden_dim=64", "train.knn_every=0"]
    done = selfsup(
        "pretrain",
        "--data",
        str(tmp_path / "train-*.tar"),
        "--method",
        "byol",
        "--encoder",
        "resnet18",
        "--out",
        str(run),
        "--steps",
        "3",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        *overrides,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "300 images 32x32" in done.stderr and "skipped 1 unreadable" in done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples"] == 300 and summary["skipped_inputs"] == 1
    assert "broken_0001" in summary["skipped_examples"][0]

    knn = selfsup("eval", "knn", "--run", str(run), "--train", str(train), "--test", str(test))
    assert knn.returncode == 0, knn.stderr[-3000:]
    saved = json.loads((run / "eval" / "knn.json").read_text())["metrics"]
    assert 0 <= saved["knn_top1@20"] <= 100

    strict = selfsup(
        "pretrain",
        "--data",
        str(train),
        "--encoder",
        "small_cnn",
        "--out",
        str(tmp_path / "strict"),
        "--steps",
        "1",
        "--batch-size",
        "64",
        "--strict",
    )
    assert strict.returncode == 2 and "broken_0001" in strict.stderr and "Traceback" not in strict.stderr
