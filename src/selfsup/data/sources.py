"""Image data sources: a spec string in, an :class:`ImageDataset` (decoded once, uint8) out.

Spec forms, auto-detected in this order (an explicit ``kind:`` prefix such as ``folder:/x`` or
``shards:/x/*.tar`` skips detection):

``digits``, ``digits:train``, ``digits:test``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download). Split: per class,
    a ``numpy.random.RandomState(0)`` permutation puts round(20%) of that class in ``test`` and the
    rest in ``train`` (stratified, identical on every machine; 1,438 / 359 images).
``cifar`` — ``<dir>``, ``<dir>:train``, ``<dir>:test``, ``<dir>/test_batch``
    the python-pickle release of CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100
    (``cifar-100-python``, fine labels), read with a restricted unpickler that only rebuilds numpy arrays.
``arrays`` — ``x.npy`` / ``x.npz``
    ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4}; uint8, integers in
    0..255, or floats in [0, 1]. ``.npz`` keys: ``images`` (or ``x``/``X``/``data``), optional
    ``labels`` (or ``y``/``targets``) and ``classes``. Loaded with ``allow_pickle=False``.
``shards`` — ``a.tar``, ``a.tar,b.tar``, ``/data/train-*.tar``
    WebDataset-style tar shards: members ``<key>.<jpg|png|...>`` with an optional ``<key>.cls``
    (ASCII class index), streamed without extracting; a ``classes.txt`` beside the (first) shard
    names the classes.
``folder`` — a directory
    images found recursively (hidden files and folders ignored). If every direct sub-folder holds
    images and no image sits at the top level, the sorted sub-folder names are the classes;
    otherwise every label is -1.

Every image is decoded with PIL and converted to RGB (grayscale/palette replicated, alpha and
palette transparency dropped without compositing, CMYK converted, 16-bit grayscale scaled to 8
bits). With ``image_size`` set, the shorter side is resized to ``image_size`` (bilinear,
antialiased) and the centre ``image_size x image_size`` is cropped, as torchvision's
``Resize(s) + CenterCrop(s)`` does; JPEGs much larger than that are decoded at a reduced DCT scale
first (``Image.draft``), which is faster and changes pixels only marginally.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import pickle
import re
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

from selfsup.data import cache as _cache
from selfsup.data.base import SOURCES, UNKNOWN_LABEL, DataError, ImageDataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")

SPEC_FORMS = (
    "A data spec is one of: 'digits', 'digits:train', 'digits:test' (bundled 8x8 digits); "
    "a folder of images (class sub-folders give labels); tar shards 'a.tar', 'a.tar,b.tar' or a glob "
    "'/data/train-*.tar'; a CIFAR pickle directory 'cifar-10-batches-py' (append ':test' for the test "
    "batch); an array file 'x.npy' or 'x.npz'. Prefix 'KIND:' to skip auto-detection "
    "(kinds: digits, cifar, arrays, shards, folder)."
)

# How many items one worker decodes per task: large enough that the pool's per-task overhead is
# small next to decoding even 32x32 JPEGs (~50 us each), small enough to keep both cores busy.
_CHUNK = 256

F = TypeVar("F", bound=Callable[..., ImageDataset])


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


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


@dataclass
class _Item:
    """One sample before decoding: encoded bytes or a path, or the reason it is already unusable."""

    id: str
    label: int = UNKNOWN_LABEL
    data: bytes | Path | None = None
    error: str | None = None


def _num_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _decode_chunk(items: list[_Item], image_size: int | None) -> list[np.ndarray | str]:
    out: list[np.ndarray | str] = []
    for item in items:
        if item.error is not None or item.data is None:
            out.append(item.error or "no image data")
            continue
        try:
            out.append(decode_image(item.data, image_size))
        # Pillow's format plugins raise many exception types on malformed input (OSError,
        # SyntaxError, ValueError, struct.error, IndexError, ...); every one means "unreadable".
        except Exception as error:
            out.append(f"{type(error).__name__}: {error}")
    return out


class _Collector:
    """Accumulates decoded samples in input order and records (or, when strict, raises on) skips."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.ids: list[str] = []
        self.skipped: list[tuple[str, str]] = []

    def skip(self, sample_id: str, reason: str) -> None:
        if self.strict:
            raise DataError(
                f"cannot read {sample_id}: {reason}. (strict=True; with strict=False unreadable inputs "
                "are skipped and listed in dataset.skipped.)"
            )
        self.skipped.append((sample_id, reason))

    def add(self, sample_id: str, label: int, image: np.ndarray) -> None:
        self.ids.append(sample_id)
        self.labels.append(label)
        self.images.append(image)


