"""Audio data sets: the in-memory :class:`AudioDataset`, the decoding of a catalog into one, and the
``manifest`` source.

A source builds an :class:`~selfsup.data.audio_catalog.AudioCatalog` (where each clip's bytes are:
:mod:`selfsup.data.audio_catalog`), then :func:`decode_catalog` decodes it on a thread pool (soundfile
and soxr release the GIL; :func:`~selfsup.data.audio_decode.decode_audio`) into an
:class:`AudioDataset`: every clip as int16, one after the other in one tensor, with its offsets. Clips
that cannot be decoded, hold no samples, or are shorter than ``min_seconds`` are skipped and recorded
in ``Dataset.skipped``; ``strict=True`` raises DataError at the first one instead
(:mod:`selfsup.data.audio_decode`).

The ``manifest`` source (a CSV/TSV listing clips, the spec syntax in
:mod:`selfsup.data.audio_catalog`) is registered here; folders and tar shards of audio are read by
the ``folder`` and ``shards`` sources, through the same catalogs and :func:`decode_catalog`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.data.audio_catalog import AudioCatalog, ClipReader, is_manifest_spec, manifest_catalog
from selfsup.data.audio_decode import (
    AUDIO_EXTENSIONS,
    DEFAULT_MIN_SECONDS,
    DEFAULT_SAMPLE_RATE,
    check_audio_options,
    decode_audio,
    min_samples,
    raise_strict,
    too_short,
)
from selfsup.data.base import (
    Batch,
    DataError,
    DataInfo,
    Dataset,
    SubsetDataset,
    error_reason,
    hash_tensor,
    num_workers,
)
from selfsup.data.sources import canonical_source, register_source, strip_kind

logger = logging.getLogger(__name__)

# Clips decoded per thread-pool task: FSDD clips take ~0.1 ms each to decode and resample.
_CHUNK = 64


# ---------------------------------------------------------------------------------------------
# The in-memory data set
# ---------------------------------------------------------------------------------------------


def audio_info(sample_rate: int, classes: Sequence[str] | None) -> DataInfo:
    """The :class:`DataInfo` of mono int16 clips at ``sample_rate``."""
    return DataInfo(
        modality="audio",
        sample_shape=None,
        dtype="int16",
        classes=None if classes is None else tuple(classes),
        sample_rate=float(sample_rate),
    )


def pad_clips(
    clips: Sequence[Tensor], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(inputs (B, T) int16 zero-padded to the longest, lengths (B,) int64, padding_mask (B, T) bool)``."""
    lengths = torch.tensor([int(c.shape[0]) for c in clips], dtype=torch.int64)
    longest = int(lengths.max()) if len(clips) else 0
    where = clips[0].device if clips and device is None else device
    inputs = torch.zeros((len(clips), longest), dtype=torch.int16, device=where)
    for row, clip in enumerate(clips):
        inputs[row, : clip.shape[0]] = clip
    lengths = lengths.to(inputs.device)
    mask = torch.arange(longest, device=inputs.device)[None, :] >= lengths[:, None]
    return inputs, lengths, mask


