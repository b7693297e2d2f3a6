"""The ``folder`` source: a directory of image or audio files, searched recursively, class sub-folders
as labels.

Hidden files and folders are ignored. The files found decide the modality: images
(:data:`~selfsup.data.decode.IMAGE_EXTENSIONS`) or audio clips
(:data:`~selfsup.data.audio_decode.AUDIO_EXTENSIONS`); a folder holding both is an error (point at a
sub-folder, or use a manifest). If every direct sub-folder holds such files and none sits at the top
level, the sorted sub-folder names are the classes; otherwise every label is -1.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from selfsup.data.assemble import Item, build_from_collector, decode_stream
from selfsup.data.audio import AudioDataset, decode_catalog
from selfsup.data.audio_catalog import folder_catalog
from selfsup.data.audio_decode import AUDIO_EXTENSIONS, DEFAULT_MIN_SECONDS, DEFAULT_SAMPLE_RATE
from selfsup.data.base import UNKNOWN_LABEL, DataError, InMemoryDataset
from selfsup.data.decode import IMAGE_EXTENSIONS
from selfsup.data.shards import TAR_SUFFIXES
from selfsup.data.sources import SPEC_FORMS, canonical_source, register_source, spec_path


def list_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under ``root`` whose names end with one of ``extensions`` (recursive, symlinks followed
    once, hidden entries skipped), as paths relative to ``root`` sorted by their parts, so the order is
    the same on every machine."""
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
        found.extend(rel / f for f in files if f.lower().endswith(extensions) and not f.startswith("."))
    return sorted(found, key=lambda p: p.parts)


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (see :func:`list_files`)."""
    return list_files(root, IMAGE_EXTENSIONS)


def _split_media(root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, audio files) under ``root``, found in one walk."""
    found = list_files(root, IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)
    audio = [p for p in found if p.name.lower().endswith(AUDIO_EXTENSIONS)]
    images = [p for p in found if not p.name.lower().endswith(AUDIO_EXTENSIONS)]
    return images, audio


def _folder_inputs(spec: str) -> list[Path]:
    root = spec_path(spec, "folder")
    return [root / p for p in list_files(root, IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)] if root.is_dir() else []


def _no_images_message(root: Path) -> str:
    others = list(itertools.islice((p for p in root.rglob("*") if p.is_file()), 1000))
    kinds = ", ".join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)
    if not others:
        return f"folder {str(root)!r} is empty: put images or audio files ({kinds}) in it"
    shards = [p for p in others if p.name.lower().endswith(TAR_SUFFIXES)]
    more = "+" if len(others) == 1000 else ""
    hint = f" It holds tar files: for shards use '{root / '*.tar'}'." if shards else ""
    return (
        f"no images found in folder {str(root)!r}, nor audio files (looked for {kinds} "
        f"files, recursively; found {len(others)}{more} other file(s), e.g. {others[0].name!r}).{hint}"
    )


def scan_media(root: Path) -> tuple[str, list[Path], list[str] | None]:
    """``(modality, files, classes)`` of a folder: ``"image"`` or ``"audio"`` by the files it holds,
    those files relative to ``root``, and the class names (see :func:`scan_folder`).

    Raises DataError for a missing folder, one without images or audio, or one holding both.
    """
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder. {SPEC_FORMS}")
    images, audio = _split_media(root)
    if images and audio:
        raise DataError(
            f"folder {str(root)!r} holds both images ({len(images)}, e.g. {images[0].as_posix()!r}) and "
            f"audio files ({len(audio)}, e.g. {audio[0].as_posix()!r}); point data.source at a folder "
            "holding one kind, or list the clips in a CSV manifest"
        )
    if not images and not audio:
        raise DataError(_no_images_message(root))
    modality, files = ("audio", audio) if audio else ("image", images)
    return modality, files, _classes(root, files)


def folder_modality(root: Path) -> str:
    """``"image"`` or ``"audio"``: what the folder holds (DataError as for :func:`scan_media`)."""
    return scan_media(root)[0]


def scan_folder(root: Path) -> tuple[list[Path], list[str] | None]:
    """The image files under ``root`` (see :func:`list_image_files`) and the class names: the sorted
    direct sub-folders when every one holds images and no image sits at the top level, else None.

    Raises DataError for a missing folder or one without images.
    """
    modality, files, classes = scan_media(root)
    if modality != "image":
        raise DataError(f"folder {str(root)!r} holds audio files, not images")
    return files, classes


def _classes(root: Path, files: list[Path]) -> list[str] | None:
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = {p.parts[0] for p in files if len(p.parts) > 1}
    loose = any(len(p.parts) == 1 for p in files)
    return subdirs if subdirs and not loose and top == set(subdirs) else None


@register_source("folder", detect=lambda spec: spec_path(spec, "folder").is_dir(), inputs=_folder_inputs)
def folder_source(
    spec: str,
    *,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    min_seconds: float = DEFAULT_MIN_SECONDS,
) -> InMemoryDataset | AudioDataset:
    """A folder of images or audio clips, searched recursively; class sub-folders give labels."""
    root = spec_path(spec, "folder")
    modality, files, classes = scan_media(root)
    source = canonical_source("folder", str(root))
    if modality == "audio":
        return decode_catalog(
            folder_catalog(root, files, classes),
            source=source,
            sample_rate=sample_rate,
            min_seconds=min_seconds,
            max_samples=max_samples,
            strict=strict,
        )
    class_index = {name: i for i, name in enumerate(classes or [])}
    items = (
        Item(
            id=p.as_posix(),
            label=class_index[p.parts[0]] if classes else UNKNOWN_LABEL,
            data=root / p,
        )
        for p in files
    )
    collected = decode_stream(items, image_size=image_size, max_samples=max_samples, strict=strict)
    return build_from_collector(collected, source=source, classes=classes, image_size=image_size)


__all__ = ["folder_modality", "folder_source", "list_files", "list_image_files", "scan_folder", "scan_media"]
