"""The views of one batch that a method consumes: the output of every view policy.

Kept in a module of its own (no imports from the rest of the package) so that augmentation,
data and methods can all depend on it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Views:
    """The augmented views of one batch, for any modality.

    inputs: one tensor per view, ready for the encoder: ``(B, C, H, W)`` normalized images,
        ``(B, D)`` standardized vectors, ``(B, T, ...)`` padded sequences. The first ``num_global``
        are the global views (same shape, except that padded views may differ in ``T``); any further
        ones are local views (multi-crop, may be smaller).
    padding_masks: None, or one entry per view: ``(B, T)`` bool, True at padded positions (None for
        a view of fixed-size samples). Padding never reaches a pooled output or a loss.
    masks: None, or one entry per view: ``(B, N)`` bool token masks, True where a token is masked
        (masked modelling: MAE, data2vec, wav2vec 2.0), in the encoder's token grid.
    labels: ``(B,)`` int64 labels of the samples (-1 unknown), passed through from the batch for
        methods that use them (HuBERT targets, pseudo-labelling); self-supervised losses ignore them.
    indices: ``(B,)`` int64 positions of the samples in the training data set.
    crop_starts: None, or one entry per view: ``(B,)`` int64, the input position where each sample's
        view starts in the stored sample (a random crop of a long recording), for methods whose
        targets are aligned with the input (HuBERT's frame labels); None for an uncropped view.
    aux: further tensors a policy draws for its method, by name, each with the batch first: e.g.
        I-JEPA's target block masks ``(B, M, N)``. Randomness stays in the policy (seeded per step),
        so the method is a deterministic function of its views.
    """

    inputs: list[Tensor]
    num_global: int = 2
    padding_masks: list[Tensor | None] | None = None
    masks: list[Tensor | None] | None = None
    labels: Tensor | None = None
    indices: Tensor | None = None
    crop_starts: list[Tensor | None] | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("Views needs at least one view")
        if not 1 <= self.num_global <= len(self.inputs):
            raise ValueError(f"num_global={self.num_global} but there are {len(self.inputs)} views")
        for name in ("padding_masks", "masks", "crop_starts"):
            aligned = getattr(self, name)
            if aligned is not None and len(aligned) != len(self.inputs):
                raise ValueError(f"{name} has {len(aligned)} entries for {len(self.inputs)} views")

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[0]

    @property
    def global_inputs(self) -> list[Tensor]:
        return self.inputs[: self.num_global]

    @property
    def local_inputs(self) -> list[Tensor]:
        return self.inputs[self.num_global :]

    def padding_mask(self, view: int) -> Tensor | None:
        """The ``(B, T)`` padding mask of view ``view`` (None: nothing padded)."""
        return None if self.padding_masks is None else self.padding_masks[view]

    def mask(self, view: int) -> Tensor | None:
        """The ``(B, N)`` token mask of view ``view`` (None: nothing masked)."""
        return None if self.masks is None else self.masks[view]

    def crop_start(self, view: int) -> Tensor | None:
        """The ``(B,)`` crop offsets of view ``view`` in input positions (None: not cropped)."""
        return None if self.crop_starts is None else self.crop_starts[view]

    def global_batch(self) -> tuple[Tensor, Tensor | None]:
        """The global views concatenated along the batch, ``(V·B, ...)``, with their padding mask
        ``(V·B, T)`` (None when nothing is padded): one encoder pass over all of them, as SimCLR's
        reference does (BatchNorm statistics over every view). Padded views of different lengths
        are padded to the longest first."""
        inputs = self.global_inputs
        masks = [self.padding_mask(i) for i in range(len(inputs))]
        if all(m is None for m in masks):
            return torch.cat(inputs), None
        if any(m is None for m in masks):
            raise ValueError("either every global view has a padding mask or none has")
        longest = max(x.shape[1] for x in inputs)
        padded, padding = [], []
        for x, m in zip(inputs, masks, strict=True):
            extra = longest - x.shape[1]
            # F.pad counts dimensions from the last: pad dim 1 of (B, T, *rest) at its end.
            padded.append(F.pad(x, (0, 0) * (x.ndim - 2) + (0, extra)))
            padding.append(F.pad(m, (0, extra), value=True))  # type: ignore[arg-type]
        return torch.cat(padded), torch.cat(padding)
