"""The data contract of every modality: :class:`DataInfo`, :class:`Batch` and :class:`Dataset`.

A data set declares what it holds (:class:`DataInfo`: modality, per-sample shape or variable
length, sample rate / vocabulary / columns, class names) and returns a :class:`Batch` for a set of
indices. The trainer, ``embed``, the probes and the monitors only ever see these types, so adding a
modality or a source never touches them.

Two families implement it: :class:`InMemoryDataset` (decoded once into one tensor: uint8 images,
float32 vectors; the fast path for sets that fit in memory) and the streaming data sets of
:mod:`selfsup.data.stream`, which decode samples on demand from indexed files.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from selfsup.errors import DataError
from selfsup.registry import Registry

UNKNOWN_LABEL = -1


def num_workers() -> int:
    """Threads to decode or read headers on: the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def error_reason(error: BaseException) -> str:
    """How a caught exception is recorded as the reason an input was skipped."""
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class DataInfo:
    """What a data set holds, declared without decoding it.

    modality: ``"image"``, ``"vector"``, … (a name in :data:`selfsup.modalities.MODALITIES`).
    sample_shape: shape of one stored sample, e.g. ``(3, H, W)`` for images or ``(D,)`` for vectors;
        None for variable-length samples (their lengths come with each :class:`Batch`).
    dtype: dtype of the stored inputs (``"uint8"`` images, ``"float32"`` vectors, ``"int16"`` audio).
    classes: class names indexed by label, when the source names them.
    sample_rate: samples per second, for audio and other signals.
    vocab_size: number of token ids, for token sequences.
    columns: column (feature) names, for vectors and tables.
    """

    modality: str
    sample_shape: tuple[int, ...] | None
    dtype: str
    classes: tuple[str, ...] | None = None
    sample_rate: float | None = None
    vocab_size: int | None = None
    columns: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInfo:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


@dataclass
class Batch:
    """One batch of samples, as a data set returns it and a view policy consumes it.

    inputs: ``(B, *sample_shape)`` for fixed-size samples, ``(B, T, ...)`` padded for variable-length
        ones, or a mapping of such tensors for multi-field samples (tables, events).
    labels: ``(B,)`` int64, ``-1`` where unknown.
    indices: ``(B,)`` int64 positions of the samples in their data set (HuBERT targets and
        pseudo-labels are looked up by them).
    lengths: ``(B,)`` int64 valid lengths of variable-length samples, else None.
    padding_mask: ``(B, T)`` bool, True at padded positions, else None.
    """

    inputs: Tensor | dict[str, Tensor]
    labels: Tensor
    indices: Tensor
    lengths: Tensor | None = None
    padding_mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        inputs = (
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()}
            if isinstance(self.inputs, dict)
            else self.inputs.to(device, non_blocking=non_blocking)
        )
        return Batch(
            inputs=inputs,
            labels=self.labels.to(device, non_blocking=non_blocking),
            indices=self.indices.to(device, non_blocking=non_blocking),
            lengths=move(self.lengths),
            padding_mask=move(self.padding_mask),
        )


