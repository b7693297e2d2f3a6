"""Streaming image data sets: samples decoded on demand from indexed tar shards or image files.

An in-memory data set decodes everything once; the data sets here keep only labels, ids and
where each sample's bytes lie, and decode the samples a batch asks for, so a data set of any size
streams with memory bounded by the batches in flight (see :class:`selfsup.data.loader.PrefetchLoader`).
The trainer asks for arbitrary index sets (its order is a pure function of the step), so every
sample must be reachable directly:

* tar shards are indexed once (:func:`index_shards`): one pass over the tar headers records the byte
  offset and size of each sample's image member and its label, and :meth:`StreamingImageDataset.batch`
  then reads the bytes with ``os.pread`` (no seek: several threads may read one shard at once);
* compressed shards (``.tar.gz``, ``.tgz``) cannot be read at an offset: :func:`decompress_shard`
  writes a plain ``.tar`` copy into the cache directory once;
* folders need no index: each sample is one file.

Members are grouped into samples exactly as :mod:`selfsup.data.shards` groups them (WebDataset keys,
``.cls`` labels, ``classes.txt``, ids ``"<shard name>/<key>"``), and every image is decoded by the same
:func:`~selfsup.data.decode.decode_image`, so a streamed sample is pixel-identical to the in-memory one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import re
import struct
import tarfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL, Batch, DataError, DataInfo, Dataset
from selfsup.data.decode import IMAGE_EXTENSIONS, decode_image, resize_center_crop
from selfsup.io import write_atomic

logger = logging.getLogger(__name__)

# Bump when the index format or the grouping rules change: cached indexes then stop matching.
INDEX_FORMAT_VERSION = 1

# Shards whose file descriptors stay open for the data set's lifetime. Beyond this many (a data set
# of thousands of shards would run into the usual limit of 1024 open files) each read opens and
# closes its shard, which costs a few microseconds next to a decode of hundreds.
MAX_OPEN_SHARDS = 256

_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
# Member types as tarfile reads them: regular files (their data is a sample's bytes), the types
# tarfile knows without data blocks (links, directories, devices: it does not skip any data after
# them), and the extension headers that describe the member after them.
_REGULAR_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
_NO_DATA_TYPES = frozenset(
    (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE)
)
_PAX_TYPES = frozenset((tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.XGLTYPE))
_GNU_LONG_TYPES = frozenset((tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK))
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_SIGNED_CHECKSUM = struct.Struct("148b8x356b")


def _reason(error: BaseException) -> str:
    """How a caught exception is recorded as a skip reason (the same form as the in-memory sources)."""
    return f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------
# Reading tar headers
# ---------------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """An archive feature the fast header scanner leaves to :mod:`tarfile` (sparse files, charsets)."""


class _HeaderStop(Exception):
    """A header tarfile would stop at; ``clean`` when it is the all-zero end-of-archive block."""

    def __init__(self, message: str, clean: bool = False) -> None:
        super().__init__(message)
        self.clean = clean


def _blocks(size: int) -> int:
    """Bytes taken by ``size`` bytes of member data, padded to whole blocks."""
    return -(-size // _BLOCK) * _BLOCK


def _nts(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _nti(field: bytes) -> int:
    """A numeric header field as tarfile reads it: octal ASCII, or GNU base-256 for large values."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise _HeaderStop("invalid header") from None


def _parse_header(buf: bytes) -> tuple[str, int, bytes]:
    """(name, size, type) of one 512-byte header, validated like ``tarfile.TarInfo.frombuf``.

    Only the checksum and the size field are parsed as numbers (tarfile parses all of them): the
    other numeric fields cannot be wrong in a header whose checksum is right unless its writer was
    broken, and skipping them makes the scan several times faster than tarfile's.
    """
    if not buf:
        raise _HeaderStop("empty header")
    if len(buf) != _BLOCK:
        raise _HeaderStop("truncated header")
    if buf == _ZERO_BLOCK:
        raise _HeaderStop("end of file header", clean=True)
    checksum = _nti(buf[148:156])
    # Unsigned sum with the checksum field read as spaces; some old tars used signed bytes.
    if checksum != 256 + sum(buf) - sum(buf[148:156]) and checksum != 256 + sum(_SIGNED_CHECKSUM.unpack(buf)):
        raise _HeaderStop("bad checksum")
    name = _nts(buf[0:100])
    size = _nti(buf[124:136])
    if size < 0:  # only a corrupt header says so; tarfile would step backwards
        raise _HeaderStop("invalid header")
    kind = buf[156:157]
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE  # the old V7 way to store a directory
    if buf[345] != 0 and kind not in (*_GNU_LONG_TYPES, tarfile.GNUTYPE_SPARSE):
        name = _nts(buf[345:500]) + "/" + name  # ustar splits long names into prefix/name
    return name, size, kind


