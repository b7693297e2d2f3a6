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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.io import fsync_directory

FORMAT_VERSION = 1
_DTYPES = {"float32": np.float32, "int64": np.int64}


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


__all__ = ["EntryWriter", "feature_key", "read_entry", "weights_fingerprint"]