class AudioDataset(Dataset):
    """Clips decoded once into memory: every waveform concatenated into one int16 tensor.

    waveforms: ``(S,)`` int16, the clips one after the other.
    offsets: ``(N + 1,)`` int64; clip ``i`` is ``waveforms[offsets[i]:offsets[i + 1]]``.
    :meth:`batch` pads the clips to the longest of the batch: ``inputs (B, T)`` int16, ``lengths (B,)``
    int64 and ``padding_mask (B, T)`` bool (True at padding), on the data set's device.
    fingerprint: given by the source (its files and options); computed from the content when None.
    """

    def __init__(
        self,
        waveforms: Tensor,
        offsets: Tensor,
        labels: Tensor,
        ids: list[str],
        *,
        info: DataInfo,
        source: str,
        skipped: list[tuple[str, str]] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        n = int(labels.shape[0])
        if waveforms.ndim != 1 or waveforms.dtype != torch.int16:
            raise ValueError(f"waveforms must be (S,) int16, got {tuple(waveforms.shape)} {waveforms.dtype}")
        if offsets.shape != (n + 1,) or offsets.dtype != torch.int64:
            raise ValueError(f"offsets must be ({n + 1},) int64, got {tuple(offsets.shape)} {offsets.dtype}")
        if labels.dtype != torch.int64 or labels.ndim != 1:
            raise ValueError(f"labels must be (N,) int64, got {tuple(labels.shape)} {labels.dtype}")
        if len(ids) != n:
            raise ValueError(f"expected {n} ids, got {len(ids)}")
        if info.modality != "audio" or info.sample_rate is None:
            raise ValueError("an AudioDataset needs audio info with a sample rate")
        self._offsets = offsets.cpu()  # indexing plans on the host, even when the clips are on a GPU
        if n and (int(self._offsets[0]) != 0 or int(self._offsets[-1]) != waveforms.shape[0]):
            raise ValueError("offsets must start at 0 and end at the number of samples")
        self.waveforms = waveforms
        self.offsets = offsets
        self.labels = labels
        self.ids = ids
        self.info = info
        self.source = source
        self.skipped = list(skipped or [])
        self._given_fingerprint = fingerprint
        self._starts = self._offsets[:-1].tolist()
        self._ends = self._offsets[1:].tolist()

    @property
    def lengths(self) -> Tensor:
        """``(N,)`` int64 samples per clip (on the CPU)."""
        return self._offsets[1:] - self._offsets[:-1]

    @property
    def durations(self) -> Tensor:
        """``(N,)`` float64 seconds per clip."""
        assert self.info.sample_rate is not None
        return self.lengths.double() / self.info.sample_rate

    def batch(self, indices: Tensor) -> Batch:
        where = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        rows = where.cpu().tolist()
        n = len(self.ids)
        if rows and not -n <= min(rows) <= max(rows) < n:
            raise IndexError(f"index out of range for a data set of {n} clips")
        clips = [self.waveforms[self._starts[i % n] : self._ends[i % n]] for i in rows]
        inputs, lengths, mask = pad_clips(clips, self.waveforms.device)
        where = where.to(self.labels.device)
        return Batch(
            inputs=inputs, labels=self.labels[where], indices=where, lengths=lengths, padding_mask=mask
        )

    def to(self, device: torch.device | str) -> AudioDataset:
        """The same data set with its tensors on ``device`` (small sets live on the GPU: no loader)."""
        return AudioDataset(
            self.waveforms.to(device),
            self.offsets.to(device),
            self.labels.to(device),
            self.ids,
            info=self.info,
            source=self.source,
            skipped=self.skipped,
            fingerprint=self.fingerprint,
        )

    @property
    def nbytes(self) -> int:
        return self.waveforms.numel() * 2 + self.offsets.numel() * 8

    def _fingerprint(self) -> str:
        if self._given_fingerprint is None:
            digest = hashlib.sha256(repr(self.info.to_dict()).encode())
            for tensor in (self.waveforms, self.offsets, self.labels):
                hash_tensor(digest, tensor)
            digest.update("\0".join(self.ids).encode())
            self._given_fingerprint = digest.hexdigest()
        return self._given_fingerprint


def clip_lengths(dataset: Dataset) -> Tensor | None:
    """``(N,)`` int64 samples per clip of an audio data set (or a subset of one), on the CPU; None when
    the data set does not know its clips' lengths (not audio)."""
    lengths = getattr(dataset, "lengths", None)
    if isinstance(lengths, Tensor):
        return lengths.cpu()
    if isinstance(dataset, SubsetDataset):
        base = clip_lengths(dataset.base)
        return None if base is None else base[dataset.positions]
    return None


# ---------------------------------------------------------------------------------------------
# Decoding a catalog
# ---------------------------------------------------------------------------------------------


def decode_clip(reader: ClipReader, i: int, sample_rate: int, shortest: int) -> np.ndarray | str:
    """Clip ``i`` decoded at ``sample_rate``, or the reason it is unusable (unreadable, too short)."""
    try:
        wave = decode_audio(reader.open(i), sample_rate)
    # soundfile raises LibsndfileError (RuntimeError) for corrupt data, TypeError / ValueError for some
    # malformed headers, OSError for unreadable files; every one means "unreadable".
    except Exception as error:
        return error_reason(error)
    if wave.shape[0] < shortest:
        return too_short(wave.shape[0], shortest, sample_rate)
    return wave


def decode_catalog(
    catalog: AudioCatalog,
    *,
    source: str,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    max_samples: int | None = None,
    strict: bool = False,
) -> AudioDataset:
    """Decode every clip of ``catalog`` (in order, on a thread pool) into an :class:`AudioDataset`,
    stopping once ``max_samples`` are kept. Unusable clips are skipped (DataError when ``strict``)."""
    check_audio_options(sample_rate, min_seconds)
    if strict and catalog.skipped:
        raise_strict(*catalog.skipped[0])
    shortest = max(1, min_samples(min_seconds, sample_rate))
    reader = catalog.reader()
    clips: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    skipped = list(catalog.skipped)
    pending: deque[tuple[range, Future[list[np.ndarray | str]]]] = deque()
    workers = num_workers()
    pool = ThreadPoolExecutor(max_workers=workers)
    position, in_flight = 0, 0

    def work(span: range) -> list[np.ndarray | str]:
        return [decode_clip(reader, i, sample_rate, shortest) for i in span]

    try:
        while True:
            want = _CHUNK if max_samples is None else min(_CHUNK, max_samples - len(ids) - in_flight)
            span = range(position, min(len(catalog), position + max(want, 0)))
            if len(span):
                pending.append((span, pool.submit(work, span)))
                position, in_flight = span.stop, in_flight + len(span)
            if not len(span) or len(pending) > 2 * workers:
                if not pending:
                    break
                done, future = pending.popleft()
                in_flight -= len(done)
                for i, result in zip(done, future.result()):
                    if isinstance(result, str):
                        if strict:
                            raise_strict(catalog.ids[i], result)
                        skipped.append((catalog.ids[i], result))
                    else:
                        clips.append(result)
                        labels.append(catalog.labels[i])
                        ids.append(catalog.ids[i])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        reader.close()
    if not ids:
        raise no_clips_error(source, skipped)
    if skipped:
        logger.warning("%s: skipped %d unusable clip(s), e.g. %s: %s", source, len(skipped), *skipped[0])
    offsets = np.zeros(len(clips) + 1, np.int64)
    np.cumsum([c.shape[0] for c in clips], out=offsets[1:])
    waveforms = torch.from_numpy(np.concatenate(clips))
    del clips
    return AudioDataset(
        waveforms,
        torch.from_numpy(offsets),
        torch.tensor(labels, dtype=torch.int64),
        ids,
        info=audio_info(sample_rate, catalog.classes),
        source=source,
        skipped=skipped,
    )


def no_clips_error(source: str, skipped: list[tuple[str, str]]) -> DataError:
    if skipped:
        first_id, first_reason = skipped[0]
        return DataError(
            f"no usable audio clips in {source!r}: all {len(skipped)} inputs were skipped "
            f"(first: {first_id}: {first_reason})"
        )
    return DataError(f"no audio clips found in {source!r} (looked for {', '.join(AUDIO_EXTENSIONS)} files)")


def describe_audio(dataset: Dataset) -> str | None:
    """``"3000 audio clips (41.7 min at 16 kHz)"``, or None when the data set is not audio."""
    lengths = clip_lengths(dataset)
    rate = dataset.info.sample_rate
    if lengths is None or not rate:
        return None
    seconds = float(lengths.sum()) / rate
    if seconds >= 3600:
        total = f"{seconds / 3600:.1f} h"
    else:
        total = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
    khz = f"{rate / 1000:g} kHz"
    return f"{len(dataset)} audio clips ({total} at {khz})"


# -- the manifest source ------------------------------------------------------------------------


def _manifest_inputs(spec: str) -> list[Path]:
    return manifest_catalog(strip_kind(spec, "manifest")).files


@register_source("manifest", detect=is_manifest_spec, inputs=_manifest_inputs)
def manifest_source(
    spec: str,
    *,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    min_seconds: float = DEFAULT_MIN_SECONDS,
) -> AudioDataset:
    """Audio clips listed in a CSV/TSV manifest: ``metadata.csv?label=COLUMN&COLUMN=VALUE``."""
    rest = strip_kind(spec, "manifest")
    return decode_catalog(
        manifest_catalog(rest),
        source=canonical_source("manifest", rest),
        sample_rate=sample_rate,
        min_seconds=min_seconds,
        max_samples=max_samples,
        strict=strict,
    )


__all__ = [
    "AudioDataset",
    "audio_info",
    "clip_lengths",
    "decode_catalog",
    "decode_clip",
    "describe_audio",
    "manifest_source",
    "no_clips_error",
    "pad_clips",
]
