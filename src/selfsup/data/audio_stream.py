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
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
    num_workers,
    raise_strict,
    too_short,
)
from selfsup.data.base import Batch, DataError, DataInfo, Dataset, error_reason
from selfsup.io import write_text_atomic

logger = logging.getLogger(__name__)

_INDEX_VERSION = 1


class StreamingAudioDataset(Dataset):
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
    """

    streaming = True

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
        self.reader = reader
        self.positions = np.asarray(positions, np.int64)
        self._lengths = torch.as_tensor(np.asarray(lengths, np.int64))
        self.labels = torch.as_tensor(np.asarray(labels, np.int64)).reshape(-1)
        self.ids = ids
        self.info = info
        self.source = source
        self.strict = strict
        self.skipped = list(skipped)
        self.substitutions = 0
        self._given_fingerprint = fingerprint
        self._bad: dict[int, str] = {}
        self._lock = threading.Lock()
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

    def _clip(self, i: int) -> tuple[int, np.ndarray]:
        """(index actually used, int16 ``(T,)``) for clip ``i``, substituting unreadable ones."""
        n = len(self.ids)
        j = i
        for _ in range(n):
            if j not in self._bad:
                try:
                    return j, self._decode(j)
                except Exception as error:  # soundfile's errors for damaged data are of several types
                    reason = error_reason(error)
                    if self.strict:
                        raise DataError(
                            f"cannot read {self.ids[j]} in {self.source!r}: {reason}. (strict=True; with "
                            "strict=False an unreadable clip is replaced by the next readable one and "
                            "listed in dataset.skipped.)"
                        ) from error
                    with self._lock:
                        if j not in self._bad:
                            self._bad[j] = reason
                            self.skipped.append((self.ids[j], reason))
                            logger.warning(
                                "%s: cannot decode %s (%s); using the next readable clip instead",
                                self.source,
                                self.ids[j],
                                reason,
                            )
            j = (j + 1) % n
        raise DataError(f"no readable clip in {self.source!r}: all {n} clips failed to decode")

    def batch(self, indices: Tensor) -> Batch:
        """The clips at ``indices`` (``(B,)`` int64) as a CPU :class:`Batch`: ``inputs (B, T)`` int16
        zero-padded to the longest, ``lengths (B,)``, ``padding_mask (B, T)``, ``labels``, ``indices``."""
        wanted = torch.as_tensor(indices).detach().to("cpu", torch.int64).reshape(-1).tolist()
        n = len(self.ids)
        if wanted and not -n <= min(wanted) <= max(wanted) < n:
            raise IndexError(f"index out of range for a data set of {n} clips")
        used, clips = [], []
        for i in wanted:
            j, wave = self._clip(i % n)
            used.append(j)
            clips.append(torch.from_numpy(wave))
        substituted = sum(j != i % n for i, j in zip(wanted, used))
        if substituted:
            with self._lock:
                self.substitutions += substituted
        inputs, lengths, mask = pad_clips(clips, "cpu")
        where = torch.tensor(used, dtype=torch.int64)
        return Batch(
            inputs=inputs, labels=self.labels[where], indices=where, lengths=lengths, padding_mask=mask
        )

    def estimated_bytes(self) -> int:
        """Bytes all clips would take decoded in memory: 2 per sample (int16), plus the offsets."""
        return int(self._lengths.sum()) * 2 + 8 * (len(self.ids) + 1)

    def _fingerprint(self) -> str:
        if self._given_fingerprint is None:
            import hashlib

            digest = hashlib.sha256(repr(self.info.to_dict()).encode())
            digest.update(self.source.encode())
            digest.update("\0".join(self.ids).encode())
            digest.update(self.labels.numpy().tobytes())
            digest.update(self._lengths.numpy().tobytes())
            self._given_fingerprint = digest.hexdigest()
        return self._given_fingerprint

    def close(self) -> None:
        """Release the open archives (they are opened again if the data set is used afterwards)."""
        self.reader.close()

    def __enter__(self) -> StreamingAudioDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        reader = self.__dict__.get("reader")
        if reader is not None:
            reader.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


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
