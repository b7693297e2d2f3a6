"""Tests for the batched augmentations (selfsup.augment.functional) and the SimCLR/BYOL view policies.

Each batched op is compared with a per-image reference written here (plain loops, numpy,
``colorsys``, direct 2-D convolution, ``F.interpolate`` on a slice), and the crop sampler with a
sequential transcription of torchvision's ``RandomResizedCrop.get_params`` fed the same uniforms.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.augment import IMAGENET_MEAN, IMAGENET_STD, VIEW_POLICIES, ImageTransform, to_normalized_float
from selfsup.augment import functional as AF
from selfsup.augment.policies import MultiViewPolicy
from selfsup.data.base import Batch, DataInfo


def _float_images(batch: int, height: int, width: int, seed: int = 0) -> Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _uint8_images(batch: int, height: int, width: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _OnImages:
    """A registered image policy called on bare ``(B, 3, H, W)`` tensors (wrapped in a Batch)."""

    def __init__(self, policy: MultiViewPolicy) -> None:
        self.policy = policy

    def __call__(self, images: Tensor, generator: torch.Generator):
        n = images.shape[0] if images.ndim else 0
        batch = Batch(inputs=images, labels=torch.full((n,), -1), indices=torch.arange(n))
        return self.policy(batch, generator)

    def __getattr__(self, name: str) -> object:
        return getattr(self.policy, name)


def make_policy(
    name: str, size: int, mean: object = IMAGENET_MEAN, std: object = IMAGENET_STD, **options: object
) -> _OnImages:
    """``VIEW_POLICIES.create`` with the info and transform the builder would supply."""
    transform = ImageTransform(size=size, mean=tuple(mean), std=tuple(std))  # type: ignore[arg-type]
    info = DataInfo(modality="image", sample_shape=(3, size, size), dtype="uint8")
    return _OnImages(VIEW_POLICIES.create(name, info=info, transform=transform, **options))


def _plain(name: str, size: int, **overrides: object) -> _OnImages:
    """A policy with every random step off (full-image crop, no flip), then ``overrides``."""
    options: dict[str, object] = {
        "crop_scale": [1.0, 1.0],
        "flip_p": 0.0,
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
    }
    options["blur_p"] = 0.0 if name == "simclr" else [0.0, 0.0]
    if name == "byol":
        options["solarize_p"] = [0.0, 0.0]
    options.update(overrides)
    return make_policy(name, size=size, **options)


# ----------------------------------------------------------------------------- resized crop + flip


def _box(batch: int, top: float, left: float, h: float, w: float) -> Tensor:
    return torch.tensor([[top, left, h, w]] * batch)


def test_full_box_without_flip_reproduces_the_image() -> None:
    x = _float_images(2, 12, 12)
    out = AF.resized_crop(x, _box(2, 0, 0, 12, 12), 12)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_full_box_with_flip_equals_torch_flip() -> None:
    x = _float_images(3, 10, 10)
    flip = torch.tensor([True, False, True])
    out = AF.resized_crop(x, _box(3, 0, 0, 10, 10), 10, flip)
    expected = torch.where(flip.view(-1, 1, 1, 1), torch.flip(x, dims=[3]), x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_box_at_native_scale_equals_slicing_per_sample() -> None:
    x = _float_images(2, 16, 20)
    boxes = torch.tensor([[3.0, 5.0, 8.0, 8.0], [0.0, 12.0, 8.0, 8.0]])
    out = AF.resized_crop(x, boxes, 8, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], x[0, :, 3:11, 5:13], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], torch.flip(x[1, :, 0:8, 12:20], dims=[2]), atol=1e-6, rtol=0)


def test_box_shrunk_by_two_equals_interpolate_of_the_slice() -> None:
    x = _float_images(1, 20, 20)
    out = AF.resized_crop(x, _box(1, 2, 6, 12, 12), 6)
    expected = F.interpolate(x[:, :, 2:14, 6:18], size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("height", "width", "size"), [(10, 10, 17), (16, 16, 8), (12, 20, 9)])
def test_full_box_resize_equals_interpolate(height: int, width: int, size: int) -> None:
    x = _float_images(2, height, width)
    out = AF.resized_crop(x, _box(2, 0, 0, height, width), size)
    expected = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_enlarged_inner_box_equals_interpolate_away_from_box_edges() -> None:
    x = _float_images(1, 16, 16)
    top, left, side, size = 4, 6, 6, 15
    out = AF.resized_crop(x, _box(1, top, left, side, side), size)
    expected = F.interpolate(
        x[:, :, top : top + side, left : left + side], size=(size, size), mode="bilinear", align_corners=False
    )
    # Output pixel k samples the slice at (k + 0.5) * side / size - 0.5; where that lies inside
    # [0, side - 1] both methods read only pixels of the box.
    src = (torch.arange(size) + 0.5) * side / size - 0.5
    inside = (src >= 0) & (src <= side - 1)
    assert 0 < int(inside.sum()) < size
    torch.testing.assert_close(
        out[..., inside, :][..., inside], expected[..., inside, :][..., inside], atol=1e-6, rtol=0
    )


def test_resized_crop_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="boxes must have shape"):
        AF.resized_crop(_float_images(2, 8, 8), torch.zeros(3, 4), 4)


# ----------------------------------------------------------------------------- crop sampling


def _reference_box(
    u_area: list[float],
    u_ratio: list[float],
    u_offset: list[float],
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[tuple[int, int, int, int], bool]:
    """torchvision's RandomResizedCrop.get_params, one sample, sequential tries; returns (box, fell_back)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for ua, ur in zip(u_area, u_ratio):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * ur)
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int(u_offset[0] * (height - h + 1))
            j = int(u_offset[1] * (width - w + 1))
            return (i, j, h, w), False
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return ((height - h) // 2, (width - w) // 2, h, w), True


@pytest.mark.parametrize(
    ("height", "width", "scale"), [(24, 40, (0.08, 1.0)), (20, 30, (0.6, 1.0)), (32, 32, (0.2, 1.0))]
)
def test_crop_boxes_match_sequential_torchvision_algorithm(
    height: int, width: int, scale: tuple[float, float]
) -> None:
    gen = _gen(3)
    batch, tries, ratio = 300, 10, (3 / 4, 4 / 3)
    u_area = torch.rand(batch, tries, generator=gen)
    u_ratio = torch.rand(batch, tries, generator=gen)
    u_offset = torch.rand(batch, 2, generator=gen)
    boxes = AF.crop_boxes_from_uniforms(u_area, u_ratio, u_offset, height, width, scale, ratio)
    fallbacks = 0
    for b in range(batch):
        expected, fell_back = _reference_box(
            u_area[b].double().tolist(),
            u_ratio[b].double().tolist(),
            u_offset[b].double().tolist(),
            height,
            width,
            scale,
            ratio,
        )
        fallbacks += fell_back
        assert tuple(int(v) for v in boxes[b].tolist()) == expected, f"sample {b}"
    if scale[0] >= 0.6:  # large areas on a 2:3 image often fail all tries: both branches are covered
        assert 0 < fallbacks < batch


def test_crop_fallback_is_the_centred_box_with_clamped_ratio() -> None:
    # A 10x40 image cannot hold a full-area box with aspect ratio <= 4/3: every try fails, and
    # the fallback is h = 10, w = round(10 * 4 / 3) = 13, centred at left = (40 - 13) // 2 = 13.
    boxes = AF.sample_crop_boxes(5, 10, 40, _gen(0), scale=(1.0, 1.0))
    assert boxes.tolist() == [[0.0, 13.0, 10.0, 13.0]] * 5


def test_sampled_boxes_are_whole_pixels_inside_the_image_and_in_range() -> None:
    height, width = 30, 50
    boxes = AF.sample_crop_boxes(2000, height, width, _gen(1), scale=(0.2, 0.9), ratio=(0.5, 2.0))
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert bool((top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all())
    assert bool((top + h <= height).all() and (left + w <= width).all())
    # Rounding each side by up to half a pixel moves the area and the ratio a little off range.
    area = h * w / (height * width)
    assert bool((area > 0.2 * 0.9).all() and (area < 0.9 * 1.1).all())
    assert bool(((w / h) > 0.5 * 0.9).all() and ((w / h) < 2.0 * 1.1).all())
    # Different samples get different boxes, and the placements cover the image.
    assert len({tuple(b) for b in boxes.tolist()}) > 1900
    assert int(top.min()) == 0 and int((left + w).max()) == width


# ----------------------------------------------------------------------------- colour


def _luma_np(img: np.ndarray) -> np.ndarray:
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def test_grayscale_uses_itu_r_601_luma() -> None:
    pixels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.4, 0.6]])
    gray = AF.grayscale(pixels.T.reshape(1, 3, 1, 4))
    expected = [0.299, 0.587, 0.114, 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6]
    torch.testing.assert_close(gray.flatten(), torch.tensor(expected), atol=1e-6, rtol=0)


