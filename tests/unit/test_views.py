"""Views: alignment checks, and one batch of every global view with padding to a common length."""

from __future__ import annotations

import pytest
import torch

from selfsup.encoders.base import padding_mask_from_lengths
from selfsup.views import Views


def test_global_batch_pads_views_of_different_lengths() -> None:
    a, b = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    mask_a = padding_mask_from_lengths(torch.tensor([3, 1]), 3)
    mask_b = padding_mask_from_lengths(torch.tensor([5, 2]), 5)
    x, padding = Views(inputs=[a, b], padding_masks=[mask_a, mask_b]).global_batch()
    assert x.shape == (4, 5, 4) and padding is not None and padding.shape == (4, 5)
    assert (
        torch.equal(x[:2, :3], a) and torch.equal(x[2:], b) and torch.equal(x[:2, 3:], torch.zeros(2, 2, 4))
    )
    assert padding[:2].tolist() == [[False] * 3 + [True] * 2, [False] + [True] * 4]
    assert torch.equal(padding[2:], mask_b)


def test_global_batch_without_padding_and_alignment_errors() -> None:
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    x, padding = Views(inputs=[a, b]).global_batch()
    assert padding is None and torch.equal(x, torch.cat([a, b]))
    with pytest.raises(ValueError, match="every global view"):
        Views(inputs=[a, b], padding_masks=[torch.zeros(2, 3, dtype=torch.bool), None]).global_batch()
    with pytest.raises(ValueError, match="2 views"):
        Views(inputs=[a, b], masks=[None])
    with pytest.raises(ValueError, match="num_global"):
        Views(inputs=[a], num_global=2)