def _parse_pax(data: bytes) -> dict[str, str]:
    """The ``"%d %s=%s\\n"`` records of a pax extended header (as tarfile parses them)."""
    if re.search(rb"\d+ hdrcharset=", data):
        raise _Unsupported("pax hdrcharset")
    records: dict[str, str] = {}
    pos = 0
    while (match := _PAX_RECORD.match(data, pos)) is not None:
        length = int(match.group(1))
        if length == 0:
            raise _HeaderStop("invalid header")
        keyword = match.group(2).decode("utf-8", "surrogateescape")
        if keyword.startswith("GNU.sparse"):
            raise _Unsupported("GNU sparse file")
        records[keyword] = data[match.end(2) + 1 : match.start(1) + length - 1].decode(
            "utf-8", "surrogateescape"
        )
        pos += length
    return records


def _scan_members(fd: int, file_size: int) -> Iterator[tuple[str, int, int]]:
    """``(name, data offset, size)`` of each regular file in an uncompressed tar, in archive order.

    Reads only the headers (one ``pread`` each), following tarfile's rules: pax extended headers
    and GNU long names rename the member after them (the outermost header wins, as in tarfile's
    recursion), and reading stops silently at a bad header, as ``for m in tarfile`` does. Raises
    ``tarfile.ReadError`` where :mod:`selfsup.data.shards` sees a damaged shard: no end-of-archive
    block where reading stopped, member data cut short, a bad first header, or a bad header after
    an extension header. Raises :class:`_Unsupported` for what it leaves to tarfile (sparse files,
    pax charsets, global pax headers that rename or resize members).
    """
    offset = 0
    while True:
        # tarfile's next(): the previous member's data must be complete before the next header.
        if offset > file_size:
            raise tarfile.ReadError("unexpected end of data")
        name_override: str | None = None
        size_override: int | None = None
        header_at = offset
        try:
            while True:
                name, size, kind = _parse_header(os.pread(fd, _BLOCK, header_at))
                data_at = header_at + _BLOCK
                if kind not in _PAX_TYPES and kind not in _GNU_LONG_TYPES:
                    break
                if data_at + size > file_size:
                    raise _HeaderStop("unexpected end of data")
                data = os.pread(fd, _blocks(size), data_at)
                if kind == tarfile.GNUTYPE_LONGNAME and name_override is None:
                    name_override = _nts(data)
                elif kind in _PAX_TYPES:
                    records = _parse_pax(data)
                    if kind == tarfile.XGLTYPE:
                        # Global records apply to every later member; only path and size matter here.
                        if "path" in records or "size" in records:
                            raise _Unsupported("a global pax header naming a path or size")
                        records = {}
                    if "path" in records and name_override is None:
                        name_override = records["path"].rstrip("/")
                    if "size" in records and size_override is None:
                        try:
                            size_override = int(records["size"])
                        except ValueError:
                            size_override = 0
                        if size_override < 0:
                            raise _HeaderStop("invalid header")
                header_at = data_at + _blocks(size)
        except _HeaderStop as stop:
            if header_at != offset:  # a broken header after an extension header: tarfile raises
                raise tarfile.ReadError(str(stop)) from None
            if offset == 0:
                raise tarfile.ReadError("empty file" if str(stop) == "empty header" else str(stop)) from None
            if stop.clean:
                return
            raise tarfile.ReadError(
                "no end-of-archive block after the last member: truncated or corrupt"
            ) from None
        if kind == tarfile.GNUTYPE_SPARSE:
            raise _Unsupported("GNU sparse file")
        if name_override is not None:
            name = name_override
        if size_override is not None:
            size = size_override
        if kind in _REGULAR_TYPES:
            yield name, data_at, size
        offset = data_at if kind in _NO_DATA_TYPES else data_at + _blocks(size)


def _tarfile_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """What :func:`_scan_members` yields, read with :mod:`tarfile` (for archives it does not handle)."""
    from selfsup.data.shards import _ended_cleanly

    with tarfile.open(path, "r:") as stream:
        for member in stream:
            if member.isfile():
                # A sparse member's data is not stored in one piece: it cannot be read in place.
                yield member.name, member.offset_data, -1 if member.issparse() else member.size
        if not _ended_cleanly(stream):
            raise tarfile.ReadError("no end-of-archive block after the last member: truncated or corrupt")