def test_random_grayscale_converts_only_selected_samples() -> None:
    x = _float_images(2, 5, 6)
    out = AF.random_grayscale(x, torch.tensor([True, False]))
    expected = torch.from_numpy(_luma_np(x[0].numpy())).expand(3, 5, 6)
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=0)
    assert torch.equal(out[1], x[1])


def _brightness_np(img: np.ndarray, f: float) -> np.ndarray:
    return np.clip(img * f, 0, 1)


def _contrast_np(img: np.ndarray, f: float) -> np.ndarray:
    return np.clip(f * img + (1 - f) * _luma_np(img).mean(), 0, 1)


def _saturation_np(img: np.ndarray, f: float) -> np.ndarray:
    return np.clip(f * img + (1 - f) * _luma_np(img)[None], 0, 1)


def _hue_np(img: np.ndarray, shift: float) -> np.ndarray:
    out = np.empty_like(img)
    for y in range(img.shape[1]):
        for x in range(img.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*img[:, y, x].tolist())
            out[:, y, x] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return out


def _brightness_add_np(img: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(img + delta, 0, 1)


def _contrast_channels_np(img: np.ndarray, f: float) -> np.ndarray:
    out = np.empty_like(img)
    for c in range(3):
        mean = img[c].mean()
        out[c] = np.clip(f * (img[c] - mean) + mean, 0, 1)
    return out


def _saturation_hsv_np(img: np.ndarray, f: float) -> np.ndarray:
    out = np.empty_like(img)
    for y in range(img.shape[1]):
        for x in range(img.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*img[:, y, x].tolist())
            out[:, y, x] = colorsys.hsv_to_rgb(h, min(1.0, max(0.0, s * f)), v)
    return np.clip(out, 0, 1)


_COLOR_OPS = {
    "brightness": (AF.adjust_brightness, _brightness_np, [0.0, 0.6, 1.0, 1.7]),
    "contrast": (AF.adjust_contrast, _contrast_np, [0.0, 0.6, 1.0, 1.7]),
    "saturation": (AF.adjust_saturation, _saturation_np, [0.0, 0.6, 1.0, 1.7]),
    "hue": (AF.adjust_hue, _hue_np, [-0.5, -0.2, 0.0, 0.35]),
    "brightness_additive": (AF.adjust_brightness_additive, _brightness_add_np, [-0.6, -0.2, 0.0, 0.35, 0.9]),
    "contrast_per_channel": (
        AF.adjust_contrast_per_channel,
        _contrast_channels_np,
        [-0.5, 0.0, 0.6, 1.0, 1.7],
    ),
    "saturation_hsv": (AF.adjust_saturation_hsv, _saturation_hsv_np, [-0.3, 0.0, 0.6, 1.0, 1.7, 3.0]),
}


@pytest.mark.parametrize("name", sorted(_COLOR_OPS))
def test_color_op_matches_per_image_reference(name: str) -> None:
    op, reference, values = _COLOR_OPS[name]
    x = _float_images(len(values), 5, 7, seed=2).double()
    out = op(x, torch.tensor(values, dtype=torch.float64))
    for b, value in enumerate(values):
        expected = torch.from_numpy(reference(x[b].numpy(), value))
        torch.testing.assert_close(out[b], expected, atol=1e-9, rtol=0)


def _special_pixels() -> Tensor:
    """Grays, black, white, primaries and ties between channels, plus random colours: ``(N, 3)``."""
    fixed = [
        [0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1],
        [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.7, 0.7, 0.2], [0.2, 0.7, 0.7], [0.7, 0.2, 0.7],
        [0.3, 0.2, 0.25], [0.1, 0.9, 0.95],
    ]  # fmt: skip
    return torch.cat(
        [torch.tensor(fixed, dtype=torch.float64), torch.rand(50, 3, generator=_gen(4)).double()]
    )


def test_rgb_to_hsv_and_back_match_colorsys() -> None:
    pixels = _special_pixels()
    hsv = AF.rgb_to_hsv(pixels.T.reshape(1, 3, 1, -1)).reshape(3, -1).T
    expected = torch.tensor([colorsys.rgb_to_hsv(*p) for p in pixels.tolist()], dtype=torch.float64)
    hue_gap = (hsv[:, 0] - expected[:, 0]).abs()
    assert float(torch.minimum(hue_gap, 1 - hue_gap).max()) < 1e-12
    torch.testing.assert_close(hsv[:, 1:], expected[:, 1:], atol=1e-12, rtol=0)
    rgb = AF.hsv_to_rgb(expected.T.reshape(1, 3, 1, -1)).reshape(3, -1).T
    expected_rgb = torch.tensor([colorsys.hsv_to_rgb(*p) for p in expected.tolist()], dtype=torch.float64)
    torch.testing.assert_close(rgb, expected_rgb, atol=1e-12, rtol=0)


def test_hue_shift_hand_values_and_zero_shift_identity() -> None:
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    # A third of a turn takes red to green; a sixth takes orange-red (1, 0.5, 0) to (0.5, 1, 0).
    torch.testing.assert_close(
        AF.adjust_hue(red, torch.tensor([1 / 3])).flatten(), torch.tensor([0.0, 1.0, 0.0])
    )
    orange = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        AF.adjust_hue(orange, torch.tensor([1 / 6])).flatten(),
        torch.tensor([0.5, 1.0, 0.0]),
        atol=1e-6,
        rtol=0,
    )
    x = _float_images(3, 8, 8)
    torch.testing.assert_close(AF.adjust_hue(x, torch.zeros(3)), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["brightness_additive", "contrast_per_channel", "saturation_hsv"])