def _decode_stream(
    items: Iterable[_Item], *, image_size: int | None, max_samples: int | None, strict: bool
) -> _Collector:
    """Decode ``items`` in order on a thread pool, stopping once ``max_samples`` are valid.

    Reading (e.g. parsing tar headers, which holds the GIL) overlaps with decoding: chunks are
    submitted as soon as they are read, and results are consumed in submission order, so the
    output order never depends on thread timing. Items are pulled lazily, never more than are
    still needed, so a large shard is not read to the end when a few hundred samples are asked
    for. Pillow releases the GIL while decoding, so the workers do run in parallel.
    """
    collected = _Collector(strict)
    iterator = iter(items)
    workers = _num_workers()
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: deque[tuple[list[_Item], Future[list[np.ndarray | str]]]] = deque()
    in_flight = 0

    def drain_one() -> None:
        nonlocal in_flight
        batch, future = pending.popleft()
        in_flight -= len(batch)
        for item, result in zip(batch, future.result()):
            if isinstance(result, str):
                collected.skip(item.id, result)
            else:
                collected.add(item.id, item.label, result)

    try:
        while True:
            want = _CHUNK
            if max_samples is not None:
                # Skips are only known once decoded: ask for more later if some turn out unreadable.
                want = min(want, max_samples - len(collected.ids) - in_flight)
            batch = [item for _, item in zip(range(want), iterator)] if want > 0 else []
            if batch:
                pending.append((batch, pool.submit(_decode_chunk, batch, image_size)))
                in_flight += len(batch)
            if not batch or len(pending) > 2 * workers:
                if not pending:
                    break
                drain_one()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(iterator, "close", None)
        if close is not None:  # a generator holding an open tar file releases it now
            close()
    return collected


def _map_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """Resize/crop every ``(H, W, 3)`` image of an ``(N, H, W, 3)`` uint8 array on the thread pool."""

    def work(block: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(resize_center_crop(Image.fromarray(im), image_size)) for im in block]

    blocks = [images[i : i + _CHUNK] for i in range(0, len(images), _CHUNK)]
    with ThreadPoolExecutor(max_workers=_num_workers()) as pool:
        out = [im for block in pool.map(work, blocks) for im in block]
    return np.stack(out) if out else np.zeros((0, image_size, image_size, 3), np.uint8)


def _build(
    images: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    ids: list[str],
    *,
    source: str,
    classes: list[str] | None,
    skipped: list[tuple[str, str]],
    image_size: int | None,
) -> ImageDataset:
    """Stack ``(H, W, 3)`` uint8 images into an ImageDataset, checking they share one size."""
    if len(ids) == 0:
        if skipped:
            first_id, first_reason = skipped[0]
            raise DataError(
                f"no readable images in {source!r}: all {len(skipped)} inputs were skipped "
                f"(first: {first_id}: {first_reason})"
            )
        raise DataError(f"no images found in {source!r}. {SPEC_FORMS}")
    if isinstance(images, np.ndarray):
        stacked = images
    else:
        sizes: dict[tuple[int, int], str] = {}
        for sample_id, image in zip(ids, images):
            sizes.setdefault(image.shape[:2], sample_id)
        if len(sizes) > 1:
            examples = ", ".join(f"{sid} is {h}x{w}" for (h, w), sid in list(sizes.items())[:3])
            raise DataError(
                f"images in {source!r} have {len(sizes)} different sizes ({examples}); set "
                "data.image_size (image_size=...) to resize and centre-crop them all to one square size"
            )
        stacked = np.stack(images)
    if image_size is not None and stacked.shape[1:3] != (image_size, image_size):
        stacked = _map_images(stacked, image_size)
    if skipped:
        logger.warning("%s: skipped %d unreadable input(s), e.g. %s: %s", source, len(skipped), *skipped[0])
    return ImageDataset(
        # np.array always copies: the result is writable and owned even when ``stacked`` is a
        # read-only memory map of a .npy file.
        images=torch.from_numpy(np.array(stacked.transpose(0, 3, 1, 2), order="C")),
        labels=torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        ids=ids,
        source=source,
        classes=classes,
        skipped=skipped,
    )


