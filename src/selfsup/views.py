"""The views of one batch that a method consumes: the output of every view policy.

Kept in a module of its own (no imports from the rest of the package) so that augmentation,
data and methods can all depend on it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Views:
    """The augmented views of one batch.

    crops:   list of ``(B, C, H, W)`` float tensors (normalized). The first ``num_global`` are
             the global views (same size); any further ones are local crops (multi-crop, may be
             smaller).
    masks:   optional, aligned with ``crops``: ``(B, N)`` bool token masks (True = masked) for
             masked-modelling methods.
    padding_mask: optional ``(B, T)`` bool, True at padded positions, for variable-length inputs.
    """

    crops: list[Tensor]
    num_global: int = 2
    masks: list[Tensor | None] | None = None
    padding_mask: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.crops[0].shape[0]

    @property
    def global_crops(self) -> list[Tensor]:
        return self.crops[: self.num_global]

    @property
    def local_crops(self) -> list[Tensor]:
        return self.crops[self.num_global :]
