"""The step sampler: every step's samples follow from (seed, step); processes split a global batch."""

from __future__ import annotations

import pytest
import torch

from selfsup.train.sampler import StepSampler


def test_each_epoch_is_a_permutation_without_repeats() -> None:
    sampler = StepSampler(100, 20, seed=3)
    epoch = torch.cat([sampler.indices(step) for step in range(5)])
    assert sorted(epoch.tolist()) == list(range(100))
    assert not torch.equal(sampler.indices(0), sampler.indices(5))  # a new order in the next epoch


def test_last_incomplete_batch_is_dropped() -> None:
    sampler = StepSampler(105, 20, seed=0)
    assert sampler.steps_per_epoch == 5 and sampler.position(5) == (1, 0)


def test_processes_and_micro_batches_partition_the_global_batch() -> None:
    single = StepSampler(64, 16, seed=1)
    split = StepSampler(64, 16, seed=1, accumulate=2, world_size=2)
    for step in range(6):
        parts = [split.indices(step, micro, rank) for micro in range(2) for rank in range(2)]
        assert all(p.numel() == 4 for p in parts)
        assert torch.equal(torch.cat(parts), single.indices(step))


def test_bad_sizes_are_explained() -> None:
    with pytest.raises(ValueError, match="divisible"):
        StepSampler(100, 10, seed=0, accumulate=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepSampler(10, 16, seed=0)
