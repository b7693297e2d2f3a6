"""Streaming image data sets: samples decoded on demand from indexed tar shards or image files.

An in-memory data set decodes everything once; the data sets here keep only labels, ids and
where each sample's bytes lie, and decode the samples a batch asks for, so a data set of any size
streams with memory bounded by the batches in flight (see :class:`selfsup.data.loader.PrefetchLoader`).
The trainer asks for arbitrary index sets (its order is a pure function of the step), so every
sample must be reachable directly:

* tar shards are indexed once (:mod:`selfsup.data.tar_index`): one pass over the tar headers
  records the byte offset and size of each sample's image member and its label, and
  :meth:`StreamingImageDataset.batch` then reads the bytes with ``os.pread`` (no seek: several
  threads may read one shard at once);
* compressed shards (``.tar.gz``, ``.tgz``) cannot be read at an offset: a plain ``.tar`` copy is
  written into the cache directory once (:func:`~selfsup.data.tar_index.decompress_shard`);
* folders need no index: each sample is one file.

Members are grouped into samples exactly as :mod:`selfsup.data.shards` groups them (WebDataset keys,
``.cls`` labels, ``classes.txt``, ids ``"<shard name>/<key>"``), and every image is decoded by the same
:func:`~selfsup.data.decode.decode_image`, so a streamed sample is pixel-identical to the in-memory one.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL, Batch, DataError, DataInfo
from selfsup.data.decode import decode_image, resize_center_crop
from selfsup.data.streaming import OpenFiles, StreamingDataset
from selfsup.data.tar_index import ShardIndex, decompress_shard, index_shards, is_compressed_shard

# Shards whose file descriptors stay open for the data set's lifetime. Beyond this many (a data set
# of thousands of shards would run into the usual limit of 1024 open files) each read opens and
# closes its shard, which costs a few microseconds next to a decode of hundreds.
MAX_OPEN_SHARDS = 256


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
        self.shards = OpenFiles([str(p) for p in index.shards])
        self.shard = index.shard
        self.offset = index.offset
        self.size = index.size
        self._keep_open = len(self.shards) <= MAX_OPEN_SHARDS

    def read(self, i: int) -> bytes:
        s, offset, size = int(self.shard[i]), int(self.offset[i]), int(self.size[i])
        if not self._keep_open:
            fd = self.shards.open_once(s)
            try:
                data = os.pread(fd, size, offset)
            finally:
                os.close(fd)
        else:
            data = os.pread(self.shards.fd(s), size, offset)
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes (was the shard changed or truncated?)")
        return data

    def files(self) -> list[Path]:
        return [Path(p) for p in self.shards.paths]

    def close(self) -> None:
        self.shards.close()


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


class StreamingImageDataset(StreamingDataset):
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
    ``skipped`` (``(id, reason)``) and every substitution is counted in ``substitutions``. This, the
    fingerprint and the resource lifecycle are :class:`~selfsup.data.streaming.StreamingDataset`'s.

    Call :meth:`close` (or use the data set as a context manager) to release the open files; a
    closed data set opens them again if used.
    """

    _noun = "sample"
    _content_noun = "image"
    reader: SampleReader

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
        super().__init__(
            reader, labels, ids, source=source, strict=strict, skipped=skipped, fingerprint=fingerprint
        )
        if len(ids) != self.labels.shape[0]:
            raise ValueError(f"expected {self.labels.shape[0]} ids, got {len(ids)}")
        if len(ids) == 0:
            raise DataError(f"no images to stream from {source!r}")
        self.image_size = image_size
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

    def batch(self, indices: Tensor) -> Batch:
        """The samples at ``indices`` (``(B,)`` int64, any order, repeats allowed) as a CPU :class:`Batch`:
        ``inputs`` ``(B, 3, H, W)`` uint8, ``labels`` ``(B,)`` int64, ``indices`` ``(B,)`` int64."""
        positions = self._positions(indices)
        assert self._shape is not None
        # Images land channels-last (a plain copy each) and are transposed once for the whole batch:
        # transposing image by image is several times slower.
        out = np.empty((len(positions), *self._shape, 3), np.uint8)
        used = []
        for k, i in enumerate(positions):
            j, out[k] = self._sample(i)
            used.append(j)
        self._count_substitutions(positions, used)
        where = torch.tensor(used, dtype=torch.int64)
        inputs = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))
        return Batch(inputs=inputs, labels=self.labels[where], indices=where)

    # -- size ------------------------------------------------------------------------------

    def estimated_bytes(self) -> int:
        """Bytes all samples would take decoded in memory: ``len x 3 x H x W`` (uint8)."""
        assert self.info.sample_shape is not None
        return estimated_decoded_bytes(len(self), self.info.sample_shape)


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
    "MAX_OPEN_SHARDS",
    "FileReader",
    "SampleReader",
    "StreamingImageDataset",
    "TarMemberReader",
    "estimated_decoded_bytes",
    "open_streaming_folder",
    "open_streaming_shards",
]
