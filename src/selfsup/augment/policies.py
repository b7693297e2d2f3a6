"""The SimCLR and BYOL view policies, registered in :data:`~selfsup.augment.base.VIEW_POLICIES`.

A policy turns a batch of uint8 images ``(B, 3, H, W)`` into two normalized float32 views
``(B, 3, size, size)``, where ``size`` and the normalization come from the run's
:class:`~selfsup.augment.base.ImageTransform`. Each view is one :class:`ViewAugmentation` (a
distribution over crops, flips and colour changes); every random choice is drawn per sample from
the caller's generator and applied with a few batched ops from :mod:`selfsup.augment.functional`,
so the same seed gives the same views on the same device.

Factory options are plain numbers and lists so that config overrides such as
``augment.params={crop_scale: [0.2, 1.0]}`` reach them unchanged; they are checked when the policy is
built, with the option's name in the message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup.augment import functional as AF
from selfsup.augment.base import VIEW_POLICIES, ImageTransform
from selfsup.data.base import Batch, DataInfo
from selfsup.views import Views

# torchvision's RandomResizedCrop default; both SimCLR and BYOL use it.
DEFAULT_CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class ViewAugmentation:
    """The augmentation distribution of one view, in the order it is applied.

    One resampling does the random resized crop (area fraction ``crop_scale``, aspect ratio
    ``crop_ratio``), the horizontal flip (``flip_p``) and a rotation (uniform in ±``rotation``
    degrees; 0 = none). Then colour jitter ``(brightness, contrast, saturation, hue)`` with
    probability ``jitter_p``, in a random order per image, with the maths of ``jitter_style``
    (:data:`~selfsup.augment.functional.JITTER_STYLES`) → grayscale (``grayscale_p``) → Gaussian
    blur (``blur_p``, sigma uniform in ``blur_sigma``) → solarize (``solarize_p``).
    A step whose probability is 0 is skipped entirely (no random draws, no kernels).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
    flip_p: float = 0.5
    rotation: float = 0.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    jitter_style: str = "torchvision"
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def apply(self, images: Tensor, size: int, blur_kernel_size: int, generator: torch.Generator) -> Tensor:
        """float ``(B, 3, H, W)`` in [0, 1] → augmented ``(B, 3, size, size)`` in [0, 1]."""
        batch, _, height, width = images.shape
        boxes = AF.sample_crop_boxes(batch, height, width, generator, self.crop_scale, self.crop_ratio)
        flip = AF.sample_bernoulli(batch, self.flip_p, generator) if self.flip_p > 0 else None
        angle = None
        if self.rotation > 0:
            angle = AF.sample_uniform(batch, -self.rotation, self.rotation, generator) * (math.pi / 180)
        out = AF.resized_crop(images, boxes, size, flip, angle)
        if self.jitter_p > 0 and any(s > 0 for s in self.jitter):
            params = AF.sample_color_jitter(
                batch, *self.jitter, p=self.jitter_p, generator=generator, style=self.jitter_style
            )
            out = AF.color_jitter(out, params)
        if self.grayscale_p > 0:
            out = AF.random_grayscale(out, AF.sample_bernoulli(batch, self.grayscale_p, generator))
        if self.blur_p > 0:
            sigma = AF.sample_uniform(batch, *self.blur_sigma, generator)
            apply = AF.sample_bernoulli(batch, self.blur_p, generator)
            out = AF.gaussian_blur(out, sigma, blur_kernel_size, apply)
        if self.solarize_p > 0:
            out = AF.solarize(out, AF.sample_bernoulli(batch, self.solarize_p, generator))
        return out


@dataclass(frozen=True)
class MultiViewPolicy:
    """A :class:`~selfsup.augment.base.ViewPolicy` making one global view per :class:`ViewAugmentation`.

    ``policy(batch, generator) -> Views`` with ``batch.inputs`` ``(B, 3, H, W)`` uint8 (or float in
    [0, 1]) of any ``H × W``, and ``Views.inputs`` normalized float32 ``(B, 3, size, size)`` with
    ``size``, ``mean`` and ``std`` from ``transform``. Random parameters are drawn on the generator's
    device and moved to the images' device.
    """

    transform: ImageTransform
    views: tuple[ViewAugmentation, ...]
    blur_kernel_size: int

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator (on the images' device), got {type(generator).__name__}"
            )
        if not isinstance(batch, Batch):
            raise TypeError(f"a view policy takes a selfsup Batch, got {type(batch).__name__}")
        x = AF.to_unit_float(batch.inputs)
        size = self.transform.size
        crops = [
            self.transform.normalize(view.apply(x, size, self.blur_kernel_size, generator))
            for view in self.views
        ]
        return Views(inputs=crops, num_global=len(crops), labels=batch.labels, indices=batch.indices)


