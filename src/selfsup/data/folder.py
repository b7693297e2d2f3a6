"""The ``folder`` source: a directory of image files, searched recursively, class sub-folders as labels.

Hidden files and folders are ignored. If every direct sub-folder holds images and no image sits
at the top level, the sorted sub-folder names are the classes; otherwise every label is -1.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from selfsup.data.assemble import Item, build_from_collector, decode_stream
from selfsup.data.base import UNKNOWN_LABEL, DataError, InMemoryDataset
from selfsup.data.decode import IMAGE_EXTENSIONS
from selfsup.data.shards import TAR_SUFFIXES
from selfsup.data.sources import SPEC_FORMS, canonical_source, register_source, spec_path


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


def _folder_inputs(spec: str) -> list[Path]:
    root = spec_path(spec, "folder")
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


def scan_folder(root: Path) -> tuple[list[Path], list[str] | None]:
    """The image files under ``root`` (see :func:`list_image_files`) and the class names: the sorted
    direct sub-folders when every one holds images and no image sits at the top level, else None.

    Raises DataError for a missing folder or one without images.
    """
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder. {SPEC_FORMS}")
    files = list_image_files(root)
    if not files:
        raise DataError(_no_images_message(root))
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = {p.parts[0] for p in files if len(p.parts) > 1}
    loose = any(len(p.parts) == 1 for p in files)
    classes = subdirs if subdirs and not loose and top == set(subdirs) else None
    return files, classes


@register_source("folder", detect=lambda spec: spec_path(spec, "folder").is_dir(), inputs=_folder_inputs)
def folder_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
) -> InMemoryDataset:
    """A folder of images, searched recursively; class sub-folders give labels."""
    root = spec_path(spec, "folder")
    files, classes = scan_folder(root)
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
    return build_from_collector(
        collected, source=canonical_source("folder", str(root)), classes=classes, image_size=image_size
    )


__all__ = ["folder_source", "list_image_files", "scan_folder"]
