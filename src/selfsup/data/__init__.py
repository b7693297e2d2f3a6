"""Data: the modality-neutral contract (:class:`DataInfo`, :class:`Batch`, :class:`Dataset`), the
sources that load data sets from spec strings, and their caches.

Importing this package registers every source in :data:`SOURCES` (``digits``, ``cifar``,
``arrays``, ``manifest``, ``shards``, ``folder``); :func:`load_dataset` is the entry point.
"""

# The source modules are imported for their side effect: each registers its factory in SOURCES.
from selfsup.data import arrays, audio, cifar, digits, folder, shards  # noqa: F401
from selfsup.data.audio import AudioDataset, clip_lengths
from selfsup.data.audio_decode import AUDIO_EXTENSIONS
from selfsup.data.base import (
    SOURCES,
    UNKNOWN_LABEL,
    Batch,
    DataError,
    DataInfo,
    Dataset,
    InMemoryDataset,
    SubsetDataset,
    describe,
)
from selfsup.data.cache import CacheWarning
from selfsup.data.decode import IMAGE_EXTENSIONS
from selfsup.data.sources import SPEC_FORMS, load_dataset, resolve_spec

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "SPEC_FORMS",
    "UNKNOWN_LABEL",
    "AudioDataset",
    "Batch",
    "CacheWarning",
    "DataError",
    "DataInfo",
    "Dataset",
    "InMemoryDataset",
    "SubsetDataset",
    "clip_lengths",
    "describe",
    "load_dataset",
    "resolve_spec",
]
