"""Multi-crop view policies (dino, swav, dinov2): shapes and order of the crops, the local size and its
patch rounding, determinism per seed, the authors' per-crop settings, iBOT masks, and option checks."""

from __future__ import annotations

import pytest
import torch
from tiny_data import small_encoder, tiny_images

from selfsup.augment import VIEW_POLICIES, ImageTransform
from selfsup.augment.multicrop import MultiCropPolicy

DATA = tiny_images(n=6, size=32)
TRANSFORM = ImageTransform(size=32)


def _policy(name: str, encoder: object = None, **options: object) -> MultiCropPolicy:
    factory = VIEW_POLICIES.get(name)
    kwargs = {"encoder": encoder} if encoder is not None else {}
    return factory(info=DATA.info, transform=TRANSFORM, **kwargs, **options)


def _batch():
    return DATA.batch(torch.arange(len(DATA)))


@pytest.mark.parametrize(("name", "locals_"), [("dino", 8), ("swav", 6)])
def test_global_crops_first_then_local_crops(name: str, locals_: int) -> None:
    views = _policy(name)(_batch(), torch.Generator().manual_seed(0))
    assert views.num_global == 2 and len(views.inputs) == 2 + locals_
    assert all(x.shape == (6, 3, 32, 32) for x in views.global_inputs)
    # 96 / 224 of 32 px, rounded: 14 px
    assert all(x.shape == (6, 3, 14, 14) for x in views.local_inputs)
    assert all(x.dtype == torch.float32 and torch.isfinite(x).all() for x in views.inputs)
    assert views.masks is None
    assert torch.equal(views.labels, DATA.labels)


def test_options_and_two_global_crops_alone() -> None:
    views = _policy("dino", num_local=0)(_batch(), torch.Generator().manual_seed(0))
    assert len(views.inputs) == 2 and views.num_global == 2
    views = _policy("dino", num_local=2, local_size=12, local_scale=[0.1, 0.3])(_batch(), torch.Generator())
    assert [tuple(x.shape[-2:]) for x in views.inputs] == [(32, 32)] * 2 + [(12, 12)] * 2


def test_local_size_follows_the_encoders_patch() -> None:
    vit = small_encoder("vit_tiny")  # patch 4
    assert _policy("dino", encoder=vit).local_size == 16  # 13.7 px -> the nearest patch multiple
    with pytest.raises(ValueError, match="multiple of the encoder's patch size 4"):
        _policy("dino", encoder=vit, local_size=14)


def test_same_seed_same_views_and_crops_differ() -> None:
    policy = _policy("dino", num_local=2)
    a = policy(_batch(), torch.Generator().manual_seed(3))
    b = policy(_batch(), torch.Generator().manual_seed(3))
    c = policy(_batch(), torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a.inputs, b.inputs))
    assert not torch.equal(a.inputs[0], c.inputs[0])
    assert not torch.equal(a.inputs[0], a.inputs[1]) and not torch.equal(a.inputs[2], a.inputs[3])


def test_authors_per_crop_settings() -> None:
    dino = _policy("dino")
    first, second = dino.global_views
    assert (first.blur_p, second.blur_p, dino.local_view.blur_p) == (1.0, 0.1, 0.5)
    assert (first.solarize_p, second.solarize_p, dino.local_view.solarize_p) == (0.0, 0.2, 0.0)
    assert first.crop_scale == (0.4, 1.0) and dino.local_view.crop_scale == (0.05, 0.4)
    assert first.jitter == (0.4, 0.4, 0.2, 0.1) and first.jitter_p == 0.8 and first.grayscale_p == 0.2
    swav = _policy("swav")
    assert swav.global_views[0].crop_scale == (0.14, 1.0) and swav.local_view.crop_scale == (0.05, 0.14)
    assert swav.global_views[0].jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert {v.blur_p for v in (*swav.global_views, swav.local_view)} == {0.5}


def test_dinov2_masks_the_global_crops_as_dinov2s_collate() -> None:
    vit = small_encoder("vit_tiny")  # 32 px at patch 4: an 8 x 8 grid
    policy = _policy("dinov2", encoder=vit, num_local=2)
    views = policy(_batch(), torch.Generator().manual_seed(0))
    assert views.masks is not None and len(views.masks) == 4
    assert views.masks[2] is None and views.masks[3] is None
    masks = torch.cat([views.masks[0], views.masks[1]])
    assert masks.shape == (12, 64) and masks.dtype == torch.bool
    counts = masks.sum(1)
    assert int((counts > 0).sum()) == 6  # int(2B * 0.5) of the 2B global crops
    assert int(counts.max()) <= int(0.5 * 64)
    again = policy(_batch(), torch.Generator().manual_seed(0))
    assert torch.equal(again.masks[0], views.masks[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_local": -1}, "num_local"),
        ({"num_local": 2.0}, "num_local"),
        ({"local_size": 0}, "local_size"),
        ({"local_scale": [0.5, 0.2]}, "local_scale"),
        ({"global_scale": [0.0, 1.0]}, "crop_scale"),
        ({"global_blur_p": [1.0]}, "global_blur_p"),
        ({"local_blur_p": 1.5}, "local_blur_p"),
        ({"jitter": [0.4, 0.4, 0.2, 0.9]}, "hue"),
    ],
)
def test_options_are_checked_with_clear_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _policy("dino", **options)


def test_dinov2_option_checks() -> None:
    vit = small_encoder("vit_tiny")
    with pytest.raises(ValueError, match="mask_ratio"):
        _policy("dinov2", encoder=vit, mask_ratio=[0.6, 0.2])
    with pytest.raises(ValueError, match="patch size"):
        _policy("dinov2", encoder=small_encoder("small_cnn"))
