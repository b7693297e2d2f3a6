"""Audio data: decoding (soundfile), resampling (soxr), the in-memory :class:`AudioDataset`, and the
catalogs of the three audio sources (a folder of audio files, tar shards of audio members, a CSV/TSV
manifest).

Every clip is decoded the same way, whatever holds it: soundfile reads it as float32 (exact for
16-bit PCM: ``s / 32768``), channels are averaged (mono mixdown), soxr resamples it to the data set's
``sample_rate`` (its default "HQ" quality) and it is quantised back to int16 (``round(x * 32768)``,
clipped). A 16-bit mono file already at the target rate therefore comes back sample for sample.
Clips are kept as int16: half the memory of float32, and the :class:`~selfsup.augment.audio_transform.
AudioTransform` turns them into floats on the device.

A source first builds an :class:`AudioCatalog` (ids, labels, where each clip's bytes are: a file, a
member of an uncompressed tar read in place with ``os.pread``, or bytes already read from a compressed
tar), then :func:`decode_catalog` decodes it on a thread pool (soundfile and soxr release the GIL)
into an :class:`AudioDataset`, or :mod:`selfsup.data.audio_stream` streams it. Both paths call the
same :func:`decode_audio`, so streamed clips equal in-memory ones bit for bit.

Clips that cannot be decoded, hold no samples, or are shorter than ``min_seconds`` (default
:data:`DEFAULT_MIN_SECONDS`) are skipped and recorded in ``Dataset.skipped``; ``strict=True`` raises
DataError at the first one instead.

Manifest specs: ``path/to/metadata.csv`` (or ``.tsv``) with an optional query
``?label=COLUMN&COLUMN=VALUE&...``: ``label`` names the label column, ``path`` the column of clip
paths (default ``path``), every other key keeps the rows whose column equals the value (a key given
twice keeps either value). Paths are relative to the manifest's folder; a path that is not a file
there is looked up as a member of the tar archives in that folder (FSDD's ``recordings.tar``).
Class names are the sorted distinct label values of *all* rows (numbers sorted numerically), so the
splits of one manifest share one class list.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import tarfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import soundfile
import soxr
import torch
from torch import Tensor

from selfsup.data.base import (
    UNKNOWN_LABEL,
    Batch,
    DataError,
    DataInfo,
    Dataset,
    SubsetDataset,
    _hash_tensor,
    error_reason,
)
from selfsup.data.sources import canonical_source, register_source, strip_kind

logger = logging.getLogger(__name__)

# The file types read as audio by folders (file names), tar shards (member suffixes) and manifests.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_SAMPLE_RATE = 16000
# Clips shorter than this are skipped: 0.1 s is 1,600 samples at 16 kHz, four frames of wav2vec 2.0's
# 20 ms feature rate (its receptive field is 400 samples). FSDD's shortest clip is 0.14 s.
DEFAULT_MIN_SECONDS = 0.1
_INT16_SCALE = 32768.0
# Clips decoded per thread-pool task: FSDD clips take ~0.1 ms each to decode and resample.
_CHUNK = 64


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


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
                _hash_tensor(digest, tensor)
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
# Catalogs: where each clip's bytes are
# ---------------------------------------------------------------------------------------------


class _MemberFile(io.RawIOBase):
    """A read-only file object over ``size`` bytes at ``offset`` of an open descriptor (``os.pread``:
    no shared file position, so several threads may read one archive at once)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd, self.start, self.size, self.pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self.size - self.pos))
        data = os.pread(self.fd, count, self.start + self.pos) if count else b""
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


# A clip's location: a file, (archive number, offset, size) of an uncompressed tar member, or bytes.
Location = Path | tuple[int, int, int] | bytes


@dataclass
class AudioCatalog:
    """The clips of a source before decoding: ``ids``, ``labels`` and ``locations`` in source order,
    ``archives`` (the tar files member locations point into), ``classes``, the inputs already known to
    be unusable (``skipped``), and ``files`` (what the cache key is made of)."""

    ids: list[str]
    labels: list[int]
    locations: list[Location]
    archives: list[Path] = field(default_factory=list)
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def reader(self) -> ClipReader:
        return ClipReader(self.locations, self.archives)


