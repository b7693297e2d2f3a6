"""Image mask samplers (MAE, BEiT / DINOv2, I-JEPA) against transcriptions of the authors' code, and the
masking view policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.augment import VIEW_POLICIES, ImageTransform
from selfsup.augment.image_masks import block_mask, multi_block_masks, random_patch_mask
from selfsup.data.base import Batch
from tests.tiny_data import tiny_images


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rng_like(seed: int) -> np.random.Generator:
    """The NumPy generator the block samplers run on for ``torch.Generator().manual_seed(seed)``."""
    draw = torch.randint(0, 2**62, (1,), generator=_gen(seed))
    return np.random.default_rng(int(draw.item()))


# ----------------------------------------------------------------------------- MAE


def reference_mae_random_masking(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """facebookresearch/mae, models_mae.py, MaskedAutoencoderViT.random_masking (the mask part)."""
    n, length = noise.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones([n, length])
    mask[:, :len_keep] = 0
    return torch.gather(mask, dim=1, index=ids_restore)


@pytest.mark.parametrize(("n", "ratio"), [(64, 0.75), (49, 0.75), (196, 0.6), (10, 0.0)])
def test_random_patch_mask_equals_mae(n: int, ratio: float) -> None:
    mask = random_patch_mask(5, n, ratio, _gen(3))
    noise = torch.rand(5, n, generator=_gen(3))
    assert torch.equal(mask, reference_mae_random_masking(noise, ratio).bool())
    assert (mask.sum(1) == n - int(n * (1 - ratio))).all()


def test_random_patch_mask_deterministic_and_varies() -> None:
    a, b = random_patch_mask(4, 64, 0.75, _gen(1)), random_patch_mask(4, 64, 0.75, _gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, random_patch_mask(4, 64, 0.75, _gen(2)))
    assert not torch.equal(a[0], a[1])  # per-sample masks
    with pytest.raises(ValueError):
        random_patch_mask(2, 4, 0.9, _gen())  # int(4 * 0.1) = 0 kept


# ----------------------------------------------------------------------------- BEiT / DINOv2


class _Random:
    """Python's ``random`` API on a NumPy generator, in the draws our sampler makes."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.rng.random()

    def randint(self, a: int, b: int) -> int:  # inclusive, as random.randint
        return int(self.rng.integers(a, b + 1))


def reference_beit_masking(
    random, height, width, num_masking_patches, min_num_patches, max_num_patches, aspect
):
    """facebookresearch/dinov2, dinov2/data/masking.py, MaskingGenerator (BEiT's): ``_mask``, ``__call__``."""
    log_aspect_ratio = (math.log(aspect[0]), math.log(aspect[1]))
    mask = np.zeros((height, width), dtype=bool)

    def _mask(mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = random.uniform(min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))  # noqa: RUF046 (transcribed)
            w = int(round(math.sqrt(target_area / aspect_ratio)))  # noqa: RUF046 (transcribed)
            if w < width and h < height:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    mask_count = 0
    while mask_count < num_masking_patches:
        max_mask_patches = min(num_masking_patches - mask_count, max_num_patches)
        delta = _mask(mask, max_mask_patches)
        if delta == 0:
            break
        mask_count += delta
    return mask


def reference_dinov2_collate_masks(random, rng, batch, grid, ratio_tuple, probability, max_num_patches):
    """facebookresearch/dinov2, dinov2/data/collate.py, collate_data_and_cast (the masks), with
    MaskingGenerator(min_num_patches=4, min_aspect=0.3) and ``random.shuffle`` as a permutation."""
    n = grid[0] * grid[1]
    n_samples_masked = int(batch * probability)
    probs = np.linspace(*ratio_tuple, n_samples_masked + 1)
    masks_list = []
    for i in range(n_samples_masked):
        count = int(n * random.uniform(probs[i], probs[i + 1]))
        masks_list.append(reference_beit_masking(random, *grid, count, 4, max_num_patches, (0.3, 1 / 0.3)))
    for _ in range(n_samples_masked, batch):
        masks_list.append(np.zeros(grid, dtype=bool))
    masks_list = [masks_list[i] for i in rng.permutation(batch)]
    return np.stack(masks_list).reshape(batch, -1)


@pytest.mark.parametrize(("grid", "probability"), [((8, 8), 0.5), ((14, 14), 1.0), ((6, 9), 0.75)])
def test_block_mask_equals_dinov2_collate(grid: tuple[int, int], probability: float) -> None:
    n = grid[0] * grid[1]
    ours = block_mask(
        8, grid, _gen(5), ratio_range=(0.1, 0.5), probability=probability, max_num_patches=0.5 * n
    )
    rng = _rng_like(5)
    ref = reference_dinov2_collate_masks(_Random(rng), rng, 8, grid, (0.1, 0.5), probability, 0.5 * n)
    assert np.array_equal(ours.numpy(), ref)
    assert int((ours.sum(1) > 0).sum()) <= int(8 * probability)


