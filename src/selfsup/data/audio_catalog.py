"""Audio catalogs: where each clip of an audio source is, before anything is decoded.

A source first builds an :class:`AudioCatalog` (ids, labels, where each clip's bytes are: a file, a
member of an uncompressed tar read in place with ``os.pread``, or bytes already read from a compressed
tar) for one of the three audio sources: a folder of audio files (:func:`folder_catalog`), tar shards
of audio members (:func:`shard_catalog`) or a CSV/TSV manifest (:func:`manifest_catalog`);
:func:`audio_catalog` picks by source kind. A :class:`ClipReader` opens its clips, from several threads
at once. :func:`~selfsup.data.audio.decode_catalog` then decodes a catalog into an
:class:`~selfsup.data.audio.AudioDataset`, or :mod:`selfsup.data.audio_stream` streams it.

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
import io
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from selfsup.data.audio_decode import AUDIO_EXTENSIONS, is_audio_name
from selfsup.data.base import UNKNOWN_LABEL, DataError, error_reason
from selfsup.data.streaming import OpenFiles

logger = logging.getLogger(__name__)


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
        self.archives = OpenFiles([str(p) for p in archives])

    def open(self, i: int) -> bytes | Path | io.RawIOBase:
        location = self.locations[i]
        if isinstance(location, tuple):
            archive, offset, size = location
            return _MemberFile(self.archives.fd(archive), offset, size)
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
        self.archives.close()


def _archive_members(path: Path) -> Iterator[tuple[str, tuple[int, int] | bytes]]:
    """``(name, (offset, size))`` of every regular member of an uncompressed tar, or ``(name, bytes)``
    of the audio / ``.cls`` members of a compressed one (no random access: read once, in order)."""
    from selfsup.data.tar_index import Unsupported, is_compressed_shard, scan_members, tarfile_members

    if is_compressed_shard(path):
        with tarfile.open(path, "r:*") as stream:
            for member in stream:
                if member.isfile() and (is_audio_name(member.name) or member.name.endswith(".cls")):
                    handle = stream.extractfile(member)
                    yield member.name, handle.read() if handle is not None else b""
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        members = list(scan_members(fd, os.fstat(fd).st_size))
    except Unsupported:
        members = list(tarfile_members(path))
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
    from selfsup.data.shards import parse_cls

    if audio is None and cls is None:
        return 0
    if audio is None:
        catalog.skipped.append((sample_id, "no audio member for this key"))
        return 1
    label = UNKNOWN_LABEL
    if cls is not None:
        try:
            label = parse_cls(cls, num_classes)
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
    from selfsup.data.shards import KEY_RE

    catalog = AudioCatalog([], [], [], archives=list(shards), classes=classes, files=list(shards))
    num_classes = len(classes) if classes else None
    shown = [p.name for p in shards] if names is None else list(names)
    for archive, shard in enumerate(shards):
        name = shown[archive]
        key: str | None = None
        audio: tuple[int, int] | bytes | None = None
        cls: bytes | None = None
        groups = 0
        opened = OpenFiles([str(shard)])  # reads the .cls members
        try:
            for member, found in _archive_members(shard):
                match = KEY_RE.match(member)
                if match is None or member.rpartition("/")[2].startswith("."):
                    continue
                member_key, suffix = match.group(1), match.group(2).lower()
                if member_key != key:
                    groups += _add_group(catalog, f"{name}/{key}", audio, cls, archive, num_classes)
                    key, audio, cls = member_key, None, None
                if "." + suffix in AUDIO_EXTENSIONS:
                    audio = found
                elif suffix == "cls":
                    cls = found if isinstance(found, bytes) else os.pread(opened.fd(0), found[1], found[0])
            groups += _add_group(catalog, f"{name}/{key}", audio, cls, archive, num_classes)
        except (tarfile.TarError, OSError, EOFError) as error:
            if key is not None:
                reason = "incomplete: the tar stream broke while reading it"
                catalog.skipped.append((f"{name}/{key}", reason))
            reason = f"unreadable tar data after {groups} samples ({error_reason(error)})"
            catalog.skipped.append((name, reason))
        finally:
            opened.close()
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
        from selfsup.data.shards import classes_file, read_classes_txt, resolve_shards
        from selfsup.data.tar_index import decompress_shard, is_compressed_shard

        shards = resolve_shards(rest)
        classes_path = classes_file(shards)
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


__all__ = [
    "MANIFEST_SUFFIXES",
    "AudioCatalog",
    "ClipReader",
    "Location",
    "audio_catalog",
    "folder_catalog",
    "is_manifest_spec",
    "list_audio_files",
    "manifest_catalog",
    "shard_catalog",
    "source_modality",
    "split_manifest_spec",
]
