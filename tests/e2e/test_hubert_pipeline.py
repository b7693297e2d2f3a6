"""`selfsup hubert` end to end on a few synthetic wav files: two iterations (MFCC k-means, then k-means on a
layer of iteration 0), each iteration's checkpoint, codebook and labels kept; a rerun redoes nothing; the
final codebook tokenizes the data."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import selfsup.augment
from selfsup.augment import VIEW_POLICIES

with contextlib.suppress(ImportError):  # the speech policies, until selfsup.augment imports them itself
    import selfsup.augment.audio  # noqa: F401

pytestmark = pytest.mark.skipif(
    "speech_mask" not in VIEW_POLICIES, reason="speech_mask policy not registered"
)

TINY = [
    "encoder=wav2vec2",
    "encoder.num_layers=2",
    "encoder.embed_dim=32",
    "encoder.num_heads=2",
    "encoder.ffn_dim=64",
    "encoder.conv_dim=32",
    "encoder.pos_conv_kernel=16",
    "encoder.pos_conv_groups=4",
    "method.final_dim=16",
    "train.batch_size=4",
    "train.device=cpu",
    "train.progress=false",
]


def write_clips(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        t = np.arange(int(rng.integers(6400, 12800))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 100 * (i % 4)) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
    return folder


def test_two_iterations_resume_and_tokenize(tmp_path: Path) -> None:
    from selfsup.hubert_pipeline import run_hubert
    from selfsup.units import load_units, tokenize

    data = str(write_clips(tmp_path / "clips"))
    out = tmp_path / "hubert"
    options = dict(
        iterations=2, layer=1, clusters=(4, 5), steps=2, overrides=TINY, kmeans_fraction=1.0, kmeans_n_init=1
    )
    result = run_hubert(data, out, **options)  # type: ignore[arg-type]
    for n, k in ((0, 4), (1, 5)):
        run = out / f"iter{n}"
        assert (run / "encoder.safetensors").is_file() and list((run / "checkpoints").glob("*.json"))
        units = load_units(run / "units")
        assert units.num_clusters == k and set(units.splits) == {"train"}
    assert load_units(out / "iter0" / "units").meta["features"]["kind"] == "mfcc"
    second = load_units(out / "iter1" / "units").meta["features"]
    assert (
        second["kind"] == "encoder"
        and second["layer"] == 1
        and second["run"] == str((out / "iter0").resolve())
    )
    assert [r["iteration"] for r in result.rows] == [0, 1, "final"]
    assert json.loads((out / "summary.json").read_text())[1]["clusters"] == 5

    # Rerun: nothing is redone (no new checkpoint, same codebooks, the encoder files untouched).
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    run_hubert(data, out, **options)  # type: ignore[arg-type]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps

    # Tokenize with the final codebook (layer 1 of iteration 1) and with a run's targets.
    tokens = tokenize(out / "units", data, tmp_path / "tokens.jsonl", dedup=True)
    rows = [json.loads(line) for line in tokens.read_text().splitlines()]
    assert len(rows) == 8 and all(0 <= u < 5 for r in rows for u in r["units"])
    # A run directory resolves to its targets (method.targets): the codebook of iteration 1's units.
    by_run = tokenize(out / "iter1", data, tmp_path / "t.jsonl")
    assert len(by_run.read_text().splitlines()) == 8


def test_commands_parse(tmp_path: Path) -> None:
    import argparse

    from selfsup.hubert_pipeline import add_hubert_command, hubert_command
    from selfsup.units import add_tokenize_command, tokenize_command

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    add_hubert_command(commands)
    add_tokenize_command(commands)
    args = parser.parse_args(
        [
            "hubert",
            "--data",
            "d",
            "--out",
            "o",
            "--clusters",
            "100",
            "500",
            "--steps",
            "3",
            "train.seed=1",
            "--label-splits",
            "a.csv?split=test",
            "b",
        ]
    )
    assert args.handler is hubert_command and args.clusters == [100, 500] and args.steps == 3
    assert args.label_splits == ["a.csv?split=test", "b"] and args.overrides == ["train.seed=1"]
    args = parser.parse_args(["tokenize", "--units", "u", "--data", "d", "--out", "f.jsonl", "--dedup"])
    assert args.handler is tokenize_command and args.dedup and args.run is None