def _from_collector(
    collected: _Collector, *, source: str, classes: list[str] | None, image_size: int | None
) -> ImageDataset:
    return _build(
        collected.images,
        collected.labels,
        collected.ids,
        source=source,
        classes=classes,
        skipped=collected.skipped,
        image_size=image_size,
    )


# --------------------------------------------------------------------------------------------
# Spec parsing and registration
# --------------------------------------------------------------------------------------------

# Detection order: the cheap exact forms first, the generic "any directory" last.
_DETECTION_ORDER = ("digits", "cifar", "arrays", "shards", "folder")


def _source(
    name: str, *, detect: Callable[[str], bool], inputs: Callable[[str], list[Path]]
) -> Callable[[F], F]:
    """Register a source factory in SOURCES with its ``detect(spec)`` and ``inputs(spec)`` helpers.

    ``inputs`` lists the files a spec reads, which is what the disk cache key is made of.
    """

    def decorator(factory: F) -> F:
        factory.detect = detect  # type: ignore[attr-defined]
        factory.inputs = inputs  # type: ignore[attr-defined]
        SOURCES.register(name)(factory)
        return factory

    return decorator


def _strip(spec: str, kind: str) -> str:
    """Drop an explicit ``kind:`` prefix so factories accept the spec with or without it."""
    return spec[len(kind) + 1 :] if spec.startswith(kind + ":") else spec


def resolve_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(kind, rest)``: an explicit registered ``kind:`` prefix, else auto-detection.

    Raises DataError listing the accepted forms when nothing recognises the spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data spec {spec!r}. {SPEC_FORMS}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if sep and kind in SOURCES:
        return kind, rest
    if spec == "digits":
        return "digits", ""
    others = [n for n in SOURCES.names() if n not in _DETECTION_ORDER]
    for name in (*_DETECTION_ORDER, *others):
        if name in SOURCES:
            detect = getattr(SOURCES.get(name), "detect", None)
            if detect is not None and detect(spec):
                return name, spec
    if Path(spec).expanduser().exists():
        raise DataError(f"cannot tell what kind of data {spec!r} is. {SPEC_FORMS}")
    raise DataError(f"{spec!r} does not exist. {SPEC_FORMS}")


def canonical_source(kind: str, rest: str) -> str:
    """The ``kind:rest`` string stored in ``ImageDataset.source``; loading it gives the same data."""
    return f"{kind}:{rest}" if rest else kind


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def digits_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of the fixed stratified 80/20 split of ``labels`` (``split`` = train/test/all).

    For each class, ``RandomState(DIGITS_SPLIT_SEED)`` permutes that class's indices (RandomState's
    stream is frozen by numpy's compatibility policy, so the split never changes) and the first
    ``round(0.2 * count)`` go to test.
    """
    if split in ("", "all"):
        return np.arange(len(labels))
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[: round(DIGITS_TEST_FRACTION * len(members))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _digits_inputs(spec: str) -> list[Path]:
    try:
        from importlib.resources import files

        path = Path(str(files("sklearn.datasets.data") / "digits.csv.gz"))
    except (ImportError, TypeError, ModuleNotFoundError):
        return []
    return [path] if path.is_file() else []


@_source("digits", detect=lambda spec: spec == "digits", inputs=_digits_inputs)
def digits_source(
    spec: str = "", *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits ('digits', 'digits:train', 'digits:test')."""
    split = _strip(spec, "digits")
    split = "" if split == "digits" else split
    if split not in ("", "all", "train", "test"):
        raise DataError(f"unknown digits split {split!r}: use 'digits', 'digits:train' or 'digits:test'")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = digits_split_indices(labels, split)
    if max_samples is not None:
        index = index[:max_samples]
    # Pixel values are counts 0..16 (ink in 4x4 blocks of the original 32x32 bitmaps); 16 -> 255.
    grey = np.rint(np.asarray(bunch.images)[index] * (255.0 / 16.0)).astype(np.uint8)
    return _build(
        np.repeat(grey[..., None], 3, axis=-1),
        labels[index],
        [f"digits/{i}" for i in index],
        source=canonical_source("digits", split),
        classes=[str(c) for c in range(10)],
        skipped=[],
        image_size=image_size,
    )