def test_new_color_ops_on_gray_black_white_and_tied_pixels(name: str) -> None:
    op, reference, values = _COLOR_OPS[name]
    pixels = _special_pixels()  # grays, black, white, primaries, ties, then random colours
    x = pixels.T.reshape(1, 3, 1, -1).expand(len(values), -1, -1, -1)
    out = op(x, torch.tensor(values, dtype=torch.float64))
    for b, value in enumerate(values):
        expected = torch.from_numpy(reference(x[b].numpy(), value))
        torch.testing.assert_close(out[b], expected, atol=1e-9, rtol=0)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if name == "saturation_hsv":
        # Gray pixels (black, white and mid-gray) have no saturation to scale.
        torch.testing.assert_close(out[..., :3], x[..., :3], atol=0, rtol=0)


def test_byol_style_ops_hand_values() -> None:
    def pixel(*rgb: float) -> Tensor:
        return torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)

    def flat(t: Tensor) -> list[float]:
        return [round(v, 9) for v in t.flatten().tolist()]

    # Additive brightness shifts every channel by the same amount, then clips.
    two = torch.tensor([[0.2, 0.9]], dtype=torch.float64).expand(3, 2).reshape(1, 3, 1, 2)
    assert (
        flat(AF.adjust_brightness_additive(two, torch.tensor([0.2], dtype=torch.float64))) == [0.4, 1.0] * 3
    )
    assert (
        flat(AF.adjust_brightness_additive(two, torch.tensor([-0.3], dtype=torch.float64))) == [0.0, 0.6] * 3
    )
    # Per-channel contrast: R = (0, 1) has mean 0.5, G is flat, B = (0.2, 0.4) has mean 0.3.
    image = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.2, 0.4]], dtype=torch.float64).view(1, 3, 1, 2)
    out = AF.adjust_contrast_per_channel(image, torch.tensor([2.0], dtype=torch.float64))
    assert flat(out) == [0.0, 1.0, 0.5, 0.5, 0.1, 0.5]
    # Factor 0 flattens each channel to its own mean: the average colour, not torchvision's gray.
    out = AF.adjust_contrast_per_channel(image, torch.tensor([0.0], dtype=torch.float64))
    assert flat(out) == [0.5, 0.5, 0.5, 0.5, 0.3, 0.3]
    # HSV saturation keeps hue and value: orange (s = 1) at half saturation, then clipped at s = 1.
    orange = pixel(1.0, 0.5, 0.0)
    half = AF.adjust_saturation_hsv(orange, torch.tensor([0.5], dtype=torch.float64))
    assert flat(half) == [1.0, 0.75, 0.5]
    assert flat(AF.adjust_saturation_hsv(half, torch.tensor([3.0], dtype=torch.float64))) == [1.0, 0.5, 0.0]
    # Desaturated red is the gray of its value (white), where torchvision's blend gives its luma.
    red, zero = pixel(1.0, 0.0, 0.0), torch.zeros(1, dtype=torch.float64)
    assert flat(AF.adjust_saturation_hsv(red, zero)) == [1.0, 1.0, 1.0]
    assert flat(AF.adjust_saturation(red, zero)) == [0.299, 0.299, 0.299]
    # Black stays black whatever the factor.
    black = pixel(0.0, 0.0, 0.0)
    assert flat(AF.adjust_saturation_hsv(black, torch.tensor([2.0], dtype=torch.float64))) == [0.0] * 3


