"""Streaming audio: clips decoded on demand from files or tar members, for corpora larger than memory.

:func:`open_streaming_audio` reads every clip's header once (soundfile: frame count and rate, a few
hundred bytes each; on a thread pool), which gives each clip's length at the data set's rate
(:func:`~selfsup.data.audio_decode.resampled_length`, exactly what soxr returns) without decoding it: the
length-bucketing sampler needs the lengths up front, and the decoded size that decides whether to
stream is ``2 bytes x the total``. With a cache directory the header pass is kept (``audio-index/``,
keyed like the data cache by the files and options) and read back in milliseconds.

:meth:`StreamingAudioDataset.batch` then reads (``os.pread`` on tar members, no shared file position)
and decodes (:func:`~selfsup.data.audio_decode.decode_audio`, the in-memory path's function) the clips a
batch asks for, on the :class:`~selfsup.data.loader.PrefetchLoader`'s threads; the clips, lengths and
padding are those of the in-memory :class:`~selfsup.data.audio.AudioDataset`, bit for bit.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.data.audio import audio_info, no_clips_error, pad_clips
from selfsup.data.audio_catalog import AudioCatalog, ClipReader
from selfsup.data.audio_decode import (
    DEFAULT_MIN_SECONDS,
    DEFAULT_SAMPLE_RATE,
    audio_header,
    check_audio_options,
    decode_audio,
    min_samples,
    raise_strict,
    too_short,
)
from selfsup.data.base import Batch, DataError, DataInfo, error_reason, num_workers
from selfsup.data.streaming import StreamingDataset
from selfsup.io import write_text_atomic

logger = logging.getLogger(__name__)

_INDEX_VERSION = 1


class StreamingAudioDataset(StreamingDataset):
    """Clips decoded on demand: ``labels``, ``ids`` and ``lengths`` in memory, the audio where it lies.

    reader: opens clip ``positions[i]`` of its catalog; ``lengths`` ``(N,)`` int64 samples per clip at
    ``info.sample_rate`` (from the headers). :meth:`batch` returns what
    :meth:`AudioDataset.batch <selfsup.data.audio.AudioDataset.batch>` returns (CPU tensors), and may be
    called from several threads at once.

    Unreadable clips: with ``strict=True`` a clip that fails to decode raises DataError naming it.
    Otherwise clip ``i`` is replaced by the first of ``i + 1, i + 2, ...`` (mod N) that decodes (the
    returned ``labels``, ``indices`` and ``lengths`` are the substitute's), recorded once in ``skipped``
    and counted in ``substitutions``. A clip whose decoded length differs from its header's (rare: a
    damaged file, a VBR mp3 without a length header) is cut or zero-padded to the header's length, with
    one warning, so that the sampler's budget holds.

    The substitution, the fingerprint (a digest that adds the lengths, unless one is given) and the
    resource lifecycle (:meth:`close`, the context manager, pickling) are
    :class:`~selfsup.data.streaming.StreamingDataset`'s.
    """

    _noun = "clip"
    _content_noun = "clip"
    reader: ClipReader

    def __init__(
        self,
        reader: ClipReader,
        positions: np.ndarray,
        lengths: np.ndarray,
        labels: np.ndarray,
        ids: list[str],
        *,
        info: DataInfo,
        source: str,
        strict: bool = False,
        skipped: Sequence[tuple[str, str]] = (),
        fingerprint: str | None = None,
    ) -> None:
        if not len(ids):
            raise DataError(f"no audio clips to stream from {source!r}")
        if not len(positions) == len(lengths) == len(labels) == len(ids):
            raise ValueError("positions, lengths, labels and ids must have one entry per clip")
        assert info.sample_rate is not None
        super().__init__(
            reader, labels, ids, source=source, strict=strict, skipped=skipped, fingerprint=fingerprint
        )
        self.positions = np.asarray(positions, np.int64)
        self._lengths = torch.as_tensor(np.asarray(lengths, np.int64))
        self.info = info
        self._warned_length = False

    @property
    def lengths(self) -> Tensor:
        """``(N,)`` int64 samples per clip (from the headers)."""
        return self._lengths

    @property
    def durations(self) -> Tensor:
        """``(N,)`` float64 seconds per clip."""
        assert self.info.sample_rate is not None
        return self._lengths.double() / self.info.sample_rate

    def _decode(self, i: int) -> np.ndarray:
        """Clip ``i`` as int16 ``(T,)`` at the header's length; raises on unreadable data."""
        assert self.info.sample_rate is not None
        wave = decode_audio(self.reader.open(int(self.positions[i])), int(self.info.sample_rate))
        expected = int(self._lengths[i])
        if wave.shape[0] != expected:
            with self._lock:
                warn, self._warned_length = not self._warned_length, True
            if warn:
                warnings.warn(
                    f"{self.ids[i]} decodes to {wave.shape[0]} samples but its header says {expected}: "
                    "cut or zero-padded to the header's length (further such clips are not reported)",
                    stacklevel=4,
                )
            wave = np.pad(wave[:expected], (0, max(0, expected - wave.shape[0])))
        return wave

    def batch(self, indices: Tensor) -> Batch:
        """The clips at ``indices`` (``(B,)`` int64) as a CPU :class:`Batch`: ``inputs (B, T)`` int16
        zero-padded to the longest, ``lengths (B,)``, ``padding_mask (B, T)``, ``labels``, ``indices``."""
        positions = self._positions(indices)
        used, clips = [], []
        for i in positions:
            j, wave = self._sample(i)
            used.append(j)
            clips.append(torch.from_numpy(wave))
        self._count_substitutions(positions, used)
        inputs, lengths, mask = pad_clips(clips, "cpu")
        where = torch.tensor(used, dtype=torch.int64)
        return Batch(
            inputs=inputs, labels=self.labels[where], indices=where, lengths=lengths, padding_mask=mask
        )

    def estimated_bytes(self) -> int:
        """Bytes all clips would take decoded in memory: 2 per sample (int16), plus the offsets."""
        return int(self._lengths.sum()) * 2 + 8 * (len(self.ids) + 1)

    def _fingerprint_extra(self) -> bytes:
        """The lengths: the sampler's buckets and the padding depend on them."""
        return self._lengths.numpy().tobytes()


