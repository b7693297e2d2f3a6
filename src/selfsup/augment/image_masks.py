"""Patch masks for masked image modelling, and the view policies that draw them.

Mask samplers (pure functions of a ``torch.Generator``; masks are bool, True where a patch is masked, in
row-major order of the encoder's ``token_grid``):

* :func:`random_patch_mask` -- MAE's ``random_masking`` (``models_mae.py``, He et al. 2022): per sample,
  ``N - int(N * (1 - ratio))`` patches chosen uniformly (every row masks the same number).
* :func:`block_mask` -- BEiT's ``MaskingGenerator`` (Bao et al. 2022) with the per-image ratios of
  DINOv2's ``collate_data_and_cast`` (iBOT / DINOv2's masked-patch loss) or a fixed count (BEiT,
  data2vec vision).
* :func:`multi_block_masks` -- I-JEPA's ``MaskCollator`` (``src/masks/multiblock.py``, Assran et al.
  2023): M target blocks and one context block minus the targets, cut to the batch's smallest counts.

The block samplers are sequential rejection loops over a small grid (BEiT and I-JEPA write them as
Python loops too): they draw one seed from ``generator`` (one device synchronisation per batch) and run
on a NumPy generator seeded with it, then return the masks on ``generator.device``. The same generator
state gives the same masks.

Policies (registered in :data:`~selfsup.augment.base.VIEW_POLICIES`, modality ``"image"``; each takes the
encoder for its ``token_grid``): ``mae``, ``ijepa``, ``masked_image`` (data2vec / BEiT block masking).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from selfsup.augment import functional as AF
from selfsup.augment.base import VIEW_POLICIES, ImageTransform
from selfsup.augment.policies import DEFAULT_CROP_RATIO, ViewAugmentation, _probability, _range
from selfsup.data.base import Batch, DataInfo
from selfsup.views import Views

if TYPE_CHECKING:
    from selfsup.encoders.base import Encoder

__all__ = [
    "BlockMaskPolicy",
    "IJEPAPolicy",
    "RandomMaskPolicy",
    "block_mask",
    "ijepa",
    "mae",
    "masked_image",
    "multi_block_masks",
    "random_patch_mask",
]


# ----------------------------------------------------------------------------- helpers


def _grid(grid: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(grid, int):
        grid = (grid, grid)
    if len(grid) != 2 or any(int(g) < 1 for g in grid):
        raise ValueError(f"grid must be (height, width) in patches, both >= 1, got {grid!r}")
    return int(grid[0]), int(grid[1])


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A NumPy generator seeded by one draw of ``generator`` (the loops below draw many scalars)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return np.random.default_rng(int(seed.item()))


# ----------------------------------------------------------------------------- random (MAE)


def random_patch_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> Tensor:
    """MAE's per-sample random masking: ``(B, N)`` bool, True at ``N - int(N * (1 - ratio))`` patches a row.

    As ``random_masking`` in MAE's ``models_mae.py``: uniform noise per patch, the ``len_keep =
    int(N * (1 - ratio))`` patches with the smallest noise are kept, the rest masked, so every row masks
    the same number (0.75 of 64 patches: 48 masked, 16 kept). On ``generator.device``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (at least one patch is kept), got {ratio}")
    if batch < 0 or num_patches < 1:
        raise ValueError(f"need batch >= 0 and num_patches >= 1, got {batch}, {num_patches}")
    keep = int(num_patches * (1 - ratio))
    if keep < 1:
        raise ValueError(f"ratio {ratio} keeps no patch of {num_patches}")
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device)
    order = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=generator.device)
    return mask.scatter(1, order[:, :keep], False)


# ----------------------------------------------------------------------------- blocks (BEiT)


