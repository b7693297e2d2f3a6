"""Atomic file writes: write a temporary file in the target's directory, fsync, then rename.

A reader (or a resumed run after a crash) sees either the old file or the complete new one,
never a partial write. Tensors are stored with safetensors only: loading never unpickles.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Make a rename durable; not possible (nor needed) on every platform."""
    with contextlib.suppress(OSError):  # not supported on every platform/file system
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def save_tensors_atomic(
    path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """safetensors file of contiguous, unshared copies (safetensors refuses shared storage)."""
    plain = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))
