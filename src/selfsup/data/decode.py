"""Image conversion helpers shared by every source: one encoded image or one array in, uint8 RGB out.

Every image is decoded with PIL and converted to RGB (grayscale/palette replicated, alpha and
palette transparency dropped without compositing, CMYK converted, 16-bit grayscale scaled to 8
bits). With ``image_size`` set, the shorter side is resized to ``image_size`` (bilinear,
antialiased) and the centre ``image_size x image_size`` is cropped, as torchvision's
``Resize(s) + CenterCrop(s)`` does; JPEGs much larger than that are decoded at a reduced DCT scale
first (``Image.draft``), which is faster and changes pixels only marginally. Arrays are normalised
to ``(N, H, W, 3)`` uint8 by :func:`to_nhwc_uint8`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from selfsup.data.base import DataError

# The file types decoded as images, by folders (file names) and tar shards (member suffixes).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), then crop the centre square.

    Output sizes and crop offsets follow torchvision's ``Resize(size)`` (long side truncated with
    ``int``) and ``CenterCrop(size)`` (offset ``round((L - size) / 2)``).
    """
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if width <= height:
        new_w, new_h = size, max(size, int(size * height / width))
    else:
        new_w, new_h = max(size, int(size * width / height)), size
    if (new_w, new_h) != (width, height):
        # Pillow's filters widen their support when shrinking, i.e. they are antialiased;
        # reducing_gap=None keeps the exact (non-approximated) filter.
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: grey replicated, alpha dropped, CMYK converted, 16-bit scaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow would clip 16-bit values at 255 (an all-white image); scale 0..65535 to 0..255 instead.
        grey = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(grey, 0, 65535) // 257).astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA"):
        # Palette transparency only survives the trip through RGBA; converting straight to RGB warns.
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(data: bytes | Path, image_size: int | None = None) -> np.ndarray:
    """Decode one encoded image (bytes or a file path) to an ``(H, W, 3)`` uint8 array.

    EXIF orientation is applied (phone photos come out upright); animated images give their first frame.
    """
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        if image_size is not None and image.format == "JPEG":
            image.draft("RGB", (image_size, image_size))
        image.load()
        # In place: the default returns a copy even when there is nothing to rotate.
        ImageOps.exif_transpose(image, in_place=True)
        out = to_rgb(image)
        if image_size is not None:
            out = resize_center_crop(out, image_size)
        return np.asarray(out, dtype=np.uint8)


def to_nhwc_uint8(array: np.ndarray, name: str = "array") -> np.ndarray:
    """Normalise an image array to ``(N, H, W, 3)`` uint8.

    Accepts ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4} (channels-last
    wins when both readings fit, which only happens for images at most 4 pixels tall); uint8,
    other integers within 0..255, or floats within [0, 1] (scaled by 255 and rounded). One channel
    is replicated, a fourth (alpha) is dropped.
    """
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{name} has shape {array.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)")
    channels = (1, 3, 4)
    if array.shape[3] not in channels and array.shape[1] in channels:
        array = array.transpose(0, 2, 3, 1)
    elif array.shape[3] not in channels:
        raise DataError(f"{name} has shape {array.shape}: no axis of size 1, 3 or 4 to read as channels")
    array = _to_uint8(np.asarray(array), name)
    if array.shape[3] == 1:
        array = np.repeat(array, 3, axis=3)
    return np.ascontiguousarray(array[..., :3])


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise DataError(
                f"{name} is {array.dtype} with values in [{low}, {high}]; float images must lie in [0, 1] "
                "(divide by 255 first, or save as uint8)"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(np.min(array)), int(np.max(array))
        if low < 0 or high > 255:
            raise DataError(f"{name} is {array.dtype} with values in [{low}, {high}]; expected 0..255")
        return array.astype(np.uint8)
    raise DataError(f"{name} has dtype {array.dtype}; expected uint8, integers in 0..255 or floats in [0, 1]")


__all__ = ["IMAGE_EXTENSIONS", "decode_image", "resize_center_crop", "to_nhwc_uint8", "to_rgb"]