# --------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, symlinks followed once, hidden entries skipped),
    as paths relative to ``root`` sorted by their parts, so the order is the same on every machine."""
    found: list[Path] = []
    seen: set[str] = set()
    for directory, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a symlink loop, or the same folder linked twice
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel = Path(directory).relative_to(root)
        found.extend(rel / f for f in files if _is_image(f))
    return sorted(found, key=lambda p: p.parts)


def _folder_path(spec: str) -> Path:
    return Path(_strip(spec, "folder")).expanduser()


def _folder_inputs(spec: str) -> list[Path]:
    root = _folder_path(spec)
    return [root / p for p in list_image_files(root)] if root.is_dir() else []


def _no_images_message(root: Path) -> str:
    others = list(itertools.islice((p for p in root.rglob("*") if p.is_file()), 1000))
    if not others:
        return f"folder {str(root)!r} is empty: put images ({', '.join(IMAGE_EXTENSIONS)}) in it"
    shards = [p for p in others if p.name.lower().endswith(TAR_SUFFIXES)]
    more = "+" if len(others) == 1000 else ""
    hint = f" It holds tar files: for shards use '{root / '*.tar'}'." if shards else ""
    return (
        f"no images found in folder {str(root)!r} (looked for {', '.join(IMAGE_EXTENSIONS)} "
        f"files, recursively; found {len(others)}{more} other file(s), e.g. {others[0].name!r}).{hint}"
    )


@_source("folder", detect=lambda spec: _folder_path(spec).is_dir(), inputs=_folder_inputs)
def folder_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> ImageDataset:
    """A folder of images, searched recursively; class sub-folders give labels."""
    root = _folder_path(spec)
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder. {SPEC_FORMS}")
    files = list_image_files(root)
    if not files:
        raise DataError(_no_images_message(root))
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = {p.parts[0] for p in files if len(p.parts) > 1}
    loose = any(len(p.parts) == 1 for p in files)
    classes = subdirs if subdirs and not loose and top == set(subdirs) else None
    class_index = {name: i for i, name in enumerate(classes or [])}
    items = (
        _Item(
            id=p.as_posix(),
            label=class_index[p.parts[0]] if classes else UNKNOWN_LABEL,
            data=root / p,
        )
        for p in files
    )
    collected = _decode_stream(items, image_size=image_size, max_samples=max_samples, strict=strict)
    return _from_collector(
        collected, source=canonical_source("folder", str(root)), classes=classes, image_size=image_size
    )


# --------------------------------------------------------------------------------------------
# WebDataset-style tar shards
# --------------------------------------------------------------------------------------------

# WebDataset's convention: the key is the member path up to the first dot of its file name,
# the suffix everything after it ("a/b.c.jpg" -> key "a/b", suffix "c.jpg").
_KEY_RE = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _shard_parts(spec: str) -> list[str]:
    return [p.strip() for p in _strip(spec, "shards").split(",") if p.strip()]


def _detect_shards(spec: str) -> bool:
    parts = _shard_parts(spec)
    return bool(parts) and all(p.lower().endswith(TAR_SUFFIXES) for p in parts)


def resolve_shards(spec: str) -> list[Path]:
    """The shard files a spec names: a path, a comma-separated list, or globs (sorted matches).

    Raises DataError for a missing file or a glob matching nothing.
    """
    parts = _shard_parts(spec)
    if not parts:
        raise DataError(f"no shards given in {spec!r}. {SPEC_FORMS}")
    shards: list[Path] = []
    for part in parts:
        pattern = os.path.expanduser(part)
        if _has_glob(pattern):
            matches = sorted(Path(m) for m in glob(pattern) if os.path.isfile(m))
            if not matches:
                raise DataError(
                    f"the shard pattern {part!r} matched no files; check its directory and spelling"
                )
            shards.extend(matches)
        elif os.path.isfile(pattern):
            shards.append(Path(pattern))
        else:
            raise DataError(f"shard {part!r} does not exist. {SPEC_FORMS}")
    unique = list(dict.fromkeys(shards))
    return unique


def _classes_file(shards: list[Path]) -> Path | None:
    path = shards[0].parent / "classes.txt"
    return path if path.is_file() else None


def read_classes_txt(path: Path) -> list[str]:
    """Class names, one a line (blank lines at the end ignored); line i names class index i."""
    names = path.read_text(encoding="utf-8").splitlines()
    while names and not names[-1].strip():
        names.pop()
    return [n.strip() for n in names]


def _parse_cls(raw: bytes, num_classes: int | None) -> int:
    text = raw.decode("ascii").strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"bad .cls content {text[:20]!r}: expected an integer class index")
    label = int(text)
    if label < UNKNOWN_LABEL or (num_classes is not None and label >= num_classes):
        limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f".cls value {label} is out of range ({limit}, or -1 for unknown)")
    return label


def _ended_cleanly(stream: tarfile.TarFile) -> bool:
    """Whether iteration stopped at a zero block, the tar end marker.

    tarfile stops silently (no error) at a truncated or corrupt header anywhere after the first
    member, which would drop the rest of a shard, or keep an image whose .cls was cut off with
    label -1, without a trace; looking at the block where it stopped tells the two cases apart.
    """
    fileobj = stream.fileobj
    if fileobj is None:
        return False
    fileobj.seek(stream.offset)
    return fileobj.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)


def _shard_items(shards: list[Path], num_classes: int | None) -> Iterator[_Item]:
    """Stream ``_Item``s from the shards in order, grouping consecutive members that share a key."""
    for shard in shards:
        count = 0
        key: str | None = None
        members: dict[str, bytes] = {}

        def sample(key: str, members: dict[str, bytes], shard: Path = shard) -> _Item | None:
            sample_id = f"{shard.name}/{key}"
            image = next((members[s] for s in members if "." + s in IMAGE_EXTENSIONS), None)
            if image is None:
                # A .cls with no image means the image went missing; a group of other files
                # (json, txt, ...) is simply not an image sample.
                return _Item(sample_id, error="no image member for this key") if "cls" in members else None
            label = UNKNOWN_LABEL
            if "cls" in members:
                try:
                    label = _parse_cls(members["cls"], num_classes)
                except (UnicodeDecodeError, ValueError) as error:
                    return _Item(sample_id, error=str(error))
            return _Item(sample_id, label=label, data=image)

        try:
            # Random-access mode (not "r|"): after the last member, the end-of-archive block can be checked.
            with tarfile.open(shard, "r:*") as stream:
                for member in stream:
                    match = _KEY_RE.match(member.name)
                    if not member.isfile() or match is None or os.path.basename(member.name).startswith("."):
                        continue
                    member_key, suffix = match.group(1), match.group(2).lower()
                    if member_key != key:
                        if key is not None and (item := sample(key, members)) is not None:
                            count += 1
                            yield item
                        key, members = member_key, {}
                    if suffix == "cls" or "." + suffix in IMAGE_EXTENSIONS:
                        handle = stream.extractfile(member)
                        members[suffix] = handle.read() if handle is not None else b""
                if not _ended_cleanly(stream):
                    raise tarfile.ReadError(
                        "no end-of-archive block after the last member: truncated or corrupt"
                    )
            if key is not None and (item := sample(key, members)) is not None:
                yield item
        except (tarfile.TarError, OSError, EOFError) as error:
            # The group being read when the stream broke may be missing its .cls (or its image):
            # skipping it is safer than keeping it with a wrong or unknown label.
            if key is not None:
                yield _Item(f"{shard.name}/{key}", error="incomplete: the tar stream broke while reading it")
            reason = f"unreadable tar data after {count} samples ({type(error).__name__}: {error})"
            yield _Item(shard.name, error=reason)


def _shard_inputs(spec: str) -> list[Path]:
    shards = resolve_shards(spec)
    extra = _classes_file(shards)
    return [*shards, *([extra] if extra else [])]


@_source("shards", detect=_detect_shards, inputs=_shard_inputs)
def shards_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> ImageDataset:
    """WebDataset-style tar shards (path, comma list or glob): <key>.jpg/png + optional <key>.cls."""
    shards = resolve_shards(spec)
    classes_path = _classes_file(shards)
    classes = read_classes_txt(classes_path) if classes_path else None
    items = _shard_items(shards, len(classes) if classes else None)
    collected = _decode_stream(items, image_size=image_size, max_samples=max_samples, strict=strict)
    return _from_collector(
        collected,
        source=canonical_source("shards", ",".join(_shard_parts(spec))),
        classes=classes,
        image_size=image_size,
    )


# --------------------------------------------------------------------------------------------
# CIFAR python-pickle directories
# --------------------------------------------------------------------------------------------

# Exactly what the CIFAR pickles need to rebuild their numpy arrays, and nothing else: a pickle
# can call any importable function, so every other global is refused. Python 2 pickles of
# numpy 1 name "numpy.core.*", which numpy 2 moved to "numpy._core.*".
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Python 3 pickles ``bytes`` at protocol 2 as ``_codecs.encode(text, "latin1")``; nothing else passes."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that can only rebuild numpy arrays and plain containers (dict, list, bytes, ...).

    The real CIFAR files (Python 2 pickles) need ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype``; numpy's protocol-5 path (``_frombuffer``), scalars and
    the latin-1 ``_codecs.encode`` that Python 3 writes for bytes at protocol 2 are also accepted.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}: this file is not a plain data pickle "
                "(only numpy arrays, lists, dicts and bytes are allowed)"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def load_restricted_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as for Python 2 pickles)."""
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle, encoding="bytes").load()


