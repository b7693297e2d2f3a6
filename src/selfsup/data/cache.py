"""On-disk cache of decoded in-memory data sets, so a data set is decoded once across runs.

One cache entry is one ``safetensors`` file named by a content key:

* ``inputs`` — e.g. ``(N, 3, H, W)`` uint8 images or ``(N, D)`` float32 vectors — and ``labels`` —
  ``(N,)`` int64, exactly as in the :class:`~selfsup.data.base.InMemoryDataset`; for audio
  (:class:`~selfsup.data.audio.AudioDataset`) ``waveforms`` ``(S,)`` int16 and ``offsets`` ``(N + 1,)``
  int64 instead of ``inputs``;
* ``meta`` — a uint8 tensor holding UTF-8 JSON with ``ids``, ``info``, ``skipped`` and ``source``
  (kept as a tensor rather than in the safetensors header, whose size is capped, so that a million
  ids still fit).

The key is the sha256 of the source kind and spec, the sorted input files with their sizes and
modification times, ``image_size``, ``max_samples`` and the source's other decoding options
(``extra``: audio's ``sample_rate`` and ``min_seconds``): touching or replacing an input file
makes a new entry instead of serving stale pixels. Writes go to a temporary file in the same
directory, fsync'd, then ``os.replace``-d (:func:`selfsup.io.write_atomic`), so a crash or a
concurrent reader never sees half a file.
A file that fails to load or to validate is ignored with a warning (and then overwritten by the
rebuilt entry). Nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from selfsup.data.base import DataInfo, Dataset, InMemoryDataset
from selfsup.io import write_atomic

# Bump when the decoding itself changes (resize rule, colour conversion, ...): old entries then
# stop matching instead of silently serving pixels produced by the previous rule.
CACHE_FORMAT_VERSION = 2
_FORMAT_NAME = "selfsup.dataset"


class CacheWarning(UserWarning):
    """A cache entry could not be used (corrupt, unreadable or not writable); the data is decoded again."""


def cache_key(
    kind: str,
    spec: str,
    inputs: Sequence[str | Path],
    *,
    image_size: int | None,
    max_samples: int | None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Hex sha256 naming the decoded form of ``spec`` given the current state of its input files.

    ``inputs`` are the files the source reads; each contributes its absolute path, size and
    ``st_mtime_ns``. A missing file contributes its path only, so the key is still defined.
    ``extra``: further decoding options (JSON-able), part of the key when given.
    """
    files = []
    for path in sorted({str(Path(p).expanduser().resolve()) for p in inputs}):
        try:
            stat = os.stat(path)
            files.append([path, stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([path, None, None])
    payload = {
        "format": _FORMAT_NAME,
        "version": CACHE_FORMAT_VERSION,
        "kind": kind,
        "spec": spec,
        "files": files,
        "image_size": image_size,
        "max_samples": max_samples,
    }
    if extra:
        payload["extra"] = extra
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """Where the entry for ``key`` lives inside ``cache_dir``."""
    return Path(cache_dir).expanduser() / f"dataset-{key}.safetensors"


def load_cached(cache_dir: str | Path, key: str) -> Dataset | None:
    """The cached data set for ``key``, or None when there is no usable entry.

    A corrupt entry (truncated, wrong key, inconsistent shapes) gives a :class:`CacheWarning` and None.
    """
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        return _read_entry(path, key)
    # Any failure to read a cache file (truncated header, bad JSON, wrong dtype, ...) means the same
    # thing: the entry is unusable and the data is decoded again.
    except Exception as error:
        warnings.warn(
            f"ignoring corrupt data cache file {path} ({type(error).__name__}: {error}); "
            "decoding the data again and rewriting it",
            CacheWarning,
            stacklevel=2,
        )
        return None


def _read_entry(path: Path, key: str) -> Dataset:
    tensors = load_file(str(path))
    with open(path, "rb") as handle:
        # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
        header_len = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_len))
    metadata = header.get("__metadata__", {})
    if metadata.get("format") != _FORMAT_NAME or metadata.get("key") != key:
        raise ValueError("the file's recorded key does not match its name")
    meta = json.loads(tensors["meta"].numpy().tobytes().decode("utf-8"))
    if "offsets" in tensors:
        from selfsup.data.audio import AudioDataset

        return AudioDataset(
            tensors["waveforms"],
            tensors["offsets"],
            tensors["labels"],
            [str(i) for i in meta["ids"]],
            info=DataInfo.from_dict(meta["info"]),
            source=str(meta["source"]),
            skipped=[(str(i), str(r)) for i, r in meta["skipped"]],
            fingerprint=key,
        )
    return InMemoryDataset(
        tensors["inputs"],
        tensors["labels"],
        [str(i) for i in meta["ids"]],
        info=DataInfo.from_dict(meta["info"]),
        source=str(meta["source"]),
        skipped=[(str(i), str(r)) for i, r in meta["skipped"]],
        fingerprint=key,
    )


def save_cached(cache_dir: str | Path, key: str, dataset: Dataset) -> Path | None:
    """Write ``dataset`` as the entry for ``key`` atomically; returns its path.

    A cache that cannot be written (read-only directory, full disk) is not fatal: it gives a
    :class:`CacheWarning` and returns None, since the data set itself was decoded fine.
    """
    path = cache_path(cache_dir, key)
    meta = json.dumps(
        {
            "ids": dataset.ids,
            "info": dataset.info.to_dict(),
            "skipped": [list(s) for s in dataset.skipped],
            "source": dataset.source,
        }
    ).encode("utf-8")
    from selfsup.data.audio import AudioDataset

    tensors = {
        "labels": dataset.labels.contiguous(),
        "meta": torch.from_numpy(np.frombuffer(meta, dtype=np.uint8).copy()),
    }
    if isinstance(dataset, AudioDataset):
        tensors.update(waveforms=dataset.waveforms.contiguous(), offsets=dataset.offsets.contiguous())
    elif isinstance(dataset, InMemoryDataset):
        tensors["inputs"] = dataset.inputs.contiguous()
    else:
        raise TypeError(f"cannot cache a {type(dataset).__name__}")
    metadata = {"format": _FORMAT_NAME, "version": str(CACHE_FORMAT_VERSION), "key": key}
    try:
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except OSError as error:
        warnings.warn(f"could not write data cache file {path}: {error}", CacheWarning, stacklevel=2)
        return None
    return path
