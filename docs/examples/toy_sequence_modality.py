"""Adding a modality, end to end: variable-length sequences of feature frames.

Everything a new modality needs lives in this one file: a data source, an input transform, an
encoder, a view policy and the Modality entry. The training loop, the checkpoints, ``embed`` and
the kNN evaluator are used as they are. Run it (``python docs/examples/toy_sequence_modality.py
OUT_DIR``); tests/e2e/test_new_modality.py runs it too. A real modality lives in the package
(``selfsup/data/...``, ``selfsup/encoders/<modality>.py``, ``selfsup/augment/<modality>.py``,
``selfsup/modalities.py``) and adds a tiny data set to tests/tiny_data.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import selfsup
from selfsup.augment.base import VIEW_POLICIES
from selfsup.data.base import Batch, DataInfo, Dataset
from selfsup.data.sources import register_source, spec_path
from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    padding_mask_from_lengths,
    pool_hidden_state,
)
from selfsup.modalities import Modality, register_modality
from selfsup.views import Views

# 1. A data set: sequences of D-dim frames, padded per batch; lengths and padding masks travel in the Batch.


class SequenceDataset(Dataset):
    def __init__(self, values: Tensor, offsets: Tensor, labels: Tensor, source: str) -> None:
        self.values, self.offsets = values, offsets  # (total frames, D) and (N + 1,)
        self.labels, self.ids, self.source, self.skipped = (
            labels,
            [str(i) for i in range(len(labels))],
            source,
            [],
        )
        self.info = DataInfo(modality="sequence", sample_shape=None, dtype="float32")

    def batch(self, indices: Tensor) -> Batch:
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        lengths = ends - starts
        padded = torch.zeros(len(indices), int(lengths.max()), self.values.shape[1])
        for row, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            padded[row, : end - start] = self.values[start:end]
        mask = padding_mask_from_lengths(lengths, padded.shape[1])
        return Batch(padded, self.labels[indices], indices, lengths, mask)

    def _fingerprint(self) -> str:
        return f"sequences:{self.source}"


@register_source(
    "sequences",
    detect=lambda spec: spec.endswith(".seq.npz"),
    inputs=lambda spec: [spec_path(spec, "sequences")],
)
def sequences_source(
    spec: str, *, image_size: int | None = None, max_samples: int | None = None, strict: bool = False
):
    """Sequences in an .seq.npz: 'values' (T, D) frames, 'offsets' (N + 1,), optional 'labels'."""
    path = spec_path(spec, "sequences")
    with np.load(path, allow_pickle=False) as npz:
        values, offsets = torch.from_numpy(npz["values"]).float(), torch.from_numpy(npz["offsets"]).long()
        labels = (
            torch.from_numpy(npz["labels"]).long()
            if "labels" in npz.files
            else torch.full((len(offsets) - 1,), -1)
        )
    return SequenceDataset(values, offsets, labels, f"sequences:{path}")


# 2. The input transform: here, frames are used as they are (a real one might standardize them).


@dataclass(frozen=True)
class SequenceTransform:
    modality: str = "sequence"

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        return batch.inputs, batch.padding_mask  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality}


# 3. An encoder: per-frame MLP layers, mean over the unpadded frames (never over padding).


@ENCODERS.register("frame_mlp", modality="sequence")
class FrameMLP(Encoder):
    """Per-frame MLP on (B, T, D) sequences; embed_dim width."""

    modality = "sequence"

    def __init__(self, info: DataInfo | None = None, width: int = 32, frame_dim: int = 4) -> None:
        super().__init__()
        self.embed_dim, self.num_layers = width, 2
        self.layers = nn.ModuleList([nn.Linear(frame_dim, width), nn.Linear(width, width)])

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        hidden = [x]
        for layer in self.layers:
            hidden.append(torch.relu(layer(hidden[-1])))
        return EncoderOutput(
            pool_hidden_state(hidden[-1], padding_mask), hidden[-1], tuple(hidden), padding_mask
        )


# 4. A view policy: a random crop of each sequence (its own length per sample) plus noise.


@dataclass(frozen=True)
class CropPolicy:
    min_fraction: float

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        assert batch.lengths is not None
        views, masks = [], []
        for _ in range(2):
            keep = (batch.lengths.float() * self.min_fraction).ceil().long()
            extra = (torch.rand(len(batch), generator=generator) * (batch.lengths - keep + 1)).long()
            lengths = (
                keep
                + (torch.rand(len(batch), generator=generator) * (batch.lengths - keep - extra + 1)).long()
            )
            starts = (torch.rand(len(batch), generator=generator) * (batch.lengths - lengths + 1)).long()
            positions = starts[:, None] + torch.arange(int(lengths.max()))[None, :]
            mask = padding_mask_from_lengths(lengths, positions.shape[1])
            gathered = batch.inputs.gather(
                1,
                positions.clamp(max=batch.inputs.shape[1] - 1)[..., None].expand(
                    -1, -1, batch.inputs.shape[2]
                ),
            )  # type: ignore[union-attr]
            noise = 0.05 * torch.randn(gathered.shape, generator=generator)
            views.append((gathered + noise).masked_fill(mask[..., None], 0.0))
            masks.append(mask)
        return Views(inputs=views, padding_masks=masks, labels=batch.labels, indices=batch.indices)


@VIEW_POLICIES.register("sequence_crop", modality="sequence")
def sequence_crop(info: DataInfo, transform: SequenceTransform, min_fraction: float = 0.5) -> CropPolicy:
    """Sequences: two random crops of at least min_fraction of each sequence, plus noise."""
    return CropPolicy(min_fraction)


# 5. The Modality entry: its defaults and its transform.

register_modality(
    Modality(
        name="sequence",
        unit="sequences",
        default_encoder="frame_mlp",
        default_method="simclr",
        fit_transform=lambda dataset, config: SequenceTransform(),
        transform_from_dict=lambda data: SequenceTransform(),
    )
)


def make_data(path: Path, n: int = 96, seed: int = 0) -> None:
    """Two classes of sequences (lengths 5-20): frames drawn around one of two centres."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 21, n)
    labels = np.arange(n) % 2
    centres = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    values = np.concatenate(
        [centres[y] + 0.5 * rng.normal(size=(t, 4)) for y, t in zip(labels, lengths, strict=True)]
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    np.savez(path, values=values.astype(np.float32), offsets=offsets, labels=labels)


def main(out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    make_data(out / "train.seq.npz", seed=0)
    make_data(out / "test.seq.npz", seed=1)
    # "sequences:" names the source: .npz files would otherwise go to the built-in arrays source,
    # whose detection runs first. SimCLR names no default view policy for the new modality, so the
    # run names one.
    train, test = f"sequences:{out / 'train.seq.npz'}", f"sequences:{out / 'test.seq.npz'}"
    selfsup.pretrain(
        data=train,
        out=out / "run",
        steps=20,
        batch_size=32,
        device="cpu",
        overrides={
            "augment.policy": "sequence_crop",
            "optim.name": "adamw",
            "optim.lr": 1e-3,
            "train.progress": False,
        },
    )
    return selfsup.evaluate_knn(out / "run", train, test, k=(5,))


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