# ---------------------------------------------------------------------------------------------
# The shard index
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardIndex:
    """Where the samples of a list of uncompressed tar shards lie, found from their headers alone.

    shards: the indexed tar files (decompressed copies for ``.tar.gz`` shards).
    shard: ``(N,)`` int32, the position in ``shards`` of each sample's shard.
    offset: ``(N,)`` int64, byte offset of each sample's image member data in its shard.
    size: ``(N,)`` int64, byte size of that member.
    labels: ``(N,)`` int64, the ``.cls`` label, -1 where there is none.
    ids: ``f"{shard name}/{key}"`` of each sample, as :mod:`selfsup.data.shards` names them.
    skipped: ``(id, reason)`` of every sample left out (bad ``.cls``, no image, damaged shard),
        in source order; a damaged shard adds ``(shard name, reason)``.
    skipped_after: ``(len(skipped),)`` int64, how many samples come before each skip in source
        order (so that :meth:`head` keeps the skips the in-memory path would have seen).
    """

    shards: list[Path]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    labels: np.ndarray
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_after: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, count: int) -> ShardIndex:
        """The first ``count`` samples, with the skips met before the ``count``-th one."""
        if count >= len(self):
            return self
        seen = self.skipped_after < count
        return ShardIndex(
            shards=self.shards,
            shard=self.shard[:count],
            offset=self.offset[:count],
            size=self.size[:count],
            labels=self.labels[:count],
            ids=self.ids[:count],
            skipped=[s for s, keep in zip(self.skipped, seen.tolist()) if keep],
            skipped_after=self.skipped_after[seen],
        )


@dataclass
class _ShardScan:
    """The samples of one shard: keys, image offsets/sizes, labels, and its skips (``(key or None,
    reason, samples before it)``; None names the shard itself)."""

    keys: list[str]
    offset: np.ndarray
    size: np.ndarray
    labels: np.ndarray
    skips: list[tuple[str | None, str, int]]


def _scan_shard(path: Path, num_classes: int | None) -> _ShardScan:
    """Group one shard's members into samples by WebDataset key, as ``shards._shard_items`` does."""
    try:
        return _group_shard(path, num_classes, fast=True)
    except _Unsupported as why:
        logger.debug("%s: %s; indexing it with tarfile", path, why)
        return _group_shard(path, num_classes, fast=False)


def _group_shard(path: Path, num_classes: int | None, *, fast: bool) -> _ShardScan:
    from selfsup.data.shards import _KEY_RE, _parse_cls

    keys: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    skips: list[tuple[str | None, str, int]] = []
    # The group being read: its key, its image members (suffix -> (offset, size)) and .cls bytes.
    key: str | None = None
    images: dict[str, tuple[int, int]] = {}
    cls: bytes | None = None
    groups = 0

    def finish() -> None:
        nonlocal groups
        image = next(iter(images.values()), None)
        if image is None:
            # A .cls with no image means the image went missing; a group of other files
            # (json, txt, ...) is simply not an image sample.
            if cls is not None:
                skips.append((key, "no image member for this key", len(keys)))
                groups += 1
            return
        groups += 1
        label = UNKNOWN_LABEL
        if cls is not None:
            try:
                label = _parse_cls(cls, num_classes)
            except (UnicodeDecodeError, ValueError) as error:
                skips.append((key, str(error), len(keys)))
                return
        if image[1] < 0:
            skips.append((key, "sparse tar member: cannot be read in place", len(keys)))
            return
        assert key is not None
        keys.append(key)
        offsets.append(image[0])
        sizes.append(image[1])
        labels.append(label)

    fd = -1
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        file_size = os.fstat(fd).st_size
        members = _scan_members(fd, file_size) if fast else _tarfile_members(path)
        for name, data_at, size in members:
            match = _KEY_RE.match(name)
            if match is None or name.rpartition("/")[2].startswith("."):  # hidden files, as in shards.py
                continue
            member_key, suffix = match.group(1), match.group(2).lower()
            if member_key != key:
                if key is not None:
                    finish()
                key, images, cls = member_key, {}, None
            is_image = "." + suffix in IMAGE_EXTENSIONS
            if suffix != "cls" and not is_image:
                continue
            # shards.py reads these members' data, and fails where it is cut short.
            if data_at + max(size, 0) > file_size:
                raise tarfile.ReadError("unexpected end of data")
            if is_image:
                images[suffix] = (data_at, size)  # a repeated suffix: the last copy, in first place
            else:
                cls = os.pread(fd, size, data_at)
        if key is not None:
            finish()
    except (tarfile.TarError, OSError, EOFError) as error:
        # The group being read when the stream broke may be missing its .cls (or its image):
        # skipping it is safer than keeping it with a wrong or unknown label.
        if key is not None:
            skips.append((key, "incomplete: the tar stream broke while reading it", len(keys)))
        skips.append((None, f"unreadable tar data after {groups} samples ({_reason(error)})", len(keys)))
    finally:
        if fd >= 0:
            os.close(fd)
    return _ShardScan(
        keys=keys,
        offset=np.asarray(offsets, np.int64),
        size=np.asarray(sizes, np.int64),
        labels=np.asarray(labels, np.int64),
        skips=skips,
    )