class ClipReader:
    """Opens clip ``i`` of a catalog as a file object; safe to use from several threads at once.

    Archive descriptors are opened on first use and kept until :meth:`close` (they are opened again
    if the reader is used afterwards)."""

    def __init__(self, locations: list[Location], archives: list[Path]) -> None:
        self.locations = locations
        self.archives = [str(p) for p in archives]
        self._fds = [-1] * len(self.archives)
        self._lock = threading.Lock()

    def _fd(self, archive: int) -> int:
        fd = self._fds[archive]
        if fd < 0:
            with self._lock:
                if self._fds[archive] < 0:
                    self._fds[archive] = os.open(
                        self.archives[archive], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                    )
                fd = self._fds[archive]
        return fd

    def open(self, i: int) -> bytes | Path | io.RawIOBase:
        location = self.locations[i]
        if isinstance(location, tuple):
            archive, offset, size = location
            return _MemberFile(self._fd(archive), offset, size)
        return location

    def read(self, i: int) -> bytes:
        """The encoded bytes of clip ``i``."""
        source = self.open(i)
        if isinstance(source, bytes):
            return source
        if isinstance(source, Path):
            return source.read_bytes()
        data = source.read()
        assert isinstance(data, bytes)
        if isinstance(source, _MemberFile) and len(data) != source.size:
            raise OSError(f"short read: {len(data)} of {source.size} bytes (was the archive changed?)")
        return data

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, [-1] * len(self.archives)
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = [-1] * len(self.archives)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def is_audio_name(name: str) -> bool:
    base = name.rpartition("/")[2]
    return base.lower().endswith(AUDIO_EXTENSIONS) and not base.startswith(".")


def _archive_members(path: Path) -> Iterator[tuple[str, tuple[int, int] | bytes]]:
    """``(name, (offset, size))`` of every regular member of an uncompressed tar, or ``(name, bytes)``
    of the audio / ``.cls`` members of a compressed one (no random access: read once, in order)."""
    from selfsup.data.tar_index import _scan_members, _tarfile_members, _Unsupported, is_compressed_shard

    if is_compressed_shard(path):
        with tarfile.open(path, "r:*") as stream:
            for member in stream:
                if member.isfile() and (is_audio_name(member.name) or member.name.endswith(".cls")):
                    handle = stream.extractfile(member)
                    yield member.name, handle.read() if handle is not None else b""
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        members = list(_scan_members(fd, os.fstat(fd).st_size))
    except _Unsupported:
        members = list(_tarfile_members(path))
    finally:
        os.close(fd)
    for name, offset, size in members:
        yield name, (offset, size)


def _member_location(found: tuple[int, int] | bytes, archive: int) -> Location:
    return found if isinstance(found, bytes) else (archive, found[0], found[1])


def _add_group(
    catalog: AudioCatalog,
    sample_id: str,
    audio: tuple[int, int] | bytes | None,
    cls: bytes | None,
    archive: int,
    num_classes: int | None,
) -> int:
    """Add one key's clip to ``catalog`` (or record why not); 1 when the key was a sample, else 0.

    A ``.cls`` with no audio means the clip went missing; a group of other files (json, txt) is simply
    not a sample."""
    from selfsup.data.shards import _parse_cls

    if audio is None and cls is None:
        return 0
    if audio is None:
        catalog.skipped.append((sample_id, "no audio member for this key"))
        return 1
    label = UNKNOWN_LABEL
    if cls is not None:
        try:
            label = _parse_cls(cls, num_classes)
        except (UnicodeDecodeError, ValueError) as error:
            catalog.skipped.append((sample_id, str(error)))
            return 1
    catalog.ids.append(sample_id)
    catalog.labels.append(label)
    catalog.locations.append(_member_location(audio, archive))
    return 1


