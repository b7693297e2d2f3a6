"""Run monitoring: the collapse measure and detector, the metrics logger."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from selfsup.train.monitor import CollapseDetector, MetricsLogger, normalized_embedding_std, read_metrics


def test_normalized_std_is_one_when_spread_and_zero_when_collapsed() -> None:
    spread = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    assert normalized_embedding_std(spread) == pytest.approx(1.0, abs=0.03)
    collapsed = torch.ones(512, 64) + 1e-4 * torch.randn(512, 64)
    assert normalized_embedding_std(collapsed) < 0.01
    # Hand case: two opposite unit vectors in 1-D: std over the batch is sqrt(2) (unbiased), sqrt(D)=1.
    assert normalized_embedding_std(torch.tensor([[2.0], [-3.0]])) == pytest.approx(math.sqrt(2.0))


def test_detector_warns_once_after_patience() -> None:
    detector = CollapseDetector(threshold=0.05, patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = [0.01, 0.01, 0.5, 0.01, 0.01, 0.01, 0.01]
        results = [detector.update(v, step) for step, v in enumerate(values)]
    assert results == [False, False, False, False, False, True, False]
    assert len(caught) == 1 and "collapsed" in str(caught[0].message)


def test_metrics_logger_writes_jsonl_and_tensorboard(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path)
    logger.log(1, {"loss": torch.tensor(2.5), "lr": 0.1})
    logger.log(1, {"knn_top1@20": 50.0}, kind="knn")
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 1, "kind": "train", "loss": 2.5, "lr": 0.1}
    assert read_metrics(tmp_path) == [lines[0]] and read_metrics(tmp_path, "knn")[0]["knn_top1@20"] == 50.0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    silent = MetricsLogger(tmp_path / "other", enabled=False)  # non-main processes write nothing
    silent.log(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_knn_monitor_samples_a_class_sorted_validation_set_at_random() -> None:
    """The queries are a seeded random sample, not the first N (a class-sorted folder would give a
    curve over its first classes only)."""
    import torch
    from tiny_data import tiny_images

    from selfsup.augment import ImageTransform
    from selfsup.data.base import InMemoryDataset
    from selfsup.train.knn_monitor import KNNMonitor

    base = tiny_images(n=100)
    ordered = InMemoryDataset(
        base.inputs, torch.arange(100) // 10, base.ids, info=base.info, source="sorted"
    )  # labels 0,0,...,1,1,...,9: sorted by class
    options = dict(
        transform=ImageTransform(16), k=(5,), temperature=0.07, batch_size=64, device=torch.device("cpu")
    )
    monitor = KNNMonitor.build(ordered, ordered, max_samples=20, seed=0, **options)
    assert monitor is not None and len(monitor.query) == 20 and len(monitor.bank) == 20
    assert len(set(monitor.query.labels.tolist())) >= 6  # the first 20 would hold classes 0 and 1 only
    again = KNNMonitor.build(ordered, ordered, max_samples=20, seed=0, **options)
    assert again is not None and again.query.ids == monitor.query.ids
    other = KNNMonitor.build(ordered, ordered, max_samples=20, seed=1, **options)
    assert other is not None and other.query.ids != monitor.query.ids
    # Without a validation set the queries are a held-out fifth of the (random) bank.
    held_out = KNNMonitor.build(ordered, None, max_samples=50, seed=0, **options)
    assert held_out is not None and len(held_out.query) == 10 and len(held_out.bank) == 40
    assert not set(held_out.query.ids) & set(held_out.bank.ids)