_REFERENCE_OPS = {
    "torchvision": (_brightness_np, _contrast_np, _saturation_np, _hue_np),
    "simclr": (_brightness_np, _contrast_channels_np, _saturation_hsv_np, _hue_np),
    "byol": (_brightness_add_np, _contrast_channels_np, _saturation_hsv_np, _hue_np),
}


def _jitter_np(img: np.ndarray, style: str, values: list[float | None], order: list[int]) -> np.ndarray:
    """One image: the style's ops in ``order``, clipping after each (skipping ops whose value is None)."""
    for index in order:
        if values[index] is not None:
            img = np.clip(_REFERENCE_OPS[style][index](img, values[index]), 0, 1)
    return img


def _ops_of(params: AF.JitterParams) -> tuple[Tensor | None, ...]:
    return (params.brightness, params.contrast, params.saturation, params.hue)


def _sample_values(params: AF.JitterParams, b: int) -> list[float | None]:
    return [None if v is None else float(v[b]) for v in _ops_of(params)]


def test_byol_style_color_jitter_matches_per_image_reference() -> None:
    x = _float_images(5, 6, 7, seed=8).double()
    f64 = torch.float64
    params = AF.JitterParams(
        brightness=torch.tensor([0.3, -0.25, 0.1, 0.2, -0.4], dtype=f64),  # additive deltas
        contrast=torch.tensor([1.3, 0.7, -0.2, 1.4, 0.6], dtype=f64),  # -0.2: BYOL's range for c > 1
        saturation=torch.tensor([0.8, 1.2, 0.0, 1.1, 1.9], dtype=f64),
        hue=torch.tensor([0.05, -0.1, 0.2, -0.08, 0.1], dtype=f64),
        apply=torch.tensor([True, True, True, True, False]),
        order=torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3], [2, 0, 3, 1], [1, 3, 0, 2], [0, 1, 2, 3]]),
        style="byol",
    )
    out = AF.color_jitter(x, params)
    assert out.dtype == torch.float64
    for b in range(4):
        expected = _jitter_np(x[b].numpy(), "byol", _sample_values(params, b), params.order[b].tolist())
        torch.testing.assert_close(out[b], torch.from_numpy(expected), atol=1e-9, rtol=0)
    assert torch.equal(out[4], x[4])


def test_color_jitter_applies_ops_in_the_given_order_to_selected_samples() -> None:
    x = _float_images(3, 4, 5, seed=5).double()
    params = AF.JitterParams(
        brightness=torch.tensor([1.3, 0.7, 1.1], dtype=torch.float64),
        contrast=torch.tensor([0.5, 1.4, 0.9], dtype=torch.float64),
        saturation=None,  # a skipped op
        hue=torch.tensor([0.1, -0.3, 0.2], dtype=torch.float64),
        apply=torch.tensor([True, True, False]),
        order=torch.tensor(
            [
                [AF.HUE, AF.SATURATION, AF.CONTRAST, AF.BRIGHTNESS],
                [AF.BRIGHTNESS, AF.HUE, AF.SATURATION, AF.CONTRAST],
                [AF.CONTRAST, AF.BRIGHTNESS, AF.HUE, AF.SATURATION],
            ]
        ),
    )
    out = AF.color_jitter(x, params)
    steps = {
        AF.BRIGHTNESS: (_brightness_np, params.brightness),
        AF.CONTRAST: (_contrast_np, params.contrast),
        AF.HUE: (_hue_np, params.hue),
    }
    for b in range(2):
        img = x[b].numpy()
        for index in params.order[b].tolist():  # each sample in its own order
            if index in steps:  # saturation is skipped
                reference, value = steps[index]
                img = reference(img, float(value[b]))  # type: ignore[index]
        torch.testing.assert_close(out[b], torch.from_numpy(img), atol=1e-9, rtol=0)
    assert torch.equal(out[2], x[2])
    # The ops do not commute, so the order is really followed.
    fixed = torch.tensor([[0, 1, 2, 3]] * 3)
    reordered = AF.color_jitter(x, dataclasses.replace(params, order=fixed))
    assert not torch.allclose(reordered[:2], out[:2])