def _beit_blocks(
    rng: np.random.Generator,
    grid: tuple[int, int],
    count: int,
    min_num_patches: int,
    max_num_patches: float,
    log_aspect: tuple[float, float],
) -> np.ndarray:
    """One ``(H, W)`` mask of at most ``count`` patches: BEiT's ``MaskingGenerator.__call__``."""
    height, width = grid
    mask = np.zeros(grid, dtype=bool)
    masked = 0
    while masked < count:
        budget = min(count - masked, max_num_patches)
        delta = 0
        for _ in range(10):  # BEiT's ``_mask``: up to 10 tries for one rectangle that adds patches
            # Python's random.uniform(a, b) = a + (b - a) * U, also when b < a (a budget below the minimum).
            area = min_num_patches + (budget - min_num_patches) * rng.random()
            aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * rng.random())
            h = round(math.sqrt(area * aspect))  # Python 3's round, as BEiT's
            w = round(math.sqrt(area / aspect))
            if w < width and h < height:  # strict, as BEiT: a block never spans a whole side
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                window = mask[top : top + h, left : left + w]
                new = h * w - int(window.sum())
                if 0 < new <= budget:
                    window[...] = True
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        masked += delta
    return mask


def block_mask(
    batch: int,
    grid: Sequence[int] | int,
    generator: torch.Generator,
    *,
    ratio_range: Sequence[float] = (0.1, 0.5),
    probability: float = 1.0,
    min_num_patches: int = 4,
    max_num_patches: float | None = None,
    aspect: Sequence[float] = (0.3, 1 / 0.3),
    shuffle: bool = True,
) -> Tensor:
    """BEiT's block-wise masking: ``(B, H·W)`` bool, True at masked patches, rectangles added until the
    image's target count is reached.

    Args:
        batch: number of images B.
        grid: ``(H, W)`` patches (the encoder's ``token_grid``).
        generator: the only source of randomness (one seed drawn from it).
        ratio_range: ``(lo, hi)`` fraction of the patches to mask. As DINOv2's ``collate_data_and_cast``
            (iBOT's masked-patch loss): of the ``int(B * probability)`` masked images, image ``i`` gets the
            target count ``int(N * U(r_i, r_{i+1}))`` with ``r = linspace(lo, hi, n + 1)`` (stratified),
            the others none, and the order is shuffled. ``lo == hi`` gives every image ``int(N * lo)``
            (BEiT's fixed ``num_masking_patches``: 75 of 196 for BEiT, 120 of 196 for data2vec vision).
        probability: fraction of the batch that is masked at all (DINOv2: 0.5).
        min_num_patches: smallest rectangle area drawn (BEiT: 16 at 14x14; DINOv2: 4).
        max_num_patches: largest rectangle area (a count, may be fractional: DINOv2 passes ``0.5 * N``);
            None: the remaining target count (BEiT's default).
        aspect: ``(min, max)`` aspect ratio, drawn log-uniformly (BEiT: ``(0.3, 1 / 0.3)``).
        shuffle: shuffle which images get which ratio (DINOv2 does; without it the masked images come
            first, in increasing ratio).

    Each rectangle: area ``U(min_num_patches, budget)``, aspect ``exp(U(log min, log max))``, sides
    ``round(sqrt(area · aspect))`` x ``round(sqrt(area / aspect))``, kept only if strictly smaller than the
    grid, at a uniform position, and only if it adds between 1 and ``budget`` new patches (10 tries); the
    loop stops when the target is reached or a round of tries adds nothing, so an image may end with
    fewer masked patches than its target (never more).
    """
    height, width = _grid(grid)
    num_patches = height * width
    lo, hi = (float(r) for r in ratio_range)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"ratio_range must be (lo, hi) with 0 <= lo <= hi <= 1, got {ratio_range!r}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    if min_num_patches < 0:
        raise ValueError(f"min_num_patches must be >= 0, got {min_num_patches}")
    a_min, a_max = (float(a) for a in aspect)
    if not 0.0 < a_min <= a_max:
        raise ValueError(f"aspect must be (min, max) with 0 < min <= max, got {aspect!r}")
    rng = _numpy_rng(generator)
    masked_images = int(batch * probability)
    edges = np.linspace(lo, hi, masked_images + 1)
    log_aspect = (math.log(a_min), math.log(a_max))
    masks = []
    for i in range(batch):  # DINOv2's order: each masked image's count drawn just before its blocks
        count = 0
        if i < masked_images:
            count = int(num_patches * (edges[i] + (edges[i + 1] - edges[i]) * rng.random()))
        limit = float(count if max_num_patches is None else max_num_patches)
        masks.append(_beit_blocks(rng, (height, width), count, min_num_patches, limit, log_aspect))
    if shuffle:
        masks = [masks[i] for i in rng.permutation(batch)]
    out = np.stack(masks).reshape(batch, num_patches) if masks else np.zeros((0, num_patches), dtype=bool)
    return torch.from_numpy(out).to(generator.device)


