"""span_mask against fairseq's compute_mask_indices: statistics, spans, padding, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.augment.masking import expected_masked_fraction, span_mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_mask(length: int, mask_prob: float, mask_length: int, min_masks: int, rng) -> np.ndarray:
    """fairseq's static, overlapping algorithm for one clip, written from its description (numpy)."""
    num_mask = max(min_masks, int(mask_prob * length / mask_length + rng.random()))
    min_len = mask_length
    if length - min_len <= num_mask:
        min_len = length - num_mask - 1
    starts = rng.choice(length - min_len, num_mask, replace=False)
    idx = (starts[:, None] + np.arange(mask_length)[None, :]).ravel()
    out = np.zeros(length, dtype=bool)
    out[idx[idx < length]] = True
    return out


def test_masked_fraction_matches_closed_form_and_the_papers_49_percent() -> None:
    length = 1000
    closed = expected_masked_fraction(length, 0.65, 10)
    assert abs(closed - 0.49) < 0.01  # wav2vec 2.0 §4.2: "about 49% of all time steps"
    # Closed form: interior frames 1 - C(N-10, k)/C(N, k); rounding: k is 65 with probability 1.
    n, k = length - 10, 65
    interior = 1 - math.comb(n - 10, k) / math.comb(n, k)
    assert abs(closed - interior) < 0.01
    mask = span_mask(torch.full((400,), length), length, mask_prob=0.65, mask_length=10, generator=_gen())
    ours = mask.float().mean().item()
    rng = np.random.default_rng(0)
    ref = np.mean([_reference_mask(length, 0.65, 10, 2, rng).mean() for _ in range(400)])
    # 400 x 1000 frames: the standard error of either mean is about 0.001.
    assert abs(ours - closed) < 0.005 and abs(ref - closed) < 0.005


def test_fraction_on_short_clips_and_min_masks_match_the_reference_algorithm() -> None:
    for length in (15, 40, 97):
        closed = expected_masked_fraction(length, 0.65, 10, min_masks=2)
        mask = span_mask(
            torch.full((3000,), length), length, mask_prob=0.65, mask_length=10, generator=_gen(1)
        )
        rng = np.random.default_rng(1)
        ref = np.mean([_reference_mask(length, 0.65, 10, 2, rng).mean() for _ in range(3000)])
        assert abs(mask.float().mean().item() - closed) < 0.01, length
        assert abs(ref - closed) < 0.01, length


def test_spans_have_mask_length_and_never_start_in_the_last_mask_length_frames() -> None:
    # One span per clip (mask_prob tiny, min_masks=1): the mask is exactly one run of 10 frames.
    lengths = torch.full((2000,), 50)
    mask = span_mask(lengths, 50, mask_prob=0.0, mask_length=10, generator=_gen(2), min_masks=1)
    assert (mask.sum(1) == 10).all()
    starts = mask.int().argmax(dim=1)
    assert (mask.int().diff(dim=1).abs().sum(1) <= 2).all()  # one contiguous run
    assert int(starts.max()) == 39 and int(starts.min()) == 0  # range(L - M) = 0..39, as fairseq
    counts = torch.bincount(starts, minlength=40).float()
    assert counts.min() > 20  # roughly uniform over the 40 positions (expected 50 each)


def test_min_masks_and_nothing_on_padding() -> None:
    lengths = torch.tensor([200, 37, 12, 0])
    mask = span_mask(lengths, 200, mask_prob=0.65, mask_length=10, generator=_gen(3), min_masks=2)
    assert mask.shape == (4, 200) and mask.dtype == torch.bool
    for i, n in enumerate(lengths.tolist()):
        assert not mask[i, n:].any()
    assert mask[1].sum() >= 10  # at least min_masks spans, which may overlap: at least one span
    zero = span_mask(torch.tensor([100]), 100, mask_prob=0.0, mask_length=10, generator=_gen(), min_masks=0)
    assert not zero.any()


def test_determinism_and_generator_dependence() -> None:
    lengths = torch.tensor([300, 120, 250])
    a = span_mask(lengths, 300, mask_prob=0.65, mask_length=10, generator=_gen(7))
    b = span_mask(lengths, 300, mask_prob=0.65, mask_length=10, generator=_gen(7))
    c = span_mask(lengths, 300, mask_prob=0.65, mask_length=10, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_require_same_masks_cuts_every_row_to_the_minimum() -> None:
    lengths = torch.tensor([400, 150, 300])
    free = span_mask(lengths, 400, mask_prob=0.65, mask_length=10, generator=_gen(4))
    same = span_mask(lengths, 400, mask_prob=0.65, mask_length=10, generator=_gen(4), require_same_masks=True)
    counts = same.sum(1)
    assert (counts == free.sum(1).min()).all()
    assert not (same & ~free).any()  # only unmasks frames, as fairseq's random cut
    for i, n in enumerate(lengths.tolist()):
        assert not same[i, n:].any()


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        span_mask(torch.tensor([10]), 10, mask_prob=1.5, mask_length=10, generator=_gen())
    with pytest.raises(ValueError):
        span_mask(torch.tensor([10]), 10, mask_prob=0.5, mask_length=0, generator=_gen())
    with pytest.raises(ValueError):
        span_mask(torch.tensor([11]), 10, mask_prob=0.5, mask_length=2, generator=_gen())