@dataclass
class _CifarLayout:
    train: list[Path]
    test: list[Path]
    meta: Path | None


def _cifar_layout(directory: Path) -> _CifarLayout | None:
    if not directory.is_dir():
        return None
    batches = sorted(directory.glob("data_batch_*"), key=lambda p: (len(p.name), p.name))
    if batches or (directory / "test_batch").is_file():  # CIFAR-10
        test = [directory / "test_batch"] if (directory / "test_batch").is_file() else []
        meta = directory / "batches.meta"
        return _CifarLayout(batches, test, meta if meta.is_file() else None)
    if (directory / "meta").is_file() and ((directory / "train").is_file() or (directory / "test").is_file()):
        train, test = directory / "train", directory / "test"  # CIFAR-100
        return _CifarLayout(
            [train] if train.is_file() else [], [test] if test.is_file() else [], directory / "meta"
        )
    return None


def _cifar_files(spec: str) -> tuple[list[Path], Path | None, str] | None:
    """``(batch files, meta file, split)`` for a CIFAR spec, or None when it is not one."""
    base, split = _strip(spec, "cifar"), "train"
    for name in ("train", "test"):
        if base.endswith(":" + name):
            base, split = base[: -len(name) - 1], name
    path = Path(base).expanduser()
    layout = _cifar_layout(path)
    if layout is not None:
        return (layout.test if split == "test" else layout.train), layout.meta, split
    parent = _cifar_layout(path.parent) if path.is_file() else None
    if parent is not None and base == _strip(spec, "cifar") and path in (*parent.train, *parent.test):
        return [path], parent.meta, path.name
    return None