def shard_catalog(
    shards: list[Path], classes: list[str] | None, *, names: Sequence[str] | None = None
) -> AudioCatalog:
    """The clips of WebDataset-style tar shards: ``<key>.<wav|flac|ogg|mp3>`` with an optional
    ``<key>.cls`` label, grouped by key as :mod:`selfsup.data.shards` groups images; ids
    ``"<shard name>/<key>"`` (``names``: the shard names to use, e.g. the ``.tar.gz`` names of
    decompressed copies). A damaged shard keeps the clips before the damage."""
    from selfsup.data.shards import _KEY_RE

    catalog = AudioCatalog([], [], [], archives=list(shards), classes=classes, files=list(shards))
    num_classes = len(classes) if classes else None
    shown = [p.name for p in shards] if names is None else list(names)
    for archive, shard in enumerate(shards):
        name = shown[archive]
        key: str | None = None
        audio: tuple[int, int] | bytes | None = None
        cls: bytes | None = None
        groups = 0
        reader = ClipReader([], [shard])
        try:
            for member, found in _archive_members(shard):
                match = _KEY_RE.match(member)
                if match is None or member.rpartition("/")[2].startswith("."):
                    continue
                member_key, suffix = match.group(1), match.group(2).lower()
                if member_key != key:
                    groups += _add_group(catalog, f"{name}/{key}", audio, cls, archive, num_classes)
                    key, audio, cls = member_key, None, None
                if "." + suffix in AUDIO_EXTENSIONS:
                    audio = found
                elif suffix == "cls":
                    cls = found if isinstance(found, bytes) else os.pread(reader._fd(0), found[1], found[0])
            groups += _add_group(catalog, f"{name}/{key}", audio, cls, archive, num_classes)
        except (tarfile.TarError, OSError, EOFError) as error:
            if key is not None:
                reason = "incomplete: the tar stream broke while reading it"
                catalog.skipped.append((f"{name}/{key}", reason))
            reason = f"unreadable tar data after {groups} samples ({error_reason(error)})"
            catalog.skipped.append((name, reason))
        finally:
            reader.close()
    return catalog


