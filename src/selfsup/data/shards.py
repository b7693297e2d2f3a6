"""The ``shards`` source: WebDataset-style tar shards, streamed and decoded without extracting.

A spec names one shard, a comma-separated list, or globs (``/data/train-*.tar``). Members
``<key>.<jpg|png|...>`` are images, or ``<key>.<wav|flac|ogg|mp3>`` audio clips (the first such member
of the first shard decides which: :func:`shard_modality`; audio clips are found by
:func:`~selfsup.data.audio_catalog.shard_catalog`), an optional ``<key>.cls`` holds the ASCII class
index, and a ``classes.txt`` beside the (first) shard names the classes. A truncated or corrupt shard
keeps the samples read before the damage and records the rest as skipped.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from glob import glob
from pathlib import Path

from selfsup.data.assemble import Item, build_from_collector, decode_stream
from selfsup.data.audio import AudioDataset, decode_catalog
from selfsup.data.audio_catalog import shard_catalog
from selfsup.data.audio_decode import AUDIO_EXTENSIONS, DEFAULT_MIN_SECONDS, DEFAULT_SAMPLE_RATE
from selfsup.data.base import UNKNOWN_LABEL, DataError, InMemoryDataset, error_reason
from selfsup.data.decode import IMAGE_EXTENSIONS
from selfsup.data.sources import SPEC_FORMS, canonical_source, register_source, strip_kind

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")

# WebDataset's convention: the key is the member path up to the first dot of its file name,
# the suffix everything after it ("a/b.c.jpg" -> key "a/b", suffix "c.jpg").
KEY_RE = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _shard_parts(spec: str) -> list[str]:
    return [p.strip() for p in strip_kind(spec, "shards").split(",") if p.strip()]


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


def classes_file(shards: list[Path]) -> Path | None:
    """The ``classes.txt`` beside the first shard, or None when there is none."""
    path = shards[0].parent / "classes.txt"
    return path if path.is_file() else None


def read_classes_txt(path: Path) -> list[str]:
    """Class names, one a line (blank lines at the end ignored); line i names class index i."""
    names = path.read_text(encoding="utf-8").splitlines()
    while names and not names[-1].strip():
        names.pop()
    return [n.strip() for n in names]


def parse_cls(raw: bytes, num_classes: int | None) -> int:
    """The class index a ``.cls`` member holds (ASCII, -1 for unknown); ValueError (UnicodeDecodeError for
    non-ASCII bytes) when it is not an integer in range."""
    text = raw.decode("ascii").strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"bad .cls content {text[:20]!r}: expected an integer class index")
    label = int(text)
    if label < UNKNOWN_LABEL or (num_classes is not None and label >= num_classes):
        limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f".cls value {label} is out of range ({limit}, or -1 for unknown)")
    return label


def ended_cleanly(stream: tarfile.TarFile) -> bool:
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


def _shard_items(shards: list[Path], num_classes: int | None) -> Iterator[Item]:
    """Stream ``Item``s from the shards in order, grouping consecutive members that share a key."""
    for shard in shards:
        count = 0
        key: str | None = None
        members: dict[str, bytes] = {}

        def sample(key: str, members: dict[str, bytes], shard: Path = shard) -> Item | None:
            sample_id = f"{shard.name}/{key}"
            image = next((members[s] for s in members if "." + s in IMAGE_EXTENSIONS), None)
            if image is None:
                # A .cls with no image means the image went missing; a group of other files
                # (json, txt, ...) is simply not an image sample.
                return Item(sample_id, error="no image member for this key") if "cls" in members else None
            label = UNKNOWN_LABEL
            if "cls" in members:
                try:
                    label = parse_cls(members["cls"], num_classes)
                except (UnicodeDecodeError, ValueError) as error:
                    return Item(sample_id, error=str(error))
            return Item(sample_id, label=label, data=image)

        try:
            # Random-access mode (not "r|"): after the last member, the end-of-archive block can be checked.
            with tarfile.open(shard, "r:*") as stream:
                for member in stream:
                    match = KEY_RE.match(member.name)
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
                if not ended_cleanly(stream):
                    raise tarfile.ReadError(
                        "no end-of-archive block after the last member: truncated or corrupt"
                    )
            if key is not None and (item := sample(key, members)) is not None:
                yield item
        except (tarfile.TarError, OSError, EOFError) as error:
            # The group being read when the stream broke may be missing its .cls (or its image):
            # skipping it is safer than keeping it with a wrong or unknown label.
            if key is not None:
                yield Item(f"{shard.name}/{key}", error="incomplete: the tar stream broke while reading it")
            yield Item(shard.name, error=f"unreadable tar data after {count} samples ({error_reason(error)})")


# Members looked at to tell image shards from audio shards before giving up (and reading them as images).
_MODALITY_PEEK = 1000


def shard_modality(shards: list[Path]) -> str:
    """``"audio"`` when the first image-or-audio member of the first shard is an audio file, else
    ``"image"`` (also for a shard that cannot be read: the image path reports the damage)."""
    try:
        with tarfile.open(shards[0], "r:*") as stream:
            for count, member in enumerate(stream):
                name = member.name.lower()
                if name.endswith(AUDIO_EXTENSIONS):
                    return "audio"
                if name.endswith(IMAGE_EXTENSIONS) or count >= _MODALITY_PEEK:
                    return "image"
    except (tarfile.TarError, OSError, EOFError):
        pass
    return "image"


def _shard_inputs(spec: str) -> list[Path]:
    shards = resolve_shards(spec)
    extra = classes_file(shards)
    return [*shards, *([extra] if extra else [])]


@register_source("shards", detect=_detect_shards, inputs=_shard_inputs)
def shards_source(
    spec: str,
    *,
    image_size: int | None = None,
    max_samples: int | None = None,
    strict: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    min_seconds: float = DEFAULT_MIN_SECONDS,
) -> InMemoryDataset | AudioDataset:
    """WebDataset-style tar shards (path, comma list or glob): <key>.jpg/png or <key>.wav/flac/ogg/mp3,
    plus an optional <key>.cls."""
    shards = resolve_shards(spec)
    classes_path = classes_file(shards)
    classes = read_classes_txt(classes_path) if classes_path else None
    if shard_modality(shards) == "audio":
        return decode_catalog(
            shard_catalog(shards, classes),
            source=canonical_source("shards", ",".join(_shard_parts(spec))),
            sample_rate=sample_rate,
            min_seconds=min_seconds,
            max_samples=max_samples,
            strict=strict,
        )
    items = _shard_items(shards, len(classes) if classes else None)
    collected = decode_stream(items, image_size=image_size, max_samples=max_samples, strict=strict)
    return build_from_collector(
        collected,
        source=canonical_source("shards", ",".join(_shard_parts(spec))),
        classes=classes,
        image_size=image_size,
    )


__all__ = [
    "KEY_RE",
    "TAR_SUFFIXES",
    "classes_file",
    "ended_cleanly",
    "parse_cls",
    "read_classes_txt",
    "resolve_shards",
    "shard_modality",
    "shards_source",
]