@pytest.mark.parametrize("style", AF.JITTER_STYLES)
def test_color_jitter_order_is_per_sample_not_per_batch(style: str) -> None:
    # Two copies of one image with the same parameters and different orders: with an order shared
    # by the batch they would come out equal.
    image = _float_images(1, 6, 6, seed=9).double()
    x = image.expand(2, -1, -1, -1)
    f64 = torch.float64
    brightness = 0.25 if style == "byol" else 1.35
    params = AF.JitterParams(
        brightness=torch.full((2,), brightness, dtype=f64),
        contrast=torch.full((2,), 0.6, dtype=f64),
        saturation=torch.full((2,), 1.6, dtype=f64),
        hue=torch.full((2,), 0.15, dtype=f64),
        apply=torch.tensor([True, True]),
        order=torch.tensor([[AF.BRIGHTNESS, AF.CONTRAST, AF.SATURATION, AF.HUE], [3, 1, 2, 0]]),
        style=style,
    )
    out = AF.color_jitter(x, params)
    ops = {
        "torchvision": (AF.adjust_brightness, AF.adjust_contrast, AF.adjust_saturation, AF.adjust_hue),
        "simclr": (
            AF.adjust_brightness,
            AF.adjust_contrast_per_channel,
            AF.adjust_saturation_hsv,
            AF.adjust_hue,
        ),
        "byol": (
            AF.adjust_brightness_additive,
            AF.adjust_contrast_per_channel,
            AF.adjust_saturation_hsv,
            AF.adjust_hue,
        ),
    }[style]
    values = (params.brightness, params.contrast, params.saturation, params.hue)
    for b in range(2):
        expected = image
        for index in params.order[b].tolist():  # one op at a time, in this sample's own order
            expected = ops[index](expected, values[index][b : b + 1])  # type: ignore[index]
        torch.testing.assert_close(out[b : b + 1], expected, atol=1e-12, rtol=0)
        reference = _jitter_np(image[0].numpy(), style, _sample_values(params, b), params.order[b].tolist())
        torch.testing.assert_close(out[b], torch.from_numpy(reference), atol=1e-9, rtol=0)
    assert (out[0] - out[1]).abs().max() > 0.05


@pytest.mark.parametrize("style", AF.JITTER_STYLES)
def test_color_jitter_sample_does_not_depend_on_the_rest_of_the_batch(style: str) -> None:
    x = _float_images(40, 5, 6, seed=10)
    params = AF.sample_color_jitter(40, 0.4, 0.4, 0.4, 0.1, p=0.7, generator=_gen(11), style=style)
    out = AF.color_jitter(x, params)
    for b in range(40):
        alone = AF.JitterParams(
            *(None if v is None else v[b : b + 1] for v in _ops_of(params)),
            apply=params.apply[b : b + 1],
            order=params.order[b : b + 1],
            style=style,
        )
        torch.testing.assert_close(out[b : b + 1], AF.color_jitter(x[b : b + 1], alone), atol=1e-6, rtol=0)
        if not params.apply[b]:
            assert torch.equal(out[b], x[b])
    assert out.dtype == torch.float32


def test_color_jitter_runs_each_op_once_per_selected_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, list[int]] = {}

    def recording(name: str, op):  # type: ignore[no-untyped-def]
        def wrapped(images: Tensor, value: Tensor) -> Tensor:
            calls.setdefault(name, []).append(images.shape[0])
            return op(images, value)

        return wrapped

    names = [
        "adjust_brightness_additive",
        "adjust_contrast_per_channel",
        "adjust_saturation_hsv",
        "adjust_hue",
    ]
    for name in names:
        monkeypatch.setattr(AF, name, recording(name, getattr(AF, name)))
    params = AF.sample_color_jitter(64, 0.4, 0.4, 0.2, 0.1, p=0.75, generator=_gen(12), style="byol")
    AF.color_jitter(_float_images(64, 4, 4), params)
    selected = int(params.apply.sum())
    assert 0 < selected < 64
    for name in names:
        # At most one call per position, and together they cover each selected sample once.
        assert len(calls[name]) <= 4 and sum(calls[name]) == selected, (name, calls[name])


def test_color_jitter_skips_ops_with_no_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> Tensor:
        raise AssertionError("a skipped op was called")

    monkeypatch.setattr(AF, "adjust_saturation_hsv", fail)
    params = AF.sample_color_jitter(8, 0.4, 0.4, 0.0, 0.1, p=1.0, generator=_gen(13), style="simclr")
    assert params.saturation is None
    AF.color_jitter(_float_images(8, 4, 4), params)
    # With no sample selected, no op runs at all and the images come back unchanged.
    for name in ("adjust_brightness", "adjust_contrast_per_channel", "adjust_hue"):
        monkeypatch.setattr(AF, name, fail)
    x = _float_images(8, 4, 4)
    out = AF.color_jitter(x, dataclasses.replace(params, apply=torch.zeros(8, dtype=torch.bool)))
    assert torch.equal(out, x)