class Dataset(ABC):
    """A data set of any modality: ``len``, :attr:`info`, ``labels``/``ids`` and :meth:`batch`.

    Attributes every implementation sets: ``info`` (:class:`DataInfo`), ``labels`` (``(N,)`` int64,
    -1 unknown, always in memory), ``ids`` (N strings naming each sample in its source), ``source``
    (the canonical spec; loading it again gives the same data) and ``skipped`` (``(id, reason)`` of
    every unreadable input left out). ``streaming`` is True when samples are decoded on demand.
    """

    info: DataInfo
    labels: Tensor
    ids: list[str]
    source: str
    skipped: list[tuple[str, str]]
    streaming: bool = False

    @abstractmethod
    def batch(self, indices: Tensor) -> Batch:
        """The samples at ``indices`` (``(B,)`` int64) as a :class:`Batch`, on the data set's device."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def fingerprint(self) -> str:
        """A hex digest that changes whenever the samples would (used to key feature caches)."""
        return self._fingerprint()

    @abstractmethod
    def _fingerprint(self) -> str: ...

    @property
    def classes(self) -> list[str] | None:
        """Class names indexed by label (``info.classes``), when the source names them."""
        return None if self.info.classes is None else list(self.info.classes)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels != UNKNOWN_LABEL).any())

    @property
    def labeled_fraction(self) -> float:
        return float((self.labels != UNKNOWN_LABEL).float().mean()) if len(self) else 0.0

    def subset(self, indices: Tensor) -> Dataset:
        """The samples at ``indices``, in that order, as a data set of their own."""
        return SubsetDataset(self, indices)


def hash_tensor(digest: Any, tensor: Tensor) -> None:
    """Feed ``tensor`` (its shape, dtype and bytes) to the hashlib ``digest``, for data set fingerprints."""
    digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


class InMemoryDataset(Dataset):
    """A data set decoded once into one tensor (the fast path for sets that fit in memory).

    inputs: ``(N, *info.sample_shape)``: uint8 ``(N, 3, H, W)`` images, float32 ``(N, D)`` vectors.
    fingerprint: given by the source (its files and options); computed from the content when None.
    """

    def __init__(
        self,
        inputs: Tensor,
        labels: Tensor,
        ids: list[str],
        *,
        info: DataInfo,
        source: str,
        skipped: list[tuple[str, str]] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        n = inputs.shape[0]
        if info.sample_shape is not None and tuple(inputs.shape[1:]) != tuple(info.sample_shape):
            raise ValueError(
                f"inputs have per-sample shape {tuple(inputs.shape[1:])}, info declares {info.sample_shape}"
            )
        if str(inputs.dtype).removeprefix("torch.") != info.dtype:
            raise ValueError(f"inputs are {inputs.dtype} but info declares {info.dtype}")
        if labels.shape != (n,) or labels.dtype != torch.int64:
            raise ValueError(f"labels must be ({n},) int64, got {tuple(labels.shape)} {labels.dtype}")
        if len(ids) != n:
            raise ValueError(f"expected {n} ids, got {len(ids)}")
        self.inputs = inputs
        self.labels = labels
        self.ids = ids
        self.info = info
        self.source = source
        self.skipped = list(skipped or [])
        self._given_fingerprint = fingerprint

    def batch(self, indices: Tensor) -> Batch:
        where = indices.to(self.inputs.device)
        return Batch(inputs=self.inputs[where], labels=self.labels[where], indices=where)

    def to(self, device: torch.device | str) -> InMemoryDataset:
        """The same data set with its tensors on ``device`` (small sets live on the GPU: no loader)."""
        moved = InMemoryDataset(
            self.inputs.to(device),
            self.labels.to(device),
            self.ids,
            info=self.info,
            source=self.source,
            skipped=self.skipped,
            fingerprint=self.fingerprint,
        )
        return moved

    def _fingerprint(self) -> str:
        if self._given_fingerprint is None:
            digest = hashlib.sha256(repr(self.info.to_dict()).encode())
            hash_tensor(digest, self.inputs)
            hash_tensor(digest, self.labels)
            digest.update("\0".join(self.ids).encode())
            self._given_fingerprint = digest.hexdigest()
        return self._given_fingerprint

    @property
    def nbytes(self) -> int:
        return self.inputs.numel() * self.inputs.element_size()


class SubsetDataset(Dataset):
    """The samples of ``base`` at ``indices`` (``(M,)`` int64), in that order."""

    def __init__(self, base: Dataset, indices: Tensor) -> None:
        self.base = base
        self.positions = torch.as_tensor(indices, dtype=torch.int64).cpu()
        self.info = base.info
        self.labels = base.labels.cpu()[self.positions]
        self.ids = [base.ids[i] for i in self.positions.tolist()]
        self.source = base.source
        self.skipped = base.skipped
        self.streaming = base.streaming

    def batch(self, indices: Tensor) -> Batch:
        batch = self.base.batch(self.positions[indices.cpu()])
        batch.indices = indices.to(batch.labels.device)
        return batch

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(self.base.fingerprint.encode())
        hash_tensor(digest, self.positions)
        return digest.hexdigest()


def describe(dataset: Dataset) -> str:
    """One line summarising a data set, for logs and reports."""
    info = dataset.info
    shape = info.sample_shape
    if info.modality == "image" and shape is not None:
        what = f"{len(dataset)} images {shape[1]}x{shape[2]}"
    elif info.modality == "vector" and shape is not None:
        what = f"{len(dataset)} vectors of {shape[0]} features"
    elif info.modality == "audio":
        from selfsup.data.audio import describe_audio  # audio imports this module

        what = describe_audio(dataset) or f"{len(dataset)} audio clips"
    else:
        what = f"{len(dataset)} {info.modality} samples"
    parts = [f"{what} from {dataset.source}"]
    if dataset.streaming:
        parts.append("streamed")
    if info.classes is not None:
        parts.append(f"{len(info.classes)} classes")
    parts.append(f"{dataset.labeled_fraction:.0%} labelled")
    if dataset.skipped:
        parts.append(f"{len(dataset.skipped)} skipped")
    return ", ".join(parts)


def check_labels(labels: Tensor, classes: tuple[str, ...] | None, where: str) -> None:
    """Raise a DataError unless every label is -1 or a valid class index."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < UNKNOWN_LABEL:
        raise DataError(f"labels in {where} must be >= 0 (or -1 for unknown), found {low}")
    if classes is not None and high >= len(classes):
        raise DataError(f"labels in {where} go up to {high} but only {len(classes)} classes are named")


# Factories registered here take ``(spec: str, *, image_size, max_samples, strict)`` and return a
# Dataset; each also exposes ``detect(spec) -> bool`` (auto-detection) and ``inputs(spec)`` (the
# files it reads, which key the caches).
SOURCES: Registry = Registry("data source")

__all__ = [
    "SOURCES",
    "UNKNOWN_LABEL",
    "Batch",
    "DataError",
    "DataInfo",
    "Dataset",
    "InMemoryDataset",
    "SubsetDataset",
    "check_labels",
    "describe",
    "error_reason",
    "hash_tensor",
    "num_workers",
]
