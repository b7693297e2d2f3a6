"""selfsup.units: frame features, k-means codebooks, frame labels on disk, tokenize and dedup.

The audio data set and input transform are small stand-ins defined here (the real ones follow the same
contract); the MFCC front-end and the k-means are the library's own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from selfsup.data.base import Batch, DataInfo, Dataset
from selfsup.errors import ConfigError
from selfsup.units import (
    KMeansOptions,
    assign,
    build_units,
    dedup,
    fit_codebook,
    frame_features,
    load_units,
    mfcc_options,
    sample_clips,
    save_units,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

RATE = 16000


class Clips(Dataset):
    """int16 clips of different lengths, padded with zeros per batch (the audio Batch contract)."""

    def __init__(self, clips: list[Tensor], source: str = "test:clips") -> None:
        self.clips = clips
        self.info = DataInfo(modality="audio", sample_shape=None, dtype="int16", sample_rate=float(RATE))
        self.labels = torch.full((len(clips),), -1, dtype=torch.int64)
        self.ids = [f"clip{i}" for i in range(len(clips))]
        self.source = source
        self.skipped = []

    def batch(self, indices: Tensor) -> Batch:
        chosen = [self.clips[i] for i in indices.tolist()]
        lengths = torch.tensor([c.numel() for c in chosen], dtype=torch.int64)
        longest = int(lengths.max())
        inputs = torch.zeros(len(chosen), longest, dtype=torch.int16)
        for row, clip in enumerate(chosen):
            inputs[row, : clip.numel()] = clip
        padding = torch.arange(longest).unsqueeze(0) >= lengths.unsqueeze(1)
        return Batch(
            inputs=inputs, labels=self.labels[indices], indices=indices, lengths=lengths, padding_mask=padding
        )

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(self.source.encode())
        for clip in self.clips:
            digest.update(clip.numpy().tobytes())
        return digest.hexdigest()


class ToFloat:
    """int16 → float in [-1, 1) with zeros at padding (AudioTransform without normalization)."""

    modality = "audio"
    sample_rate = float(RATE)

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        x = batch.inputs.float() / 32768.0
        if batch.padding_mask is not None:
            x = x.masked_fill(batch.padding_mask, 0.0)
        return x, batch.padding_mask

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "test_float"}


def tones(n: int = 6, seed: int = 0) -> Clips:
    """Clips of 0.3-0.6 s: a few tones and noise, so that MFCC frames form clusters."""
    g = torch.Generator().manual_seed(seed)
    clips = []
    for i in range(n):
        length = int(torch.randint(4800, 9600, (1,), generator=g))
        t = torch.arange(length) / RATE
        wave = 0.3 * torch.sin(2 * torch.pi * (200 + 150 * (i % 3)) * t)
        wave[length // 2 :] = 0.1 * torch.randn(length - length // 2, generator=g)
        clips.append((wave * 32767).to(torch.int16))
    return Clips(clips)


def test_mfcc_frames_follow_the_encoder_geometry() -> None:
    data = tones(3)
    options = mfcc_options(RATE, 50.0)
    assert options["hop_length"] == 320 and options["n_fft"] == 400 and not options["center"]
    feats = frame_features("mfcc", data, ToFloat(), frame_rate=50.0)
    lengths = torch.tensor([c.numel() for c in data.clips])
    # Not centred: frame i covers samples [320 i, 320 i + 400), like wav2vec 2.0's conv stack.
    assert torch.equal(feats.lengths, (lengths - 400) // 320 + 1)
    assert feats.values.shape == (int(feats.lengths.sum()), 39)


def test_padding_never_changes_frame_features() -> None:
    data = tones(4)
    together = frame_features("mfcc", data, ToFloat(), frame_rate=50.0, batch_size=4)
    alone = frame_features("mfcc", data, ToFloat(), frame_rate=50.0, batch_size=1)
    assert torch.equal(together.lengths, alone.lengths)
    torch.testing.assert_close(together.values, alone.values, rtol=1e-5, atol=1e-4)


def test_sample_clips_is_seeded_and_sized_like_fairseq_percent() -> None:
    a, b = sample_clips(95, 0.1, seed=3), sample_clips(95, 0.1, seed=3)
    assert torch.equal(a, b) and a.numel() == 10 and a.unique().numel() == 10  # ceil(9.5)
    assert not torch.equal(a, sample_clips(95, 0.1, seed=4))
    assert torch.equal(sample_clips(7, 1.0, seed=0), torch.arange(7))


def test_codebook_labels_match_scikit_learn_assignment_and_are_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    x = torch.cat([c + 0.3 * torch.randn(200, 2, generator=g) for c in centers])
    a = fit_codebook(x, 3, seed=1, max_frames=300)
    b = fit_codebook(x, 3, seed=1, max_frames=300)
    assert a.frames == 300 and torch.equal(a.centers, b.centers)
    labels = assign(x, a)
    # Independent reference: brute-force nearest centre in numpy.
    d = ((x.numpy()[:, None, :] - a.centers.numpy()[None]) ** 2).sum(-1)
    assert np.array_equal(labels.numpy(), d.argmin(1))
    # The three blobs are recovered (each blob one label).
    for blob in range(3):
        assert labels[blob * 200 : (blob + 1) * 200].unique().numel() == 1


def test_build_units_saves_reloads_and_resumes(tmp_path: Path) -> None:
    data, extra = tones(6), tones(3, seed=5)
    options = KMeansOptions(num_clusters=4, fraction=0.5, seed=0, n_init=1)
    units = build_units(
        "mfcc",
        data,
        ToFloat(),
        frame_rate=50.0,
        options=options,
        splits={"extra": extra},
        directory=tmp_path / "u",
    )
    meta = json.loads((tmp_path / "u" / "meta.json").read_text())
    assert meta["features"]["kind"] == "mfcc" and meta["label_rate"] == 50.0
    assert meta["fit"]["clips_seen"] == 3 and set(meta["splits"]) == {"train", "extra"}
    loaded = load_units(tmp_path / "u")
    assert torch.equal(loaded.centers, units.centers)
    train = loaded.splits["train"]
    assert train.ids == data.ids and torch.equal(train.labels, units.splits["train"].labels)
    assert torch.equal(train.samples, torch.tensor([c.numel() for c in data.clips]))
    # Labels are the nearest centre of each frame's MFCCs.
    feats = frame_features("mfcc", data, ToFloat(), frame_rate=50.0)
    assert torch.equal(train.labels.long(), assign(feats.values, loaded.centers))
    # Resume: the codebook is reused, not refitted (a k-means call would fail here).
    import selfsup.units as units_module

    def no_fit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("refitted")

    original = units_module.fit_codebook
    units_module.fit_codebook = no_fit  # type: ignore[assignment]
    try:
        again = build_units(
            "mfcc",
            data,
            ToFloat(),
            frame_rate=50.0,
            options=options,
            splits={"extra": extra},
            directory=tmp_path / "u",
        )
    finally:
        units_module.fit_codebook = original
    assert torch.equal(again.splits["extra"].labels, units.splits["extra"].labels)
    # Other k-means settings on the same directory: a clear error, never a silent mix.
    with pytest.raises(ConfigError, match="fitted differently"):
        build_units(
            "mfcc",
            data,
            ToFloat(),
            frame_rate=50.0,
            options=KMeansOptions(num_clusters=5),
            directory=tmp_path / "u",
        )


def test_find_gathers_labels_of_a_subset_by_id(tmp_path: Path) -> None:
    data = tones(5)
    units = build_units(
        "mfcc", data, ToFloat(), frame_rate=50.0, options=KMeansOptions(num_clusters=3, n_init=1)
    )
    subset = data.subset(torch.tensor([3, 1]))
    found = units.find(subset)
    assert found is not None and found.ids == ["clip3", "clip1"]
    full = units.splits["train"]
    assert torch.equal(found.labels, torch.cat([full.clip(3), full.clip(1)]))
    assert units.find(tones(2, seed=9).subset(torch.tensor([0]))) is not None  # same ids "clip0": by id
    other = Clips([torch.zeros(800, dtype=torch.int16)])
    other.ids = ["unknown"]
    assert units.find(other) is None


def test_too_few_frames_for_the_clusters_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="fewer clusters"):
        build_units("mfcc", tones(2), ToFloat(), frame_rate=50.0, options=KMeansOptions(num_clusters=500))


def test_dedup_collapses_consecutive_repeats_only() -> None:
    assert dedup([1, 1, 2, 2, 2, 1, 3, 3]) == [1, 2, 1, 3]
    assert dedup([]) == [] and dedup([4]) == [4]


def test_tokenize_writes_units_per_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfsup.units as units_module

    data = tones(4)
    units = build_units(
        "mfcc",
        data,
        ToFloat(),
        frame_rate=50.0,
        options=KMeansOptions(num_clusters=3, n_init=1),
        directory=tmp_path / "u",
    )
    # The real audio loader and transform registry are stand-ins here: tokenize reads this data set.
    monkeypatch.setattr(
        units_module,
        "_units_source",
        lambda u, spec, dev: (units_module._frontend("mfcc", data, 50.0), data, ToFloat()),
    )
    out = units_module.tokenize(tmp_path / "u", "test:clips", tmp_path / "units.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == data.ids
    for i, row in enumerate(rows):
        assert row["units"] == units.splits["train"].clip(i).tolist()
    deduped = units_module.tokenize(tmp_path / "u", "test:clips", tmp_path / "dedup.jsonl", dedup=True)
    rows_d = [json.loads(line) for line in deduped.read_text().splitlines()]
    for row, row_d in zip(rows, rows_d, strict=True):
        assert row_d["units"] == dedup(row["units"]) and len(row_d["units"]) <= len(row["units"])
    # save_units is atomic and round-trips what tokenize reads.
    save_units(tmp_path / "copy", load_units(tmp_path / "u"))
    assert torch.equal(load_units(tmp_path / "copy").centers, units.centers)


def test_a_path_without_units_is_a_clear_error(tmp_path: Path) -> None:
    from selfsup.units import resolve_units_dir

    with pytest.raises(ConfigError, match="holds no codebook"):
        resolve_units_dir(tmp_path)