# ----------------------------------------------------------------------------- multi-block (I-JEPA)


def _block_size(
    rng: np.random.Generator, grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float]
) -> tuple[int, int]:
    """I-JEPA's ``_sample_block_size``: ONE uniform draws both the scale and the aspect ratio."""
    height, width = grid
    u = rng.random()
    area = int(height * width * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    h = round(math.sqrt(area * ratio))
    w = round(math.sqrt(area / ratio))
    return max(min(h, height - 1), 1), max(min(w, width - 1), 1)


def _place_block(
    rng: np.random.Generator,
    grid: tuple[int, int],
    size: tuple[int, int],
    min_keep: int,
    allowed: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """I-JEPA's ``_sample_block_mask``: a block at a uniform corner (``randint(0, H - h)``: the last row
    and column of corners are never drawn, as theirs), restricted to the ``allowed`` regions; retried until
    it keeps more than ``min_keep`` patches, dropping one restriction after every 20 failures. Returns the
    ``(H, W)`` block (restricted) and the block alone."""
    height, width = grid
    h, w = size
    tries, timeout = 0, 20
    while True:
        top = int(rng.integers(0, max(height - h, 1)))
        left = int(rng.integers(0, max(width - w, 1)))
        block = np.zeros(grid, dtype=bool)
        block[top : top + h, left : left + w] = True
        mask = block.copy()
        if allowed is not None:
            for region in allowed[: max(len(allowed) - tries, 0)]:
                mask &= region
        # Accepted: more than min_keep patches; or nothing restricts it any more (I-JEPA would loop
        # forever on a block too small for min_keep, e.g. 3x3 targets on an 8x8 CIFAR grid).
        unrestricted = allowed is None or tries >= len(allowed)
        if int(mask.sum()) > min_keep or (unrestricted and h * w <= min_keep):
            return mask, block
        timeout -= 1
        if timeout == 0:
            tries, timeout = tries + 1, 20


def _keep_first(mask: np.ndarray, count: int) -> np.ndarray:
    """``mask`` ``(..., N)`` with only its first ``count`` True positions per row (I-JEPA's ``cm[:k]``)."""
    return mask & (np.cumsum(mask, axis=-1) <= count)


def multi_block_masks(
    batch: int,
    grid: Sequence[int] | int,
    generator: torch.Generator,
    *,
    num_targets: int = 4,
    target_scale: Sequence[float] = (0.15, 0.2),
    target_aspect: Sequence[float] = (0.75, 1.5),
    context_scale: Sequence[float] = (0.85, 1.0),
    context_aspect: Sequence[float] = (1.0, 1.0),
    min_keep: int = 10,
    allow_overlap: bool = False,
) -> tuple[Tensor, Tensor]:
    """I-JEPA's multi-block masks: ``(context (B, N) bool, True where DROPPED, targets (B, M, N) bool,
    True at each target block's patches)``.

    As ``MaskCollator`` (``src/masks/multiblock.py``) with the paper's settings (``configs/*.yaml``): one
    target block size and one context block size per batch (each from ONE uniform that sets both scale
    and aspect ratio, as theirs); per image ``num_targets`` target blocks at uniform positions, then one
    context block restricted to the complement of every target block (``allow_overlap=False``), a block
    kept only if it has more than ``min_keep`` patches. Then every target block is cut to the smallest
    target count in the batch and every context to the smallest context count, keeping the first
    positions in row-major order (their ``cm[:min_keep]`` on sorted indices), so every row has the same
    number of context patches (the encoder drops the rest) and every block the same number of targets.

    Differences: a grid too small for a block (``h >= H``) shrinks it to ``H - 1`` (as theirs), but never
    below one patch; a block whose whole area is ``<= min_keep`` is accepted once no restriction is left
    (theirs loops forever: e.g. 3x3 targets with ``min_keep=10`` on CIFAR's 8x8 grid). Contexts and
    targets are disjoint unless ``allow_overlap`` (or unless the restrictions had to be dropped).
    """
    height, width = _grid(grid)
    if height < 2 or width < 2:
        raise ValueError(f"I-JEPA blocks need a grid of at least 2x2 patches, got {height}x{width}")
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}")
    for name, pair in (("target_scale", target_scale), ("context_scale", context_scale)):
        if not (len(pair) == 2 and 0.0 < pair[0] <= pair[1] <= 1.0):
            raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi <= 1, got {pair!r}")
    for name, pair in (("target_aspect", target_aspect), ("context_aspect", context_aspect)):
        if not (len(pair) == 2 and 0.0 < pair[0] <= pair[1]):
            raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {pair!r}")
    rng = _numpy_rng(generator)
    hw = (height, width)
    ts = (float(target_scale[0]), float(target_scale[1]))
    ta = (float(target_aspect[0]), float(target_aspect[1]))
    cs = (float(context_scale[0]), float(context_scale[1]))
    ca = (float(context_aspect[0]), float(context_aspect[1]))
    target_size = _block_size(rng, hw, ts, ta)
    context_size = _block_size(rng, hw, cs, ca)
    targets = np.zeros((batch, num_targets, height * width), dtype=bool)
    context = np.zeros((batch, height * width), dtype=bool)  # True = kept, inverted at the end
    for b in range(batch):
        complements = []
        for m in range(num_targets):
            mask, block = _place_block(rng, hw, target_size, min_keep, None)
            targets[b, m] = mask.reshape(-1)
            complements.append(~block)
        allowed = None if allow_overlap else complements
        kept, _ = _place_block(rng, hw, context_size, min_keep, allowed)
        context[b] = kept.reshape(-1)
    if batch:
        targets = _keep_first(targets, int(targets.sum(-1).min()))
        context = _keep_first(context, int(context.sum(-1).min()))
    device = generator.device
    return torch.from_numpy(~context).to(device), torch.from_numpy(targets).to(device)


# ----------------------------------------------------------------------------- policies


def patch_grid(policy: str, transform: ImageTransform, encoder: Encoder) -> tuple[int, int]:
    """The ``(H, W)`` patch grid of the policy's views: ``transform.size // encoder.patch_size`` when the
    encoder declares a patch size (a ViT, whose positions adapt to the grid), else its ``token_grid``."""
    patch = getattr(encoder, "patch_size", None)
    if isinstance(patch, Sequence):
        patch = patch[0]
    if isinstance(patch, int) and patch > 0:
        if transform.size % patch:
            raise ValueError(
                f"{policy}: the view size {transform.size} is not a multiple of the encoder's "
                f"patch size {patch}"
            )
        return transform.size // patch, transform.size // patch
    grid = getattr(encoder, "token_grid", None)
    if grid is None or len(grid) != 2:
        raise ValueError(
            f"{policy}: needs an encoder with a 2-D token grid (a ViT: vit_tiny / vit_small / vit_base); "
            f"{type(encoder).__name__} has none"
        )
    return int(grid[0]), int(grid[1])


def _view(
    policy: str, info: DataInfo, transform: ImageTransform, crop_scale: Any, crop_ratio: Any, flip_p: Any
) -> ViewAugmentation:
    """The one view of a masking policy: a random resized crop (+ flip), no colour change."""
    if info.modality != "image" or not isinstance(transform, ImageTransform):
        raise ValueError(
            f"the {policy} view policy is for images, but the data holds {info.modality} samples"
        )
    return ViewAugmentation(
        crop_scale=_range(policy, "crop_scale", crop_scale, 0.0, 1.0, "(area fraction of the image)"),
        crop_ratio=_range(policy, "crop_ratio", crop_ratio, 0.0, None, "(width / height)"),
        flip_p=_probability(policy, "flip_p", flip_p),
        jitter_p=0.0,
        grayscale_p=0.0,
    )


def _render(
    transform: ImageTransform, view: ViewAugmentation, batch: Batch, generator: torch.Generator
) -> Tensor:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(batch, Batch):
        raise TypeError(f"a view policy takes a selfsup Batch, got {type(batch).__name__}")
    x = AF.to_unit_float(batch.inputs)
    # blur_kernel_size is unused: the view has no blur.
    return transform.normalize(view.apply(x, transform.size, 1, generator))


@dataclass(frozen=True)
class RandomMaskPolicy:
    """MAE's view: one crop + flip, ``Views.masks=[(B, N) random mask]`` (True = masked, dropped by MAE)."""

    transform: ImageTransform
    view: ViewAugmentation
    grid: tuple[int, int]
    mask_ratio: float

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        x = _render(self.transform, self.view, batch, generator)
        n = self.grid[0] * self.grid[1]
        mask = random_patch_mask(x.shape[0], n, self.mask_ratio, generator).to(x.device)
        return Views(inputs=[x], num_global=1, masks=[mask], labels=batch.labels, indices=batch.indices)


@dataclass(frozen=True)
class BlockMaskPolicy:
    """BEiT / data2vec's view: one crop + flip, ``Views.masks=[(B, N) block mask]`` (True = masked)."""

    transform: ImageTransform
    view: ViewAugmentation
    grid: tuple[int, int]
    ratio_range: tuple[float, float]
    probability: float
    min_num_patches: int
    max_num_patches: float | None
    aspect: tuple[float, float]

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        x = _render(self.transform, self.view, batch, generator)
        mask = block_mask(
            x.shape[0],
            self.grid,
            generator,
            ratio_range=self.ratio_range,
            probability=self.probability,
            min_num_patches=self.min_num_patches,
            max_num_patches=self.max_num_patches,
            aspect=self.aspect,
        ).to(x.device)
        return Views(inputs=[x], num_global=1, masks=[mask], labels=batch.labels, indices=batch.indices)


@dataclass(frozen=True)
class IJEPAPolicy:
    """I-JEPA's view: one crop, ``Views.masks=[(B, N) context mask, True = dropped]`` and
    ``Views.aux["target_masks"]`` ``(B, M, N)`` bool, True at each target block's patches
    (:func:`multi_block_masks`)."""

    transform: ImageTransform
    view: ViewAugmentation
    grid: tuple[int, int]
    options: dict[str, Any]

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        x = _render(self.transform, self.view, batch, generator)
        context, targets = multi_block_masks(x.shape[0], self.grid, generator, **self.options)
        return Views(
            inputs=[x],
            num_global=1,
            masks=[context.to(x.device)],
            labels=batch.labels,
            indices=batch.indices,
            aux={"target_masks": targets.to(x.device)},
        )


def _pair(policy: str, name: str, value: Any, low: float, high: float | None) -> tuple[float, float]:
    return _range(policy, name, value, low, high, "")


@VIEW_POLICIES.register("mae", modality="image", needs=("token_grid",))
def mae(
    info: DataInfo,
    transform: ImageTransform,
    encoder: Encoder,
    mask_ratio: float = 0.75,
    crop_scale: Sequence[float] = (0.2, 1.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
    flip_p: float = 0.5,
) -> RandomMaskPolicy:
    """MAE's pretraining view (He et al. 2022; ``main_pretrain.py``): random resized crop scale (0.2, 1.0),
    horizontal flip, normalisation; a random mask of ``mask_ratio`` 0.75 of the patches (the paper's
    default, :func:`random_patch_mask`). Difference: the crop is resampled bilinearly (MAE: bicubic)."""
    name = "mae"
    ratio = _probability(name, "mask_ratio", mask_ratio)
    grid = patch_grid(name, transform, encoder)
    if ratio >= 1.0 or int(grid[0] * grid[1] * (1 - ratio)) < 1:
        raise ValueError(f"{name}: mask_ratio {mask_ratio} keeps no patch of the {grid[0]}x{grid[1]} grid")
    view = _view(name, info, transform, crop_scale, crop_ratio, flip_p)
    return RandomMaskPolicy(transform=transform, view=view, grid=grid, mask_ratio=ratio)


@VIEW_POLICIES.register("masked_image", modality="image", needs=("token_grid",))
def masked_image(
    info: DataInfo,
    transform: ImageTransform,
    encoder: Encoder,
    mask_ratio: float = 0.6,
    min_num_patches: int | None = None,
    max_num_patches: float | None = None,
    aspect: Sequence[float] = (0.3, 1 / 0.3),
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
    flip_p: float = 0.5,
) -> BlockMaskPolicy:
    """Block-masked view for masked image modelling (BEiT, Bao et al. 2022; data2vec vision, Baevski et
    al. 2022): random resized crop + flip, then :func:`block_mask` with ``mask_ratio`` of the patches.

    data2vec's paper (section 4.1) masks 60% of the patches in BEiT's blocks (BEiT itself 40%: 75 of 196);
    blocks of at least 16 patches at 14x14 (BEiT / fairseq's ``min_mask_patches_per_block``). Here
    ``min_num_patches=None`` scales those 16 patches to the grid's area (``round(16 N / 196)``, >= 1: 5 of
    CIFAR's 64) so that blocks fit small grids; ``max_num_patches=None`` allows any size up to the target
    (fairseq's 196). The crop is BEiT's (scale (0.08, 1), flip), without its colour jitter (data2vec's
    vision recipe uses none); resampled bilinearly (BEiT: bicubic)."""
    name = "masked_image"
    ratio = _probability(name, "mask_ratio", mask_ratio)
    grid = patch_grid(name, transform, encoder)
    n = grid[0] * grid[1]
    if min_num_patches is None:
        min_num_patches = max(1, round(16 * n / 196))
    if isinstance(min_num_patches, bool) or not isinstance(min_num_patches, int) or min_num_patches < 1:
        raise ValueError(
            f"{name}: min_num_patches must be a positive integer or null, got {min_num_patches!r}"
        )
    if max_num_patches is not None and (isinstance(max_num_patches, bool) or max_num_patches < 1):
        raise ValueError(f"{name}: max_num_patches must be >= 1 or null, got {max_num_patches!r}")
    view = _view(name, info, transform, crop_scale, crop_ratio, flip_p)
    return BlockMaskPolicy(
        transform=transform,
        view=view,
        grid=grid,
        ratio_range=(ratio, ratio),
        probability=1.0,
        min_num_patches=min_num_patches,
        max_num_patches=None if max_num_patches is None else float(max_num_patches),
        aspect=_pair(name, "aspect", aspect, 0.0, None),
    )


@VIEW_POLICIES.register("ijepa", modality="image", needs=("token_grid",))
def ijepa(
    info: DataInfo,
    transform: ImageTransform,
    encoder: Encoder,
    num_targets: int = 4,
    target_scale: Sequence[float] = (0.15, 0.2),
    target_aspect: Sequence[float] = (0.75, 1.5),
    context_scale: Sequence[float] = (0.85, 1.0),
    min_keep: int = 10,
    allow_overlap: bool = False,
    crop_scale: Sequence[float] = (0.3, 1.0),
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
    flip_p: float = 0.0,
) -> IJEPAPolicy:
    """I-JEPA's view and masks (Assran et al. 2023; ``src/transforms.py`` ``make_transforms`` and
    ``configs/in1k_vith14_ep300.yaml``): random resized crop scale (0.3, 1.0), no flip, no colour
    distortion, no blur; 4 target blocks of scale (0.15, 0.2) and aspect (0.75, 1.5), one context block of
    scale (0.85, 1.0) and aspect 1 without the targets, ``min_keep`` 10 (:func:`multi_block_masks`)."""
    name = "ijepa"
    grid = patch_grid(name, transform, encoder)
    if isinstance(num_targets, bool) or not isinstance(num_targets, int) or num_targets < 1:
        raise ValueError(f"{name}: num_targets must be a positive integer, got {num_targets!r}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
        raise ValueError(f"{name}: min_keep must be an integer >= 0, got {min_keep!r}")
    if grid[0] < 2 or grid[1] < 2:
        raise ValueError(f"{name}: the {grid[0]}x{grid[1]} patch grid is too small for I-JEPA's blocks")
    options = {
        "num_targets": num_targets,
        "target_scale": _pair(name, "target_scale", target_scale, 0.0, 1.0),
        "target_aspect": _pair(name, "target_aspect", target_aspect, 0.0, None),
        "context_scale": _pair(name, "context_scale", context_scale, 0.0, 1.0),
        "context_aspect": (1.0, 1.0),
        "min_keep": min_keep,
        "allow_overlap": bool(allow_overlap),
    }
    view = _view(name, info, transform, crop_scale, crop_ratio, flip_p)
    return IJEPAPolicy(transform=transform, view=view, grid=grid, options=options)
