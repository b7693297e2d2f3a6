"""The speech workflow of the README from the command line on real recordings (../shared/data: two FSDD
speakers, a few steps): pretrain with a packaged recipe on joined sources, then the
SUPERB-style layer probe with its baselines and speaker verification, each leaving its
record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfsup.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def test_byol_a_recipe_on_lj_speech_and_fsdd_then_every_audio_protocol(
    speech_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fsdd = speech_dir / "fsdd" / "metadata.csv"
    jackson = "&speaker=jackson"  # one speaker: 450 train / 50 test clips keep the test short
    # Two sources joined with " + " (the bench joins LJ Speech; its 42 minutes take long to decode here).
    pool = f"{fsdd}?split=train{jackson} + {fsdd}?split=train&speaker=theo"
    run = tmp_path / "byola"
    common = [f"data.cache_dir={tmp_path / 'cache'}", "train.progress=false"]
    code, out = run_cli(
        capsys, "pretrain", "--config", "byol_a_speech_cpu", "--data", pool, "--out", str(run),
        "--steps", "3", "train.batch_size=16", "train.knn_every=0", "train.checkpoint_every=3", *common,
    )  # fmt: skip
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples"] == 450 + 450 and summary["skipped_inputs"] == 0
    assert summary["audio_seconds_per_s"] > 0

    digits = f"{fsdd}?label=digit&split={{}}{jackson}"
    code, out = run_cli(
        capsys, "eval", "layer", "--run", str(run), "--train", digits.format("train"),
        "--test", digits.format("test"), "--baselines",
    )  # fmt: skip
    assert code == 0 and "top1" in out
    layer = json.loads((run / "eval" / "layer.json").read_text())
    # One speaker's digits: the CNN's features (trained 3 steps, near random init) separate them well.
    assert layer["metrics"]["top1"] > 60.0 and len(layer["layer_weights"]) == 5
    assert {"random init", "log-mel", "mfcc"} <= set(layer["baselines"])

    speakers = f"{fsdd}?label=speaker&split=test"
    code, out = run_cli(capsys, "eval", "verification", "--run", str(run), "--data", speakers)
    assert code == 0
    verification = json.loads((run / "eval" / "verification.json").read_text())
    assert 0.0 <= verification["metrics"]["eer"] <= 100.0 and "only 6 speakers" in verification["note"]
