"""Audio sources, decoding, the in-memory and streaming audio data sets, the data cache, AudioTransform.

References: the clips written in each test (int16 PCM comes back sample for sample), soundfile and
soxr called directly (mixdown and resampling), ``F.layer_norm`` per clip (fairseq's normalize=True).
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch
import torch.nn.functional as F

from selfsup.augment.audio_transform import AudioTransform
from selfsup.config import Config
from selfsup.data import DataError, describe, load_dataset
from selfsup.data import audio as audio_mod
from selfsup.data.audio import AudioDataset, clip_lengths
from selfsup.data.audio_decode import decode_audio, resampled_length
from selfsup.data.audio_stream import StreamingAudioDataset
from selfsup.modalities import get_modality, transform_from_dict

FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "metadata.csv"


def _clip(seed: int, n: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n,) if channels == 1 else (n, channels)
    return rng.integers(-20000, 20000, shape, dtype=np.int16)


def _write(
    path: Path, data: np.ndarray, rate: int = 16000, fmt: str | None = None, subtype: str | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, data, rate, format=fmt, subtype=subtype)
    return path


def _bytes(data: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, format=fmt, subtype="PCM_16" if fmt in ("WAV", "FLAC") else None)
    return buffer.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# -- decoding ---------------------------------------------------------------------------------


def test_pcm16_comes_back_exactly(tmp_path: Path) -> None:
    clip = _clip(0, 4000)
    for fmt, suffix in (("WAV", "wav"), ("FLAC", "flac")):
        path = _write(tmp_path / f"a.{suffix}", clip, fmt=fmt, subtype="PCM_16")
        np.testing.assert_array_equal(decode_audio(path, 16000), clip)
        np.testing.assert_array_equal(decode_audio(path.read_bytes(), 16000), clip)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    clip = _clip(1, 3000, channels=2)
    path = _write(tmp_path / "s.wav", clip, subtype="PCM_16")
    expected = np.rint(clip.astype(np.float64).mean(axis=1)).astype(np.int16)  # a brute-force reference
    np.testing.assert_array_equal(decode_audio(path, 16000), expected)


def test_resampling_matches_soxr(tmp_path: Path) -> None:
    clip = _clip(2, 8001)
    path = _write(tmp_path / "low.wav", clip, rate=8000, subtype="PCM_16")
    out = decode_audio(path, 16000)
    reference = soxr.resample(clip.astype(np.float32) / 32768, 8000, 16000)
    expected = np.clip(np.rint(reference * 32768), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (16002,) == (resampled_length(8001, 8000, 16000),)


@pytest.mark.parametrize(
    ("rates"), [(8000, 16000), (16000, 8000), (44100, 16000), (22050, 16000), (48000, 16000)]
)
def test_resampled_length_is_soxrs(rates: tuple[int, int]) -> None:
    for n in (1, 2, 3, 5, 99, 1001, 4567):
        assert resampled_length(n, *rates) == len(soxr.resample(np.zeros(n, np.float32), *rates))


def test_ogg_decodes_like_soundfile(tmp_path: Path) -> None:
    clip = (np.sin(np.arange(8000) / 10) * 10000).astype(np.int16)
    path = _write(tmp_path / "v.ogg", clip, fmt="OGG", subtype="VORBIS")
    direct, rate = soundfile.read(path, dtype="float32")
    np.testing.assert_array_equal(decode_audio(path, rate), np.clip(np.rint(direct * 32768), -32768, 32767))


# -- sources ----------------------------------------------------------------------------------


def _class_folder(root: Path) -> dict[str, np.ndarray]:
    written = {}
    for cls, fmt, suffix in (("cat", "WAV", "wav"), ("dog", "FLAC", "flac")):
        for i in range(3):
            clip = _clip(10 * i + len(cls) + len(suffix), 2000 + 500 * i)
            _write(root / cls / f"{i}.{suffix}", clip, fmt=fmt, subtype="PCM_16")
            written[f"{cls}/{i}.{suffix}"] = clip
    return written


def test_folder_source_with_classes_and_padding(tmp_path: Path) -> None:
    written = _class_folder(tmp_path / "clips")
    data = load_dataset(str(tmp_path / "clips"), loading="memory")
    assert isinstance(data, AudioDataset) and data.info.modality == "audio" and data.info.dtype == "int16"
    assert data.classes == ["cat", "dog"] and data.info.sample_rate == 16000.0
    assert data.ids == sorted(written) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.lengths.tolist() == [len(written[i]) for i in data.ids]
    assert torch.allclose(data.durations, data.lengths.double() / 16000)
    batch = data.batch(torch.tensor([0, 5, 2]))
    assert batch.inputs.shape == (3, 3000) and batch.inputs.dtype == torch.int16
    assert batch.lengths.tolist() == [2000, 3000, 3000]
    assert torch.equal(batch.padding_mask, torch.arange(3000)[None] >= batch.lengths[:, None])
    for row, i in enumerate([0, 5, 2]):
        clip = torch.from_numpy(written[data.ids[i]])
        assert torch.equal(batch.inputs[row, : len(clip)], clip)
        assert not batch.inputs[row, len(clip) :].any()
    sub = data.subset(torch.tensor([4, 1]))
    assert torch.equal(clip_lengths(sub), data.lengths[[4, 1]])
    assert torch.equal(sub.batch(torch.tensor([0])).inputs[0], data.batch(torch.tensor([4])).inputs[0])
    assert describe(data).startswith("6 audio clips (0.9 s at 16 kHz) from folder:")


def test_unusable_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    _write(root / "good.wav", _clip(0, 3200), subtype="PCM_16")
    _write(root / "short.wav", _clip(0, 800), subtype="PCM_16")  # 0.05 s < 0.1 s
    _write(root / "silent.wav", np.zeros(0, np.int16), subtype="PCM_16")  # a header and no samples
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    data = load_dataset(str(root), loading="memory")
    assert data.ids == ["good.wav"]
    reasons = dict(data.skipped)
    assert set(reasons) == {"short.wav", "silent.wav", "empty.wav", "corrupt.flac"}
    assert reasons["short.wav"].startswith("too short")
    # The too-short limit is data.min_seconds.
    assert load_dataset(str(root), loading="memory", min_seconds=0.04).ids == ["good.wav", "short.wav"]
    with pytest.raises(DataError, match="strict=True"):
        load_dataset(str(root), loading="memory", strict=True)
    streamed = load_dataset(str(root), loading="stream")
    assert streamed.ids == ["good.wav"] and {i for i, _ in streamed.skipped} == set(reasons)


def test_mixed_folder_is_an_error(tmp_path: Path) -> None:
    from PIL import Image

    _write(tmp_path / "m" / "a.wav", _clip(0, 3000), subtype="PCM_16")
    Image.new("RGB", (4, 4)).save(tmp_path / "m" / "b.png")
    with pytest.raises(DataError, match="both images"):
        load_dataset(str(tmp_path / "m"))


def test_audio_shards_with_labels(tmp_path: Path) -> None:
    clips = [_clip(i, 2000 + 100 * i) for i in range(4)]
    members: dict[str, bytes] = {}
    for i, clip in enumerate(clips):
        members[f"k{i}.flac" if i % 2 else f"k{i}.wav"] = _bytes(clip, fmt="FLAC" if i % 2 else "WAV")
        members[f"k{i}.cls"] = str(i % 2).encode()
    members["k9.cls"] = b"1"  # a label without its clip
    shard = _tar(tmp_path / "part-0.tar", members)
    (tmp_path / "classes.txt").write_text("even\nodd\n")
    data = load_dataset(str(shard), loading="memory")
    assert isinstance(data, AudioDataset) and data.classes == ["even", "odd"]
    assert data.ids == [f"part-0.tar/k{i}" for i in range(4)] and data.labels.tolist() == [0, 1, 0, 1]
    assert data.skipped == [("part-0.tar/k9", "no audio member for this key")]
    every = torch.arange(4)
    batch = data.batch(every)
    for i, clip in enumerate(clips):
        assert torch.equal(batch.inputs[i, : len(clip)], torch.from_numpy(clip))
    streamed = load_dataset(str(shard), loading="stream")
    assert isinstance(streamed, StreamingAudioDataset) and streamed.ids == data.ids
    got = streamed.batch(every)
    assert torch.equal(got.inputs, batch.inputs) and torch.equal(got.padding_mask, batch.padding_mask)


def _manifest(root: Path) -> dict[str, np.ndarray]:
    """A manifest over files beside it and members of a tar archive beside it (FSDD's layout)."""
    clips = {
        f"rec/{d}_{s}.wav": _clip(d * 7 + s, 1800 + 300 * d + 50 * s) for d in (2, 10, 1) for s in (0, 1)
    }
    names = list(clips)
    _write(root / names[0], clips[names[0]], subtype="PCM_16")  # one file on disk, the rest in a tar
    _tar(root / "recordings.tar", {n: _bytes(clips[n]) for n in names[1:]})
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "digit", "split"])
    for name in names:
        digit, s = name.removeprefix("rec/").removesuffix(".wav").split("_")
        writer.writerow([name, digit, "train" if s == "0" else "test"])
    writer.writerow(["rec/missing.wav", "1", "train"])
    (root / "metadata.csv").write_text(text.getvalue())
    return clips


