"""Random access into uncompressed tar shards: an index of each sample's member offsets.

One pass over the 512-byte tar headers (parsed here: three times faster than ``tarfile``, with its
rules for pax and GNU long names, checksums and truncation; ``tarfile`` is the fallback for the rare
member types it alone handles) records, for every WebDataset sample, the byte offset and size of its
image member and its label. Members are grouped into samples exactly as :mod:`selfsup.data.shards`
groups them (keys, ``.cls`` labels, ids ``"<shard name>/<key>"``). Indexing 100,000 samples takes
about 1.5 s on a 2-core CPU; with a cache directory the index of each shard is kept (keyed by its
path, size and modification time) and read back in milliseconds. Compressed shards (``.tar.gz``)
allow no random access: :func:`decompress_shard` writes a plain copy into the cache directory once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import struct
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfsup.data.base import UNKNOWN_LABEL, DataError, error_reason
from selfsup.data.decode import IMAGE_EXTENSIONS
from selfsup.io import write_atomic

logger = logging.getLogger(__name__)

# Bump when the index format or the grouping rules change: cached indexes then stop matching.
INDEX_FORMAT_VERSION = 1


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


# ---------------------------------------------------------------------------------------------
# Reading tar headers
# ---------------------------------------------------------------------------------------------


class Unsupported(Exception):
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
        raise Unsupported("pax hdrcharset")
    records: dict[str, str] = {}
    pos = 0
    while (match := _PAX_RECORD.match(data, pos)) is not None:
        length = int(match.group(1))
        if length == 0:
            raise _HeaderStop("invalid header")
        keyword = match.group(2).decode("utf-8", "surrogateescape")
        if keyword.startswith("GNU.sparse"):
            raise Unsupported("GNU sparse file")
        records[keyword] = data[match.end(2) + 1 : match.start(1) + length - 1].decode(
            "utf-8", "surrogateescape"
        )
        pos += length
    return records


def scan_members(fd: int, file_size: int) -> Iterator[tuple[str, int, int]]:
    """``(name, data offset, size)`` of each regular file in an uncompressed tar, in archive order.

    Reads only the headers (one ``pread`` each), following tarfile's rules: pax extended headers
    and GNU long names rename the member after them (the outermost header wins, as in tarfile's
    recursion), and reading stops silently at a bad header, as ``for m in tarfile`` does. Raises
    ``tarfile.ReadError`` where :mod:`selfsup.data.shards` sees a damaged shard: no end-of-archive
    block where reading stopped, member data cut short, a bad first header, or a bad header after
    an extension header. Raises :class:`Unsupported` for what it leaves to tarfile (sparse files,
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
                            raise Unsupported("a global pax header naming a path or size")
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
            raise Unsupported("GNU sparse file")
        if name_override is not None:
            name = name_override
        if size_override is not None:
            size = size_override
        if kind in _REGULAR_TYPES:
            yield name, data_at, size
        offset = data_at if kind in _NO_DATA_TYPES else data_at + _blocks(size)


def tarfile_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """What :func:`scan_members` yields, read with :mod:`tarfile` (for archives it does not handle)."""
    from selfsup.data.shards import ended_cleanly

    with tarfile.open(path, "r:") as stream:
        for member in stream:
            if member.isfile():
                # A sparse member's data is not stored in one piece: it cannot be read in place.
                yield member.name, member.offset_data, -1 if member.issparse() else member.size
        if not ended_cleanly(stream):
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
    except Unsupported as why:
        logger.debug("%s: %s; indexing it with tarfile", path, why)
        return _group_shard(path, num_classes, fast=False)


def _group_shard(path: Path, num_classes: int | None, *, fast: bool) -> _ShardScan:
    from selfsup.data.shards import KEY_RE, parse_cls

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
                label = parse_cls(cls, num_classes)
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
        members = scan_members(fd, file_size) if fast else tarfile_members(path)
        for name, data_at, size in members:
            match = KEY_RE.match(name)
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
        skips.append((None, f"unreadable tar data after {groups} samples ({error_reason(error)})", len(keys)))
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
            "ignoring unreadable shard index %s (%s); indexing the shard again", path, error_reason(error)
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


__all__ = [
    "INDEX_FORMAT_VERSION",
    "ShardIndex",
    "Unsupported",
    "decompress_shard",
    "index_shards",
    "is_compressed_shard",
    "scan_members",
    "tarfile_members",
]