def _index_cache_file(cache_dir: Path, shard: Path, num_classes: int | None) -> Path:
    stat = shard.stat()
    payload = [INDEX_FORMAT_VERSION, str(shard.resolve()), stat.st_size, stat.st_mtime_ns, num_classes]
    digest = hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()[:32]
    return cache_dir / "shard-index" / f"{shard.name}-{digest}.npz"


def _load_scan(path: Path) -> _ShardScan | None:
    """A cached shard index, or None when absent or unusable (it is then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode("utf-8"))
            scan = _ShardScan(
                keys=[str(k) for k in meta["keys"]],
                offset=data["offset"].astype(np.int64),
                size=data["size"].astype(np.int64),
                labels=data["labels"].astype(np.int64),
                skips=[(k, str(r), int(n)) for k, r, n in meta["skips"]],
            )
        if meta.get("version") != INDEX_FORMAT_VERSION or not (
            len(scan.keys) == len(scan.offset) == len(scan.size) == len(scan.labels)
        ):
            raise ValueError("inconsistent index file")
        return scan
    except FileNotFoundError:
        return None
    except Exception as error:  # any unreadable cache file means the same: index the shard again
        logger.warning(
            "ignoring unreadable shard index %s (%s); indexing the shard again", path, _reason(error)
        )
        return None


def _save_scan(path: Path, scan: _ShardScan) -> None:
    meta = json.dumps({"version": INDEX_FORMAT_VERSION, "keys": scan.keys, "skips": scan.skips})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a path
            np.savez(
                handle,
                offset=scan.offset,
                size=scan.size,
                labels=scan.labels,
                meta=np.frombuffer(meta.encode("utf-8"), np.uint8),
            )

    try:
        write_atomic(path, write)
    except OSError as error:  # the index is built; failing to keep it is not fatal
        logger.warning("could not write the shard index %s: %s", path, error)


def index_shards(
    shards: list[Path],
    num_classes: int | None,
    *,
    names: Sequence[str] | None = None,
    cache_dir: Path | None = None,
) -> ShardIndex:
    """Index uncompressed tar shards from their headers alone (no image is read or decoded).

    Args:
        shards: the ``.tar`` files, in source order.
        num_classes: the number of named classes (``classes.txt``); ``.cls`` values must be below it.
        names: the shard names used in ids (default: each file's name; the original ``.tar.gz``
            names for decompressed copies, so that ids match the in-memory source).
        cache_dir: when given, each shard's index is kept in ``cache_dir/shard-index`` (an ``.npz``
            read with ``allow_pickle=False``, keyed by the shard's absolute path, size and mtime)
            and reused while the shard is unchanged.

    A shard that is truncated or corrupt keeps the samples indexed before the damage; the sample
    being read when it broke and the shard itself are recorded in ``skipped``.
    """
    names = [s.name for s in shards] if names is None else list(names)
    if len(names) != len(shards):
        raise ValueError(f"got {len(names)} names for {len(shards)} shards")
    parts: list[_ShardScan] = []
    for path in shards:
        cached = None
        cache_file = None
        if cache_dir is not None:
            cache_file = _index_cache_file(cache_dir, path, num_classes)
            cached = _load_scan(cache_file)
        scan = cached if cached is not None else _scan_shard(path, num_classes)
        if cache_file is not None and cached is None:
            _save_scan(cache_file, scan)
        parts.append(scan)
    ids: list[str] = []
    skipped: list[tuple[str, str]] = []
    skipped_after: list[int] = []
    for name, scan in zip(names, parts):
        for key, reason, before in scan.skips:
            skipped.append((name if key is None else f"{name}/{key}", reason))
            skipped_after.append(len(ids) + before)
        ids.extend(f"{name}/{key}" for key in scan.keys)
    return ShardIndex(
        shards=list(shards),
        shard=np.concatenate(
            [np.full(len(scan.keys), i, np.int32) for i, scan in enumerate(parts)] or [np.zeros(0, np.int32)]
        ),
        offset=np.concatenate([scan.offset for scan in parts] or [np.zeros(0, np.int64)]),
        size=np.concatenate([scan.size for scan in parts] or [np.zeros(0, np.int64)]),
        labels=np.concatenate([scan.labels for scan in parts] or [np.zeros(0, np.int64)]),
        ids=ids,
        skipped=skipped,
        skipped_after=np.asarray(skipped_after, np.int64),
    )


# ---------------------------------------------------------------------------------------------
# Compressed shards
# ---------------------------------------------------------------------------------------------

_COMPRESSED_SUFFIXES = (".tar.gz", ".tgz")


def is_compressed_shard(path: Path) -> bool:
    """Whether ``path`` names a gzip-compressed shard (which must be decompressed to be streamed)."""
    return path.name.lower().endswith(_COMPRESSED_SUFFIXES)


def decompress_shard(path: Path, cache_dir: Path | None) -> Path:
    """A plain ``.tar`` copy of the gzip-compressed shard ``path``, made once in ``cache_dir``.

    The copy is named by the shard's absolute path, size and mtime, so it is reused while the shard
    is unchanged and a changed shard gets a new copy. It is written atomically (a crash leaves no
    partial file under that name). A gzip stream that is cut short or corrupt keeps what could be
    decompressed, and indexing then records the damage as for a truncated ``.tar``.

    Raises DataError when ``cache_dir`` is None or cannot be written.
    """
    if cache_dir is None:
        raise DataError(
            f"{path.name} is compressed, and streaming a compressed shard needs a decompressed copy: "
            "set data.cache_dir (cache_dir=...) to a directory with room for it, or load the data in "
            "memory (data.loading=memory)"
        )
    path = Path(path)
    stat = path.stat()
    payload = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    digest = hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()[:32]
    stem = re.sub(r"(?i)(\.tar\.gz|\.tgz)$", "", path.name)
    target = Path(cache_dir).expanduser() / "shards" / f"{stem}-{digest}.tar"
    if target.is_file():
        return target
    logger.info("decompressing %s into %s (once; reused while the shard is unchanged)", path, target)

    def write(tmp: Path) -> None:
        with gzip.open(path, "rb") as source, open(tmp, "wb") as out:
            while True:
                try:
                    chunk = source.read(1 << 20)
                except (EOFError, gzip.BadGzipFile, zlib.error) as error:
                    logger.warning(
                        "%s: the gzip stream is damaged (%s); keeping what precedes it", path, error
                    )
                    break
                if not chunk:
                    break
                out.write(chunk)

    try:
        write_atomic(target, write)
    except OSError as error:
        if not path.is_file() or not os.access(path, os.R_OK):
            raise
        raise DataError(
            f"cannot write a decompressed copy of {path.name} into {target.parent} ({error}): set "
            "data.cache_dir (cache_dir=...) to a writable directory with room for it"
        ) from error
    return target


# ---------------------------------------------------------------------------------------------
# Sample readers
# ---------------------------------------------------------------------------------------------


class SampleReader:
    """Reads the encoded bytes of sample ``i``; safe to call from several threads at once."""

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    def files(self) -> list[Path]:
        """The files the samples come from (their sizes and mtimes key the fingerprint)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (they are opened again on the next read)."""


class TarMemberReader(SampleReader):
    """Sample ``i`` is ``size[i]`` bytes at ``offset[i]`` of ``shards[shard[i]]``, read with ``os.pread``.

    ``pread`` takes the offset with the call, so threads share one descriptor per shard with no
    seek and no lock. Descriptors are opened on first use and kept (up to :data:`MAX_OPEN_SHARDS`
    shards; beyond, each read opens its shard).
    """

    def __init__(self, index: ShardIndex) -> None:
        self.paths = [str(p) for p in index.shards]
        self.shard = index.shard
        self.offset = index.offset
        self.size = index.size
        self._keep_open = len(self.paths) <= MAX_OPEN_SHARDS
        self._fds = [-1] * len(self.paths)
        self._lock = threading.Lock()

    def _open(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def read(self, i: int) -> bytes:
        s, offset, size = int(self.shard[i]), int(self.offset[i]), int(self.size[i])
        if not self._keep_open:
            fd = self._open(self.paths[s])
            try:
                data = os.pread(fd, size, offset)
            finally:
                os.close(fd)
        else:
            fd = self._fds[s]
            if fd < 0:
                with self._lock:
                    if self._fds[s] < 0:
                        self._fds[s] = self._open(self.paths[s])
                    fd = self._fds[s]
            data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes (was the shard changed or truncated?)")
        return data

    def files(self) -> list[Path]:
        return [Path(p) for p in self.paths]

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, [-1] * len(self.paths)
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        # File descriptors and locks do not travel to another process; they are opened again there.
        state = dict(self.__dict__)
        state["_fds"] = [-1] * len(self.paths)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class FileReader(SampleReader):
    """Sample ``i`` is the whole file ``root / relative[i]`` (opened per read: a folder may hold
    millions of files, far more than can stay open)."""

    def __init__(self, root: Path, relative: list[str]) -> None:
        self.root = Path(root)
        self.relative = relative

    def read(self, i: int) -> bytes:
        with open(os.path.join(self.root, self.relative[i]), "rb") as handle:
            return handle.read()

    def files(self) -> list[Path]:
        return [self.root / r for r in self.relative]


# ---------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------


def _resize_cover(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize ``image`` to cover ``height x width`` and crop the centre (``resize_center_crop`` for
    non-square targets, with the same filter and rounding)."""
    if height == width:
        return resize_center_crop(image, height)
    w, h = image.size
    scale = max(width / w, height / h)
    new_w, new_h = max(width, int(w * scale)), max(height, int(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = round((new_w - width) / 2.0), round((new_h - height) / 2.0)
    return image.crop((left, top, left + width, top + height))


def estimated_decoded_bytes(num_samples: int, sample_shape: Sequence[int]) -> int:
    """Bytes the decoded uint8 samples would take in memory: ``num_samples x prod(sample_shape)``."""
    return int(num_samples) * math.prod(int(d) for d in sample_shape)


class StreamingImageDataset(Dataset):
    """Images decoded on demand from a :class:`SampleReader` (tar members or files).

    ``labels`` ``(N,)`` int64 and ``ids`` live in memory; :meth:`batch` reads and decodes the samples
    it is asked for and returns ``inputs`` ``(B, 3, H, W)`` uint8 on the CPU, pixel-identical to the
    in-memory sources (same :func:`~selfsup.data.decode.decode_image`). ``batch`` may be called from
    several threads at once.

    Sample shape: ``(3, image_size, image_size)`` when ``image_size`` is set (each image resized and
    centre-cropped); otherwise the size of the first readable image, and any image of another size
    is resized to cover it and centre-cropped (:func:`~selfsup.data.decode.resize_center_crop`),
    with one warning (the in-memory path refuses mixed sizes instead).

    Unreadable samples: with ``strict=True`` a sample that fails to read or decode raises DataError
    naming it. Otherwise sample ``i`` is replaced by the first of ``i + 1, i + 2, ...`` (mod N) that
    decodes, so the batch keeps its size and its content never depends on thread timing; the
    returned ``labels`` and ``indices`` are the substitute's. Each failing sample is recorded once in
    ``skipped`` (``(id, reason)``) and every substitution is counted in ``substitutions``.

    Call :meth:`close` (or use the data set as a context manager) to release the open files; a
    closed data set opens them again if used.
    """

    streaming = True

    def __init__(
        self,
        reader: SampleReader,
        labels: np.ndarray | Tensor,
        ids: list[str],
        *,
        source: str,
        classes: Sequence[str] | None = None,
        image_size: int | None = None,
        strict: bool = False,
        skipped: Sequence[tuple[str, str]] = (),
        fingerprint: str | Callable[[], str] | None = None,
    ) -> None:
        self.reader = reader
        self.labels = torch.as_tensor(np.asarray(labels, np.int64)).reshape(-1)
        self.ids = ids
        if len(ids) != self.labels.shape[0]:
            raise ValueError(f"expected {self.labels.shape[0]} ids, got {len(ids)}")
        if len(ids) == 0:
            raise DataError(f"no images to stream from {source!r}")
        self.source = source
        self.skipped = list(skipped)
        self.image_size = image_size
        self.strict = strict
        self.substitutions = 0
        self._given_fingerprint = fingerprint
        self._bad: dict[int, str] = {}  # index -> reason, for samples known not to decode
        self._lock = threading.Lock()
        self._warned_size = False
        self._shape: tuple[int, int] | None = (image_size, image_size) if image_size is not None else None
        if self._shape is None:
            # The first readable image fixes the size (decoding it also checks the data early).
            _, first = self._sample(0)
            self._shape = (int(first.shape[0]), int(first.shape[1]))
        self.info = DataInfo(
            modality="image",
            sample_shape=(3, *self._shape),
            dtype="uint8",
            classes=None if classes is None else tuple(classes),
        )

    # -- reading ---------------------------------------------------------------------------

    def _decode(self, i: int) -> np.ndarray:
        """Sample ``i`` as ``(H, W, 3)`` uint8 at the data set's size; raises on unreadable data."""
        image = decode_image(self.reader.read(i), self.image_size)
        if self._shape is not None and image.shape[:2] != self._shape:
            height, width = self._shape
            if not self._warned_size:
                with self._lock:
                    warn, self._warned_size = not self._warned_size, True
                if warn:
                    warnings.warn(
                        f"{self.ids[i]} is {image.shape[0]}x{image.shape[1]}, not {height}x{width} like the "
                        f"first image of {self.source!r}: images of other sizes are resized and centre-"
                        "cropped to it; set data.image_size (image_size=...) to choose the size",
                        stacklevel=4,
                    )
            image = np.asarray(_resize_cover(Image.fromarray(image), height, width), dtype=np.uint8)
        return image

    def _sample(self, i: int) -> tuple[int, np.ndarray]:
        """(index actually used, ``(H, W, 3)`` uint8 image) for sample ``i``, substituting unreadable ones."""
        n = len(self.ids)
        j = i
        for _ in range(n):
            if j not in self._bad:
                try:
                    return j, self._decode(j)
                # Pillow's format plugins raise many exception types on malformed input (OSError,
                # SyntaxError, ValueError, struct.error, ...); every one means "unreadable".
                except Exception as error:
                    reason = _reason(error)
                    if self.strict:
                        raise DataError(
                            f"cannot read {self.ids[j]} in {self.source!r}: {reason}. (strict=True; with "
                            "strict=False an unreadable sample is replaced by the next readable one and "
                            "listed in dataset.skipped.)"
                        ) from error
                    with self._lock:
                        if j not in self._bad:
                            self._bad[j] = reason
                            self.skipped.append((self.ids[j], reason))
                            logger.warning(
                                "%s: cannot decode %s (%s); using the next readable sample instead",
                                self.source,
                                self.ids[j],
                                reason,
                            )
            j = (j + 1) % n
        raise DataError(f"no readable image in {self.source!r}: all {n} samples failed to decode")

    def batch(self, indices: Tensor) -> Batch:
        """The samples at ``indices`` (``(B,)`` int64, any order, repeats allowed) as a CPU :class:`Batch`:
        ``inputs`` ``(B, 3, H, W)`` uint8, ``labels`` ``(B,)`` int64, ``indices`` ``(B,)`` int64."""
        wanted = torch.as_tensor(indices).detach().to("cpu", torch.int64).reshape(-1)
        n = len(self.ids)
        positions = wanted.tolist()
        if positions and not -n <= min(positions) <= max(positions) < n:
            raise IndexError(f"index out of range for a data set of {n} samples")
        assert self._shape is not None
        # Images land channels-last (a plain copy each) and are transposed once for the whole batch:
        # transposing image by image is several times slower.
        out = np.empty((len(positions), *self._shape, 3), np.uint8)
        used = []
        substituted = 0
        for k, i in enumerate(positions):
            i %= n  # negative indices count from the end, as in tensor indexing
            j, out[k] = self._sample(i)
            used.append(j)
            substituted += j != i
        if substituted:
            with self._lock:
                self.substitutions += substituted
        where = torch.tensor(used, dtype=torch.int64)
        inputs = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))
        return Batch(inputs=inputs, labels=self.labels[where], indices=where)

    # -- size and identity -----------------------------------------------------------------

    def estimated_bytes(self) -> int:
        """Bytes all samples would take decoded in memory: ``len x 3 x H x W`` (uint8)."""
        assert self.info.sample_shape is not None
        return estimated_decoded_bytes(len(self), self.info.sample_shape)

    def _fingerprint(self) -> str:
        given = self._given_fingerprint
        if callable(given):
            given = self._given_fingerprint = given()
        if given is None:
            digest = hashlib.sha256(repr(self.info.to_dict()).encode())
            digest.update(self.source.encode())
            digest.update("\0".join(self.ids).encode())
            digest.update(self.labels.numpy().tobytes())
            given = self._given_fingerprint = digest.hexdigest()
        return given

    # -- resources -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the open files (they are opened again if the data set is used afterwards)."""
        self.reader.close()

    def __enter__(self) -> StreamingImageDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A safety net only: descriptors must not leak when a data set is dropped without close().
        reader = self.__dict__.get("reader")
        if reader is not None:
            reader.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        if callable(state["_given_fingerprint"]):
            state["_given_fingerprint"] = self.fingerprint
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Opening sources
# ---------------------------------------------------------------------------------------------