def test_block_mask_fixed_count_equals_beit() -> None:
    """data2vec / BEiT: every image asks for the same count (120 of 196), blocks of >= 16 patches."""
    ours = block_mask(
        6, (14, 14), _gen(9), ratio_range=(120 / 196, 120 / 196), min_num_patches=16, shuffle=False
    )
    random = _Random(_rng_like(9))
    ref = []
    for _ in range(6):
        count = int(196 * random.uniform(120 / 196, 120 / 196))
        ref.append(reference_beit_masking(random, 14, 14, count, 16, count, (0.3, 1 / 0.3)).reshape(-1))
    assert np.array_equal(ours.numpy(), np.stack(ref))
    counts = ours.sum(1)
    assert (counts <= 120).all() and (counts >= 100).all()  # never above the target, close to it


def test_block_mask_blocks_within_bounds_and_deterministic() -> None:
    grid = (8, 8)
    a = block_mask(16, grid, _gen(0), ratio_range=(0.4, 0.4), min_num_patches=4, max_num_patches=8)
    assert torch.equal(
        a, block_mask(16, grid, _gen(0), ratio_range=(0.4, 0.4), min_num_patches=4, max_num_patches=8)
    )
    assert not torch.equal(a, block_mask(16, grid, _gen(1), ratio_range=(0.4, 0.4), min_num_patches=4))
    assert (a.sum(1) <= int(64 * 0.4)).all() and (a.sum(1) > 0).all()
    # No block spans a whole row or column of the grid (BEiT's strict w < W, h < H), so with a single
    # block of at most 8 patches no row / column of the grid is fully masked.
    single = block_mask(16, grid, _gen(2), ratio_range=(0.12, 0.12), min_num_patches=4, max_num_patches=7)
    rows = single.view(16, 8, 8)
    assert not rows.all(dim=2).any() and not rows.all(dim=1).any()
    none = block_mask(4, grid, _gen(0), probability=0.0)
    assert not none.any()


# ----------------------------------------------------------------------------- I-JEPA


