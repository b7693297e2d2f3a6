"""Which samples each process sees at each step: a pure function of (seed, step).

Every optimizer step consumes one global batch: the next ``batch_size`` indices of a per-epoch
permutation seeded by ``(seed, epoch)``. The global batch is cut into ``accumulate``
micro-batches, and each micro-batch into ``world_size`` equal parts, one per process. Because
the position in the data is derived from the step, resuming needs no saved iterator state and
a run on N processes sees exactly the samples of a one-process run with the same config.
The last incomplete batch of an epoch is dropped (so every step has the same batch size).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


class StepSampler:
    def __init__(
        self, num_samples: int, batch_size: int, *, seed: int, accumulate: int = 1, world_size: int = 1
    ) -> None:
        if batch_size % (accumulate * world_size):
            raise ValueError(
                f"train.batch_size={batch_size} must be divisible by accumulate ({accumulate}) x processes "
                f"({world_size}); the global batch is split evenly into micro-batches and processes"
            )
        if num_samples < batch_size:
            raise ValueError(
                f"the data set has {num_samples} samples, fewer than one batch of {batch_size}; "
                "lower --batch-size or use more data"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.accumulate = accumulate
        self.world_size = world_size
        self.steps_per_epoch = num_samples // batch_size
        self.micro_batch = batch_size // (accumulate * world_size)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index of the first sample in the epoch's permutation) for optimizer step ``step``."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.batch_size

    def indices(self, step: int, micro: int = 0, rank: int = 0) -> Tensor:
        """Indices of the samples for one micro-batch of one process: ``(micro_batch,)`` int64."""
        epoch, start = self.position(step)
        start += (micro * self.world_size + rank) * self.micro_batch
        return _permutation(self.num_samples, self.seed, epoch)[start : start + self.micro_batch]


@lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def view_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of the augmentation generator for one micro-batch of one process.

    Derived from the position instead of carried along, so that a resumed run draws exactly
    the augmentations an uninterrupted one would have drawn.
    """
    return (seed * 1_000_003 + step) * 4099 + micro * 257 + rank + 1
