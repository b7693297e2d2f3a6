"""Audio decoding: one clip's bytes to mono int16 samples (soundfile, soxr), and the checks every
audio source applies to a clip (its file name, its length, the audio options).

Every clip is decoded the same way, whatever holds it: soundfile reads it as float32 (exact for
16-bit PCM: ``s / 32768``), channels are averaged (mono mixdown), soxr resamples it to the data set's
``sample_rate`` (its default "HQ" quality) and it is quantised back to int16 (``round(x * 32768)``,
clipped). A 16-bit mono file already at the target rate therefore comes back sample for sample.
Clips are kept as int16: half the memory of float32, and the :class:`~selfsup.augment.audio_transform.
AudioTransform` turns them into floats on the device. The in-memory path
(:func:`~selfsup.data.audio.decode_catalog`) and the streamed one (:mod:`selfsup.data.audio_stream`)
both call :func:`decode_audio`, so streamed clips equal in-memory ones bit for bit.

Clips that cannot be decoded, hold no samples, or are shorter than ``min_seconds`` (default
:data:`DEFAULT_MIN_SECONDS`, :func:`too_short`) are skipped and recorded in ``Dataset.skipped``;
``strict=True`` raises DataError at the first one instead (:func:`raise_strict`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

from selfsup.data.base import DataError

# The file types read as audio by folders (file names), tar shards (member suffixes) and manifests.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_SAMPLE_RATE = 16000
# Clips shorter than this are skipped: 0.1 s is 1,600 samples at 16 kHz, four frames of wav2vec 2.0's
# 20 ms feature rate (its receptive field is 400 samples). FSDD's shortest clip is 0.14 s.
DEFAULT_MIN_SECONDS = 0.1
_INT16_SCALE = 32768.0


def resampled_length(frames: int, in_rate: int, out_rate: int) -> int:
    """Samples soxr returns for ``frames`` samples at ``in_rate`` resampled to ``out_rate``:
    ``floor(frames * out_rate / in_rate + 1/2)`` in exact integer arithmetic (checked against soxr)."""
    if in_rate == out_rate:
        return int(frames)
    return (2 * int(frames) * int(out_rate) + int(in_rate)) // (2 * int(in_rate))


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1) → int16: ``round(x * 32768)`` clipped to [-32768, 32767]."""
    return np.clip(np.rint(wave * _INT16_SCALE), -32768, 32767).astype(np.int16)


def _open(data: bytes | Path | io.RawIOBase) -> Any:
    return io.BytesIO(data) if isinstance(data, bytes | bytearray) else data


def decode_audio(data: bytes | Path | io.RawIOBase, sample_rate: int) -> np.ndarray:
    """Decode one audio file (bytes, a path or a file object) to mono int16 ``(T,)`` at ``sample_rate``.

    Channels are averaged; other rates are resampled with soxr (HQ). Raises ValueError for a file with
    no samples, and soundfile's errors (``soundfile.LibsndfileError``, a RuntimeError) for unreadable ones.
    """
    with soundfile.SoundFile(_open(data)) as handle:
        rate = int(handle.samplerate)
        wave = handle.read(dtype="float32", always_2d=True)
    if wave.shape[0] == 0:
        raise ValueError("the file holds no audio samples")
    mono = wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return to_int16(mono)


def audio_header(data: bytes | Path | io.RawIOBase, sample_rate: int) -> int:
    """Samples the clip will have once decoded at ``sample_rate``, read from its header alone."""
    with soundfile.SoundFile(_open(data)) as handle:
        return resampled_length(int(handle.frames), int(handle.samplerate), sample_rate)


def min_samples(min_seconds: float, sample_rate: int) -> int:
    """The shortest clip kept, in samples (``min_seconds`` rounded up; 0.1 s at 16 kHz is 1,600)."""
    return math.ceil(round(float(min_seconds) * sample_rate, 6))


def check_audio_options(sample_rate: int, min_seconds: float) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise DataError(f"data.sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, int | float) or min_seconds < 0:
        raise DataError(f"data.min_seconds must be a number >= 0, got {min_seconds!r}")


def is_audio_name(name: str) -> bool:
    base = name.rpartition("/")[2]
    return base.lower().endswith(AUDIO_EXTENSIONS) and not base.startswith(".")


def too_short(length: int, shortest: int, sample_rate: int) -> str:
    """The reason a clip of ``length`` samples is skipped when the shortest kept is ``shortest``."""
    return f"too short: {length / sample_rate:.3f} s < data.min_seconds={shortest / sample_rate:g} s"


def raise_strict(sample_id: str, reason: str) -> None:
    raise DataError(
        f"cannot read {sample_id}: {reason}. (strict=True; with strict=False unreadable, empty or too "
        "short clips are skipped and listed in dataset.skipped.)"
    )


__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_MIN_SECONDS",
    "DEFAULT_SAMPLE_RATE",
    "audio_header",
    "check_audio_options",
    "decode_audio",
    "is_audio_name",
    "min_samples",
    "raise_strict",
    "resampled_length",
    "to_int16",
    "too_short",
]