# ----------------------------------------------------------------------------- option checks


def _number(policy: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{policy}: {name} must be a number, got {value!r}")
    return float(value)


def _numbers(policy: str, name: str, value: Any, count: int, meaning: str) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != count:
        raise ValueError(f"{policy}: {name} must be a list of {count} numbers {meaning}, got {value!r}")
    return tuple(_number(policy, name, v) for v in value)


def _probability(policy: str, name: str, value: Any) -> float:
    p = _number(policy, name, value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{policy}: {name} is a probability and must be in [0, 1], got {value!r}")
    return p


def _range(
    policy: str, name: str, value: Any, low: float, high: float | None, meaning: str
) -> tuple[float, float]:
    lo, hi = _numbers(policy, name, value, 2, meaning)
    upper = "" if high is None else f" <= {high:g}"
    if not (lo > low and lo <= hi and (high is None or hi <= high)):
        raise ValueError(
            f"{policy}: {name} must be [min, max] with {low:g} < min <= max{upper}, got {value!r}"
        )
    return lo, hi


def _rotation(policy: str, value: Any) -> float:
    degrees = _number(policy, "rotation", value)
    if not 0.0 <= degrees <= 180.0:
        raise ValueError(
            f"{policy}: rotation must be in [0, 180] degrees (the largest angle drawn), got {value!r}"
        )
    return degrees


def _common(
    policy: str,
    info: DataInfo,
    transform: ImageTransform,
    crop_scale: Any,
    crop_ratio: Any,
    flip_p: Any,
    blur_kernel_fraction: Any,
    blur_sigma: Any,
    rotation: Any = 0.0,
) -> dict[str, Any]:
    """Check the options shared by every policy; returns them normalized to tuples and floats."""
    if info.modality != "image" or not isinstance(transform, ImageTransform):
        raise ValueError(
            f"the {policy} view policy is for images, but the data holds {info.modality} samples"
        )
    size = transform.size
    fraction = _number(policy, "blur_kernel_fraction", blur_kernel_fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{policy}: blur_kernel_fraction must be in (0, 1], got {blur_kernel_fraction!r}")
    return {
        "size": size,
        "crop_scale": _range(policy, "crop_scale", crop_scale, 0.0, 1.0, "(area fraction of the image)"),
        "crop_ratio": _range(policy, "crop_ratio", crop_ratio, 0.0, None, "(width / height)"),
        "flip_p": _probability(policy, "flip_p", flip_p),
        "rotation": _rotation(policy, rotation),
        "blur_kernel_size": AF.blur_kernel_size(size, fraction),
        "blur_sigma": _range(policy, "blur_sigma", blur_sigma, 0.0, None, "(Gaussian std in pixels)"),
    }


def _check_jitter(policy: str, name: str, jitter: tuple[float, ...]) -> None:
    if min(jitter) < 0:
        raise ValueError(f"{policy}: {name} strengths must be >= 0, got {list(jitter)}")
    if jitter[3] > 0.5:
        raise ValueError(
            f"{policy}: hue jitter is a fraction of a turn and must be <= 0.5, got {jitter[3]:g} from {name}"
        )


def _jitter_style(policy: str, value: Any) -> str:
    if value not in AF.JITTER_STYLES:
        raise ValueError(
            f"{policy}: jitter_style must be one of {', '.join(AF.JITTER_STYLES)}, got {value!r}"
        )
    return str(value)


def _check_blur_fits(policy: str, size: int, kernel: int, blur_used: bool) -> None:
    if blur_used and kernel // 2 >= size:
        raise ValueError(
            f"{policy}: size {size} is too small for a {kernel}-pixel blur kernel; "
            "lower blur_kernel_fraction or set the blur probability to 0"
        )


# ----------------------------------------------------------------------------- factories


@VIEW_POLICIES.register("simclr", modality="image")
def simclr(
    info: DataInfo,
    transform: ImageTransform,
    crop_scale: Sequence[float] = (0.08, 1.0),
    flip_p: float = 0.5,
    jitter_strength: float = 1.0,
    jitter_p: float = 0.8,
    jitter_style: str = "simclr",
    grayscale_p: float = 0.2,
    blur_p: float = 0.5,
    blur_kernel_fraction: float = 0.1,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
    rotation: float = 0.0,
) -> MultiViewPolicy:
    """SimCLR views: two draws from the same distribution (Chen et al. 2020, appendix A).

    Colour jitter with strength ``s`` is (brightness, contrast, saturation, hue) =
    (0.8s, 0.8s, 0.8s, 0.2s), applied with probability 0.8, then grayscale with probability 0.2;
    Gaussian blur with probability 0.5, sigma in [0.1, 2.0] and a kernel of 10% of the image side.
    The paper's CIFAR-10 setting is ``jitter_strength=0.5, blur_p=0`` (blur is then skipped).
    ``jitter_style="simclr"`` is the maths of the authors' code (``color_jitter_rand``, simclrv2:
    multiplicative brightness, TensorFlow's per-channel contrast and HSV saturation, a random order
    per image); ``"torchvision"`` gives torchvision's ``ColorJitter``, as most PyTorch
    reimplementations use. Differences that remain: the blur pads by reflection (the authors' pads
    with zeros), and crops are resampled bilinearly without antialiasing (TensorFlow's
    ``crop_and_resize`` + ``resize_bicubic`` in the authors' code).
    """
    name = "simclr"
    common = _common(
        name, info, transform, crop_scale, crop_ratio, flip_p, blur_kernel_fraction, blur_sigma, rotation
    )
    s = _number(name, "jitter_strength", jitter_strength)
    jitter = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    _check_jitter(name, "jitter_strength (hue = 0.2 * strength)", jitter)
    view = ViewAugmentation(
        crop_scale=common["crop_scale"],
        crop_ratio=common["crop_ratio"],
        flip_p=common["flip_p"],
        rotation=common["rotation"],
        jitter=jitter,
        jitter_p=_probability(name, "jitter_p", jitter_p),
        jitter_style=_jitter_style(name, jitter_style),
        grayscale_p=_probability(name, "grayscale_p", grayscale_p),
        blur_p=_probability(name, "blur_p", blur_p),
        blur_sigma=common["blur_sigma"],
    )
    _check_blur_fits(name, common["size"], common["blur_kernel_size"], view.blur_p > 0)
    return MultiViewPolicy(transform, (view, view), common["blur_kernel_size"])


@VIEW_POLICIES.register("byol", modality="image")
def byol(
    info: DataInfo,
    transform: ImageTransform,
    crop_scale: Sequence[float] = (0.08, 1.0),
    flip_p: float = 0.5,
    jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    jitter_style: str = "byol",
    grayscale_p: float = 0.2,
    blur_p: Sequence[float] = (1.0, 0.1),
    solarize_p: Sequence[float] = (0.0, 0.2),
    blur_kernel_fraction: float = 0.1,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
    rotation: float = 0.0,
) -> MultiViewPolicy:
    """BYOL views: two asymmetric distributions (Grill et al. 2020, table 6).

    Both views: random resized crop, flip 0.5, colour jitter (brightness 0.4, contrast 0.4,
    saturation 0.2, hue 0.1) with probability 0.8, grayscale 0.2. Per view (first, second):
    Gaussian blur (1.0, 0.1) with sigma in [0.1, 2.0] and a 23x23 kernel at 224 pixels, and
    solarization (0.0, 0.2). These match the defaults in the authors' augmentation config.
    ``jitter_style="byol"`` is the maths of the authors' code (``augmentations.py``: additive
    brightness, per-channel contrast, HSV saturation, each op clipped, a random order per image);
    ``"torchvision"`` gives torchvision's ``ColorJitter`` (solo-learn's and lightly's BYOL).
    Differences that remain: the authors' grayscale weighs red 0.2989 (ours 0.299) and their blur
    pads with zeros (ours reflects).
    """
    name = "byol"
    common = _common(
        name, info, transform, crop_scale, crop_ratio, flip_p, blur_kernel_fraction, blur_sigma, rotation
    )
    jitter_t = _numbers(name, "jitter", jitter, 4, "(brightness, contrast, saturation, hue)")
    _check_jitter(name, "jitter", jitter_t)
    blur = _numbers(name, "blur_p", blur_p, 2, "(one probability per view)")
    solar = _numbers(name, "solarize_p", solarize_p, 2, "(one probability per view)")
    views = tuple(
        ViewAugmentation(
            crop_scale=common["crop_scale"],
            crop_ratio=common["crop_ratio"],
            flip_p=common["flip_p"],
            rotation=common["rotation"],
            jitter=jitter_t,  # type: ignore[arg-type]  # length checked above
            jitter_p=_probability(name, "jitter_p", jitter_p),
            jitter_style=_jitter_style(name, jitter_style),
            grayscale_p=_probability(name, "grayscale_p", grayscale_p),
            blur_p=_probability(name, f"blur_p[{i}]", blur[i]),
            blur_sigma=common["blur_sigma"],
            solarize_p=_probability(name, f"solarize_p[{i}]", solar[i]),
        )
        for i in range(2)
    )
    _check_blur_fits(name, common["size"], common["blur_kernel_size"], max(blur) > 0)
    return MultiViewPolicy(transform, views, common["blur_kernel_size"])
