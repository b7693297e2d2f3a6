"""The ``arrays`` source: images (and optional labels and class names) stored in a .npy or .npz file.

Images are ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4}; uint8, integers
in 0..255, or floats in [0, 1] (see :func:`~selfsup.data.decode.to_nhwc_uint8`). ``.npz`` keys:
``images`` (or ``x``/``X``/``data``), optional ``labels`` (or ``y``/``targets``) and ``classes``.
Files are loaded with ``allow_pickle=False``, so reading one never runs code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selfsup.data.assemble import build_dataset
from selfsup.data.base import UNKNOWN_LABEL, DataError, ImageDataset
from selfsup.data.decode import to_nhwc_uint8
from selfsup.data.sources import SPEC_FORMS, canonical_source, register_source, spec_path

_IMAGE_KEYS = ("images", "x", "X", "data")
_LABEL_KEYS = ("labels", "y", "targets")


def _pick(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in keys), None)


@register_source(
    "arrays",
    detect=lambda spec: spec_path(spec, "arrays").suffix.lower() in (".npy", ".npz"),
    inputs=lambda spec: [spec_path(spec, "arrays")],
)
def arrays_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> ImageDataset:
    """Images in a .npy file, or a .npz with 'images' (or x/X/data) and optional 'labels' (or y/targets)."""
    path = spec_path(spec, "arrays")
    if not path.is_file():
        raise DataError(f"array file {str(path)!r} does not exist. {SPEC_FORMS}")
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    try:
        if path.suffix.lower() == ".npy":
            # mmap: with max_samples only the first rows are ever read from disk.
            images = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                image_key = _pick(npz.files, _IMAGE_KEYS)
                if image_key is None:
                    raise DataError(
                        f"{path} has arrays {npz.files}; name the images one of {list(_IMAGE_KEYS)} "
                        f"(and the labels one of {list(_LABEL_KEYS)})"
                    )
                images = npz[image_key]
                label_key = _pick(npz.files, _LABEL_KEYS)
                if label_key is not None:
                    labels = npz[label_key]
                if "classes" in npz.files:
                    classes = [str(c) for c in npz["classes"].reshape(-1)]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"cannot read array file {path}: {error}") from error
    if images.ndim not in (3, 4):
        raise DataError(
            f"the images in {path.name} have shape {images.shape}; "
            "expected (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    total = images.shape[0]
    if labels is not None:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape != (total,) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"labels in {path.name} must be a ({total},) integer array (one per image), "
                f"got {labels.shape} {labels.dtype}"
            )
        if total and labels.min() < UNKNOWN_LABEL:
            raise DataError(f"labels in {path.name} must be >= 0 (or -1 for unknown), found {labels.min()}")
    images = to_nhwc_uint8(np.asarray(images[:max_samples]), f"the images in {path.name}")
    n = images.shape[0]
    labels = np.full(n, UNKNOWN_LABEL, dtype=np.int64) if labels is None else labels[:n]
    return build_dataset(
        images,
        labels.astype(np.int64),
        [str(i) for i in range(n)],
        source=canonical_source("arrays", str(path)),
        classes=classes,
        skipped=[],
        image_size=image_size,
    )


__all__ = ["arrays_source"]
