"""Every ``selfsup eval`` protocol, ``report``, ``export`` and ``bench`` from the command line, on one
small digits run, as a user runs them: the printed table, the JSON record and what it must hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.cli import main

TINY = [
    "data.image_size=16",
    "encoder.width=4",
    "method.hidden_dim=32",
    "method.projection_dim=16",
    "train.knn_every=0",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.keep_every=2",
    "train.progress=false",
]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "digits"
    args = ["pretrain", "--data", "digits:train", "--encoder", "small_cnn", "--out", str(run)]
    code = main([*args, "--steps", "6", "--batch-size", "64", "--device", "cpu", *TINY])
    assert code == 0
    return run


def record(run: Path, protocol: str) -> dict:
    return json.loads((run / "eval" / f"{protocol}.json").read_text())


def test_linear_probe_with_baselines(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "linear", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test",
        "--layers", "2", "3", "--pooling", "mean", "max", "--baselines",
    )  # fmt: skip
    assert code == 0 and "top1" in out
    saved = record(run_dir, "linear")
    assert saved["protocol"] == "linear" and 0 <= saved["metrics"]["top1"] <= 100
    # The grid spans both layers and both poolings, and the selected entry is one of its rows.
    assert {row["features"] for row in saved["grid"]} == {
        "layer2/mean",
        "layer2/max",
        "layer3/mean",
        "layer3/max",
    }
    assert saved["selected"]["features"] in {row["features"] for row in saved["grid"]}
    assert set(saved["baselines"]) == {"random init", "raw inputs"}
    confusion = np.array(saved["confusion"])
    assert confusion.sum() == 359 and 100 * np.trace(confusion) / 359 == pytest.approx(
        saved["metrics"]["top1"]
    )


def test_fewshot_reports_every_draw_and_the_baselines(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "fewshot", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test",
        "--per-class", "1", "5", "--seeds", "2",
    )  # fmt: skip
    assert code == 0 and "1 per class" in out and "raw inputs" in out
    saved = record(run_dir, "fewshot")
    assert set(saved["results_by_features"]) == {"encoder", "random init", "raw inputs"}
    for rows in saved["results_by_features"].values():
        assert [r["setting"] for r in rows] == ["1 per class", "5 per class"]
        for row in rows:
            assert len(row["values"]) == 2 and row["mean"] == pytest.approx(np.mean(row["values"]))
            assert row["std"] == pytest.approx(np.std(row["values"], ddof=1))
    assert saved["results"][0]["labels_used"] == [10, 10]  # one label for each of the 10 digits, per draw


def test_weighted_layer_probe_saves_and_plots_its_weights(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "layer", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test"
    )
    assert code == 0 and "top1" in out
    saved = record(run_dir, "layer")
    assert len(saved["layer_weights"]) == 4  # small_cnn: 3 layers + the input state
    assert sum(saved["layer_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert (run_dir / "eval" / "layer_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(
        capsys, "eval", "layer", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test",
        "--level", "frame",
    )  # fmt: skip
    assert code == 2 and "per-frame labels" in err


def test_cluster(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "eval", "cluster", "--run", str(run_dir), "--data", "digits:test")
    assert code == 0 and "nmi" in out
    metrics = record(run_dir, "cluster")["metrics"]
    assert 0 <= metrics["nmi"] <= 1 and 0 <= metrics["cluster_accuracy"] <= 100


def test_label_free_scores_over_checkpoints(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "rankme", "--run", str(run_dir), "--data", "digits:train", "--checkpoints", "all",
        "--train", "digits:train", "--test", "digits:test",
    )  # fmt: skip
    assert code == 0 and "rank correlation" in out
    saved = record(run_dir, "rankme")
    assert [row["step"] for row in saved["checkpoints"]] == [2, 4, 6]  # train.keep_every=2 kept them all
    for row in saved["checkpoints"]:
        assert 1 <= row["rankme"] <= 16 and "lidar" in row and "knn_top1@20" in row
    assert saved["correlation"]["rankme~knn_top1@20"]["n"] == 3
    # Without labels: the scores alone.
    code, out, _ = run_cli(capsys, "eval", "rankme", "--run", str(run_dir), "--data", "digits:test")
    unlabelled = record(run_dir, "rankme")
    assert code == 0 and "rankme" in out and unlabelled["correlation"] == {}
    assert [row["step"] for row in unlabelled["checkpoints"]] == [None]  # the final encoder


def test_protocols_need_labels(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = np.random.default_rng(0).integers(0, 255, size=(20, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "unlabelled.npz", images=images)
    code, _, err = run_cli(
        capsys, "eval", "linear", "--run", str(run_dir), "--train", str(tmp_path / "unlabelled.npz"),
        "--test", "digits:test",
    )  # fmt: skip
    assert code == 2 and "needs labels" in err and "Traceback" not in err


def test_export_formats(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(
        capsys, "export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "st")
    )
    assert code == 0 and (tmp_path / "st" / "model.safetensors").exists()
    code, _, _ = run_cli(capsys, "export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "onnx"))
    assert code == 0 and (tmp_path / "onnx" / "model.onnx").exists()
    code, _, err = run_cli(capsys, "export", str(run_dir), "--format", "timm")
    assert code == 2 and "small_cnn" in err and "onnx" in err  # no timm equivalent: says what works


def test_report_of_one_run(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(capsys, "report", str(run_dir))
    assert code == 0
    html = (run_dir / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html
    # The embedding map was computed from the run's own (labelled) training data.
    points = json.loads((run_dir / "eval" / "embedding_map.json").read_text())
    assert len(points["points"]) == len(points["labels"]) == 1438 and points["data"] == "digits:train"
    assert "mbedding" in html
    assert "http://" not in html and "https://" not in html


def test_bench_writes_markdown_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(
        capsys, "bench", "--data", "digits:train", "--test", "digits:test", "--methods", "simclr", "byol",
        "--encoders", "small_cnn", "--steps", "2", "--out", str(tmp_path / "bench"), *TINY,
    )  # fmt: skip
    assert code == 0
    rows = (tmp_path / "bench" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("data,method,encoder") and len(rows) == 4  # random init, simclr, byol
    assert [r.split(",")[1] for r in rows[1:]] == ["random init", "simclr", "byol"]
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "| digits:train | random init | small_cnn |" in table
    for run in ("random-init-small_cnn", "simclr-small_cnn", "byol-small_cnn"):
        assert (tmp_path / "bench" / "digits_train" / run / "eval" / "linear.json").exists()


def test_bench_time_budget_stops_runs_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(
        capsys, "bench", "--data", "digits:train", "--test", "digits:test", "--encoders", "small_cnn",
        "--steps", "50", "--budget", "0.001", "--out", str(tmp_path / "bench"), *TINY,
    )  # fmt: skip
    assert code == 0
    header, baseline, simclr = (
        line.split(",") for line in (tmp_path / "bench" / "results.csv").read_text().splitlines()
    )
    row = dict(zip(header, simclr, strict=True))
    assert row["steps"] == "1" and row["finished"] == "no"  # stopped after its first step, resumable
    assert dict(zip(header, baseline, strict=True))["finished"] == "yes"


def test_linear_probe_regression_targets(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A float target per sample (here: the mean ink of each digit image, which the features must carry)
    gives R² / RMSE; the result agrees with scikit-learn's Ridge on the same standardized features."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    import selfsup

    model = selfsup.load(run_dir)
    train, test = model.load_data("digits:train"), model.load_data("digits:test")
    ink = {
        name: data.batch(torch.arange(len(data))).inputs.float().mean(dim=(1, 2, 3))
        for name, data in (("train", train), ("test", test))
    }
    for name, values in ink.items():
        np.save(tmp_path / f"{name}.npy", values.numpy())
    code, out, _ = run_cli(
        capsys, "eval", "linear", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test",
        "--train-targets", str(tmp_path / "train.npy"), "--test-targets", str(tmp_path / "test.npy"),
    )  # fmt: skip
    assert code == 0 and "r2" in out
    saved = record(run_dir, "linear")
    assert saved["task"] == "regression" and "confusion" not in saved
    x_train, x_test = model.features(train).numpy(), model.features(test).numpy()
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((x_train - mean) / std, ink["train"].numpy())
    reference = r2_score(ink["test"].numpy(), ridge.predict((x_test - mean) / std))
    assert saved["metrics"]["r2"] == pytest.approx(reference, abs=0.05)
    bad = tmp_path / "short.npy"
    np.save(bad, np.zeros(5))
    code, _, err = run_cli(
        capsys, "eval", "linear", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test",
        "--train-targets", str(bad), "--test-targets", str(tmp_path / "test.npy"),
    )  # fmt: skip
    assert code == 2 and "1438 samples" in err


def test_finetune_from_the_command_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ft"
    code, printed, _ = run_cli(
        capsys, "eval", "finetune", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test",
        "--per-class", "5", "--steps", "12", "--batch-size", "32", "--out", str(out), "train.progress=false",
        "optim.lr=0.003",
    )  # fmt: skip
    assert code == 0 and "top1" in printed
    saved = json.loads((out / "eval" / "finetune.json").read_text())
    assert saved["labels_per_class"] == 5 and saved["init"] == str(run_dir) and saved["steps"] <= 12
    assert 0 <= saved["metrics"]["top1"] <= 100 and np.array(saved["confusion"]).sum() == 359
    # 5 labels per class minus the validation split leave 40 samples: a batch of 64 is a clear error.
    code, _, err = run_cli(
        capsys, "eval", "finetune", "--run", str(run_dir), "--train", "digits:train", "--test", "digits:test",
        "--per-class", "5", "--steps", "2", "--out", str(tmp_path / "ft64"), "train.progress=false",
    )  # fmt: skip
    assert code == 2 and "fewer than one batch of 64" in err
