"""DurationSampler: batches by padded duration, a pure function of (seed, step)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from selfsup.train.sampler import DurationSampler, bucket_batches


def _skewed(n: int = 600, seed: int = 0) -> torch.Tensor:
    """Clip lengths of 0.1 s to ~20 s at 16 kHz, log-normal: most short, a few long (speech corpora)."""
    g = torch.Generator().manual_seed(seed)
    seconds = torch.exp(torch.randn(n, generator=g) * 0.9 + 0.5).clamp(0.1, 20.0)
    return (seconds * 16000).long()


def _cost(lengths: torch.Tensor, batch: torch.Tensor) -> int:
    return int(lengths[batch].max()) * batch.numel()


def test_bucketing_by_hand() -> None:
    lengths = torch.tensor([5, 9, 2, 7, 3, 8])
    order = torch.tensor([0, 1, 2, 3, 4, 5])
    # One chunk: sorted longest first 9(1) 8(5) 7(3) 5(0) 3(4) 2(2); budget 20: 9 takes 20//9 = 2 clips
    # (cost 18), 7 takes 2 (14), 3 takes 6 but only one is left.
    got = bucket_batches(lengths, order, budget=20, chunk=6)
    assert [b.tolist() for b in got] == [[1, 5], [3, 0], [4, 2]]
    # Chunks of 3: [5, 9, 2] -> 9 5 2 ; [7, 3, 8] -> 8 7 3.
    got = bucket_batches(lengths, order, budget=20, chunk=3)
    assert [b.tolist() for b in got] == [[1, 0], [2], [5, 3], [4]]
    # A clip longer than the budget is a batch of its own.
    assert [b.tolist() for b in bucket_batches(torch.tensor([30, 4]), torch.tensor([0, 1]), 10, 2)] == [
        [0],
        [1],
    ]


def test_every_batch_fits_the_budget_and_each_epoch_covers_every_clip_once() -> None:
    lengths = _skewed()
    budget = 16000 * 30
    lengths[0] = budget + 1  # a clip longer than the budget
    sampler = DurationSampler(lengths, budget, seed=3)
    for epoch in (0, 1):
        batches = sampler.epoch_batches(epoch)
        everything = torch.cat(batches)
        assert sorted(everything.tolist()) == list(range(len(lengths)))
        for batch in batches:
            assert _cost(lengths, batch) <= budget or batch.numel() == 1
        assert any(b.tolist() == [0] for b in batches)


def test_a_pure_function_of_seed_and_step() -> None:
    lengths = _skewed()
    a = DurationSampler(lengths, 16000 * 20, seed=1, accumulate=2)
    b = DurationSampler(lengths, 16000 * 20, seed=1, accumulate=2)
    keys = [(s, m) for s in range(0, 3 * a.steps_per_epoch, 7) for m in range(2)]
    # A sampler built afresh (a resumed run) asked for any step, in any order, gives what an
    # uninterrupted one gave: nothing depends on the steps asked for before.
    forward = {k: a.indices(*k) for k in keys}
    backward = {k: b.indices(*k) for k in reversed(keys)}
    assert all(torch.equal(forward[k], backward[k]) for k in keys)
    assert a.position(a.steps_per_epoch + 2) == (1, 4)
    other = DurationSampler(lengths, 16000 * 20, seed=2, accumulate=2)
    assert not all(torch.equal(a.indices(s), other.indices(s)) for s in range(5))
    assert not torch.equal(a.indices(0), a.indices(a.steps_per_epoch))  # a new order in the next epoch


def test_processes_see_the_batches_of_one_process_accumulating() -> None:
    lengths = _skewed()
    single = DurationSampler(lengths, 16000 * 15, seed=0, accumulate=4)
    split = DurationSampler(lengths, 16000 * 15, seed=0, accumulate=2, world_size=2)
    assert split.steps_per_epoch == single.steps_per_epoch
    for step in (0, 1, single.steps_per_epoch + 3):
        ours = [split.indices(step, m, r) for m in range(2) for r in range(2)]
        theirs = [single.indices(step, m) for m in range(4)]
        assert all(torch.equal(x, y) for x, y in zip(ours, theirs))
        assert split.step_samples(step) == sum(t.numel() for t in theirs)
        assert split.step_length(step) == int(lengths[torch.cat(theirs)].sum())


def test_padding_is_much_lower_than_random_batches_of_the_same_sizes() -> None:
    lengths = _skewed(2000)
    sampler = DurationSampler(lengths, 16000 * 60, seed=0)
    batches = sampler.epoch_batches(0)
    padded = sum(_cost(lengths, b) for b in batches)
    valid = int(lengths.sum())
    bucketed = 1 - valid / padded
    # The same batch sizes filled at random (count batching on a shuffled set).
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))
    sizes = [b.numel() for b in batches]
    random_padded = sum(_cost(lengths, part) for part in torch.split(order, sizes))
    random = 1 - valid / random_padded
    assert bucketed < 0.1 and random > 0.4 and bucketed < random / 4


def test_too_few_batches_are_explained() -> None:
    with pytest.raises(ValueError, match="fewer than the 4 one step needs"):
        DurationSampler(torch.full((10,), 16000), 16000 * 5, seed=0, world_size=4)


def test_the_loop_builds_it_for_audio_with_batch_seconds() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_data import tiny_audio, tiny_images

    from selfsup.config import Config
    from selfsup.errors import ConfigError
    from selfsup.train.loop import _build_sampler
    from selfsup.train.sampler import StepSampler

    @dataclass
    class _Cropping:  # a view policy that crops clips to 0.1 s
        crop_samples: int = 1600

    config = Config()
    config.train.batch_size = 4
    data = tiny_audio(n=40)
    assert isinstance(_build_sampler(config, data, None), StepSampler)
    config.data.batch_seconds = 0.5
    sampler = _build_sampler(config, data.subset(torch.arange(30)), None)
    assert isinstance(sampler, DurationSampler) and sampler.budget == 8000
    assert torch.equal(sampler.lengths, data.lengths[:30])
    # Batches are budgeted on the views: a clip longer than the policy's crop costs the crop.
    assert int(data.lengths.max()) > 1600
    cropped = _build_sampler(config, data.subset(torch.arange(30)), _Cropping())
    assert isinstance(cropped, DurationSampler)
    assert torch.equal(cropped.lengths, data.lengths[:30].clamp_max(1600))
    with pytest.raises(ConfigError, match="audio clips"):
        _build_sampler(config, tiny_images(), None)
    config.data.batch_seconds = -1.0
    with pytest.raises(ConfigError, match="> 0"):
        _build_sampler(config, data, None)
