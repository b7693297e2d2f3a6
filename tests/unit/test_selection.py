"""Rank correlations of label-free scores with accuracy: scipy's values, the sign convention for
scores where lower is better, and no number from fewer than three checkpoints."""

from __future__ import annotations

import pytest
from scipy.stats import kendalltau, spearmanr

from selfsup.eval.selection import rank_correlations

ROWS = [
    {"step": 1, "rankme": 3.0, "uniformity": -1.0, "knn_top1@20": 50.0},
    {"step": 2, "rankme": 5.0, "uniformity": -2.0, "knn_top1@20": 70.0},
    {"step": 3, "rankme": 4.0, "uniformity": -2.5, "knn_top1@20": 72.0},
    {"step": 4, "rankme": 9.0, "uniformity": -3.0, "knn_top1@20": 80.0},
]


def test_values_are_scipys_with_lower_is_better_flipped() -> None:
    out = rank_correlations(ROWS, ["rankme", "uniformity"], ["knn_top1@20"])
    accuracy = [r["knn_top1@20"] for r in ROWS]
    rankme = [r["rankme"] for r in ROWS]
    uniformity = [r["uniformity"] for r in ROWS]
    assert out["rankme~knn_top1@20"]["spearman"] == pytest.approx(
        spearmanr(rankme, accuracy).statistic, abs=1e-4
    )
    assert out["rankme~knn_top1@20"]["kendall"] == pytest.approx(
        kendalltau(rankme, accuracy).statistic, abs=1e-4
    )
    # Lower uniformity is better: a perfectly decreasing score selects perfectly, so +1.
    assert out["uniformity~knn_top1@20"]["spearman"] == pytest.approx(
        -spearmanr(uniformity, accuracy).statistic
    )
    assert out["uniformity~knn_top1@20"]["spearman"] == pytest.approx(1.0)
    assert out["rankme~knn_top1@20"]["n"] == 4


def test_too_few_or_constant_values() -> None:
    assert rank_correlations(ROWS[:2], ["rankme"], ["knn_top1@20"]) == {}
    constant = [{**r, "rankme": 1.0} for r in ROWS]
    assert rank_correlations(constant, ["rankme"], ["knn_top1@20"])["rankme~knn_top1@20"]["spearman"] is None
    missing = [{**r, "knn_top1@20": None} for r in ROWS]
    assert rank_correlations(missing, ["rankme"], ["knn_top1@20"]) == {}