def test_manifest_with_query_and_tar_members(tmp_path: Path) -> None:
    clips = _manifest(tmp_path)
    spec = f"{tmp_path / 'metadata.csv'}?label=digit&split=train"
    data = load_dataset(spec, loading="memory")
    assert data.classes == ["1", "2", "10"]  # numbers sorted numerically, over every row
    assert data.ids == ["rec/2_0.wav", "rec/10_0.wav", "rec/1_0.wav"]
    assert data.labels.tolist() == [1, 2, 0]
    assert data.skipped and data.skipped[0][0] == "rec/missing.wav"
    batch = data.batch(torch.arange(3))
    for i, sample_id in enumerate(data.ids):
        assert torch.equal(batch.inputs[i, : len(clips[sample_id])], torch.from_numpy(clips[sample_id]))
    test = load_dataset(f"{tmp_path / 'metadata.csv'}?label=digit&split=test", loading="memory")
    assert test.classes == data.classes and len(test) == 3 and not test.skipped
    unlabelled = load_dataset(str(tmp_path / "metadata.csv"), loading="memory")
    assert len(unlabelled) == 6 and not unlabelled.has_labels and unlabelled.classes is None
    streamed = load_dataset(spec, loading="stream")
    assert streamed.ids == data.ids and torch.equal(streamed.batch(torch.arange(3)).inputs, batch.inputs)
    with pytest.raises(DataError, match="no column 'speaker'"):
        load_dataset(f"{tmp_path / 'metadata.csv'}?label=speaker")