def _source_fingerprint(
    kind: str, source: str, files: Callable[[], list[Path]], image_size: int | None, max_samples: int | None
) -> Callable[[], str]:
    """A lazily computed fingerprint: :func:`~selfsup.data.cache.cache_key` over the source files
    (stat'ing a million files takes seconds, so only when something asks for it)."""

    def compute() -> str:
        from selfsup.data.cache import cache_key

        return cache_key(kind, source, files(), image_size=image_size, max_samples=max_samples)

    return compute


def _raise_if_strict(strict: bool, skipped: list[tuple[str, str]]) -> None:
    if strict and skipped:
        sample_id, reason = skipped[0]
        raise DataError(
            f"cannot read {sample_id}: {reason}. (strict=True; with strict=False unreadable inputs "
            "are skipped and listed in dataset.skipped.)"
        )


def open_streaming_shards(
    shards: list[Path],
    *,
    source: str,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    cache_dir: Path | None = None,
) -> StreamingImageDataset:
    """Stream WebDataset-style tar shards (``<key>.jpg`` + optional ``<key>.cls``, ``classes.txt``
    beside the first shard), with the ids, labels and pixels of :func:`selfsup.data.shards.shards_source`.

    ``.tar.gz`` / ``.tgz`` shards are decompressed once into ``cache_dir`` (required for them);
    with ``cache_dir`` the shard indexes are also kept there. ``max_samples`` keeps the first
    readable samples in source order (readable as far as the index tells: a sample whose image then
    fails to decode is substituted, see :class:`StreamingImageDataset`).
    """
    from selfsup.data.assemble import no_samples_error
    from selfsup.data.shards import read_classes_txt

    shards = [Path(p) for p in shards]
    if not shards:
        raise DataError(f"no shards given in {source!r}")
    classes_path = shards[0].parent / "classes.txt"
    classes = read_classes_txt(classes_path) if classes_path.is_file() else None
    cache = None if cache_dir is None else Path(cache_dir).expanduser()
    plain = [decompress_shard(p, cache) if is_compressed_shard(p) else p for p in shards]
    index = index_shards(
        plain, len(classes) if classes else None, names=[p.name for p in shards], cache_dir=cache
    )
    if max_samples is not None:
        index = index.head(max_samples)
    _raise_if_strict(strict, index.skipped)
    if len(index) == 0:
        raise no_samples_error(source, index.skipped)
    inputs = [*shards, *([classes_path] if classes else [])]
    return StreamingImageDataset(
        TarMemberReader(index),
        index.labels,
        index.ids,
        source=source,
        classes=classes,
        image_size=image_size,
        strict=strict,
        skipped=index.skipped,
        fingerprint=_source_fingerprint("stream-shards", source, lambda: inputs, image_size, max_samples),
    )