def test_color_jitter_rejects_bad_orders_and_styles() -> None:
    params = AF.sample_color_jitter(3, 0.4, 0.4, 0.4, 0.1, p=1.0, generator=_gen(14))
    x = _float_images(3, 4, 4)
    with pytest.raises(ValueError, match=r"order must be a \(3, 4\) tensor"):
        AF.color_jitter(x, dataclasses.replace(params, order=torch.tensor([0, 1, 2, 3])))
    with pytest.raises(ValueError, match=r"order must be a \(3, 4\) tensor"):
        AF.color_jitter(x, dataclasses.replace(params, order=(0, 1, 2, 3)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="permutation"):
        AF.color_jitter(
            x, dataclasses.replace(params, order=torch.tensor([[0, 1, 2, 3]] * 2 + [[0, 0, 1, 2]]))
        )
    with pytest.raises(ValueError, match="unknown colour-jitter style 'tf'"):
        AF.color_jitter(x, dataclasses.replace(params, style="tf"))


_JITTER_RANGES = {
    # brightness 0.4, saturation 1.5, hue 0.1: (low, high) of each draw
    "torchvision": ((0.6, 1.4), (0.0, 2.5), (-0.1, 0.1)),
    "simclr": ((0.6, 1.4), (0.0, 2.5), (-0.1, 0.1)),
    "byol": ((-0.4, 0.4), (-0.5, 2.5), (-0.1, 0.1)),
}


@pytest.mark.parametrize("style", AF.JITTER_STYLES)
def test_sample_color_jitter_ranges_and_skipped_ops(style: str) -> None:
    params = AF.sample_color_jitter(4000, 0.4, 0.0, 1.5, 0.1, p=0.8, generator=_gen(6), style=style)
    assert params.style == style and params.contrast is None
    assert params.brightness is not None and params.saturation is not None and params.hue is not None
    for values, (low, high) in zip((params.brightness, params.saturation, params.hue), _JITTER_RANGES[style]):
        assert low <= float(values.min()) < low + 0.01 * (high - low)
        assert high - 0.01 * (high - low) < float(values.max()) <= high
    assert float(params.brightness.std()) > 0.2  # spread over the range, one value per sample
    assert abs(float(params.apply.float().mean()) - 0.8) < 0.03


def test_sample_color_jitter_contrast_range_per_style() -> None:
    # A strength above 1: torchvision and (extending TensorFlow, which refuses it) SimCLR floor the
    # factor at 0, BYOL does not.
    for style, low in (("torchvision", 0.0), ("simclr", 0.0), ("byol", -0.5)):
        params = AF.sample_color_jitter(2000, 0.0, 1.5, 0.0, 0.0, p=1.0, generator=_gen(15), style=style)
        assert params.brightness is None and params.saturation is None and params.hue is None
        assert params.contrast is not None
        assert low <= float(params.contrast.min()) < low + 0.02 and float(params.contrast.max()) <= 2.5


def test_sample_color_jitter_draws_a_uniform_permutation_per_sample() -> None:
    params = AF.sample_color_jitter(4800, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=_gen(16), style="byol")
    order = params.order
    assert order.dtype == torch.int64 and order.shape == (4800, 4)
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(4800, 4))
    counts: dict[tuple[int, ...], int] = {}
    for row in order.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert len(counts) == 24  # all 4! orders occur, each about 200 times
    assert min(counts.values()) > 140 and max(counts.values()) < 260
    first = torch.bincount(order[:, 0], minlength=4).float() / 4800
    assert float((first - 0.25).abs().max()) < 0.03
    # Same generator state, same draws; a different seed, different orders.
    again = AF.sample_color_jitter(4800, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=_gen(16), style="byol")
    assert torch.equal(again.order, order)
    other = AF.sample_color_jitter(4800, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=_gen(17), style="byol")
    assert not torch.equal(other.order, order)


def test_sample_color_jitter_rejects_bad_style_and_strengths() -> None:
    with pytest.raises(ValueError, match="unknown colour-jitter style 'tensorflow'"):
        AF.sample_color_jitter(4, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=_gen(0), style="tensorflow")
    with pytest.raises(ValueError, match="must be >= 0"):
        AF.sample_color_jitter(4, 0.4, -0.1, 0.4, 0.1, p=0.8, generator=_gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("style", AF.JITTER_STYLES)
def test_color_jitter_on_cuda_matches_cpu(style: str) -> None:
    params = AF.sample_color_jitter(
        64, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=torch.Generator(device="cuda").manual_seed(0), style=style
    )
    assert params.order.is_cuda and params.apply.is_cuda
    x = _float_images(64, 8, 8, seed=18)
    out = AF.color_jitter(x.cuda(), params)
    cpu = AF.JitterParams(
        *(None if v is None else v.cpu() for v in _ops_of(params)),
        apply=params.apply.cpu(),
        order=params.order.cpu(),
        style=style,
    )
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), AF.color_jitter(x, cpu), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- blur, solarize, normalize


def test_blur_kernel_size_is_odd_tenth_of_the_side() -> None:
    assert [AF.blur_kernel_size(s) for s in (224, 96, 64, 32, 10)] == [23, 9, 7, 3, 3]


def test_gaussian_kernel_hand_values() -> None:
    kernel = AF.gaussian_kernels(torch.tensor([1.0]), 3)
    e = math.exp(-0.5)
    torch.testing.assert_close(kernel, torch.tensor([[e, 1.0, e]]) / (1 + 2 * e))


def test_gaussian_blur_matches_direct_2d_convolution() -> None:
    x = _float_images(3, 9, 11, seed=7).double()
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    apply = torch.tensor([True, False, True])
    out = AF.gaussian_blur(x, sigma, 5, apply)
    for b in (0, 2):
        radius = torch.arange(-2, 3, dtype=torch.float64)
        g = torch.exp(-(radius**2) / (2 * sigma[b] ** 2))
        kernel_2d = torch.outer(g, g) / torch.outer(g, g).sum()
        padded = F.pad(x[b : b + 1], (2, 2, 2, 2), mode="reflect")
        for c in range(3):
            expected = F.conv2d(padded[:, c : c + 1], kernel_2d.view(1, 1, 5, 5))
            torch.testing.assert_close(out[b, c], expected[0, 0], atol=1e-12, rtol=0)
    assert torch.equal(out[1], x[1])


def test_gaussian_blur_rejects_kernel_larger_than_image() -> None:
    with pytest.raises(ValueError, match="blur kernel size 9"):
        AF.gaussian_blur(_float_images(1, 4, 4), torch.ones(1), 9)


def test_solarize_hand_values() -> None:
    x = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.8, 1.0]).view(1, 1, 1, 6).expand(2, 3, 1, 6)
    out = AF.solarize(x, torch.tensor([True, False]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.2, 0.49, 0.5, 0.2, 0.0]))
    assert torch.equal(out[1], x[1])


def test_normalize_hand_values() -> None:
    x = torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    out = AF.normalize(x, (0.5, 0.5, 0.0), (0.25, 0.5, 2.0))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, -0.5, 0.5]))
    with pytest.raises(ValueError, match="3 values"):
        AF.normalize(x, (0.5,), (0.5,))


