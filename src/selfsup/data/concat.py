"""Several sources as one data set: the spec ``"A + B"`` (e.g. LJ Speech plus FSDD's train split).

Each part is loaded as its own spec would be, then joined into one in-memory data set of the same
kind: images and vectors into one :class:`~selfsup.data.base.InMemoryDataset`, audio into one
:class:`~selfsup.data.audio.AudioDataset`. The parts must hold the same modality and sample format
(shape, dtype, sample rate). Class names: parts that name classes must name the same ones; a part
without labels joins with every label -1 (unlabelled pools beside a labelled set).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import torch

from selfsup.data.base import UNKNOWN_LABEL, DataError, DataInfo, Dataset, InMemoryDataset

# " + " with spaces on both sides: a path may contain "+", never surrounded by blanks in practice.
SEPARATOR = re.compile(r"\s+\+\s+")


def split_spec(spec: str) -> list[str]:
    """The part specs of ``spec`` (one part when it joins nothing)."""
    return [part.strip() for part in SEPARATOR.split(spec.strip())]


def _common_info(parts: list[Dataset], specs: list[str]) -> DataInfo:
    first = parts[0].info
    for part, spec in zip(parts[1:], specs[1:]):
        info = part.info
        for key in ("modality", "sample_shape", "dtype", "sample_rate", "columns"):
            if getattr(info, key) != getattr(first, key):
                raise DataError(
                    f"cannot join {specs[0]!r} and {spec!r}: their {key} differ "
                    f"({getattr(first, key)} vs {getattr(info, key)}); join sources of one kind and format"
                )
    named = {p.info.classes for p in parts if p.info.classes is not None and p.has_labels}
    if len(named) > 1:
        raise DataError(
            f"cannot join sources that name different classes ({' vs '.join(str(c) for c in named)}); "
            "label them alike or leave the labels out of all but one (e.g. drop ?label=... in the manifest)"
        )
    classes = next(iter(named)) if named else None
    return replace(first, classes=classes)


def concat_datasets(parts: list[Dataset], specs: list[str], source: str) -> Dataset:
    """One data set holding the samples of ``parts`` in order (see the module docstring)."""
    if any(p.streaming for p in parts):
        raise DataError(
            f"{source!r}: joined sources are decoded into memory, but a part streams; use "
            "data.loading=memory or join fewer or smaller sources"
        )
    info = _common_info(parts, specs)
    labels = torch.cat(
        [
            p.labels.cpu() if p.info.classes == info.classes else torch.full((len(p),), UNKNOWN_LABEL)
            for p in parts
        ]
    )
    ids = [f"{i}:{sample_id}" for i, p in enumerate(parts) for sample_id in p.ids]
    skipped = [(f"{i}:{sample_id}", why) for i, p in enumerate(parts) for sample_id, why in p.skipped]
    digest = hashlib.sha256(b"concat")
    for part in parts:
        digest.update(part.fingerprint.encode())
    fingerprint = digest.hexdigest()
    if info.modality == "audio":
        from selfsup.data.audio import AudioDataset

        if not all(isinstance(p, AudioDataset) for p in parts):
            raise DataError(f"{source!r}: every part of joined audio must be an in-memory audio set")
        waveforms = torch.cat([p.waveforms.cpu() for p in parts])  # type: ignore[attr-defined]
        lengths = torch.cat([p.lengths for p in parts])  # type: ignore[attr-defined]
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        return AudioDataset(
            waveforms,
            offsets,
            labels,
            ids,
            info=info,
            source=source,
            skipped=skipped,
            fingerprint=fingerprint,
        )
    if not all(isinstance(p, InMemoryDataset) for p in parts):
        raise DataError(f"{source!r}: cannot join {info.modality} sources of this kind")
    inputs = torch.cat([p.inputs.cpu() for p in parts])  # type: ignore[attr-defined]
    return InMemoryDataset(
        inputs, labels, ids, info=info, source=source, skipped=skipped, fingerprint=fingerprint
    )


__all__ = ["SEPARATOR", "concat_datasets", "split_spec"]
