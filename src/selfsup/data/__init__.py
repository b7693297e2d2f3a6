"""Data: sources that decode image data sets once into uint8 tensors, and their disk cache.

Importing this package registers every image source in :data:`SOURCES`
(``digits``, ``cifar``, ``arrays``, ``shards``, ``folder``); :func:`load_images` is the entry point.
"""

# The source modules are imported for their side effect: each registers its factory in SOURCES.
from selfsup.data import arrays, cifar, digits, folder, shards  # noqa: F401
from selfsup.data.base import SOURCES, UNKNOWN_LABEL, DataError, ImageDataset
from selfsup.data.cache import CacheWarning
from selfsup.data.decode import IMAGE_EXTENSIONS
from selfsup.data.sources import SPEC_FORMS, describe, load_images, resolve_spec

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "SPEC_FORMS",
    "UNKNOWN_LABEL",
    "CacheWarning",
    "DataError",
    "ImageDataset",
    "describe",
    "load_images",
    "resolve_spec",
]
