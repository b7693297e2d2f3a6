"""Batched image augmentations with per-sample parameters, and the samplers that draw them.

Every operation works on a whole batch of float images in ``[0, 1]`` of shape ``(B, 3, H, W)``
and takes its per-sample parameters as tensors of length ``B``, so it is a pure, deterministic
function that tests can drive with hand-picked values. The ``sample_*`` helpers draw those
parameters from a ``torch.Generator`` (on the generator's device, one draw for the whole
batch), which is where all randomness lives. A view policy (:mod:`selfsup.augment.policies`)
is a sampler call followed by an op call for each step.

Definitions follow torchvision's (``RandomResizedCrop``, ``ColorJitter``, ``Grayscale``,
``GaussianBlur``) and BYOL's solarization (Grill et al. 2020, appendix B), so recipes tuned
with those transforms carry over. Colour jitter comes in three styles (``JITTER_STYLES``):
torchvision's ``ColorJitter``, the SimCLR v2 TensorFlow code (google-research/simclr
``data_util.py``, ``color_jitter_rand`` with ``impl='simclrv2'``) and the BYOL JAX code
(deepmind-research ``byol/utils/augmentations.py``), which differ in how brightness, contrast and
saturation are defined; all three apply the four jitter ops in a random order drawn per image.
Deliberate differences are stated where they occur.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601-2 luma weights (PIL's "L" conversion).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Indices of the four colour-jitter operations in ``JitterParams.order``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

# Colour-jitter definitions: see ``sample_color_jitter`` and ``color_jitter``.
JITTER_STYLES = ("torchvision", "simclr", "byol")


# ----------------------------------------------------------------------------- input checks


def to_unit_float(images: Tensor) -> Tensor:
    """Check a ``(B, 3, H, W)`` image batch and return it as float32 in ``[0, 1]``.

    uint8 input is divided by 255; floating input (any precision) is taken to be in ``[0, 1]``
    already and only cast to float32.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape (B, 3, H, W) (RGB, channels first), got {tuple(images.shape)}; "
            "convert grayscale to 3 channels and drop alpha before augmenting"
        )
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise TypeError(f"images must be uint8 (0-255) or floating point (0-1), got {images.dtype}")


def _per_sample(value: Tensor, batch: int, name: str, device: torch.device) -> Tensor:
    if value.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) (one value per sample), got {tuple(value.shape)}"
        )
    return value.to(device)


def _bcast(value: Tensor) -> Tensor:
    """``(B,)`` → ``(B, 1, 1, 1)`` so that it scales whole images."""
    return value.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- samplers