def test_resampled_source_and_sample_rate_option(tmp_path: Path) -> None:
    clip = _clip(3, 4000)
    _write(tmp_path / "c" / "a.wav", clip, rate=8000, subtype="PCM_16")
    data = load_dataset(str(tmp_path / "c"), loading="memory")
    assert data.lengths.tolist() == [8000] and data.info.sample_rate == 16000
    native = load_dataset(str(tmp_path / "c"), loading="memory", sample_rate=8000)
    assert torch.equal(native.batch(torch.tensor([0])).inputs[0], torch.from_numpy(clip))
    with pytest.raises(DataError, match="sample_rate"):
        load_dataset(str(tmp_path / "c"), sample_rate=0)


# -- cache and streaming ----------------------------------------------------------------------


def test_cache_skips_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _class_folder(tmp_path / "clips")
    cache = tmp_path / "cache"
    first = load_dataset(str(tmp_path / "clips"), loading="memory", cache_dir=cache)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(audio_mod, "decode_catalog", fail)
    again = load_dataset(str(tmp_path / "clips"), loading="memory", cache_dir=cache)
    assert isinstance(again, AudioDataset) and again.fingerprint == first.fingerprint
    assert torch.equal(again.waveforms, first.waveforms) and torch.equal(again.offsets, first.offsets)
    assert again.ids == first.ids and again.info == first.info and torch.equal(again.labels, first.labels)
    with pytest.raises(AssertionError, match="decoded again"):  # another rate is another entry
        load_dataset(str(tmp_path / "clips"), loading="memory", cache_dir=cache, sample_rate=8000)


