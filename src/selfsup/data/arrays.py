"""The ``arrays`` source: images or fixed-length numeric vectors in a ``.npy`` or ``.npz`` file.

What the array holds is told apart by its rank (never by guessing from values):

* **vectors** — a 2-D array ``(N, D)`` of any numeric dtype (stored as float32), or an ``.npz`` with
  ``features``. Rows with NaN or infinite values are skipped and counted (``strict`` makes them an
  error): impute missing values before saving.
* **images** — ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4}; uint8, integers in
  0..255, or floats in [0, 1] (see :func:`~selfsup.data.decode.to_nhwc_uint8`).

``.npz`` keys: ``features`` (vectors) or ``images`` (or ``x``/``X``/``data``, read by rank), optional
``labels`` (or ``y``/``targets``), ``classes`` (class names) and, for vectors, ``columns`` (feature
names). Files are loaded with ``allow_pickle=False``, so reading one never runs code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from selfsup.data.assemble import build_dataset
from selfsup.data.base import UNKNOWN_LABEL, DataError, DataInfo, InMemoryDataset, check_labels
from selfsup.data.decode import to_nhwc_uint8
from selfsup.data.sources import SPEC_FORMS, canonical_source, register_source, spec_path

_VECTOR_KEYS = ("features",)
_DATA_KEYS = ("images", "x", "X", "data")
_LABEL_KEYS = ("labels", "y", "targets")


def _pick(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in keys), None)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None]:
    """(data, labels, classes, columns) from a .npy or .npz file, without unpickling."""
    if path.suffix.lower() == ".npy":
        # mmap: with max_samples only the first rows are ever read from disk.
        return np.load(path, mmap_mode="r", allow_pickle=False), None, None, None
    with np.load(path, allow_pickle=False) as npz:
        key = _pick(npz.files, (*_VECTOR_KEYS, *_DATA_KEYS))
        if key is None:
            raise DataError(
                f"{path} has arrays {npz.files}; name the data 'features' (vectors) or 'images' "
                f"(or one of {list(_DATA_KEYS[1:])}), and the labels one of {list(_LABEL_KEYS)}"
            )
        data = npz[key]
        if key in _VECTOR_KEYS and data.ndim != 2:
            raise DataError(f"'features' in {path.name} must be a 2-D (N, D) array, got shape {data.shape}")
        label_key = _pick(npz.files, _LABEL_KEYS)
        labels = npz[label_key] if label_key is not None else None
        classes = [str(c) for c in npz["classes"].reshape(-1)] if "classes" in npz.files else None
        columns = [str(c) for c in npz["columns"].reshape(-1)] if "columns" in npz.files else None
    return data, labels, classes, columns


def _check_label_array(labels: np.ndarray, total: int, name: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (total,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels in {name} must be a ({total},) integer array (one per sample), "
            f"got {labels.shape} {labels.dtype}"
        )
    return labels.astype(np.int64)


def vector_dataset(
    data: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    classes: list[str] | None,
    columns: list[str] | None,
    max_samples: int | None,
    strict: bool,
) -> InMemoryDataset:
    """An ``(N, D)`` float32 vector data set; rows with non-finite values are skipped (or, strict, raise)."""
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise DataError(f"vectors in {source!r} have dtype {data.dtype}; expected numbers")
    if data.shape[1] == 0:
        raise DataError(f"vectors in {source!r} have no features (shape {data.shape})")
    if columns is not None and len(columns) != data.shape[1]:
        raise DataError(f"{source!r} names {len(columns)} columns for {data.shape[1]} features")
    values = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(values).all(axis=1)
    skipped = [(str(i), "NaN or infinite value") for i in np.flatnonzero(~finite)]
    if skipped and strict:
        raise DataError(
            f"row {skipped[0][0]} of {source!r} has a NaN or infinite value ({len(skipped)} such rows); "
            "impute missing values first (strict=True; without it such rows are skipped and counted)"
        )
    keep = np.flatnonzero(finite)[:max_samples]
    if keep.size == 0:
        raise DataError(
            f"no usable rows in {source!r}" + (f": all {len(skipped)} have NaN/inf" if skipped else "")
        )
    inputs = torch.from_numpy(np.ascontiguousarray(values[keep]))
    label_tensor = torch.from_numpy(labels[keep].copy())
    check_labels(label_tensor, None if classes is None else tuple(classes), source)
    info = DataInfo(
        modality="vector",
        sample_shape=(int(inputs.shape[1]),),
        dtype="float32",
        classes=None if classes is None else tuple(classes),
        columns=None if columns is None else tuple(columns),
    )
    return InMemoryDataset(
        inputs, label_tensor, [str(i) for i in keep], info=info, source=source, skipped=skipped
    )


@register_source(
    "arrays",
    detect=lambda spec: spec_path(spec, "arrays").suffix.lower() in (".npy", ".npz"),
    inputs=lambda spec: [spec_path(spec, "arrays")],
)
def arrays_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> InMemoryDataset:
    """A .npy/.npz file: (N, D) vectors ('features') or images ('images', x/X/data), optional 'labels'."""
    path = spec_path(spec, "arrays")
    if not path.is_file():
        raise DataError(f"array file {str(path)!r} does not exist. {SPEC_FORMS}")
    try:
        data, labels, classes, columns = _read(path)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"cannot read array file {path}: {error}") from error
    total = data.shape[0] if data.ndim else 0
    labels = (
        np.full(total, UNKNOWN_LABEL, dtype=np.int64)
        if labels is None
        else _check_label_array(labels, total, path.name)
    )
    if labels.size and labels.min() < UNKNOWN_LABEL:
        raise DataError(f"labels in {path.name} must be >= 0 (or -1 for unknown), found {labels.min()}")
    source = canonical_source("arrays", str(path))
    if data.ndim == 2:
        if image_size is not None:
            raise DataError(
                f"{path.name} holds (N, D) vectors, not images: data.image_size does not apply; unset it"
            )
        return vector_dataset(
            data,
            labels,
            source=source,
            classes=classes,
            columns=columns,
            max_samples=max_samples,
            strict=strict,
        )
    if data.ndim not in (3, 4):
        raise DataError(
            f"the array in {path.name} has shape {data.shape}; expected (N, D) vectors or images "
            "(N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    images = to_nhwc_uint8(np.asarray(data[:max_samples]), f"the images in {path.name}")
    n = images.shape[0]
    return build_dataset(
        images,
        labels[:n],
        [str(i) for i in range(n)],
        source=source,
        classes=classes,
        skipped=[],
        image_size=image_size,
    )


__all__ = ["arrays_source", "vector_dataset"]
