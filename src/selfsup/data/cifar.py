"""The ``cifar`` source: the python-pickle releases of CIFAR-10 and CIFAR-100, read safely.

``<dir>`` gives the train batches, ``<dir>:test`` (or ``<dir>/test_batch``) the test batch, for
``cifar-10-batches-py`` and ``cifar-100-python`` (fine labels). A pickle can run any importable
function, so the batches are read with :class:`RestrictedUnpickler`, which only rebuilds numpy
arrays and plain containers; an unreadable or malicious batch is skipped (or raises when strict).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.data.assemble import Collector, build_dataset
from selfsup.data.base import DataError, InMemoryDataset, error_reason
from selfsup.data.sources import SPEC_FORMS, canonical_source, register_source, strip_kind

# Exactly what the CIFAR pickles need to rebuild their numpy arrays, and nothing else: a pickle
# can call any importable function, so every other global is refused. Python 2 pickles of
# numpy 1 name "numpy.core.*", which numpy 2 moved to "numpy._core.*".
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}

# Everything reading a damaged, truncated or refused pickle can raise.
_PICKLE_ERRORS = (OSError, EOFError, ValueError, pickle.UnpicklingError)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Python 3 pickles ``bytes`` at protocol 2 as ``_codecs.encode(text, "latin1")``; nothing else passes."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that can only rebuild numpy arrays and plain containers (dict, list, bytes, ...).

    The real CIFAR files (Python 2 pickles) need ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype``; numpy's protocol-5 path (``_frombuffer``), scalars and
    the latin-1 ``_codecs.encode`` that Python 3 writes for bytes at protocol 2 are also accepted.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}: this file is not a plain data pickle "
                "(only numpy arrays, lists, dicts and bytes are allowed)"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def load_restricted_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as for Python 2 pickles)."""
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle, encoding="bytes").load()


@dataclass
class _CifarLayout:
    train: list[Path]
    test: list[Path]
    meta: Path | None


def _cifar_layout(directory: Path) -> _CifarLayout | None:
    if not directory.is_dir():
        return None
    batches = sorted(directory.glob("data_batch_*"), key=lambda p: (len(p.name), p.name))
    if batches or (directory / "test_batch").is_file():  # CIFAR-10
        test = [directory / "test_batch"] if (directory / "test_batch").is_file() else []
        meta = directory / "batches.meta"
        return _CifarLayout(batches, test, meta if meta.is_file() else None)
    if (directory / "meta").is_file() and ((directory / "train").is_file() or (directory / "test").is_file()):
        train, test = directory / "train", directory / "test"  # CIFAR-100
        return _CifarLayout(
            [train] if train.is_file() else [], [test] if test.is_file() else [], directory / "meta"
        )
    return None


def _cifar_files(spec: str) -> tuple[list[Path], Path | None, str] | None:
    """``(batch files, meta file, split)`` for a CIFAR spec, or None when it is not one."""
    stripped = strip_kind(spec, "cifar")
    base, split = stripped, "train"
    for name in ("train", "test"):
        if base.endswith(":" + name):
            base, split = base[: -len(name) - 1], name
    path = Path(base).expanduser()
    layout = _cifar_layout(path)
    if layout is not None:
        return (layout.test if split == "test" else layout.train), layout.meta, split
    parent = _cifar_layout(path.parent) if path.is_file() else None
    if parent is not None and base == stripped and path in (*parent.train, *parent.test):
        return [path], parent.meta, path.name
    return None


def _cifar_inputs(spec: str) -> list[Path]:
    found = _cifar_files(spec)
    if found is None:
        return []
    files, meta, _ = found
    return [*files, *([meta] if meta else [])]


def _as_str_keys(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict, found {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 32, 32, 3)`` uint8 images and ``(N,)`` labels from one CIFAR batch file."""
    batch = _as_str_keys(load_restricted_pickle(path))
    data = batch.get("data")
    labels = batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError("'data' is not an (N, 3072) uint8 array")
    labels_arr = np.asarray(labels if labels is not None else [], dtype=np.int64).reshape(-1)
    if labels_arr.shape != (data.shape[0],):
        raise ValueError(f"expected {data.shape[0]} labels, found {labels_arr.shape[0]}")
    # Rows are the red, green and blue 32x32 planes one after the other (row-major).
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels_arr


def _cifar_classes(meta: Path | None) -> list[str] | None:
    if meta is None:
        return None
    try:
        content = _as_str_keys(load_restricted_pickle(meta))
    except _PICKLE_ERRORS as error:
        raise DataError(f"cannot read CIFAR class names from {meta}: {error}") from error
    names = content.get("label_names", content.get("fine_label_names"))
    if names is None:
        return None
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


@register_source("cifar", detect=lambda spec: _cifar_files(spec) is not None, inputs=_cifar_inputs)
def cifar_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> InMemoryDataset:
    """CIFAR-10/100 python-pickle directory ('<dir>' = train batches, '<dir>:test' = test batch)."""
    found = _cifar_files(spec)
    if found is None:
        raise DataError(
            f"{spec!r} is not a CIFAR pickle directory (expected data_batch_1..5, test_batch and "
            f"batches.meta, or CIFAR-100's train, test and meta). {SPEC_FORMS}"
        )
    files, meta, _ = found
    if not files:
        raise DataError(f"no batch files for {spec!r}: the directory lacks the requested split")
    classes = _cifar_classes(meta)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    collected = Collector(strict)
    for path in files:
        if max_samples is not None and len(ids) >= max_samples:
            break
        try:
            batch_images, batch_labels = _read_cifar_batch(path)
        except _PICKLE_ERRORS as error:
            collected.skip(path.name, error_reason(error))
            continue
        take = len(batch_labels) if max_samples is None else min(len(batch_labels), max_samples - len(ids))
        images.append(batch_images[:take])
        labels.append(batch_labels[:take])
        ids.extend(f"{path.name}/{i}" for i in range(take))
    return build_dataset(
        np.concatenate(images) if images else np.zeros((0, 32, 32, 3), np.uint8),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        ids,
        source=canonical_source("cifar", strip_kind(spec, "cifar")),
        classes=classes,
        skipped=collected.skipped,
        image_size=image_size,
    )


__all__ = ["RestrictedUnpickler", "cifar_source", "load_restricted_pickle"]