def test_streaming_equals_memory_and_auto_streams_above_the_limit(tmp_path: Path) -> None:
    _class_folder(tmp_path / "clips")
    memory = load_dataset(str(tmp_path / "clips"), loading="memory")
    auto_small = load_dataset(str(tmp_path / "clips"))
    assert isinstance(auto_small, AudioDataset)
    streamed = load_dataset(str(tmp_path / "clips"), memory_limit_gb=1e-6, cache_dir=tmp_path / "cache")
    assert isinstance(streamed, StreamingAudioDataset) and streamed.estimated_bytes() == memory.nbytes
    assert torch.equal(streamed.lengths, memory.lengths) and torch.equal(streamed.labels, memory.labels)
    order = torch.tensor([5, 0, 3, 3, 1])
    a, b = streamed.batch(order), memory.batch(order)
    for field in ("inputs", "lengths", "padding_mask", "labels", "indices"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert describe(streamed).endswith("streamed, 2 classes, 100% labelled")


def test_streamed_corrupt_clip_is_substituted(tmp_path: Path) -> None:
    root = tmp_path / "c"
    for i in range(3):
        _write(root / f"{i}.wav", _clip(i, 2000), subtype="PCM_16")
    streamed = load_dataset(str(root), loading="stream")
    (root / "1.wav").write_bytes(b"RIFF" + bytes(100))  # damaged after the header pass
    batch = streamed.batch(torch.tensor([1]))
    assert batch.indices.tolist() == [2] and streamed.substitutions == 1 and streamed.skipped[0][0] == "1.wav"


# -- the transform ----------------------------------------------------------------------------


def test_audio_transform_scales_and_normalizes_valid_samples_only(tmp_path: Path) -> None:
    clips = [torch.from_numpy(_clip(i, n)) for i, n in enumerate((1000, 3000, 2000))]
    inputs, lengths, mask = audio_mod.pad_clips(clips)
    from selfsup.data.base import Batch

    batch = Batch(
        inputs=inputs,
        labels=torch.zeros(3, dtype=torch.int64),
        indices=torch.arange(3),
        lengths=lengths,
        padding_mask=mask,
    )
    wave, out_mask = AudioTransform(16000)(batch)
    assert wave.dtype == torch.float32 and out_mask is mask
    for i, clip in enumerate(clips):
        assert torch.equal(wave[i, : len(clip)], clip.float() / 32768) and not wave[i, len(clip) :].any()
    normed, _ = AudioTransform(16000, normalize=True)(batch)
    for i, clip in enumerate(clips):
        reference = F.layer_norm(clip.double() / 32768, (len(clip),), eps=1e-5)
        torch.testing.assert_close(normed[i, : len(clip)].double(), reference, atol=1e-5, rtol=1e-5)
        assert not normed[i, len(clip) :].any()
    restored = transform_from_dict(AudioTransform(8000, normalize=True).to_dict())
    assert restored == AudioTransform(8000, normalize=True) and restored.modality == "audio"


def test_audio_modality_fits_the_transform(tmp_path: Path) -> None:
    _class_folder(tmp_path / "clips")
    data = load_dataset(str(tmp_path / "clips"), sample_rate=8000)
    modality = get_modality("audio")
    assert modality.default_encoder == "wav2vec2" and modality.default_method == "wav2vec2"
    config = Config()
    config.data.normalize = True
    assert modality.fit_transform(data, config) == AudioTransform(8000, normalize=True)


# -- the real data ----------------------------------------------------------------------------


@pytest.mark.skipif(not FSDD.is_file(), reason="../shared/data/fsdd is not here")
def test_fsdd_train_split() -> None:
    data = load_dataset(f"{FSDD}?label=digit&split=train", loading="memory")
    assert len(data) == 2700 and data.classes == [str(d) for d in range(10)] and not data.skipped
    assert torch.bincount(data.labels).tolist() == [270] * 10
    assert data.info.sample_rate == 16000  # 8 kHz recordings resampled


def test_a_streamed_schedule_equals_the_in_memory_one_bit_for_bit(tmp_path: Path) -> None:
    from selfsup.data.loader import PrefetchLoader
    from selfsup.train.sampler import DurationSampler

    clips = {f"c{i}.wav": _bytes(_clip(i, 1600 + 731 * (i % 7))) for i in range(24)}
    shard = _tar(tmp_path / "s.tar", clips)
    memory = load_dataset(str(shard), loading="memory")
    streamed = load_dataset(str(shard), loading="stream")
    sampler = DurationSampler(memory.lengths, 16000, seed=0, accumulate=2)
    assert torch.equal(
        DurationSampler(streamed.lengths, 16000, seed=0, accumulate=2).indices(3, 1), sampler.indices(3, 1)
    )
    schedule = [
        sampler.indices(step, micro) for step in range(2 * sampler.steps_per_epoch) for micro in range(2)
    ]
    with PrefetchLoader(streamed, iter(schedule), workers=2, depth=3) as loader:
        for got, indices in zip(loader, schedule, strict=True):
            expected = memory.batch(indices)
            for name in ("inputs", "lengths", "padding_mask", "labels", "indices"):
                assert torch.equal(getattr(got, name), getattr(expected, name)), name
