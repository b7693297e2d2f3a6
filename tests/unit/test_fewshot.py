"""Few-label evaluation: label counts per setting, seeded draws, summary statistics against numpy,
the fixed-setting regime, and the test labels never reaching the fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfsup.eval.fewshot import FIXED_WEIGHT_DECAY, few_label_eval, setting_name
from selfsup.eval.splits import stratified_draw


def _clusters(n_per_class: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 16, generator=torch.Generator().manual_seed(99)) * 4.0
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[labels] + spread * torch.randn(len(labels), 16, generator=g), labels


@pytest.fixture(scope="module")
def noisy() -> tuple[torch.Tensor, ...]:
    x, y = _clusters(40, 5, spread=4.0, seed=0)  # overlapping classes: accuracy varies with the draw
    x_test, y_test = _clusters(20, 5, spread=4.0, seed=1)
    return x, y, x_test, y_test


def test_label_counts_per_setting(noisy) -> None:
    x, y, x_test, y_test = noisy
    # By default fewer than 50 labels per class use the fixed settings (a validation split of under 5 per
    # class selects noise); with the threshold lowered to 5, a 5-per-class draw searches the grid.
    default = few_label_eval(x, y, x_test, y_test, per_class=(1, 5), seeds=(0,))
    assert [r.mode for r in default.results] == ["fixed", "fixed"]
    result = few_label_eval(
        x, y, x_test, y_test, per_class=(1, 5), fractions=(0.1,), seeds=(0, 1), grid_min_per_class=5
    )
    assert [r.setting for r in result.results] == ["1 per class", "5 per class", "10%"]
    assert [r.labels_used for r in result.results] == [[5, 5], [25, 25], [20, 20]]
    assert [r.mode for r in result.results] == ["fixed", "grid", "fixed"]  # 10% of 40 = 4 per class < 5
    assert result.results[0].selected[0]["weight_decay"] == FIXED_WEIGHT_DECAY
    assert result.results[1].selected[0]["val_samples"] == 5  # one per class, carved inside the draw
    assert setting_name(fraction=0.01) == "1%" and setting_name(fraction=1.0) == "100%"


def test_seeds_change_the_draw_and_repeat_exactly(noisy) -> None:
    x, y, x_test, y_test = noisy
    a = few_label_eval(x, y, x_test, y_test, per_class=(2,), seeds=(0, 1, 2, 3))
    b = few_label_eval(x, y, x_test, y_test, per_class=(2,), seeds=(0, 1, 2, 3))
    assert a.to_dict() == b.to_dict()
    values = a.results[0].top1
    assert len(set(values)) > 1  # different draws, different accuracies on these overlapping classes
    draws = {tuple(stratified_draw(y, per_class=2, seed=s).tolist()) for s in (0, 1, 2, 3)}
    assert len(draws) == 4


def test_summary_statistics_match_numpy(noisy) -> None:
    x, y, x_test, y_test = noisy
    result = few_label_eval(x, y, x_test, y_test, per_class=(1, 5), seeds=(0, 1, 2))
    out = result.to_dict()
    json.dumps(out, allow_nan=False)  # JSON-able, no NaN
    for row in out["results"]:
        assert row["mean"] == pytest.approx(np.mean(row["values"]))
        assert row["std"] == pytest.approx(np.std(row["values"], ddof=1))
        bal = row["balanced_accuracy"]
        assert bal["std"] == pytest.approx(np.std(bal["values"], ddof=1))
    single = few_label_eval(x, y, x_test, y_test, per_class=(1,), seeds=(4,)).to_dict()["results"][0]
    assert single["std"] == 0.0 and single["values"] == [single["mean"]]
    table = result.table()
    assert "1 per class" in table and "5 per class" in table and "±" in table


def test_one_label_per_class_on_separated_clusters_is_near_perfect() -> None:
    x, y = _clusters(30, 6, spread=0.3, seed=2)
    x_test, y_test = _clusters(30, 6, spread=0.3, seed=3)
    result = few_label_eval(x, y, x_test, y_test, per_class=(1,), seeds=(0, 1, 2))
    assert min(result.results[0].top1) >= 99.0


def test_test_labels_never_reach_the_fit(noisy) -> None:
    x, y, x_test, y_test = noisy
    permuted = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(7))]
    options = {"per_class": (1, 5), "seeds": (0, 1)}
    a = few_label_eval(x, y, x_test, y_test, **options)
    b = few_label_eval(x, y, x_test, permuted, **options)
    for ra, rb in zip(a.results, b.results):
        assert ra.labels_used == rb.labels_used and ra.selected == rb.selected  # incl. validation scores
    # and the test features only enter through scoring: the same heads predict the permuted labels
    assert a.results[1].top1 != b.results[1].top1


def test_feature_set_dicts_and_errors(noisy) -> None:
    x, y, x_test, y_test = noisy
    sets = {"signal": x, "noise": torch.randn(len(x), 8)}
    test_sets = {"signal": x_test, "noise": torch.randn(len(x_test), 8)}
    result = few_label_eval(sets, y, test_sets, y_test, per_class=(10,), seeds=(0,), grid_min_per_class=10)
    assert result.results[0].selected[0]["features"] in sets
    with pytest.raises(ValueError, match="too small to choose"):
        few_label_eval(sets, y, test_sets, y_test, per_class=(1,), seeds=(0,))
    with pytest.raises(ValueError, match="both"):
        few_label_eval(sets, y, x_test, y_test, seeds=(0,))
