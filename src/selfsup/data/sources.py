"""Image data specs: which source a spec string names, and :func:`load_images`, the entry point.

A spec string goes in and an :class:`ImageDataset` (decoded once, uint8) comes out, through the
disk cache of :mod:`selfsup.data.cache` when one is given. Each source lives in its own module
(:mod:`~selfsup.data.digits`, :mod:`~selfsup.data.cifar`, :mod:`~selfsup.data.arrays`,
:mod:`~selfsup.data.shards`, :mod:`~selfsup.data.folder`) and registers itself in ``SOURCES``
with :func:`register_source`; how images are decoded is described in :mod:`selfsup.data.decode`.

Spec forms, auto-detected in this order (an explicit ``kind:`` prefix such as ``folder:/x`` or
``shards:/x/*.tar`` skips detection):

``digits``, ``digits:train``, ``digits:test``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download). Split: per class,
    a ``numpy.random.RandomState(0)`` permutation puts round(20%) of that class in ``test`` and the
    rest in ``train`` (stratified, identical on every machine; 1,438 / 359 images).
``cifar`` — ``<dir>``, ``<dir>:train``, ``<dir>:test``, ``<dir>/test_batch``
    the python-pickle release of CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100
    (``cifar-100-python``, fine labels), read with a restricted unpickler that only rebuilds numpy arrays.
``arrays`` — ``x.npy`` / ``x.npz``
    ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4}; uint8, integers in
    0..255, or floats in [0, 1]. ``.npz`` keys: ``images`` (or ``x``/``X``/``data``), optional
    ``labels`` (or ``y``/``targets``) and ``classes``. Loaded with ``allow_pickle=False``.
``shards`` — ``a.tar``, ``a.tar,b.tar``, ``/data/train-*.tar``
    WebDataset-style tar shards: members ``<key>.<jpg|png|...>`` with an optional ``<key>.cls``
    (ASCII class index), streamed without extracting; a ``classes.txt`` beside the (first) shard
    names the classes.
``folder`` — a directory
    images found recursively (hidden files and folders ignored). If every direct sub-folder holds
    images and no image sits at the top level, the sorted sub-folder names are the classes;
    otherwise every label is -1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from selfsup.data import cache as _cache
from selfsup.data.base import SOURCES, DataError, ImageDataset

SPEC_FORMS = (
    "A data spec is one of: 'digits', 'digits:train', 'digits:test' (bundled 8x8 digits); "
    "a folder of images (class sub-folders give labels); tar shards 'a.tar', 'a.tar,b.tar' or a glob "
    "'/data/train-*.tar'; a CIFAR pickle directory 'cifar-10-batches-py' (append ':test' for the test "
    "batch); an array file 'x.npy' or 'x.npz'. Prefix 'KIND:' to skip auto-detection "
    "(kinds: digits, cifar, arrays, shards, folder)."
)

# Detection order: the cheap exact forms first, the generic "any directory" last.
_DETECTION_ORDER = ("digits", "cifar", "arrays", "shards", "folder")

F = TypeVar("F", bound=Callable[..., ImageDataset])


def register_source(
    name: str, *, detect: Callable[[str], bool], inputs: Callable[[str], list[Path]]
) -> Callable[[F], F]:
    """Register a source factory in SOURCES with its ``detect(spec)`` and ``inputs(spec)`` helpers.

    ``inputs`` lists the files a spec reads, which is what the disk cache key is made of.
    """

    def decorator(factory: F) -> F:
        factory.detect = detect  # type: ignore[attr-defined]
        factory.inputs = inputs  # type: ignore[attr-defined]
        SOURCES.register(name)(factory)
        return factory

    return decorator


def strip_kind(spec: str, kind: str) -> str:
    """Drop an explicit ``kind:`` prefix so factories accept the spec with or without it."""
    return spec[len(kind) + 1 :] if spec.startswith(kind + ":") else spec


def spec_path(spec: str, kind: str) -> Path:
    """The path a ``kind`` spec names, without its ``kind:`` prefix and with ``~`` expanded."""
    return Path(strip_kind(spec, kind)).expanduser()


def canonical_source(kind: str, rest: str) -> str:
    """The ``kind:rest`` string stored in ``ImageDataset.source``; loading it gives the same data."""
    return f"{kind}:{rest}" if rest else kind


def resolve_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(kind, rest)``: an explicit registered ``kind:`` prefix, else auto-detection.

    Raises DataError listing the accepted forms when nothing recognises the spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data spec {spec!r}. {SPEC_FORMS}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if sep and kind in SOURCES:
        return kind, rest
    if spec == "digits":
        return "digits", ""
    others = [n for n in SOURCES.names() if n not in _DETECTION_ORDER]
    for name in (*_DETECTION_ORDER, *others):
        if name in SOURCES:
            detect = getattr(SOURCES.get(name), "detect", None)
            if detect is not None and detect(spec):
                return name, spec
    if Path(spec).expanduser().exists():
        raise DataError(f"cannot tell what kind of data {spec!r} is. {SPEC_FORMS}")
    raise DataError(f"{spec!r} does not exist. {SPEC_FORMS}")


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{name} must be a positive integer or None, got {value!r}")


def load_images(
    spec: str,
    *,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Load an image data set from ``spec`` (see the module docstring for the forms) as uint8 tensors.

    Args:
        spec: what to load, e.g. ``"digits:train"``, ``"/data/imgs"``, ``"/data/train-*.tar"``.
        image_size: resize the shorter side to this and centre-crop a square; None keeps the
            native size, which must then be the same for every image.
        max_samples: stop after this many readable samples (tar shards stop streaming there).
        strict: raise DataError on the first unreadable input instead of skipping it.
        cache_dir: when given, decoded data is stored there (safetensors) and reused while the
            input files are unchanged.

    Returns:
        An ImageDataset: ``images`` ``(N, 3, H, W)`` uint8, ``labels`` ``(N,)`` int64 (-1 = unknown).
    """
    _check_positive("image_size", image_size)
    _check_positive("max_samples", max_samples)
    kind, rest = resolve_spec(spec)
    factory = SOURCES.get(kind)
    key = None
    if cache_dir is not None:
        inputs: Callable[[str], list[Path]] | None = getattr(factory, "inputs", None)
        files = inputs(rest) if inputs is not None else []
        key = _cache.cache_key(kind, rest, files, image_size=image_size, max_samples=max_samples)
        cached = _cache.load_cached(cache_dir, key)
        if cached is not None:
            if strict and cached.skipped:
                sample_id, reason = cached.skipped[0]
                raise DataError(
                    f"cannot read {sample_id}: {reason}. (strict=True; recorded in the data cache "
                    f"{_cache.cache_path(cache_dir, key)})"
                )
            return cached
    dataset = factory(rest, image_size=image_size, max_samples=max_samples, strict=strict)
    if cache_dir is not None and key is not None:
        _cache.save_cached(cache_dir, key, dataset)
    return dataset


def describe(dataset: ImageDataset) -> str:
    """One line summarising a data set, for logs and ``selfsup list``."""
    h, w = dataset.image_size
    parts = [f"{len(dataset)} images {h}x{w} from {dataset.source}"]
    if dataset.classes is not None:
        parts.append(f"{len(dataset.classes)} classes")
    parts.append(f"{dataset.labeled_fraction:.0%} labelled")
    if dataset.skipped:
        parts.append(f"{len(dataset.skipped)} skipped")
    return ", ".join(parts)


__all__ = [
    "SPEC_FORMS",
    "canonical_source",
    "describe",
    "load_images",
    "register_source",
    "resolve_spec",
    "spec_path",
    "strip_kind",
]