# ----------------------------------------------------------------------------- policies


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_policy_output_contract(name: str) -> None:
    policy = make_policy(name, size=16)
    views = policy(_uint8_images(6, 20, 28), _gen(0))
    assert views.num_global == 2 and len(views.inputs) == 2
    for crop in views.inputs:
        assert crop.shape == (6, 3, 16, 16) and crop.dtype == torch.float32
        assert bool(torch.isfinite(crop).all())
        # Normalized values of [0, 1] images stay within (0 - mean) / std and (1 - mean) / std.
        low = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        high = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        per_channel = crop.transpose(0, 1).reshape(3, -1)
        assert bool(
            (per_channel.min(1).values >= low - 1e-5).all()
            and (per_channel.max(1).values <= high + 1e-5).all()
        )
    assert not torch.allclose(views.inputs[0], views.inputs[1])


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_policy_is_deterministic_given_the_seed(name: str) -> None:
    policy = make_policy(name, size=16)
    images = _uint8_images(8, 24, 24)
    first, again, other = (policy(images, _gen(seed)) for seed in (11, 11, 12))
    for a, b in zip(first.inputs, again.inputs):
        assert torch.equal(a, b)
    assert not any(torch.allclose(a, c) for a, c in zip(first.inputs, other.inputs))


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_identical_images_get_independent_augmentations(name: str) -> None:
    images = _uint8_images(1, 24, 24).expand(8, -1, -1, -1)
    views = make_policy(name, size=16)(images, _gen(0))
    for crop in views.inputs:
        flat = crop.flatten(1)
        distinct = {tuple(row) for row in flat.round(decimals=4).tolist()}
        assert len(distinct) == 8


def test_policy_with_every_step_off_equals_the_evaluation_transform() -> None:
    images = _uint8_images(4, 16, 16)
    views = _plain("simclr", 16)(images, _gen(0))
    expected = to_normalized_float(images)
    for crop in views.inputs:
        torch.testing.assert_close(crop, expected, atol=1e-5, rtol=0)


def test_float_input_gives_the_same_views_as_uint8() -> None:
    images = _uint8_images(4, 18, 18)
    policy = make_policy("byol", size=12)
    from_uint8 = policy(images, _gen(5))
    from_float = policy(images.double() / 255, _gen(5))
    for a, b in zip(from_uint8.inputs, from_float.inputs):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_flip_probability_one_mirrors_every_image() -> None:
    images = _uint8_images(3, 10, 10)
    views = _plain("simclr", 10, flip_p=1.0)(images, _gen(0))
    torch.testing.assert_close(
        views.inputs[1], torch.flip(to_normalized_float(images), dims=[3]), atol=1e-5, rtol=0
    )


def test_byol_views_are_asymmetric() -> None:
    images = _uint8_images(4, 12, 12)
    views = _plain("byol", 12, solarize_p=[0.0, 1.0])(images, _gen(0))
    x = images.float() / 255
    torch.testing.assert_close(
        views.inputs[0], AF.normalize(x, IMAGENET_MEAN, IMAGENET_STD), atol=1e-5, rtol=0
    )
    solarized = torch.where(x >= 0.5, 1 - x, x)
    torch.testing.assert_close(
        views.inputs[1], AF.normalize(solarized, IMAGENET_MEAN, IMAGENET_STD), atol=1e-5, rtol=0
    )


