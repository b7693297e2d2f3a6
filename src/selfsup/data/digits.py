"""The ``digits`` source: scikit-learn's bundled 8x8 handwritten digits and their fixed train/test split.

No download: the 1,797 images ship with scikit-learn. The split is stratified and identical on
every machine (see :func:`digits_split_indices`): 1,438 train / 359 test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup.data.assemble import build_dataset
from selfsup.data.base import DataError, InMemoryDataset
from selfsup.data.decode import to_nhwc_uint8
from selfsup.data.sources import canonical_source, register_source, strip_kind

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def digits_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of the fixed stratified 80/20 split of ``labels`` (``split`` = train/test/all).

    For each class, ``RandomState(DIGITS_SPLIT_SEED)`` permutes that class's indices (RandomState's
    stream is frozen by numpy's compatibility policy, so the split never changes) and the first
    ``round(0.2 * count)`` go to test.
    """
    if split in ("", "all"):
        return np.arange(len(labels))
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[: round(DIGITS_TEST_FRACTION * len(members))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _digits_inputs(spec: str) -> list[Path]:
    try:
        from importlib.resources import files

        path = Path(str(files("sklearn.datasets.data") / "digits.csv.gz"))
    except (ImportError, TypeError, ModuleNotFoundError):
        return []
    return [path] if path.is_file() else []


@register_source("digits", detect=lambda spec: spec == "digits", inputs=_digits_inputs)
def digits_source(
    spec: str = "", *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> InMemoryDataset:
    """scikit-learn's bundled 8x8 handwritten digits ('digits', 'digits:train', 'digits:test')."""
    split = strip_kind(spec, "digits")
    split = "" if split == "digits" else split
    if split not in ("", "all", "train", "test"):
        raise DataError(f"unknown digits split {split!r}: use 'digits', 'digits:train' or 'digits:test'")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = digits_split_indices(labels, split)
    if max_samples is not None:
        index = index[:max_samples]
    # Pixel values are counts 0..16 (ink in 4x4 blocks of the original 32x32 bitmaps); 16 -> 255.
    grey = np.rint(np.asarray(bunch.images)[index] * (255.0 / 16.0)).astype(np.uint8)
    return build_dataset(
        to_nhwc_uint8(grey, "the digits"),
        labels[index],
        [f"digits/{i}" for i in index],
        source=canonical_source("digits", split),
        classes=[str(c) for c in range(10)],
        skipped=[],
        image_size=image_size,
    )


__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "digits_source", "digits_split_indices"]