def sample_uniform(batch: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``(batch,)`` float32 values uniform in ``[low, high)``, on the generator's device."""
    u = torch.rand(batch, generator=generator, device=generator.device)
    return low + (high - low) * u


def sample_bernoulli(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """``(batch,)`` bool, each True with probability ``p``, on the generator's device."""
    return torch.rand(batch, generator=generator, device=generator.device) < p


# ----------------------------------------------------------------------------- crop + flip


def crop_boxes_from_uniforms(
    u_area: Tensor,
    u_log_ratio: Tensor,
    u_offset: Tensor,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params``, for a batch, from given uniforms.

    u_area, u_log_ratio: ``(B, T)`` uniforms in [0, 1), one column per try.
    u_offset: ``(B, 2)`` uniforms in [0, 1) placing the chosen box (top, left).
    Returns ``(B, 4)`` float32 boxes ``(top, left, box_height, box_width)`` in whole pixels.

    Each try proposes an area fraction uniform in ``scale`` and an aspect ratio (w / h)
    log-uniform in ``ratio``; sides are rounded to pixels. The first try that fits inside the
    image is kept and placed uniformly over the integer positions. When none of the ``T``
    tries fits, the fallback is torchvision's: the largest centred box whose aspect ratio is
    clamped into ``ratio``. The tries run side by side for the whole batch instead of in a
    loop, which gives the same boxes as the sequential loop given the same uniforms.
    """
    # float64 so that the rounding of the sides matches torchvision's Python floats.
    u_area, u_log_ratio, u_offset = u_area.double(), u_log_ratio.double(), u_offset.double()
    area = float(height * width)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_log_ratio)
    # torch.round and Python's round both round half to even, as torchvision does.
    box_w = torch.round(torch.sqrt(target_area * aspect))
    box_h = torch.round(torch.sqrt(target_area / aspect))
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    # argmax over an integer tensor returns the first maximum: the first try that fits.
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    box_h = box_h.gather(1, first).squeeze(1)
    box_w = box_w.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fb_w, fb_h = round(height * max(ratio)), height
    else:
        fb_w, fb_h = width, height
    box_h = torch.where(any_fit, box_h, torch.full_like(box_h, fb_h))
    box_w = torch.where(any_fit, box_w, torch.full_like(box_w, fb_w))

    # Uniform over the (height - box_h + 1) integer positions; min() guards u -> 1 rounding.
    top = torch.minimum(torch.floor(u_offset[:, 0] * (height - box_h + 1)), height - box_h)
    left = torch.minimum(torch.floor(u_offset[:, 1] * (width - box_w + 1)), width - box_w)
    top = torch.where(any_fit, top, torch.full_like(top, (height - fb_h) // 2))
    left = torch.where(any_fit, left, torch.full_like(left, (width - fb_w) // 2))
    return torch.stack([top, left, box_h, box_w], dim=1).float()


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> Tensor:
    """Draw ``(B, 4)`` crop boxes ``(top, left, h, w)`` like ``RandomResizedCrop`` (10 tries)."""
    dev = generator.device
    u_area = torch.rand(batch, tries, generator=generator, device=dev)
    u_log_ratio = torch.rand(batch, tries, generator=generator, device=dev)
    u_offset = torch.rand(batch, 2, generator=generator, device=dev)
    return crop_boxes_from_uniforms(u_area, u_log_ratio, u_offset, height, width, scale, ratio)


def resized_crop(
    images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None, angle: Tensor | None = None
) -> Tensor:
    """Crop each image to its box, resize to ``size × size`` and optionally mirror it, in one resampling.

    images: ``(B, C, H, W)`` float. boxes: ``(B, 4)`` ``(top, left, box_h, box_w)`` in pixels
    (fractional values allowed). flip: ``(B,)`` bool, mirror left-right. angle: ``(B,)`` radians,
    rotate the box counter-clockwise about its centre (in pixel space, so non-square images are not
    sheared). Returns ``(B, C, size, size)``.

    One affine grid per sample maps the output square onto the box (a negative x scale does
    the flip), and ``grid_sample`` interpolates bilinearly with ``align_corners=False``: output
    pixel ``k`` samples input column ``left + (k + 0.5) * box_w / size - 0.5``, the same
    sampling positions as slicing the box and calling ``F.interpolate(mode="bilinear")``.
    Two differences: next to a box edge inside the image the neighbouring pixel outside the box
    is blended in (``interpolate`` on the slice repeats the edge pixel instead), and there is no
    antialiasing when shrinking a large box, as with torchvision's ``antialias=False``.
    """
    batch, _, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    if boxes.shape != (batch, 4):
        raise ValueError(f"boxes must have shape ({batch}, 4) as (top, left, h, w), got {tuple(boxes.shape)}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    top, left, box_h, box_w = boxes.unbind(1)
    scale_x = box_w / width
    scale_y = box_h / height
    if flip is not None:
        flip = _per_sample(flip, batch, "flip", images.device)
        scale_x = torch.where(flip, -scale_x, scale_x)
    # Normalised coordinates span pixel edges: -1 is the left edge of column 0, +1 the right
    # edge of column W-1 (align_corners=False), so the box centre is (2 * left + w) / W - 1.
    centre_x = (2 * left + box_w) / width - 1
    centre_y = (2 * top + box_h) / height - 1
    if angle is None:
        zeros = torch.zeros_like(scale_x)
        row_x = torch.stack([scale_x, zeros, centre_x], 1)
        row_y = torch.stack([zeros, scale_y, centre_y], 1)
    else:
        # Rotate offsets from the centre in pixels, then map back to normalised coordinates,
        # whose x and y units differ by W / H.
        angle = angle.to(device=images.device, dtype=torch.float32).reshape(batch)
        cos, sin = torch.cos(angle), torch.sin(angle)
        row_x = torch.stack([cos * scale_x, -sin * scale_y * (height / width), centre_x], 1)
        row_y = torch.stack([sin * scale_x * (width / height), cos * scale_y, centre_y], 1)
    theta = torch.stack([row_x, row_y], 1)
    grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
    # "border" clamps samples that fall half a pixel outside the image onto the edge pixel,
    # as F.interpolate does, instead of blending towards zero.
    return F.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )


# ----------------------------------------------------------------------------- colour


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601-2 luma ``0.299 R + 0.587 G + 0.114 B``: ``(B, 3, H, W)`` → ``(B, 1, H, W)``."""
    weights = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def random_grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """Replace the images where ``apply`` (``(B,)`` bool) is True by their luma on all 3 channels."""
    apply = _per_sample(apply, images.shape[0], "apply", images.device)
    return torch.where(_bcast(apply), grayscale(images).expand_as(images), images)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's blend: ``factor * images + (1 - factor) * other``, clamped to [0, 1]."""
    f = _bcast(factor)
    return (f * images + (1 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Multiply each image by its ``factor`` (``(B,)``) and clamp to [0, 1].

    The multiplicative form of torchvision and the SimCLR v2 code; BYOL's code adds a delta
    instead (:func:`adjust_brightness_additive`).
    """
    factor = _per_sample(factor, images.shape[0], "brightness factor", images.device)
    return (images * _bcast(factor)).clamp_(0.0, 1.0)


def adjust_brightness_additive(images: Tensor, delta: Tensor) -> Tensor:
    """Add ``delta`` (``(B,)``) to every pixel of each image and clamp to [0, 1].

    BYOL's brightness (deepmind-research ``byol/utils/augmentations.py``, ``adjust_brightness``;
    the same as ``tf.image.adjust_brightness``), with the delta uniform in ``[-b, b]``.
    """
    delta = _per_sample(delta, images.shape[0], "brightness delta", images.device)
    return (images + _bcast(delta)).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with the mean of its grayscale image (one scalar per sample), as torchvision.

    factor: ``(B,)``; 0 gives a flat grey image, 1 the input. The SimCLR and BYOL code take the
    mean of each channel separately instead: :func:`adjust_contrast_per_channel`.
    """
    factor = _per_sample(factor, images.shape[0], "contrast factor", images.device)
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def adjust_contrast_per_channel(images: Tensor, factor: Tensor) -> Tensor:
    """``factor * (x - mean) + mean`` with the mean of each channel of each image, clamped to [0, 1].

    factor: ``(B,)``; 0 flattens every channel to its own mean (so the image keeps its average
    colour, not grey), 1 is the input, and a negative factor (BYOL's range for a strength above
    1) mirrors each channel about its mean. TensorFlow's ``tf.image.adjust_contrast`` (used by the
    SimCLR code) and BYOL's ``adjust_contrast``.
    """
    factor = _per_sample(factor, images.shape[0], "contrast factor", images.device)
    mean = images.mean(dim=(2, 3), keepdim=True)
    return (_bcast(factor) * (images - mean) + mean).clamp_(0.0, 1.0)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its grayscale version, as torchvision. factor: ``(B,)``; 0 is gray."""
    factor = _per_sample(factor, images.shape[0], "saturation factor", images.device)
    return _blend(images, grayscale(images), factor)


def _value_chroma_hue(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(B, 3, H, W)`` RGB → value (max), chroma (max - min), hue in sixths of a turn.

    Each is ``(B, 1, H, W)``. The hue is in ``(-1, 5]`` (not yet wrapped) and 0 where the
    chroma is 0 (gray pixels).
    """
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    value = images.amax(dim=1, keepdim=True)
    chroma = value - images.amin(dim=1, keepdim=True)
    # The hue sector is set by whichever channel is largest (red wins ties, then green, as in
    # colorsys); neighbouring sectors agree at ties.
    numerator = torch.where(
        red == value,
        green - blue,
        torch.where(green == value, blue - red + 2.0 * chroma, red - green + 4.0 * chroma),
    )
    return value, chroma, numerator / torch.where(chroma > 0, chroma, 1.0)


def _rgb_from_hue(value: Tensor, chroma: Tensor, hue_sixths: Tensor) -> Tensor:
    """Closed-form HSV → RGB: ``c_n = v - chroma * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``.

    ``n = 5, 3, 1`` for R, G, B; needs no per-sector branching, and any real ``hue_sixths``
    (it is wrapped here). Inputs ``(B, 1, H, W)``, output ``(B, 3, H, W)``.
    """
    n = value.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = torch.remainder(n + hue_sixths, 6.0)
    return value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] → HSV with every channel in [0, 1] (hue as a fraction of a turn).

    Hue is 0 for gray pixels and saturation 0 for black ones, as in ``colorsys``.
    """
    value, chroma, hue_sixths = _value_chroma_hue(images)
    saturation = chroma / torch.where(value > 0, value, 1.0)
    return torch.cat([torch.remainder(hue_sixths / 6.0, 1.0), saturation, value], dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """``(B, 3, H, W)`` HSV in [0, 1] → RGB in [0, 1]."""
    hue, saturation, value = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    return _rgb_from_hue(value, value * saturation, 6.0 * hue)


def adjust_saturation_hsv(images: Tensor, factor: Tensor) -> Tensor:
    """Scale the HSV saturation of each image by ``factor`` (``(B,)``), clipping it to [0, 1].

    TensorFlow's ``tf.image.adjust_saturation`` (``AdjustSaturation`` kernel, used by the SimCLR
    code) and BYOL's ``adjust_saturation``: RGB → HSV, ``s → clip(s * factor, 0, 1)``, back to RGB.
    Hue and value are kept, so factor 0 turns each pixel into the gray of its value (its largest
    channel), not of its luma as :func:`adjust_saturation` does. Gray and black pixels are unchanged.

    Since ``v * s`` is the chroma, ``v * clip(s * f, 0, 1) = clip(chroma * f, 0, v)``: the new
    chroma is formed directly, without dividing by the value.
    """
    factor = _per_sample(factor, images.shape[0], "saturation factor", images.device)
    value, chroma, hue_sixths = _value_chroma_hue(images)
    chroma = torch.minimum((chroma * _bcast(factor)).clamp_(min=0.0), value)
    return _rgb_from_hue(value, chroma, hue_sixths).clamp_(0.0, 1.0)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each image by ``shift`` (``(B,)``, fraction of a turn in [-0.5, 0.5]).

    The same result as torchvision's RGB → HSV → shift → RGB round trip; saturation is never
    formed because ``v * s`` is the chroma, which saves a division and a multiplication per pixel.
    TensorFlow's ``tf.image.adjust_hue`` (SimCLR) and BYOL's ``adjust_hue`` compute the same map
    for images in [0, 1] (TensorFlow's CPU kernel rotates the hue keeping the largest and smallest
    channel, i.e. value and chroma), so every jitter style uses this op. The clamp only removes
    rounding error.
    """
    shift = _per_sample(shift, images.shape[0], "hue shift", images.device)
    value, chroma, hue_sixths = _value_chroma_hue(images)
    return _rgb_from_hue(value, chroma, hue_sixths + 6.0 * _bcast(shift)).clamp_(0.0, 1.0)


def _jitter_ops(style: str) -> tuple[Callable[[Tensor, Tensor], Tensor], ...]:
    """The four ops of a jitter style, indexed by ``BRIGHTNESS, CONTRAST, SATURATION, HUE``.

    Looked up at call time (not stored in a table at import) so that tests can patch them.
    """
    if style == "torchvision":
        return (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    if style == "simclr":
        return (adjust_brightness, adjust_contrast_per_channel, adjust_saturation_hsv, adjust_hue)
    if style == "byol":
        return (adjust_brightness_additive, adjust_contrast_per_channel, adjust_saturation_hsv, adjust_hue)
    raise ValueError(f"unknown colour-jitter style {style!r}; expected one of {', '.join(JITTER_STYLES)}")


@dataclass(frozen=True)
class JitterParams:
    """Per-sample colour-jitter parameters for a batch of ``B`` images.

    brightness: ``(B,)`` multiplicative factors (styles "torchvision", "simclr") or additive
    deltas (style "byol"), or None to skip the op.
    contrast, saturation: ``(B,)`` factors, or None to skip the op.
    hue: ``(B,)`` hue shifts (fraction of a turn), or None to skip.
    apply: ``(B,)`` bool; samples where it is False are returned unchanged.
    order: ``(B, 4)`` int64; row ``i`` is sample ``i``'s permutation of ``(BRIGHTNESS,
    CONTRAST, SATURATION, HUE)``, applied left to right.
    style: one of ``JITTER_STYLES``; picks the definition of each op (see :func:`color_jitter`).
    """

    brightness: Tensor | None
    contrast: Tensor | None
    saturation: Tensor | None
    hue: Tensor | None
    apply: Tensor
    order: Tensor
    style: str = "torchvision"


def _jitter_ranges(
    style: str, brightness: float, contrast: float, saturation: float, hue: float
) -> list[tuple[float, float]]:
    """``(low, high)`` of the brightness, contrast, saturation and hue draws of a style."""
    hue_range = (-hue, hue)
    if style == "byol":
        # BYOL's _random_brightness / _random_contrast / _random_saturation: no floor at 0.
        return [
            (-brightness, brightness),
            (1 - contrast, 1 + contrast),
            (1 - saturation, 1 + saturation),
            hue_range,
        ]
    # torchvision floors every factor at 0. So does the SimCLR v2 brightness; its contrast and
    # saturation call tf.image.random_contrast / random_saturation with lower = 1 - s, which
    # TensorFlow rejects when negative, so the floor only extends the range TF accepts (s <= 1).
    return [(max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)] + [hue_range]


def sample_color_jitter(
    batch: int,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    generator: torch.Generator,
    style: str = "torchvision",
) -> JitterParams:
    """Draw colour-jitter parameters and an op order per sample, applied with probability ``p``.

    With strengths ``b, c, s, h`` (a strength of 0 skips that op), each sample draws:

    - "torchvision" (``ColorJitter``): brightness, contrast and saturation factors uniform in
      ``[max(0, 1 - x), 1 + x]``.
    - "simclr" (SimCLR v2 ``color_jitter_rand``, ``impl='simclrv2'``): brightness factor uniform
      in ``[max(0, 1 - b), 1 + b]``; contrast and saturation factors in ``[1 - x, 1 + x]``, as
      ``tf.image.random_contrast`` / ``random_saturation`` with ``lower = 1 - x``. TensorFlow
      raises for ``x > 1``; here the low end is floored at 0 instead.
    - "byol" (``_random_brightness``, ``_random_contrast``, ``_random_saturation``): brightness
      delta uniform in ``[-b, b]``; contrast and saturation factors in ``[1 - x, 1 + x]``, with no
      floor (a negative saturation factor clips the saturation to 0, i.e. gray).

    and, in every style, a hue shift uniform in ``[-h, h]`` (fraction of a turn) and a random
    permutation of the four ops, drawn per image as torchvision, SimCLR and BYOL do:
    ``argsort`` of four uniforms is a uniformly random permutation. All draws come from
    ``generator`` on its device, in the order brightness, contrast, saturation, hue, apply, order,
    and every draw is made even for a skipped op so that the stream does not depend on which
    strengths are 0. No value is read back to the host.
    """
    _jitter_ops(style)  # raises for an unknown style
    if min(brightness, contrast, saturation, hue) < 0:
        raise ValueError(
            f"jitter strengths must be >= 0, got brightness={brightness}, contrast={contrast}, "
            f"saturation={saturation}, hue={hue}"
        )
    strengths = (brightness, contrast, saturation, hue)
    ranges = _jitter_ranges(style, *strengths)
    draws = [sample_uniform(batch, low, high, generator) for low, high in ranges]
    values = [draw if strength > 0 else None for draw, strength in zip(draws, strengths)]
    apply = sample_bernoulli(batch, p, generator)
    order = torch.rand(batch, 4, generator=generator, device=generator.device).argsort(dim=1)
    return JitterParams(values[0], values[1], values[2], values[3], apply, order, style)


def color_jitter(images: Tensor, params: JitterParams) -> Tensor:
    """Apply each sample's brightness, contrast, saturation and hue jitter in that sample's order.

    images: ``(B, 3, H, W)`` in [0, 1]; returns the same shape and dtype (the parameters are cast
    to the images' dtype). Every op clamps to [0, 1], as all three reference implementations do
    after each op. The ops of ``params.style`` are:

    - "torchvision": :func:`adjust_brightness`, :func:`adjust_contrast` (luma mean),
      :func:`adjust_saturation` (blend with luma), :func:`adjust_hue`.
    - "simclr": :func:`adjust_brightness`, :func:`adjust_contrast_per_channel`,
      :func:`adjust_saturation_hsv`, :func:`adjust_hue`.
    - "byol": :func:`adjust_brightness_additive`, :func:`adjust_contrast_per_channel`,
      :func:`adjust_saturation_hsv`, :func:`adjust_hue`.

    Samples whose ``params.apply`` is False come back bit-identical, and no op runs on them.

    Per-sample order at about the cost of a shared one: at each of the four positions the
    selected samples are held grouped by the op they do there, and each op runs once on its
    (contiguous) group with that group's parameters; its result is copied straight to the rows
    where the next position groups those samples (the last position writes them back in place).
    Every sample goes through each op exactly once, so the work is four ops over the batch, in up
    to 16 smaller calls instead of 4, plus one copy of the batch per position. Running all four
    ops at every position and selecting would cost 4x the work; one sub-batch per permutation,
    24 groups. The group sizes (a ``(4, 5)`` count, read together with the check that each row
    of ``order`` is a permutation) go to the host once per call: a plain read on CPU, the one
    host sync of the call on CUDA.
    """
    batch, device = images.shape[0], images.device
    ops = _jitter_ops(params.style)
    values: list[Tensor | None] = []
    for name, value in zip(
        ("brightness", "contrast", "saturation", "hue"),
        (params.brightness, params.contrast, params.saturation, params.hue),
    ):
        if value is not None:
            value = _per_sample(value, batch, f"{name} parameter", device).to(images.dtype)
        values.append(value)
    apply = _per_sample(params.apply, batch, "apply", device)
    order = params.order
    if not isinstance(order, Tensor) or order.shape != (batch, 4):
        shape = tuple(order.shape) if isinstance(order, Tensor) else type(order).__name__
        raise ValueError(
            f"order must be a ({batch}, 4) tensor holding one permutation of (0, 1, 2, 3) per sample, "
            f"got {shape}"
        )
    order = order.to(device=device, dtype=torch.int64)

    # Key 4 marks samples left alone: sorted after the others at the first position and dropped.
    keys = torch.where(apply.view(-1, 1), order, 4)
    group = torch.arange(5, device=device)
    sizes = (keys.unsqueeze(-1) == group).sum(dim=0)  # (4, 5): samples doing op j at position k
    is_perm = (order.sort(dim=1).values == group[:4]).all().view(1)
    host = torch.cat([sizes.flatten(), is_perm.to(sizes.dtype)]).tolist()  # the one host read
    if not host[-1]:
        raise ValueError("each row of order must be a permutation of (0, 1, 2, 3)")
    sizes_at = [host[5 * k : 5 * k + 4] for k in range(4)]
    active = sum(sizes_at[0])
    if active == 0 or all(value is None for value in values):
        return images.clone()

    # rows[r] is the sample held in row r of `cur`: the selected samples, grouped by first op.
    rows = torch.argsort(keys[:, 0], stable=True)[:active]
    cur = images[rows]
    spare = torch.empty_like(cur)
    out = images.clone()
    for position in range(4):
        if position < 3:
            # Each group's result is written straight to its rows for the next position (grouped
            # by the next op), so the regrouping costs one copy and no gather or concatenation.
            regroup = torch.argsort(order[rows, position + 1], stable=True)
            dest = torch.empty_like(regroup)
            dest[regroup] = torch.arange(active, device=device)
            target = spare
        else:
            dest, target = rows, out
        start = 0
        for index, size in enumerate(sizes_at[position]):
            if size == 0:
                continue
            piece, value = cur[start : start + size], values[index]
            if value is not None:
                piece = ops[index](piece, value[rows[start : start + size]])
            target.index_copy_(0, dest[start : start + size], piece)
            start += size
        if position < 3:
            rows = rows[regroup]
            cur, spare = spare, cur
    return out


# ----------------------------------------------------------------------------- blur, solarize, normalize


def blur_kernel_size(size: int, fraction: float = 0.1) -> int:
    """Odd kernel size of about ``fraction * size``, at least 3.

    Computed as in the SimCLR and BYOL code: radius ``int(fraction * size / 2)``, size
    ``2 * radius + 1`` (23 at 224 pixels, 9 at 96, 3 at 32).
    """
    return max(3, 2 * int(fraction * size / 2) + 1)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """``(B,)`` standard deviations → ``(B, kernel_size)`` normalised 1-D Gaussian kernels."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
    radius = kernel_size // 2
    dtype = sigma.dtype if sigma.is_floating_point() else torch.float32
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=dtype)
    weights = torch.exp(-0.5 * (x.view(1, -1) / sigma.to(dtype).view(-1, 1)) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int, apply: Tensor | None = None) -> Tensor:
    """Blur each image with its own Gaussian (``sigma``: ``(B,)``), separably, with reflect padding.

    images: ``(B, C, H, W)``; apply: optional ``(B,)`` bool, unblurred samples come back unchanged.
    All ``B * C`` planes go through one grouped convolution per direction (one group per plane),
    so the batch costs two convolutions whatever the sigmas. Padding is reflect, as torchvision;
    the SimCLR and BYOL code pad with zeros ("SAME").
    """
    batch, channels, height, width = images.shape
    sigma = _per_sample(sigma, batch, "sigma", images.device)
    radius = kernel_size // 2
    if radius >= min(height, width):
        raise ValueError(
            f"blur kernel size {kernel_size} needs images larger than {radius} pixels, got {height}x{width}"
        )
    kernels = gaussian_kernels(sigma, kernel_size).to(images.dtype).repeat_interleave(channels, dim=0)
    planes = images.reshape(1, batch * channels, height, width)
    planes = F.pad(planes, (radius, radius, 0, 0), mode="reflect")
    planes = F.conv2d(planes, kernels.view(-1, 1, 1, kernel_size), groups=batch * channels)
    planes = F.pad(planes, (0, 0, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernels.view(-1, 1, kernel_size, 1), groups=batch * channels)
    blurred = planes.view(batch, channels, height, width)
    if apply is None:
        return blurred
    apply = _per_sample(apply, batch, "apply", images.device)
    return torch.where(_bcast(apply), blurred, images)


def solarize(images: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert pixels ``>= threshold`` (``x → 1 - x``) in the images where ``apply`` (``(B,)``) is True.

    BYOL (Grill et al. 2020, appendix B) with images in [0, 1] and threshold 0.5.
    """
    apply = _per_sample(apply, images.shape[0], "apply", images.device)
    return torch.where(_bcast(apply) & (images >= threshold), 1.0 - images, images)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel; ``mean`` and ``std`` have one entry per channel."""
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each, got {list(mean)} and {list(std)}")
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
