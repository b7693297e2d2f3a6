"""The SUPERB-style protocols on an audio manifest, as a user runs them: a CSV of 8 kHz wav files with
tone and speaker columns (resampled to 16 kHz on loading), a run written with ``--steps 0``, then
``selfsup eval layer`` on the tone column, speaker identification with the baselines, and speaker
verification through its command handler, every data set named by a manifest spec."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from selfsup.cli import main
from selfsup.eval.protocols import evaluate_layer
from selfsup.eval.verification import add_verification_command

CLIP_RATE = 8000
TONES = (250, 450, 700)
TINY = ["encoder.size=tiny", "encoder.num_layers=2", "encoder.embed_dim=64", "encoder.conv_dim=64",
        "encoder.ffn_dim=128", "encoder.num_heads=2", "train.progress=false",
        "train.knn_every=0"]  # fmt: skip


def write_manifest(root: Path) -> Path:
    import soundfile

    rng = np.random.default_rng(0)
    rows = ["path,tone,speaker,split"]
    (root / "clips").mkdir(parents=True)
    for split, per_cell in (("train", 4), ("test", 2)):
        for speaker in ("ann", "bob"):
            for tone in TONES:
                for i in range(per_cell):
                    t = np.arange(int(rng.uniform(0.2, 0.4) * CLIP_RATE)) / CLIP_RATE
                    f, phase = tone * rng.uniform(0.97, 1.03), rng.uniform(0, 2 * math.pi)
                    harmonics = (1,) if speaker == "ann" else (1, 3, 5)  # timbre: the speaker
                    wave = sum(np.sin(2 * math.pi * k * f * t + k * phase) / k for k in harmonics)
                    wave = 0.4 * wave / np.abs(wave).max() + rng.normal(size=t.shape) * 0.003
                    name = f"clips/{split}_{speaker}_{tone}_{i}.wav"
                    soundfile.write(root / name, wave.astype(np.float32), CLIP_RATE, subtype="PCM_16")
                    rows.append(f"{name},{tone},{speaker},{split}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root / "metadata.csv"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("audio_cli")
    manifest = write_manifest(root / "data")
    run = root / "run"
    args = ["pretrain", "--data", f"{manifest}?split=train", "--method", "wav2vec2", "--encoder", "wav2vec2"]
    assert main([*args, "--out", str(run), "--steps", "0", "--device", "cpu", *TINY]) == 0
    return manifest, run


def test_eval_layer_command_on_a_manifest(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, run = setup
    train, test = f"{manifest}?label=tone&split=train", f"{manifest}?label=tone&split=test"
    assert main(["eval", "layer", "--run", str(run), "--train", train, "--test", test]) == 0
    assert "top1" in capsys.readouterr().out
    saved = json.loads((run / "eval" / "layer.json").read_text())
    assert saved["train"] == train and saved["test"] == test
    assert sorted(saved["classes"]) == sorted(str(t) for t in TONES) and len(saved["layer_weights"]) == 3
    assert np.asarray(saved["confusion"]).sum() == 12 and (run / "eval" / "layer_weights.png").is_file()


def test_speaker_identification_and_verification(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, run = setup
    train, test = f"{manifest}?label=speaker&split=train", f"{manifest}?label=speaker&split=test"
    out = run / "eval" / "speaker_id.json"
    evaluate_layer(str(run), train, test, baselines=True, out=out, min_steps=60, epochs=3)
    saved = json.loads(out.read_text())
    assert saved["classes"] == ["ann", "bob"] and set(saved["baselines"]) == {
        "random init",
        "log-mel",
        "mfcc",
    }
    assert saved["baselines"]["log-mel"]["top1"] >= 90.0  # harmonics against a pure tone
    parser = argparse.ArgumentParser()
    add_verification_command(parser.add_subparsers(dest="evaluation"))
    args = parser.parse_args(["verification", "--run", str(run), "--data", test, "--train", train])
    assert args.handler(args) == 0
    assert "EER" in capsys.readouterr().out
    record = json.loads((run / "eval" / "verification.json").read_text())
    assert record["test"] == test and record["train"] == train and record["speakers"] == 2
    assert record["trials"]["count"] == 12 * 11 // 2 and "mechanics only" in record["note"]
    assert 0.0 <= record["metrics"]["eer"] <= 100.0 and 0.0 <= record["metrics"]["min_dcf"] <= 1.0
