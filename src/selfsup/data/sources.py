"""Data specs: which source a spec string names, and :func:`load_dataset`, the entry point.

A spec string goes in and a :class:`~selfsup.data.base.Dataset` comes out: decoded once into memory
(through the disk cache of :mod:`selfsup.data.cache` when one is given), or, for folders and tar
shards too large for the memory budget, a streaming data set that decodes samples on demand
(:mod:`selfsup.data.stream`). Each source lives in its own module
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
    vectors: a 2-D ``(N, D)`` numeric array, or an ``.npz`` with ``features``; images: ``(N, H, W)``,
    ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4}; uint8, integers in 0..255, or floats in
    [0, 1]. ``.npz`` keys: ``features`` / ``images`` (or ``x``/``X``/``data``), optional ``labels``
    (or ``y``/``targets``), ``classes`` and ``columns``. Loaded with ``allow_pickle=False``.
``shards`` — ``a.tar``, ``a.tar,b.tar``, ``/data/train-*.tar``
    WebDataset-style tar shards: members ``<key>.<jpg|png|...>`` with an optional ``<key>.cls``
    (ASCII class index), streamed without extracting; a ``classes.txt`` beside the (first) shard
    names the classes.
``manifest`` — ``metadata.csv``, ``clips.tsv``, ``metadata.csv?label=digit&split=train``
    audio clips listed in a CSV/TSV file (a ``path`` column, relative to the manifest, or members of
    the tar archives beside it); ``label=COLUMN`` names the labels, any other ``COLUMN=VALUE`` keeps the
    matching rows (:mod:`selfsup.data.audio_catalog`).
``folder`` — a directory
    images or audio files (wav, flac, ogg, mp3) found recursively (hidden files and folders ignored;
    a folder holding both is an error). If every direct sub-folder holds such files and none sits at
    the top level, the sorted sub-folder names are the classes; otherwise every label is -1.

Audio (folders, shards and manifests of audio files) is decoded to mono int16 at ``sample_rate``
(resampled with soxr); clips shorter than ``min_seconds`` are skipped (:mod:`selfsup.data.audio_decode`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from selfsup.data import cache as _cache
from selfsup.data.base import SOURCES, DataError, Dataset, InMemoryDataset

if TYPE_CHECKING:
    from selfsup.data.stream import StreamingImageDataset

SPEC_FORMS = (
    "A data spec is one of: 'digits', 'digits:train', 'digits:test' (bundled 8x8 digits); "
    "a folder of images or audio files (class sub-folders give labels); tar shards 'a.tar', 'a.tar,b.tar' "
    "or a glob '/data/train-*.tar' (image or audio members); an audio manifest 'metadata.csv' or "
    "'metadata.csv?label=COLUMN&split=train'; a CIFAR pickle directory 'cifar-10-batches-py' (append "
    "':test' for the test batch); an array file 'x.npy' or 'x.npz' (2-D arrays are vectors, 3-D/4-D "
    "images). Prefix 'KIND:' to skip auto-detection "
    "(kinds: digits, cifar, arrays, manifest, shards, folder)."
)

# Detection order: the cheap exact forms first, the generic "any directory" last.
_DETECTION_ORDER = ("digits", "cifar", "arrays", "manifest", "shards", "folder")

F = TypeVar("F", bound=Callable[..., InMemoryDataset])


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
    """The ``kind:rest`` string stored in ``Dataset.source``; loading it gives the same data."""
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


# The sources that can stream (random access to individual encoded samples); manifests are audio only.
STREAMABLE = ("shards", "folder", "manifest")
LOADING_MODES = ("auto", "memory", "stream")


def memory_limit_bytes(limit_gb: float | None) -> int:
    """The decoded size above which ``loading="auto"`` streams: ``limit_gb``, else a quarter of RAM."""
    if limit_gb is not None:
        return int(limit_gb * 2**30)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        total = 8 * 2**30
    return total // 4


def load_dataset(
    spec: str,
    *,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    loading: str = "auto",
    memory_limit_gb: float | None = None,
    sample_rate: int = 16000,
    min_seconds: float = 0.1,
) -> Dataset:
    """Load a data set from ``spec`` (see the module docstring for the forms).

    Args:
        spec: what to load, e.g. ``"digits:train"``, ``"/data/imgs"``, ``"/data/train-*.tar"``, ``"x.npy"``;
            several specs joined by ``" + "`` load as one data set (:mod:`selfsup.data.concat`), e.g.
            ``"ljspeech/clips.tar + fsdd/metadata.csv?split=train"``.
        image_size: resize the shorter side to this and centre-crop a square; None keeps the
            native size, which must then be the same for every image.
        max_samples: stop after this many readable samples (the first ones in source order).
        strict: raise DataError on the first unreadable input instead of skipping it.
        cache_dir: decoded in-memory data is stored there (safetensors) and reused while the input
            files are unchanged; compressed shards are decompressed there once for streaming.
        loading: ``"memory"`` decodes everything once; ``"stream"`` decodes on demand (folders and
            tar shards only); ``"auto"`` streams folders and uncompressed shards whose decoded size
            exceeds the memory limit. Compressed ``.tar.gz`` shards stay in memory under ``auto``:
            streaming them needs a decompressed copy (``loading="stream"`` makes one in ``cache_dir``).
        memory_limit_gb: the decoded size above which ``auto`` streams; None: a quarter of the RAM.
        sample_rate: audio only: clips are resampled to this rate (Hz) with soxr.
        min_seconds: audio only: shorter clips are skipped (counted in ``skipped``).

    Returns:
        A :class:`~selfsup.data.base.Dataset`: e.g. images ``(N, 3, H, W)`` uint8, vectors
        ``(N, D)`` float32 or audio clips (:class:`~selfsup.data.audio.AudioDataset`: int16 batches
        ``(B, T)`` padded, with ``lengths``), labels ``(N,)`` int64 (-1 = unknown).
    """
    _check_positive("image_size", image_size)
    _check_positive("max_samples", max_samples)
    if loading not in LOADING_MODES:
        raise DataError(f"data.loading must be one of {', '.join(LOADING_MODES)}, got {loading!r}")
    from selfsup.data.concat import concat_datasets, split_spec

    parts = split_spec(spec) if isinstance(spec, str) else [spec]
    if len(parts) > 1:
        options = dict(image_size=image_size, strict=strict, cache_dir=cache_dir, sample_rate=sample_rate)
        options.update(loading="memory" if loading == "auto" else loading, memory_limit_gb=memory_limit_gb)
        loaded = [load_dataset(part, **options, min_seconds=min_seconds) for part in parts]
        joined = concat_datasets(loaded, parts, source=" + ".join(p.source for p in loaded))
        if max_samples is not None and max_samples < len(joined):
            return joined.subset(torch.arange(max_samples))
        return joined
    kind, rest = resolve_spec(spec)
    from selfsup.data import audio_catalog, audio_decode

    if kind in STREAMABLE and audio_catalog.source_modality(kind, rest) == "audio":
        audio_decode.check_audio_options(sample_rate, min_seconds)
        return _load_audio(
            kind, rest, sample_rate, min_seconds, max_samples, strict, cache_dir, loading, memory_limit_gb
        )
    if loading == "stream" and kind not in STREAMABLE:
        raise DataError(
            f"{spec!r} is a {kind} source, which cannot stream; data.loading=stream needs a folder or tar "
            "shards (small sources load into memory: use data.loading=auto)"
        )
    if kind in STREAMABLE and loading != "memory":
        streamed = _open_streaming(kind, rest, image_size, max_samples, strict, cache_dir, loading)
        if streamed is not None:
            if loading == "stream" or streamed.estimated_bytes() > memory_limit_bytes(memory_limit_gb):
                return streamed
            streamed.close()
    return _load_in_memory(kind, rest, image_size, max_samples, strict, cache_dir)


def _load_audio(
    kind: str,
    rest: str,
    sample_rate: int,
    min_seconds: float,
    max_samples: int | None,
    strict: bool,
    cache_dir: str | Path | None,
    loading: str,
    memory_limit_gb: float | None,
) -> Dataset:
    """An audio source: streamed (:mod:`selfsup.data.audio_stream`) when asked or when its decoded size
    (from the clips' headers) exceeds the memory limit, else decoded once (through the disk cache)."""
    from selfsup.data import audio, audio_catalog, audio_stream
    from selfsup.data.tar_index import is_compressed_shard

    cache = None if cache_dir is None else Path(cache_dir).expanduser()
    source = canonical_source(kind, rest)
    options = {"sample_rate": sample_rate, "min_seconds": float(min_seconds)}
    stream_compressed = loading == "stream" and kind == "shards"
    catalog = audio_catalog.audio_catalog(kind, rest, decompress_to=cache if stream_compressed else None)
    compressed = any(is_compressed_shard(Path(p)) for p in catalog.files)
    if loading != "memory" and not (compressed and loading == "auto"):
        streamed = audio_stream.open_streaming_audio(
            catalog,
            source=source,
            sample_rate=sample_rate,
            min_seconds=min_seconds,
            max_samples=max_samples,
            strict=strict,
            fingerprint=_cache.cache_key(
                f"stream-{kind}", rest, catalog.files, image_size=None, max_samples=max_samples, extra=options
            ),
            cache_dir=cache,
        )
        if loading == "stream" or streamed.estimated_bytes() > memory_limit_bytes(memory_limit_gb):
            return streamed
        streamed.close()
    key = _cache.cache_key(kind, rest, catalog.files, image_size=None, max_samples=max_samples, extra=options)
    if cache_dir is not None:
        cached = _cache.load_cached(cache_dir, key)
        if cached is not None:
            _raise_cached_strict(strict, cached, cache_dir, key)
            return cached
    dataset = audio.decode_catalog(
        catalog,
        source=source,
        sample_rate=sample_rate,
        min_seconds=min_seconds,
        max_samples=max_samples,
        strict=strict,
    )
    dataset._given_fingerprint = key  # the files and options determine the decoded clips
    if cache_dir is not None:
        _cache.save_cached(cache_dir, key, dataset)
    return dataset


def _raise_cached_strict(strict: bool, cached: Dataset, cache_dir: str | Path, key: str) -> None:
    if strict and cached.skipped:
        sample_id, reason = cached.skipped[0]
        raise DataError(
            f"cannot read {sample_id}: {reason}. (strict=True; recorded in the data cache "
            f"{_cache.cache_path(cache_dir, key)})"
        )


def _open_streaming(
    kind: str,
    rest: str,
    image_size: int | None,
    max_samples: int | None,
    strict: bool,
    cache_dir: str | Path | None,
    loading: str,
) -> StreamingImageDataset | None:
    """A streaming data set for ``rest``; None under ``auto`` for compressed shards (kept in memory)."""
    from selfsup.data import stream
    from selfsup.data.shards import resolve_shards
    from selfsup.data.tar_index import is_compressed_shard

    source = canonical_source(kind, rest)
    if kind == "folder":
        return stream.open_streaming_folder(
            spec_path(rest, "folder"),
            source=source,
            image_size=image_size,
            max_samples=max_samples,
            strict=strict,
        )
    shards = resolve_shards(rest)
    if loading == "auto" and any(is_compressed_shard(p) for p in shards):
        return None
    return stream.open_streaming_shards(
        shards,
        source=source,
        image_size=image_size,
        max_samples=max_samples,
        strict=strict,
        cache_dir=None if cache_dir is None else Path(cache_dir).expanduser(),
    )


def _load_in_memory(
    kind: str,
    rest: str,
    image_size: int | None,
    max_samples: int | None,
    strict: bool,
    cache_dir: str | Path | None,
) -> Dataset:
    factory = SOURCES.get(kind)
    inputs: Callable[[str], list[Path]] | None = getattr(factory, "inputs", None)
    files = inputs(rest) if inputs is not None else []
    key = _cache.cache_key(kind, rest, files, image_size=image_size, max_samples=max_samples)
    if cache_dir is not None:
        cached = _cache.load_cached(cache_dir, key)
        if cached is not None:
            _raise_cached_strict(strict, cached, cache_dir, key)
            return cached
    dataset = factory(rest, image_size=image_size, max_samples=max_samples, strict=strict)
    if not isinstance(dataset, InMemoryDataset):  # a source with a data set type of its own
        return dataset
    # The files and options determine the decoded data: the same key names its feature caches.
    dataset = InMemoryDataset(
        dataset.inputs,
        dataset.labels,
        dataset.ids,
        info=dataset.info,
        source=dataset.source,
        skipped=dataset.skipped,
        fingerprint=key,
    )
    if cache_dir is not None:
        _cache.save_cached(cache_dir, key, dataset)
    return dataset


__all__ = [
    "LOADING_MODES",
    "SPEC_FORMS",
    "STREAMABLE",
    "canonical_source",
    "load_dataset",
    "memory_limit_bytes",
    "register_source",
    "resolve_spec",
    "spec_path",
    "strip_kind",
]