def open_streaming_folder(
    root: Path,
    *,
    source: str,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
) -> StreamingImageDataset:
    """Stream a folder of images (found recursively; class sub-folders give labels), with the ids
    (relative posix paths), labels and pixels of :func:`selfsup.data.folder.folder_source`.

    ``max_samples`` keeps the first files in source order (a file that then fails to decode is
    substituted, see :class:`StreamingImageDataset`).
    """
    from selfsup.data.folder import scan_folder

    root = Path(root).expanduser()
    files, classes = scan_folder(root)
    if max_samples is not None:
        files = files[:max_samples]
    class_index = {name: i for i, name in enumerate(classes or [])}
    labels = np.fromiter(
        (class_index[p.parts[0]] if classes else UNKNOWN_LABEL for p in files), np.int64, count=len(files)
    )
    ids = [p.as_posix() for p in files]
    reader = FileReader(root, ids)
    return StreamingImageDataset(
        reader,
        labels,
        ids,
        source=source,
        classes=classes,
        image_size=image_size,
        strict=strict,
        fingerprint=_source_fingerprint("stream-folder", source, reader.files, image_size, max_samples),
    )


__all__ = [
    "INDEX_FORMAT_VERSION",
    "MAX_OPEN_SHARDS",
    "FileReader",
    "SampleReader",
    "ShardIndex",
    "StreamingImageDataset",
    "TarMemberReader",
    "decompress_shard",
    "estimated_decoded_bytes",
    "index_shards",
    "is_compressed_shard",
    "open_streaming_folder",
    "open_streaming_shards",
]
