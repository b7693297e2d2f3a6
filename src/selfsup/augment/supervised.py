"""View policies for supervised training (fine-tuning): one view, geometric changes only.

``supervised`` (images): a random resized crop and a horizontal flip, no colour changes, as the
fine-tuning recipes of MAE / BEiT without their RandAugment and mixing (which need more epochs than
the few-label regime gives). ``vector_supervised`` (vectors): the standardized vectors plus light
Gaussian noise (std 0.05 of a standardized column; 0 turns it off).
"""

from __future__ import annotations

from collections.abc import Sequence

from selfsup.augment.base import VIEW_POLICIES, ImageTransform
from selfsup.augment.policies import DEFAULT_CROP_RATIO, MultiViewPolicy, ViewAugmentation, _common
from selfsup.augment.vector import VectorNoisePolicy, VectorTransform
from selfsup.data.base import DataInfo


@VIEW_POLICIES.register("supervised", modality="image")
def supervised(
    info: DataInfo,
    transform: ImageTransform,
    crop_scale: Sequence[float] = (0.08, 1.0),
    flip_p: float = 0.5,
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
    rotation: float = 0.0,
) -> MultiViewPolicy:
    """One view: random resized crop (torchvision's defaults) + flip; no colour jitter, grayscale or blur."""
    common = _common("supervised", info, transform, crop_scale, crop_ratio, flip_p, 0.1, (0.1, 2.0), rotation)
    view = ViewAugmentation(
        crop_scale=common["crop_scale"],
        crop_ratio=common["crop_ratio"],
        flip_p=common["flip_p"],
        rotation=common["rotation"],
        jitter=(0.0, 0.0, 0.0, 0.0),
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
    )
    return MultiViewPolicy(transform, (view,), common["blur_kernel_size"])


@VIEW_POLICIES.register("vector_supervised", modality="vector")
def vector_supervised(
    info: DataInfo, transform: VectorTransform, noise_std: float = 0.05
) -> VectorNoisePolicy:
    """One view: the standardized vectors plus light Gaussian noise of std ``noise_std`` (0: none)."""
    if info.modality != "vector" or not isinstance(transform, VectorTransform):
        raise ValueError(
            f"the vector_supervised view policy is for vectors, but the data holds {info.modality} samples"
        )
    if isinstance(noise_std, bool) or float(noise_std) < 0:
        raise ValueError(f"vector_supervised: noise_std must be >= 0, got {noise_std!r}")
    return VectorNoisePolicy(transform, 0.0, "zero", float(noise_std), 1)