class _Torchlike:
    """``torch.rand(1).item()`` / ``torch.randint(lo, hi, (1,))`` of I-JEPA's collator on our NumPy stream."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def rand(self) -> float:
        return float(self.rng.random())

    def randint(self, lo: int, hi: int) -> int:  # exclusive, as torch.randint
        return int(self.rng.integers(lo, hi))


def reference_ijepa_collator(r, batch, height, width, enc_scale, pred_scale, aspect, nenc, npred, min_keep):
    """facebookresearch/ijepa, src/masks/multiblock.py, MaskCollator.__call__ (allow_overlap=False)."""

    def sample_block_size(scale, aspect_ratio_scale):
        _rand = r.rand()
        min_s, max_s = scale
        mask_scale = min_s + _rand * (max_s - min_s)
        max_keep = int(height * width * mask_scale)
        min_ar, max_ar = aspect_ratio_scale
        aspect_ratio = min_ar + _rand * (max_ar - min_ar)
        h = int(round(math.sqrt(max_keep * aspect_ratio)))  # noqa: RUF046 (transcribed)
        w = int(round(math.sqrt(max_keep / aspect_ratio)))  # noqa: RUF046 (transcribed)
        while h >= height:
            h -= 1
        while w >= width:
            w -= 1
        return (h, w)

    def sample_block_mask(b_size, acceptable_regions=None):
        h, w = b_size
        tries = 0
        timeout = og_timeout = 20
        valid_mask = False
        while not valid_mask:
            top = r.randint(0, height - h)
            left = r.randint(0, width - w)
            mask = torch.zeros((height, width), dtype=torch.int32)
            mask[top : top + h, left : left + w] = 1
            if acceptable_regions is not None:
                for k in range(max(int(len(acceptable_regions) - tries), 0)):
                    mask *= acceptable_regions[k]
            mask = torch.nonzero(mask.flatten())
            valid_mask = len(mask) > min_keep
            if not valid_mask:
                timeout -= 1
                if timeout == 0:
                    tries += 1
                    timeout = og_timeout
        mask = mask.squeeze()
        mask_complement = torch.ones((height, width), dtype=torch.int32)
        mask_complement[top : top + h, left : left + w] = 0
        return mask, mask_complement

    p_size = sample_block_size(pred_scale, aspect)
    e_size = sample_block_size(enc_scale, (1.0, 1.0))
    masks_pred, masks_enc = [], []
    min_keep_pred = min_keep_enc = height * width
    for _ in range(batch):
        masks_p, masks_c = [], []
        for _ in range(npred):
            mask, mask_c = sample_block_mask(p_size)
            masks_p.append(mask)
            masks_c.append(mask_c)
            min_keep_pred = min(min_keep_pred, len(mask))
        masks_pred.append(masks_p)
        masks_e = []
        for _ in range(nenc):
            mask, _ = sample_block_mask(e_size, acceptable_regions=masks_c)
            masks_e.append(mask)
            min_keep_enc = min(min_keep_enc, len(mask))
        masks_enc.append(masks_e)
    masks_pred = torch.stack([torch.stack([cm[:min_keep_pred] for cm in cl]) for cl in masks_pred])
    masks_enc = torch.stack([torch.stack([cm[:min_keep_enc] for cm in cl]) for cl in masks_enc])
    return masks_enc, masks_pred  # (B, nenc, K_enc), (B, npred, K_pred) patch indices


@pytest.mark.parametrize(("grid", "min_keep"), [((14, 14), 10), ((8, 8), 4), ((16, 16), 10)])
def test_multi_block_masks_equal_ijepa_collator(grid: tuple[int, int], min_keep: int) -> None:
    context, targets = multi_block_masks(6, grid, _gen(7), min_keep=min_keep)
    enc, pred = reference_ijepa_collator(
        _Torchlike(_rng_like(7)), 6, *grid, (0.85, 1.0), (0.15, 0.2), (0.75, 1.5), 1, 4, min_keep
    )
    n = grid[0] * grid[1]
    kept = torch.zeros(6, n, dtype=torch.bool).scatter(1, enc[:, 0], True)
    assert torch.equal(~context, kept)
    ref_targets = torch.zeros(6, 4, n, dtype=torch.bool).scatter(2, pred, True)
    assert torch.equal(targets, ref_targets)


def test_multi_block_masks_counts_disjoint_deterministic() -> None:
    context, targets = multi_block_masks(16, (8, 8), _gen(0), min_keep=4)
    assert context.shape == (16, 64) and targets.shape == (16, 4, 64)
    kept = (~context).sum(1)
    assert (kept == kept[0]).all() and kept[0] > 4  # equal keep counts: the encoder drops the rest
    per_block = targets.sum(-1)
    assert (per_block == per_block[0, 0]).all() and per_block[0, 0] > 0
    assert not (targets & ~context.unsqueeze(1)).any()  # context and targets disjoint
    again = multi_block_masks(16, (8, 8), _gen(0), min_keep=4)
    assert torch.equal(context, again[0]) and torch.equal(targets, again[1])
    assert not torch.equal(targets, multi_block_masks(16, (8, 8), _gen(1), min_keep=4)[1])
    # CIFAR's grid with I-JEPA's min_keep=10: 3x3 target blocks are accepted (theirs would loop forever).
    _, small = multi_block_masks(4, (8, 8), _gen(3), min_keep=10)
    assert small.sum(-1).min() > 0


# ----------------------------------------------------------------------------- policies


class _FakeViT:
    patch_size = 4
    token_grid = (4, 4)
    modality = "image"


def _policy(name: str, **options):
    data = tiny_images(n=6, size=16)
    transform = ImageTransform(size=16)
    return VIEW_POLICIES.create(
        name, info=data.info, transform=transform, encoder=_FakeViT(), **options
    ), data


def test_mae_policy() -> None:
    policy, data = _policy("mae")
    views = policy(data.batch(torch.arange(6)), _gen(0))
    assert views.num_global == 1 and len(views.inputs) == 1
    assert views.inputs[0].shape == (6, 3, 16, 16)
    assert views.masks[0].shape == (6, 16) and (views.masks[0].sum(1) == 12).all()
    again = policy(data.batch(torch.arange(6)), _gen(0))
    assert torch.equal(views.inputs[0], again.inputs[0]) and torch.equal(views.masks[0], again.masks[0])


def test_ijepa_policy() -> None:
    data = tiny_images(n=6, size=16)

    class PatchTwo(_FakeViT):
        patch_size = 2  # an 8x8 grid: room for disjoint blocks

    policy = VIEW_POLICIES.create(
        "ijepa", info=data.info, transform=ImageTransform(size=16), encoder=PatchTwo()
    )
    views = policy(data.batch(torch.arange(6)), _gen(0))
    context, targets = views.masks[0], views.aux["target_masks"]
    assert context.shape == (6, 64) and targets.shape == (6, 4, 64)
    assert not (targets & ~context.unsqueeze(1)).any()


def test_masked_image_policy() -> None:
    policy, data = _policy("masked_image")
    views = policy(data.batch(torch.arange(6)), _gen(0))
    mask = views.masks[0]
    assert mask.shape == (6, 16) and mask.any(1).all() and (mask.sum(1) <= int(16 * 0.6)).all()


def test_policies_reject_what_they_cannot_mask() -> None:
    data = tiny_images(n=2, size=16)

    class NoGrid:
        token_grid = None

    with pytest.raises(ValueError, match="token grid"):
        VIEW_POLICIES.create("mae", info=data.info, transform=ImageTransform(size=16), encoder=NoGrid())
    with pytest.raises(ValueError, match="multiple"):
        VIEW_POLICIES.create("mae", info=data.info, transform=ImageTransform(size=18), encoder=_FakeViT())
    with pytest.raises(ValueError, match="mask_ratio"):
        _policy("mae", mask_ratio=1.0)
    assert isinstance(data.batch(torch.arange(2)), Batch)