def test_byol_solarize_and_grayscale_rates_follow_the_options() -> None:
    images = _uint8_images(1, 8, 8).expand(2000, -1, -1, -1)
    views = _plain("byol", 8, grayscale_p=0.2, solarize_p=[0.0, 0.3])(images, _gen(1))
    x = AF.normalize(images.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for crop, solarize_rate in zip(views.inputs, (0.0, 0.3)):
        unit = crop * std + mean
        gray = (unit.amax(1) - unit.amin(1)).flatten(1).max(1).values < 1e-5
        assert abs(float(gray.float().mean()) - 0.2) < 0.04
        color = ~gray
        unchanged = (crop[color] - x[color]).flatten(1).abs().max(1).values < 1e-5
        assert abs(float((~unchanged).float().mean()) - solarize_rate) < 0.05


def test_blur_probability_zero_skips_the_blur(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> Tensor:
        raise AssertionError("gaussian_blur was called")

    monkeypatch.setattr(AF, "gaussian_blur", fail)
    images = _uint8_images(2, 16, 16)
    make_policy("simclr", size=16, blur_p=0.0)(images, _gen(0))
    make_policy("byol", size=16, blur_p=[0.0, 0.0])(images, _gen(0))
    with pytest.raises(AssertionError, match="gaussian_blur was called"):
        make_policy("simclr", size=16, blur_p=0.5)(images, _gen(0))


def test_defaults_follow_the_papers() -> None:
    simclr = make_policy("simclr", size=224)
    assert isinstance(simclr.policy, MultiViewPolicy) and simclr.blur_kernel_size == 23
    view = simclr.views[0]
    assert view.jitter == (0.8, 0.8, 0.8, 0.2) and view.jitter_p == 0.8 and view.grayscale_p == 0.2
    assert view.blur_p == 0.5 and view.blur_sigma == (0.1, 2.0) and view.crop_scale == (0.08, 1.0)
    byol = make_policy("byol", size=224)
    assert isinstance(byol.policy, MultiViewPolicy)
    assert [v.blur_p for v in byol.views] == [1.0, 0.1] and [v.solarize_p for v in byol.views] == [0.0, 0.2]
    assert byol.views[0].jitter == (0.4, 0.4, 0.2, 0.1)
    cifar = make_policy("simclr", size=32, jitter_strength=0.5)
    assert isinstance(cifar.policy, MultiViewPolicy) and cifar.views[0].jitter == (0.4, 0.4, 0.4, 0.1)


def test_options_accept_yaml_lists() -> None:
    policy = make_policy("simclr", size=32, crop_scale=[0.2, 1.0], mean=[0.5, 0.5, 0.5], std=[0.5] * 3)
    assert isinstance(policy.policy, MultiViewPolicy)
    assert policy.views[0].crop_scale == (0.2, 1.0) and policy.transform.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("simclr", {"crop_scale": [0.2]}, "crop_scale must be a list of 2 numbers"),
        ("simclr", {"crop_scale": [0.0, 1.0]}, "crop_scale must be"),
        ("simclr", {"crop_scale": [0.5, 0.2]}, "crop_scale must be"),
        ("simclr", {"crop_scale": [0.5, 1.5]}, "crop_scale must be"),
        ("simclr", {"flip_p": 1.5}, "flip_p is a probability"),
        ("simclr", {"jitter_strength": 3.0}, "hue jitter"),
        ("simclr", {"jitter_strength": "strong"}, "jitter_strength must be a number"),
        ("simclr", {"std": [0.0, 1.0, 1.0]}, "std values must be > 0"),
        ("simclr", {"mean": [0.5, 0.5]}, "one value per RGB channel"),
        ("simclr", {"blur_kernel_fraction": 0.0}, "blur_kernel_fraction"),
        ("simclr", {"blur_sigma": [2.0, 0.1]}, "blur_sigma must be"),
        ("byol", {"blur_p": [1.0]}, "blur_p must be a list of 2 numbers"),
        ("byol", {"solarize_p": [0.0, 1.2]}, r"solarize_p\[1\] is a probability"),
        ("byol", {"jitter": [0.4, 0.4, 0.2, 0.6]}, "hue jitter"),
        ("byol", {"jitter": [0.4, -0.1, 0.2, 0.1]}, "must be >= 0"),
    ],
)
def test_bad_options_get_clear_errors(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make_policy(name, size=32, **options)


def test_bad_size_and_unknown_option() -> None:
    with pytest.raises(ValueError, match="size must be a positive int"):
        make_policy("simclr", size=0)
    with pytest.raises(ValueError, match="too small for a 3-pixel blur kernel"):
        make_policy("simclr", size=1)
    make_policy("simclr", size=1, blur_p=0.0)  # fine without blur
    with pytest.raises(TypeError, match="Did you mean 'crop_scale'"):
        make_policy("simclr", size=32, crop_scal=[0.2, 1.0])


def test_bad_images_and_generator_get_clear_errors() -> None:
    policy = make_policy("simclr", size=8)
    with pytest.raises(TypeError, match="uint8"):
        policy(torch.zeros(2, 3, 8, 8, dtype=torch.int32), _gen(0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        policy(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), _gen(0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        policy(torch.zeros(3, 8, 8, dtype=torch.uint8), _gen(0))
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        policy(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 0)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_policy_on_cuda(name: str) -> None:
    policy = make_policy(name, size=32)
    images = _uint8_images(16, 40, 36).cuda()
    first = policy(images, torch.Generator(device="cuda").manual_seed(0))
    again = policy(images, torch.Generator(device="cuda").manual_seed(0))
    for a, b in zip(first.inputs, again.inputs):
        assert a.is_cuda and a.shape == (16, 3, 32, 32) and torch.equal(a, b)
    plain = _plain(name, 36, crop_scale=[1.0, 1.0])
    square = images[..., :36, :36].contiguous()
    torch.testing.assert_close(
        plain(square, torch.Generator(device="cuda").manual_seed(0)).inputs[0],
        to_normalized_float(square),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_print_cpu_time_per_batch(name: str) -> None:
    policy = make_policy(name, size=32)
    images = _uint8_images(256, 32, 32)
    policy(images, _gen(0))  # warm-up
    start = time.perf_counter()
    runs = 3
    for seed in range(runs):
        policy(images, _gen(seed))
    print(f"{name}: {(time.perf_counter() - start) / runs * 1000:.1f} ms per 256-image 32x32 batch (CPU)")


# ----------------------------------------------------------------------------- rotation


def test_rotation_by_90_degrees_is_rot90_and_zero_is_no_rotation() -> None:
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    full = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 3)
    quarter = torch.full((3,), math.pi / 2)
    rotated = AF.resized_crop(images, full, 8, angle=quarter)
    torch.testing.assert_close(rotated, torch.rot90(images, k=1, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        AF.resized_crop(images, full, 8, angle=torch.zeros(3)), AF.resized_crop(images, full, 8)
    )


def test_rotation_by_180_degrees_of_a_wide_image_flips_both_axes() -> None:
    images = torch.rand(2, 3, 6, 10, generator=torch.Generator().manual_seed(1))
    full = torch.tensor([[0.0, 0.0, 6.0, 10.0]] * 2)
    out = F.interpolate(images, size=(10, 10), mode="bilinear", align_corners=False)
    rotated = AF.resized_crop(images, full, 10, angle=torch.full((2,), math.pi))
    torch.testing.assert_close(rotated, torch.flip(out, dims=(2, 3)), atol=1e-5, rtol=0)


def test_policy_rotation_option() -> None:
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    plain = {
        "crop_scale": (1.0, 1.0),
        "crop_ratio": (1.0, 1.0),
        "flip_p": 0.0,
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
        "blur_p": 0.0,
    }
    still = make_policy("simclr", size=16, **plain)(images, torch.Generator().manual_seed(0))
    turned = make_policy("simclr", size=16, rotation=30.0, **plain)(images, torch.Generator().manual_seed(0))
    assert not torch.allclose(still.inputs[0], turned.inputs[0])
    with pytest.raises(ValueError, match="rotation"):
        make_policy("byol", size=16, rotation=-5)