def list_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive; hidden entries skipped), relative, sorted by their parts."""
    from selfsup.data.folder import list_files

    return list_files(root, AUDIO_EXTENSIONS)


def folder_catalog(root: Path, files: list[Path], classes: list[str] | None) -> AudioCatalog:
    """The clips of a folder: ``files`` relative to ``root``; labels from class sub-folders."""
    class_index = {name: i for i, name in enumerate(classes or [])}
    return AudioCatalog(
        ids=[p.as_posix() for p in files],
        labels=[class_index[p.parts[0]] if classes else UNKNOWN_LABEL for p in files],
        locations=[root / p for p in files],
        classes=classes,
        files=[root / p for p in files],
    )


# -- manifests ------------------------------------------------------------------------------------

MANIFEST_SUFFIXES = (".csv", ".tsv")


def split_manifest_spec(spec: str) -> tuple[Path, dict[str, list[str]]]:
    """``(manifest path, query)`` of ``path.csv?label=digit&split=train`` (query values as lists)."""
    path, _, query = spec.partition("?")
    options: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        options.setdefault(key, []).append(value)
    return Path(path).expanduser(), options


def is_manifest_spec(spec: str) -> bool:
    return spec.partition("?")[0].lower().endswith(MANIFEST_SUFFIXES)


def _class_names(values: Sequence[str]) -> list[str]:
    """Distinct non-empty values, sorted: numerically when every one is a number, else as text."""
    distinct = sorted({v for v in values if v != ""})
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DataError(f"manifest {str(path)!r} does not exist")
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read the manifest {str(path)!r}: {error}") from None
    return columns, rows


def _tar_lookup(directory: Path) -> tuple[list[Path], dict[str, tuple[int, tuple[int, int] | bytes]]]:
    """The tar archives in ``directory`` and ``member name -> (archive number, location)`` of their audio."""
    from selfsup.data.shards import TAR_SUFFIXES

    archives = sorted(p for p in directory.iterdir() if p.is_file() and p.name.lower().endswith(TAR_SUFFIXES))
    members: dict[str, tuple[int, tuple[int, int] | bytes]] = {}
    for number, archive in enumerate(archives):
        try:
            for name, found in _archive_members(archive):
                if is_audio_name(name):
                    members.setdefault(os.path.normpath(name), (number, found))
        except (tarfile.TarError, OSError, EOFError) as error:
            logger.warning("%s: unreadable tar data (%s); members after it are not found", archive, error)
    return archives, members


def manifest_catalog(spec: str) -> AudioCatalog:
    """The clips a manifest spec names (see the module docstring)."""
    path, options = split_manifest_spec(spec)
    columns, rows = _read_manifest(path)
    path_column = options.pop("path", ["path"])[-1]
    label_column = options.pop("label", [None])[-1]
    for column in [path_column, *([label_column] if label_column else []), *options]:
        if column not in columns:
            raise DataError(
                f"the manifest {str(path)!r} has no column {column!r}; its columns are {', '.join(columns)}"
            )
    classes = _class_names([r[label_column] or "" for r in rows]) if label_column else None
    class_index = {name: i for i, name in enumerate(classes or [])}
    kept = [r for r in rows if all((r[c] or "") in values for c, values in options.items())]
    if not kept:
        raise DataError(f"no rows of {str(path)!r} match {options}")
    directory = path.parent
    catalog = AudioCatalog([], [], [], classes=classes, files=[path])
    lookup: tuple[list[Path], dict[str, tuple[int, tuple[int, int] | bytes]]] | None = None
    for row in kept:
        relative = (row[path_column] or "").strip()
        label = class_index.get(row[label_column] or "", UNKNOWN_LABEL) if label_column else UNKNOWN_LABEL
        file = directory / relative
        if relative and file.is_file():
            location: Location = file
            catalog.files.append(file)
        else:
            if lookup is None:
                lookup = _tar_lookup(directory)
                catalog.archives = lookup[0]
                catalog.files.extend(lookup[0])
            found = lookup[1].get(os.path.normpath(relative)) if relative else None
            if found is None:
                reason = f"not found: neither a file in {directory} nor a member of a tar archive there"
                catalog.skipped.append((relative or "(empty path)", reason))
                continue
            location = _member_location(found[1], found[0])
        catalog.ids.append(relative)
        catalog.labels.append(label)
        catalog.locations.append(location)
    return catalog


def audio_catalog(kind: str, rest: str, *, decompress_to: Path | None = None) -> AudioCatalog:
    """The catalog of an audio spec of source ``kind`` (``folder``, ``shards`` or ``manifest``).

    ``decompress_to``: compressed shards are decompressed there once (for streaming) instead of read
    into memory.
    """
    if kind == "manifest":
        return manifest_catalog(rest)
    if kind == "folder":
        from selfsup.data.folder import scan_media
        from selfsup.data.sources import spec_path

        root = spec_path(rest, "folder")
        modality, files, classes = scan_media(root)
        if modality != "audio":
            raise DataError(f"folder {str(root)!r} holds images, not audio")
        return folder_catalog(root, files, classes)
    if kind == "shards":
        from selfsup.data.shards import _classes_file, read_classes_txt, resolve_shards
        from selfsup.data.tar_index import decompress_shard, is_compressed_shard

        shards = resolve_shards(rest)
        classes_path = _classes_file(shards)
        classes = read_classes_txt(classes_path) if classes_path else None
        plain = shards
        if decompress_to is not None:
            plain = [decompress_shard(p, decompress_to) if is_compressed_shard(p) else p for p in shards]
        catalog = shard_catalog(plain, classes, names=[p.name for p in shards])
        catalog.files = [*shards, *([classes_path] if classes_path else [])]
        return catalog
    raise DataError(f"{kind} sources hold no audio")


def source_modality(kind: str, rest: str) -> str | None:
    """``"audio"`` when the spec names audio (a manifest; a folder or shards of audio files), else None."""
    if kind == "manifest":
        return "audio"
    if kind == "folder":
        from selfsup.data.folder import folder_modality
        from selfsup.data.sources import spec_path

        root = spec_path(rest, "folder")
        return "audio" if root.is_dir() and folder_modality(root) == "audio" else None
    if kind == "shards":
        from selfsup.data.shards import resolve_shards, shard_modality

        return "audio" if shard_modality(resolve_shards(rest)) == "audio" else None
    return None


# ---------------------------------------------------------------------------------------------
# Decoding a catalog
# ---------------------------------------------------------------------------------------------


def _num_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


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


def too_short(length: int, shortest: int, sample_rate: int) -> str:
    """The reason a clip of ``length`` samples is skipped when the shortest kept is ``shortest``."""
    return f"too short: {length / sample_rate:.3f} s < data.min_seconds={shortest / sample_rate:g} s"


def raise_strict(sample_id: str, reason: str) -> None:
    raise DataError(
        f"cannot read {sample_id}: {reason}. (strict=True; with strict=False unreadable, empty or too "
        "short clips are skipped and listed in dataset.skipped.)"
    )


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
    workers = _num_workers()
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
    "AUDIO_EXTENSIONS",
    "DEFAULT_MIN_SECONDS",
    "DEFAULT_SAMPLE_RATE",
    "MANIFEST_SUFFIXES",
    "AudioCatalog",
    "AudioDataset",
    "ClipReader",
    "audio_catalog",
    "audio_header",
    "audio_info",
    "clip_lengths",
    "decode_audio",
    "decode_catalog",
    "describe_audio",
    "folder_catalog",
    "is_manifest_spec",
    "list_audio_files",
    "manifest_catalog",
    "manifest_source",
    "pad_clips",
    "resampled_length",
    "shard_catalog",
    "source_modality",
    "split_manifest_spec",
    "to_int16",
]
