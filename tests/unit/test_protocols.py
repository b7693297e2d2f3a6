"""Protocol helpers: the raw-input baseline and its memory guard."""

from __future__ import annotations

import pytest


def test_raw_baseline_is_skipped_with_a_warning_when_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from selfsup.augment import VectorTransform
    from selfsup.data.base import DataInfo, InMemoryDataset
    from selfsup.eval import protocols

    info = DataInfo(modality="vector", sample_shape=(6,), dtype="float32")
    vectors = torch.randn(10, 6)
    data = InMemoryDataset(vectors, torch.zeros(10, dtype=torch.long), [str(i) for i in range(10)],
                           info=info, source="test")  # fmt: skip
    model = type("M", (), {"transform": VectorTransform(mean=torch.zeros(6), std=torch.ones(6))})()
    pair = protocols.raw_inputs(model, data, data)
    assert pair is not None and torch.allclose(pair[0], vectors) and pair[1].shape == (10, 6)
    monkeypatch.setattr(protocols, "RAW_BASELINE_BYTES", 4 * 6 * 20 - 1)  # one byte short for 20 rows
    with pytest.warns(UserWarning, match="raw-input baseline skipped"):
        assert protocols.raw_inputs(model, data, data) is None
