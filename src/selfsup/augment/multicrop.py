"""Multi-crop view policies: two global crops at the transform's size plus ``num_local`` smaller crops.

Caron et al. introduced multi-crop with SwAV (NeurIPS 2020) and DINO kept it; the policies here
(registered in :data:`~selfsup.augment.base.VIEW_POLICIES`, modality ``"image"``) are:

* ``dino`` -- DINO's ``DataAugmentationDINO`` (facebookresearch/dino ``main_dino.py``);
* ``swav`` -- SwAV's ``MultiCropDataset`` (facebookresearch/swav ``src/multicropdataset.py``) with the
  multi-crop setting of its README (2 x 224 px at scale (0.14, 1) + 6 x 96 px at (0.05, 0.14));
* ``dinov2`` -- ``dino``'s crops plus iBOT's block masks on the two global crops, drawn as DINOv2's
  ``collate_data_and_cast`` (facebookresearch/dinov2 ``dinov2/data/collate.py``) with
  :func:`~selfsup.augment.image_masks.block_mask`.

``Views.inputs`` holds the 2 global crops ``(B, 3, size, size)`` first (``num_global=2``), then the local
crops ``(B, 3, local_size, local_size)``; ``num_local=0`` gives the two global crops alone. The authors'
local crops are 96 px for 224 px global crops; ``local_size=None`` keeps that ratio,
``round(size · 96 / 224)`` (14 px at 32), rounded to a multiple of the encoder's patch size when it has
one (a ViT needs whole patches; 16 px at 32 with patch 4). Each crop is one
:class:`~selfsup.augment.policies.ViewAugmentation`; the Gaussian blur's kernel is ``blur_kernel_fraction``
of each crop's own side (sigma is in pixels, as PIL's radius). Differences from the authors: bilinear
resampling (DINO resizes bicubically) and a reflection-padded blur (PIL's is a box-blur approximation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from selfsup.augment import functional as AF
from selfsup.augment.base import VIEW_POLICIES, ImageTransform
from selfsup.augment.image_masks import block_mask
from selfsup.augment.policies import (
    DEFAULT_CROP_RATIO,
    ViewAugmentation,
    _check_blur_fits,
    _check_jitter,
    _common,
    _jitter_style,
    _number,
    _numbers,
    _probability,
    _range,
)
from selfsup.data.base import Batch, DataInfo
from selfsup.views import Views

if TYPE_CHECKING:
    from selfsup.encoders.base import Encoder

__all__ = ["IBOTMasking", "MultiCropPolicy", "dino", "dinov2", "swav"]

# The authors' crop sizes at ImageNet resolution: local crops of 96 px beside global crops of 224 px.
AUTHORS_GLOBAL_SIZE, AUTHORS_LOCAL_SIZE = 224, 96


@dataclass(frozen=True)
class IBOTMasking:
    """iBOT / DINOv2 block masks for the two global crops, drawn jointly over the ``2B`` crops as
    ``collate_data_and_cast`` does: ``int(2B · probability)`` crops masked, with stratified ratios in
    ``ratio_range``, in a shuffled order; rectangles of at least ``min_num_patches`` and at most
    ``max_fraction · N`` patches (DINOv2's ``MaskingGenerator(max_num_patches=0.5 · N)``)."""

    grid: tuple[int, int]
    ratio_range: tuple[float, float]
    probability: float
    min_num_patches: int
    max_fraction: float

    def __call__(self, batch: int, generator: torch.Generator) -> list[Tensor]:
        patches = self.grid[0] * self.grid[1]
        masks = block_mask(
            2 * batch,
            self.grid,
            generator,
            ratio_range=self.ratio_range,
            probability=self.probability,
            min_num_patches=self.min_num_patches,
            max_num_patches=self.max_fraction * patches,
        )
        return [masks[:batch], masks[batch:]]


@dataclass(frozen=True)
class MultiCropPolicy:
    """A :class:`~selfsup.augment.base.ViewPolicy` making two global crops and ``num_local`` local crops.

    ``policy(batch, generator) -> Views`` with ``batch.inputs`` ``(B, 3, H, W)`` uint8 (or float in
    [0, 1]): ``inputs`` = ``[global_1, global_2] + num_local * [local]``, normalized float32, the globals
    ``(B, 3, transform.size, transform.size)``, the locals ``(B, 3, local_size, local_size)``;
    ``num_global=2``; ``masks`` = the two global crops' ``(B, N)`` masks then ``None`` per local crop when
    ``masking`` is set, else None. Every draw comes from ``generator``, in a fixed order (global crops,
    local crops, masks), so one seed gives the same views.
    """

    transform: ImageTransform
    global_views: tuple[ViewAugmentation, ViewAugmentation]
    local_view: ViewAugmentation
    num_local: int
    local_size: int
    global_kernel: int
    local_kernel: int
    masking: IBOTMasking | None = None

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator (on the images' device), got {type(generator).__name__}"
            )
        if not isinstance(batch, Batch):
            raise TypeError(f"a view policy takes a selfsup Batch, got {type(batch).__name__}")
        x = AF.to_unit_float(batch.inputs)
        size, normalize = self.transform.size, self.transform.normalize
        crops = [normalize(view.apply(x, size, self.global_kernel, generator)) for view in self.global_views]
        crops += [
            normalize(self.local_view.apply(x, self.local_size, self.local_kernel, generator))
            for _ in range(self.num_local)
        ]
        masks: list[Tensor | None] | None = None
        if self.masking is not None:
            masks = [*self.masking(x.shape[0], generator), *([None] * self.num_local)]
        return Views(inputs=crops, num_global=2, masks=masks, labels=batch.labels, indices=batch.indices)


# ----------------------------------------------------------------------------- option checks


def _num_local(policy: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{policy}: num_local must be an integer >= 0 (0: two global crops only), got {value!r}"
        )
    return value


def _local_size(policy: str, value: Any, size: int, encoder: Encoder | None) -> int:
    """``local_size`` in pixels: the option, or the authors' 96/224 of ``size`` rounded to the patch."""
    patch = getattr(encoder, "patch_size", None) if encoder is not None else None
    patch = patch if isinstance(patch, int) and patch > 0 else None
    if value is None:
        pixels = round(size * AUTHORS_LOCAL_SIZE / AUTHORS_GLOBAL_SIZE)
        if patch is not None:
            pixels = round(pixels / patch) * patch
        return max(pixels, patch or 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{policy}: local_size must be a positive number of pixels (or null), got {value!r}")
    if patch is not None and value % patch:
        raise ValueError(
            f"{policy}: local_size {value} is not a multiple of the encoder's patch size {patch}; "
            f"use e.g. {max(patch, round(value / patch) * patch)} (or leave local_size unset)"
        )
    return value


def _flip_jitter_gray(
    name: str, common: dict[str, Any], jitter: tuple[float, ...], jitter_p: Any, style: Any, grayscale_p: Any
) -> dict[str, Any]:
    """The options every crop of one policy shares."""
    return {
        "crop_ratio": common["crop_ratio"],
        "flip_p": common["flip_p"],
        "jitter": jitter,
        "jitter_p": _probability(name, "jitter_p", jitter_p),
        "jitter_style": _jitter_style(name, style),
        "grayscale_p": _probability(name, "grayscale_p", grayscale_p),
        "blur_sigma": common["blur_sigma"],
    }


def _build(
    name: str,
    info: DataInfo,
    transform: ImageTransform,
    encoder: Encoder | None,
    *,
    global_scale: Any,
    local_scale: Any,
    num_local: Any,
    local_size: Any,
    crop_ratio: Any,
    flip_p: Any,
    jitter: tuple[float, ...],
    jitter_p: Any,
    jitter_style: Any,
    grayscale_p: Any,
    global_blur_p: Any,
    global_solarize_p: Any,
    local_blur_p: Any,
    blur_kernel_fraction: Any,
    blur_sigma: Any,
    masking: IBOTMasking | None = None,
) -> MultiCropPolicy:
    common = _common(
        name, info, transform, global_scale, crop_ratio, flip_p, blur_kernel_fraction, blur_sigma
    )
    _check_jitter(name, "jitter", jitter)
    shared = _flip_jitter_gray(name, common, jitter, jitter_p, jitter_style, grayscale_p)
    blur = _numbers(name, "global_blur_p", global_blur_p, 2, "(one probability per global crop)")
    solar = _numbers(name, "global_solarize_p", global_solarize_p, 2, "(one probability per global crop)")
    global_views = tuple(
        ViewAugmentation(
            crop_scale=common["crop_scale"],
            blur_p=_probability(name, f"global_blur_p[{i}]", blur[i]),
            solarize_p=_probability(name, f"global_solarize_p[{i}]", solar[i]),
            **shared,
        )
        for i in range(2)
    )
    local = ViewAugmentation(
        crop_scale=_range(name, "local_scale", local_scale, 0.0, 1.0, "(area fraction of the image)"),
        blur_p=_probability(name, "local_blur_p", local_blur_p),
        **shared,
    )
    count = _num_local(name, num_local)
    pixels = _local_size(name, local_size, common["size"], encoder)
    fraction = _number(name, "blur_kernel_fraction", blur_kernel_fraction)
    local_kernel = AF.blur_kernel_size(pixels, fraction)
    _check_blur_fits(name, common["size"], common["blur_kernel_size"], max(blur) > 0)
    _check_blur_fits(name, pixels, local_kernel, count > 0 and local.blur_p > 0)
    return MultiCropPolicy(
        transform=transform,
        global_views=global_views,  # type: ignore[arg-type]  # two entries, built above
        local_view=local,
        num_local=count,
        local_size=pixels,
        global_kernel=common["blur_kernel_size"],
        local_kernel=local_kernel,
        masking=masking,
    )


# ----------------------------------------------------------------------------- factories


@VIEW_POLICIES.register("dino", modality="image")
def dino(
    info: DataInfo,
    transform: ImageTransform,
    encoder: Encoder | None = None,
    num_local: int = 8,
    local_size: int | None = None,
    global_scale: Sequence[float] = (0.4, 1.0),
    local_scale: Sequence[float] = (0.05, 0.4),
    flip_p: float = 0.5,
    jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    jitter_style: str = "torchvision",
    grayscale_p: float = 0.2,
    global_blur_p: Sequence[float] = (1.0, 0.1),
    global_solarize_p: Sequence[float] = (0.0, 0.2),
    local_blur_p: float = 0.5,
    blur_kernel_fraction: float = 0.1,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
) -> MultiCropPolicy:
    """DINO's multi-crop (``DataAugmentationDINO``, facebookresearch/dino ``main_dino.py``).

    Defaults are ``main_dino.py``'s: ``global_crops_scale`` (0.4, 1), ``local_crops_scale`` (0.05, 0.4),
    ``local_crops_number`` 8; every crop: flip 0.5, torchvision colour jitter (0.4, 0.4, 0.2, 0.1) with
    probability 0.8, grayscale 0.2; Gaussian blur (sigma in [0.1, 2]) with probability 1.0 on the first
    global crop, 0.1 on the second and 0.5 on the local crops; solarization 0.2 on the second global crop.
    ``local_size``: pixels (None: ``round(size · 96 / 224)`` on the encoder's patch multiple). The README
    recommends ``global_scale=[0.14, 1]`` when ``num_local=0``.
    """
    name = "dino"
    return _build(
        name,
        info,
        transform,
        encoder,
        global_scale=global_scale,
        local_scale=local_scale,
        num_local=num_local,
        local_size=local_size,
        crop_ratio=crop_ratio,
        flip_p=flip_p,
        jitter=_numbers(name, "jitter", jitter, 4, "(brightness, contrast, saturation, hue)"),
        jitter_p=jitter_p,
        jitter_style=jitter_style,
        grayscale_p=grayscale_p,
        global_blur_p=global_blur_p,
        global_solarize_p=global_solarize_p,
        local_blur_p=local_blur_p,
        blur_kernel_fraction=blur_kernel_fraction,
        blur_sigma=blur_sigma,
    )


@VIEW_POLICIES.register("swav", modality="image")
def swav(
    info: DataInfo,
    transform: ImageTransform,
    encoder: Encoder | None = None,
    num_local: int = 6,
    local_size: int | None = None,
    global_scale: Sequence[float] = (0.14, 1.0),
    local_scale: Sequence[float] = (0.05, 0.14),
    flip_p: float = 0.5,
    jitter_strength: float = 1.0,
    jitter_p: float = 0.8,
    jitter_style: str = "torchvision",
    grayscale_p: float = 0.2,
    blur_p: float = 0.5,
    blur_kernel_fraction: float = 0.1,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
) -> MultiCropPolicy:
    """SwAV's multi-crop (``MultiCropDataset``, facebookresearch/swav ``src/multicropdataset.py``).

    Defaults are the README's multi-crop run (``--nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14
    0.05 --max_scale_crops 1. 0.14``); every crop: flip 0.5, ``get_color_distortion(s=1.0)`` = torchvision
    colour jitter (0.8s, 0.8s, 0.8s, 0.2s) with probability 0.8 and grayscale 0.2, then Gaussian blur with
    probability 0.5 (sigma in [0.1, 2], ``PILRandomGaussianBlur``); no solarization. Every crop of a size
    draws from the same distribution (the two global crops too).
    """
    name = "swav"
    s = _number(name, "jitter_strength", jitter_strength)
    p = _probability(name, "blur_p", blur_p)
    return _build(
        name,
        info,
        transform,
        encoder,
        global_scale=global_scale,
        local_scale=local_scale,
        num_local=num_local,
        local_size=local_size,
        crop_ratio=crop_ratio,
        flip_p=flip_p,
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
        jitter_p=jitter_p,
        jitter_style=jitter_style,
        grayscale_p=grayscale_p,
        global_blur_p=(p, p),
        global_solarize_p=(0.0, 0.0),
        local_blur_p=p,
        blur_kernel_fraction=blur_kernel_fraction,
        blur_sigma=blur_sigma,
    )


@VIEW_POLICIES.register("dinov2", modality="image", needs=("token_grid",))
def dinov2(
    info: DataInfo,
    transform: ImageTransform,
    encoder: Encoder,
    num_local: int = 8,
    local_size: int | None = None,
    global_scale: Sequence[float] = (0.32, 1.0),
    local_scale: Sequence[float] = (0.05, 0.32),
    mask_ratio: Sequence[float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    mask_min_patches: int = 4,
    mask_max_fraction: float = 0.5,
    flip_p: float = 0.5,
    jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    jitter_style: str = "torchvision",
    grayscale_p: float = 0.2,
    global_blur_p: Sequence[float] = (1.0, 0.1),
    global_solarize_p: Sequence[float] = (0.0, 0.2),
    local_blur_p: float = 0.5,
    blur_kernel_fraction: float = 0.1,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
) -> MultiCropPolicy:
    """DINOv2's views: ``dino``'s crops (DINOv2's ``DataAugmentationDINO`` has the same distributions) with
    ``ssl_default_config.yaml``'s scales (0.32, 1) / (0.05, 0.32), plus iBOT block masks on the global
    crops (``ibot.mask_ratio_min_max`` (0.1, 0.5), ``mask_sample_probability`` 0.5, rectangles of 4 to
    ``0.5 · N`` patches, aspect (0.3, 1/0.3): ``train.py``'s ``MaskingGenerator``), in the encoder's token
    grid at the global crop size. Needs an encoder with a patch grid (a ViT).
    """
    name = "dinov2"
    patch = getattr(encoder, "patch_size", None)
    size = transform.size
    if not isinstance(patch, int) or patch < 1:
        raise ValueError(f"{name}: needs an encoder with a patch size (a ViT) to place the iBOT masks")
    if size % patch:
        raise ValueError(
            f"{name}: the crop size {size} is not a multiple of the encoder's patch size {patch}"
        )
    ratio = _numbers(name, "mask_ratio", mask_ratio, 2, "(min, max fraction of the patches masked)")
    if not 0.0 <= ratio[0] <= ratio[1] <= 1.0:
        raise ValueError(
            f"{name}: mask_ratio must be [min, max] with 0 <= min <= max <= 1, got {mask_ratio!r}"
        )
    if isinstance(mask_min_patches, bool) or not isinstance(mask_min_patches, int) or mask_min_patches < 0:
        raise ValueError(f"{name}: mask_min_patches must be an integer >= 0, got {mask_min_patches!r}")
    max_fraction = _number(name, "mask_max_fraction", mask_max_fraction)
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"{name}: mask_max_fraction must be in (0, 1], got {mask_max_fraction!r}")
    masking = IBOTMasking(
        grid=(size // patch, size // patch),
        ratio_range=(ratio[0], ratio[1]),
        probability=_probability(name, "mask_probability", mask_probability),
        min_num_patches=mask_min_patches,
        max_fraction=max_fraction,
    )
    return _build(
        name,
        info,
        transform,
        encoder,
        global_scale=global_scale,
        local_scale=local_scale,
        num_local=num_local,
        local_size=local_size,
        crop_ratio=crop_ratio,
        flip_p=flip_p,
        jitter=_numbers(name, "jitter", jitter, 4, "(brightness, contrast, saturation, hue)"),
        jitter_p=jitter_p,
        jitter_style=jitter_style,
        grayscale_p=grayscale_p,
        global_blur_p=global_blur_p,
        global_solarize_p=global_solarize_p,
        local_blur_p=local_blur_p,
        blur_kernel_fraction=blur_kernel_fraction,
        blur_sigma=blur_sigma,
        masking=masking,
    )