# ---------------------------------------------------------------------------------------------
# The header pass
# ---------------------------------------------------------------------------------------------


def _header_lengths(catalog: AudioCatalog, reader: ClipReader, sample_rate: int) -> list[int | str]:
    """Each clip's length at ``sample_rate`` from its header, or why the header cannot be read."""

    def one(i: int) -> int | str:
        try:
            return audio_header(reader.open(i), sample_rate)
        except Exception as error:  # soundfile raises several types for damaged headers
            return error_reason(error)

    with ThreadPoolExecutor(max_workers=num_workers()) as pool:
        return list(pool.map(one, range(len(catalog)), chunksize=64))


def _index_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "audio-index" / f"{key}.json"


def _load_index(path: Path) -> list[int | str] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("version") != _INDEX_VERSION:
            return None
        return [v if isinstance(v, str) else int(v) for v in payload["lengths"]]
    except FileNotFoundError:
        return None
    except Exception as error:  # an unreadable index is rebuilt
        logger.warning("ignoring unreadable audio index %s (%s)", path, error_reason(error))
        return None


def _save_index(path: Path, lengths: list[int | str]) -> None:
    text = json.dumps({"version": _INDEX_VERSION, "lengths": lengths})
    try:
        write_text_atomic(path, text)
    except OSError as error:  # the index is built; failing to keep it is not fatal
        logger.warning("could not write the audio index %s: %s", path, error)


def open_streaming_audio(
    catalog: AudioCatalog,
    *,
    source: str,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    max_samples: int | None = None,
    strict: bool = False,
    fingerprint: str | None = None,
    cache_dir: Path | None = None,
) -> StreamingAudioDataset:
    """Stream the clips of ``catalog``: one pass over their headers (kept in ``cache_dir`` when given,
    under the ``fingerprint`` key), then decoding on demand. Clips whose header is unreadable, that hold
    no samples or are shorter than ``min_seconds`` are skipped, as the in-memory path skips them;
    ``max_samples`` keeps the first usable clips in source order."""
    check_audio_options(sample_rate, min_seconds)
    if strict and catalog.skipped:
        raise_strict(*catalog.skipped[0])
    reader = catalog.reader()
    index_file = None if cache_dir is None or fingerprint is None else _index_path(cache_dir, fingerprint)
    lengths = _load_index(index_file) if index_file is not None else None
    if lengths is None or len(lengths) != len(catalog):
        lengths = _header_lengths(catalog, reader, sample_rate)
        if index_file is not None:
            _save_index(index_file, lengths)
    shortest = max(1, min_samples(min_seconds, sample_rate))
    skipped = list(catalog.skipped)
    kept: list[int] = []
    for i, length in enumerate(lengths):
        if max_samples is not None and len(kept) >= max_samples:
            break
        if isinstance(length, str):
            reason = length
        elif length == 0:
            reason = "ValueError: the file holds no audio samples"
        elif length < shortest:
            reason = too_short(length, shortest, sample_rate)
        else:
            kept.append(i)
            continue
        if strict:
            raise_strict(catalog.ids[i], reason)
        skipped.append((catalog.ids[i], reason))
    if not kept:
        reader.close()
        raise no_clips_error(source, skipped)
    positions = np.asarray(kept, np.int64)
    return StreamingAudioDataset(
        reader,
        positions,
        np.asarray([lengths[i] for i in kept], np.int64),
        np.asarray([catalog.labels[i] for i in kept], np.int64),
        [catalog.ids[i] for i in kept],
        info=audio_info(sample_rate, catalog.classes),
        source=source,
        strict=strict,
        skipped=skipped,
        fingerprint=fingerprint,
    )


__all__ = ["StreamingAudioDataset", "open_streaming_audio"]
