"""On-disk cache of extracted features, keyed by everything that determines them.

An entry is a directory ``<cache_dir>/<key>/`` holding one raw float32 (or int64) file per array
and ``meta.json`` describing them. The key is the sha256 of: the encoder's weights (their bytes,
not a file name), the input transform, the data set's fingerprint (its files' paths, sizes and
modification times, and the decoding options), the layers, the pooling and the format version; a
change to any of them gives another key, so a stale entry is never served.

Arrays are written to files as they are extracted (memory stays bounded for large sets) into a
temporary directory that is renamed into place once complete, so a crash never leaves a partial
entry. Loading maps the files copy-on-write (``np.memmap(mode="c")``): nothing is unpickled and
nothing is read until used.

Before an entry is written its size is estimated from what the encoder and the data declare
(:func:`estimate_entry_bytes`: ``N x layers x D x 4`` bytes pooled, the sum of the samples' frames
instead of ``N`` per frame), logged, and refused above a limit (:data:`DEFAULT_CACHE_LIMIT_GB`,
``cache_limit_gb`` to raise it) or above the free space of the disk (:func:`check_entry_size`):
per-frame features of every layer of a speech corpus reach terabytes (LibriSpeech's 960 h at 50
frames/s, 13 layers of 768: 6.9 TB), which should be said before the disk fills, not after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.io import fsync_directory

FORMAT_VERSION = 1
_DTYPES = {"float32": np.float32, "int64": np.int64}
# Above this an entry is refused unless the caller raises the limit: enough for pooled features of
# every layer of large sets (1.28M images x 25 layers x 1024 x 4 bytes is 122 GiB, refused; FSDD's
# 3,000 clips x 13 x 768 pooled is 0.1 GiB, per frame 2 GiB), small beside a disk.
DEFAULT_CACHE_LIMIT_GB = 20.0
# Entries larger than this are announced as a warning, smaller ones at INFO.
ANNOUNCE_BYTES = 2**30

logger = logging.getLogger(__name__)


def estimate_entry_bytes(samples: int, layers: int, width: int, frames: int | None = None) -> int:
    """Bytes of a cache entry: ``rows x layers x width x 4`` (float32), ``rows`` being ``samples``
    for pooled features or ``frames`` (all samples' valid frames) per frame, plus the ``(N,)`` int64
    frame counts. ``width`` is the encoder's ``embed_dim``: exact for Transformers, whose hidden states
    share it, an upper bound for ConvNets, whose earlier stages are narrower."""
    for name, value in (("samples", samples), ("layers", layers), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if frames is None:
        return samples * layers * width * 4
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
        raise ValueError(f"frames must be an integer >= 0 or None, got {frames!r}")
    return frames * layers * width * 4 + samples * 8


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.1f} MiB"


def check_entry_size(nbytes: int, cache_dir: Path, *, limit_gb: float, what: str = "") -> None:
    """Log the estimated size of a new entry under ``cache_dir``; raise :class:`ConfigError` (with what
    to do) when it exceeds ``limit_gb`` GiB or the free space of the disk that holds ``cache_dir``."""
    if not (isinstance(limit_gb, (int, float)) and not isinstance(limit_gb, bool) and limit_gb > 0):
        raise ConfigError(f"the feature cache limit must be a positive number of GiB, got {limit_gb!r}")
    existing = Path(cache_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free: float = shutil.disk_usage(existing).free
    except OSError:
        free = math.inf
    detail = f" ({what})" if what else ""
    level = logging.WARNING if nbytes >= ANNOUNCE_BYTES else logging.INFO
    logger.log(level, "feature cache: the entry will take about %s%s in %s", _gib(nbytes), detail, cache_dir)
    if nbytes > limit_gb * 2**30:
        raise ConfigError(
            f"the feature cache entry would take about {_gib(nbytes)}{detail}, more than the limit of "
            f"{limit_gb:g} GiB; raise the limit (cache_limit_gb={math.ceil(nbytes / 2**30) + 1}), extract "
            "fewer layers or pooled instead of per-frame features, or extract without the cache (cache=False)"
        )
    if nbytes > free:
        raise ConfigError(
            f"the feature cache entry would take about {_gib(nbytes)}{detail}, but only {_gib(free)} is "
            f"free on the disk of {cache_dir}; free some space, cache elsewhere, or extract without the cache"
        )


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state dict: names, shapes, dtypes and bytes of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_key(**parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (plus the format version)."""
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class EntryWriter:
    """Writes one cache entry: arrays allocated (fixed shape) or appended (growing), then committed."""

    def __init__(self, cache_dir: Path, key: str) -> None:
        self.target = cache_dir / key
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=cache_dir))
        self.arrays: dict[str, dict[str, Any]] = {}
        self._maps: list[np.memmap] = []
        self._appends: dict[str, Any] = {}

    def allocate(self, name: str, shape: tuple[int, ...], dtype: str = "float32") -> Tensor:
        """A writable tensor of ``shape`` backed by a file of the entry."""
        self.arrays[name] = {"shape": list(shape), "dtype": dtype}
        if int(np.prod(shape)) == 0:
            (self.tmp / f"{name}.bin").touch()
            return torch.zeros(shape, dtype=getattr(torch, dtype))
        array = np.memmap(self.tmp / f"{name}.bin", dtype=_DTYPES[dtype], mode="w+", shape=shape)
        self._maps.append(array)
        return torch.from_numpy(array)

    def append(self, name: str, rows: Tensor) -> None:
        """Append ``rows`` ``(n, ...)`` to the growing array ``name`` (per-frame features)."""
        array = rows.detach().cpu().contiguous().numpy()
        if name not in self._appends:
            self._appends[name] = open(self.tmp / f"{name}.bin", "wb")  # noqa: SIM115 - closed in commit
            self.arrays[name] = {"shape": [0, *array.shape[1:]], "dtype": str(array.dtype)}
        self._appends[name].write(array.tobytes())
        self.arrays[name]["shape"][0] += array.shape[0]

    def commit(self, meta: dict[str, Any]) -> Path:
        """Flush, fsync and move the entry into place; returns its directory."""
        for array in self._maps:
            array.flush()
        for handle in self._appends.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for path in self.tmp.iterdir():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
        (self.tmp / "meta.json").write_text(json.dumps({**meta, "arrays": self.arrays}, indent=1))
        with open(self.tmp / "meta.json", "rb+") as handle:
            os.fsync(handle.fileno())
        self._maps.clear()
        try:
            os.rename(self.tmp, self.target)
        except OSError:  # another process committed the same key first: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        fsync_directory(self.target.parent)
        return self.target

    def abort(self) -> None:
        for handle in self._appends.values():
            with contextlib.suppress(OSError):
                handle.close()
        self._maps.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_entry(cache_dir: Path, key: str) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """``(meta, arrays)`` of a committed entry, or None when there is none (or it is unreadable)."""
    directory = cache_dir / key
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays: dict[str, Tensor] = {}
        for name, spec in meta["arrays"].items():
            shape = tuple(int(s) for s in spec["shape"])
            path = directory / f"{name}.bin"
            dtype = _DTYPES[spec["dtype"]]
            if path.stat().st_size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                return None
            if int(np.prod(shape)) == 0:
                arrays[name] = torch.zeros(shape, dtype=getattr(torch, spec["dtype"]))
            else:
                arrays[name] = torch.from_numpy(np.memmap(path, dtype=dtype, mode="c", shape=shape))
        return meta, arrays
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = [
    "DEFAULT_CACHE_LIMIT_GB",
    "EntryWriter",
    "check_entry_size",
    "estimate_entry_bytes",
    "feature_key",
    "read_entry",
    "weights_fingerprint",
]