def _cifar_inputs(spec: str) -> list[Path]:
    found = _cifar_files(spec)
    if found is None:
        return []
    files, meta, _ = found
    return [*files, *([meta] if meta else [])]


def _as_str_keys(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict, found {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 32, 32, 3)`` uint8 images and ``(N,)`` labels from one CIFAR batch file."""
    batch = _as_str_keys(load_restricted_pickle(path))
    data = batch.get("data")
    labels = batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError("'data' is not an (N, 3072) uint8 array")
    labels_arr = np.asarray(labels if labels is not None else [], dtype=np.int64).reshape(-1)
    if labels_arr.shape != (data.shape[0],):
        raise ValueError(f"expected {data.shape[0]} labels, found {labels_arr.shape[0]}")
    # Rows are the red, green and blue 32x32 planes one after the other (row-major).
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels_arr


def _cifar_classes(meta: Path | None) -> list[str] | None:
    if meta is None:
        return None
    try:
        content = _as_str_keys(load_restricted_pickle(meta))
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise DataError(f"cannot read CIFAR class names from {meta}: {error}") from error
    names = content.get("label_names", content.get("fine_label_names"))
    if names is None:
        return None
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


@_source("cifar", detect=lambda spec: _cifar_files(spec) is not None, inputs=_cifar_inputs)
def cifar_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> ImageDataset:
    """CIFAR-10/100 python-pickle directory ('<dir>' = train batches, '<dir>:test' = test batch)."""
    found = _cifar_files(spec)
    if found is None:
        raise DataError(
            f"{spec!r} is not a CIFAR pickle directory (expected data_batch_1..5, test_batch and "
            f"batches.meta, or CIFAR-100's train, test and meta). {SPEC_FORMS}"
        )
    files, meta, _ = found
    if not files:
        raise DataError(f"no batch files for {spec!r}: the directory lacks the requested split")
    classes = _cifar_classes(meta)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    collected = _Collector(strict)
    for path in files:
        if max_samples is not None and len(ids) >= max_samples:
            break
        try:
            batch_images, batch_labels = _read_cifar_batch(path)
        except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
            collected.skip(path.name, f"{type(error).__name__}: {error}")
            continue
        take = len(batch_labels) if max_samples is None else min(len(batch_labels), max_samples - len(ids))
        images.append(batch_images[:take])
        labels.append(batch_labels[:take])
        ids.extend(f"{path.name}/{i}" for i in range(take))
    return _build(
        np.concatenate(images) if images else np.zeros((0, 32, 32, 3), np.uint8),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        ids,
        source=canonical_source("cifar", _strip(spec, "cifar")),
        classes=classes,
        skipped=collected.skipped,
        image_size=image_size,
    )


# --------------------------------------------------------------------------------------------
# .npy / .npz arrays
# --------------------------------------------------------------------------------------------

_IMAGE_KEYS = ("images", "x", "X", "data")
_LABEL_KEYS = ("labels", "y", "targets")


def _arrays_path(spec: str) -> Path:
    return Path(_strip(spec, "arrays")).expanduser()


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


def _pick(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in keys), None)


@_source(
    "arrays",
    detect=lambda spec: _arrays_path(spec).suffix.lower() in (".npy", ".npz"),
    inputs=lambda spec: [_arrays_path(spec)],
)
def arrays_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> ImageDataset:
    """Images in a .npy file, or a .npz with 'images' (or x/X/data) and optional 'labels' (or y/targets)."""
    path = _arrays_path(spec)
    if not path.is_file():
        raise DataError(f"array file {str(path)!r} does not exist. {SPEC_FORMS}")
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    try:
        if path.suffix.lower() == ".npy":
            # mmap: with max_samples only the first rows are ever read from disk.
            images = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                image_key = _pick(npz.files, _IMAGE_KEYS)
                if image_key is None:
                    raise DataError(
                        f"{path} has arrays {npz.files}; name the images one of {list(_IMAGE_KEYS)} "
                        f"(and the labels one of {list(_LABEL_KEYS)})"
                    )
                images = npz[image_key]
                label_key = _pick(npz.files, _LABEL_KEYS)
                if label_key is not None:
                    labels = npz[label_key]
                if "classes" in npz.files:
                    classes = [str(c) for c in npz["classes"].reshape(-1)]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"cannot read array file {path}: {error}") from error
    if images.ndim not in (3, 4):
        raise DataError(
            f"the images in {path.name} have shape {images.shape}; "
            "expected (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    total = images.shape[0]
    if labels is not None:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape != (total,) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"labels in {path.name} must be a ({total},) integer array (one per image), "
                f"got {labels.shape} {labels.dtype}"
            )
        if total and labels.min() < UNKNOWN_LABEL:
            raise DataError(f"labels in {path.name} must be >= 0 (or -1 for unknown), found {labels.min()}")
    images = to_nhwc_uint8(np.asarray(images[:max_samples]), f"the images in {path.name}")
    n = images.shape[0]
    labels = np.full(n, UNKNOWN_LABEL, dtype=np.int64) if labels is None else labels[:n]
    return _build(
        images,
        labels.astype(np.int64),
        [str(i) for i in range(n)],
        source=canonical_source("arrays", str(path)),
        classes=classes,
        skipped=[],
        image_size=image_size,
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{name} must be a positive integer or None, got {value!r}")


def load_images(
    spec: str,
    *,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Load an image data set from ``spec`` (see the module docstring for the forms) as uint8 tensors.

    Args:
        spec: what to load, e.g. ``"digits:train"``, ``"/data/imgs"``, ``"/data/train-*.tar"``.
        image_size: resize the shorter side to this and centre-crop a square; None keeps the
            native size, which must then be the same for every image.
        max_samples: stop after this many readable samples (tar shards stop streaming there).
        strict: raise DataError on the first unreadable input instead of skipping it.
        cache_dir: when given, decoded data is stored there (safetensors) and reused while the
            input files are unchanged.

    Returns:
        An ImageDataset: ``images`` ``(N, 3, H, W)`` uint8, ``labels`` ``(N,)`` int64 (-1 = unknown).
    """
    _check_positive("image_size", image_size)
    _check_positive("max_samples", max_samples)
    kind, rest = resolve_spec(spec)
    factory = SOURCES.get(kind)
    key = None
    if cache_dir is not None:
        inputs: Callable[[str], list[Path]] | None = getattr(factory, "inputs", None)
        files = inputs(rest) if inputs is not None else []
        key = _cache.cache_key(kind, rest, files, image_size=image_size, max_samples=max_samples)
        cached = _cache.load_cached(cache_dir, key)
        if cached is not None:
            if strict and cached.skipped:
                sample_id, reason = cached.skipped[0]
                raise DataError(
                    f"cannot read {sample_id}: {reason}. (strict=True; recorded in the data cache "
                    f"{_cache.cache_path(cache_dir, key)})"
                )
            return cached
    dataset = factory(rest, image_size=image_size, max_samples=max_samples, strict=strict)
    if cache_dir is not None and key is not None:
        _cache.save_cached(cache_dir, key, dataset)
    return dataset


def describe(dataset: ImageDataset) -> str:
    """One line summarising a data set, for logs and ``selfsup list``."""
    h, w = dataset.image_size
    parts = [f"{len(dataset)} images {h}x{w} from {dataset.source}"]
    if dataset.classes is not None:
        parts.append(f"{len(dataset.classes)} classes")
    parts.append(f"{dataset.labeled_fraction:.0%} labelled")
    if dataset.skipped:
        parts.append(f"{len(dataset.skipped)} skipped")
    return ", ".join(parts)


__all__ = [
    "IMAGE_EXTENSIONS",
    "SPEC_FORMS",
    "RestrictedUnpickler",
    "canonical_source",
    "decode_image",
    "describe",
    "digits_split_indices",
    "list_image_files",
    "load_images",
    "load_restricted_pickle",
    "resize_center_crop",
    "resolve_spec",
    "to_nhwc_uint8",
    "to_rgb",
]
