"""Which samples each process sees at each step: a pure function of (seed, step).

Every optimizer step consumes one global batch: the next ``batch_size`` indices of a per-epoch
permutation seeded by ``(seed, epoch)``. The global batch is cut into ``accumulate``
micro-batches, and each micro-batch into ``world_size`` equal parts, one per process. Because
the position in the data is derived from the step, resuming needs no saved iterator state and
a run on N processes sees exactly the samples of a one-process run with the same config.
The last incomplete batch of an epoch is dropped (so every step has the same batch size).

:class:`DurationSampler` (``data.batch_seconds``) has the same interface for variable-length clips:
batches hold as many clips as fit a budget of padded samples, built in length buckets so that little
of each batch is padding; it too is a pure function of (seed, step).
"""

from __future__ import annotations

import math
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

    def step_samples(self, step: int) -> int:
        """Samples in the global batch of ``step`` (every process and micro-batch together)."""
        return self.batch_size


class DurationSampler:
    """Batches of variable-length clips sized by their padded duration, as a pure function of (seed, step).

    lengths: ``(N,)`` int64 samples per clip. budget: padded samples per batch (``data.batch_seconds x
    sample_rate``): a batch of ``B`` clips whose longest has ``L`` samples costs ``B x L`` (what the
    encoder computes on, padding included), and every batch costs at most ``budget``, except that a
    clip longer than the budget forms a batch of its own.

    Epoch ``e`` (the bucketing of fairseq's ``--max-tokens`` batching, made a function of the step):
    1. a permutation of the clips seeded by ``(seed, e)``;
    2. cut into chunks of about ``bucket_batches`` batches' worth of clips; each chunk sorted by
       length, longest first (stable), and cut greedily into batches: a batch starts at its longest
       clip ``L`` and takes the next ``budget // L`` clips (fewer at the end of a chunk), so clips of
       similar length share a batch and padding is small;
    3. the batches shuffled by a second permutation seeded by ``(seed, e)``.

    Every optimizer step takes the next ``accumulate x world_size`` batches of that order: micro-batch
    ``m`` of process ``r`` at step ``s`` gets batch ``s * A * W + m * W + r`` (``A`` accumulate, ``W``
    processes). So what holds exactly: a step sees the same batches for any ``A x W`` of the same
    product, e.g. N processes see the batches of one process with ``accumulate=N`` (each micro-batch of
    each process is one whole batch). Batches hold different numbers of clips: the gradient of a step is
    the mean of its micro-batches' mean losses (as DDP averages processes), not a mean over clips.

    Epoch length: ``steps_per_epoch`` is fixed by epoch 0's number of batches (epochs differ by a few
    batches, since the buckets depend on the permutation); an epoch with more batches drops the extra
    ones (a random few, the order being shuffled), one with fewer starts its order again for the last
    steps. Thus ``position(step)`` is arithmetic and a resumed run needs no saved state.
    """

    def __init__(
        self,
        lengths: Tensor,
        budget: int,
        *,
        seed: int,
        accumulate: int = 1,
        world_size: int = 1,
        bucket_batches: int = 50,
    ) -> None:
        lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu().reshape(-1)
        if lengths.numel() == 0 or int(lengths.min()) < 1:
            raise ValueError("DurationSampler needs at least one clip, and every clip at least one sample")
        if budget < 1:
            raise ValueError(f"the batch budget must be at least one sample, got {budget}")
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches must be at least 1, got {bucket_batches}")
        self.lengths = lengths
        self.num_samples = int(lengths.numel())
        self.budget = int(budget)
        self.seed = seed
        self.accumulate = accumulate
        self.world_size = world_size
        self.batches_per_step = accumulate * world_size
        # Clips per bucket: about bucket_batches batches of clips of the mean length.
        per_batch = max(1.0, self.budget / float(lengths.double().mean()))
        self.chunk = max(1, math.ceil(bucket_batches * per_batch))
        first = len(self.epoch_batches(0))
        self.steps_per_epoch = first // self.batches_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the data set makes {first} batches of at most {self.budget} padded samples, fewer than the "
                f"{self.batches_per_step} one step needs (accumulate x processes); lower data.batch_seconds "
                "or use more data"
            )

    def epoch_batches(self, epoch: int) -> list[Tensor]:
        """The batches of ``epoch`` in the order steps consume them: ``(B_k,)`` int64 clip indices each."""
        return _duration_batches(self, epoch)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index in the epoch's batch order of the first batch of ``step``)."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.batches_per_step

    def indices(self, step: int, micro: int = 0, rank: int = 0) -> Tensor:
        """The clips of micro-batch ``micro`` of process ``rank`` at ``step``: ``(B,)`` int64."""
        epoch, start = self.position(step)
        batches = self.epoch_batches(epoch)
        return batches[(start + micro * self.world_size + rank) % len(batches)]

    def step_samples(self, step: int) -> int:
        """Clips in the global batch of ``step`` (every process and micro-batch together)."""
        return sum(
            int(self.indices(step, m, r).numel())
            for m in range(self.accumulate)
            for r in range(self.world_size)
        )

    def step_length(self, step: int) -> int:
        """Valid (unpadded) samples of audio in the global batch of ``step``."""
        parts = [self.indices(step, m, r) for m in range(self.accumulate) for r in range(self.world_size)]
        return int(self.lengths[torch.cat(parts)].sum())


def bucket_batches(lengths: Tensor, order: Tensor, budget: int, chunk: int) -> list[Tensor]:
    """Cut ``order`` (``(N,)`` clip indices) into chunks of ``chunk`` clips, sort each chunk by length
    (longest first, stable) and cut it greedily into batches of at most ``budget`` padded samples
    (a batch starting at a clip of ``L`` samples takes ``max(1, budget // L)`` clips)."""
    batches: list[Tensor] = []
    for start in range(0, order.numel(), chunk):
        part = order[start : start + chunk]
        sizes, where = torch.sort(lengths[part], descending=True, stable=True)
        part = part[where]
        longest = sizes.tolist()
        i = 0
        while i < len(longest):
            count = max(1, budget // longest[i])
            batches.append(part[i : i + count])
            i += count
    return batches


@lru_cache(maxsize=2)
def _duration_batches(sampler: DurationSampler, epoch: int) -> list[Tensor]:
    order = _permutation(sampler.num_samples, sampler.seed, epoch)
    batches = bucket_batches(sampler.lengths, order, sampler.budget, sampler.chunk)
    generator = torch.Generator().manual_seed((sampler.seed * 1_000_003 + epoch) * 7919 + 1)
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in shuffle]


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
