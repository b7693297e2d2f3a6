"""Batched, on-device, per-sample-random augmentations, the view policies built from them, and the
deterministic input transform of each modality.

Importing this package registers every view policy in :data:`VIEW_POLICIES`; the batched image ops
are in :mod:`selfsup.augment.functional`, the vector ones in :mod:`selfsup.augment.vector`.
"""

from selfsup.augment import audio as _audio  # noqa: F401  (registers the audio view policies)
from selfsup.augment import image_masks as _image_masks  # noqa: F401  (registers the masking policies)
from selfsup.augment import multicrop as _multicrop  # noqa: F401  (registers dino, swav, dinov2)
from selfsup.augment import policies as _policies  # noqa: F401  (registers the image view policies)
from selfsup.augment import supervised as _supervised  # noqa: F401  (registers the supervised policies)
from selfsup.augment import vector as _vector  # noqa: F401  (registers the vector view policies)
from selfsup.augment.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VIEW_POLICIES,
    ImageTransform,
    InputTransform,
    ViewPolicy,
    to_normalized_float,
)
from selfsup.augment.policies import MultiViewPolicy, ViewAugmentation
from selfsup.augment.vector import VectorNoisePolicy, VectorTransform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VIEW_POLICIES",
    "ImageTransform",
    "InputTransform",
    "MultiViewPolicy",
    "VectorNoisePolicy",
    "VectorTransform",
    "ViewAugmentation",
    "ViewPolicy",
    "to_normalized_float",
]
