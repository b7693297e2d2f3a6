"""Batched, on-device, per-sample-random augmentations and the view policies built from them.

Importing this package registers every view policy in :data:`VIEW_POLICIES`
(``VIEW_POLICIES.create("simclr", size=32)``); the batched ops themselves are in
:mod:`selfsup.augment.functional`.
"""

from selfsup.augment import policies as _policies  # noqa: F401  (registers the view policies)
from selfsup.augment.base import IMAGENET_MEAN, IMAGENET_STD, VIEW_POLICIES, ViewPolicy, to_normalized_float
from selfsup.augment.policies import MultiViewPolicy, ViewAugmentation

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VIEW_POLICIES",
    "MultiViewPolicy",
    "ViewAugmentation",
    "ViewPolicy",
    "to_normalized_float",
]
