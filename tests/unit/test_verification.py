"""Speaker verification: trials, cosine scores, the ROC, EER (against scikit-learn's roc_curve with the
usual brentq interpolation) and minDCF (against a brute-force loop over thresholds)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from selfsup.errors import DataError
from selfsup.eval.verification import (
    Trials,
    add_verification_command,
    build_trials,
    cosine_scores,
    equal_error_rate,
    error_rates,
    few_speakers_note,
    min_dcf,
    verification_metrics,
)


def random_trials(
    seed: int, targets: int, nontargets: int, separation: float
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.cat([torch.randn(targets, generator=g) + separation, torch.randn(nontargets, generator=g)])
    target = torch.cat([torch.ones(targets, dtype=torch.bool), torch.zeros(nontargets, dtype=torch.bool)])
    order = torch.randperm(targets + nontargets, generator=g)
    return scores[order].double(), target[order]


def reference_eer(scores: torch.Tensor, target: torch.Tensor) -> float:
    """The common reference (pyannote, many VoxCeleb recipes): brentq on interp1d of sklearn's ROC."""
    fpr, tpr, _ = roc_curve(target.numpy(), scores.numpy(), pos_label=1)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def brute_force_min_dcf(
    scores: np.ndarray, target: np.ndarray, p: float, c_miss: float, c_fa: float
) -> float:
    best = math.inf
    for threshold in [math.inf, *np.unique(scores)]:
        accept = scores >= threshold
        p_miss = float(np.mean(~accept[target]))
        p_fa = float(np.mean(accept[~target]))
        best = min(best, c_miss * p_miss * p + c_fa * p_fa * (1 - p))
    return best / min(c_miss * p, c_fa * (1 - p))


# ------------------------------------------------------------------------------ ROC, EER, minDCF


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_rates_are_sklearns_roc(seed: int) -> None:
    scores, target = random_trials(seed, 40, 300, 1.0)
    scores = (scores * 4).round() / 4  # ties: operating points exist only between distinct scores
    far, frr, thresholds = error_rates(scores, target)
    fpr, tpr, sk_thresholds = roc_curve(target.numpy(), scores.numpy(), drop_intermediate=False)
    np.testing.assert_allclose(far.numpy(), fpr, atol=1e-12)
    np.testing.assert_allclose(frr.numpy(), 1 - tpr, atol=1e-12)
    np.testing.assert_allclose(thresholds.numpy()[1:], sk_thresholds[1:])
    assert math.isinf(float(thresholds[0]))


CASES = [(0, 50, 500, 1.0), (1, 300, 300, 2.5), (2, 7, 90, 0.3), (3, 200, 20, 1.5)]


@pytest.mark.parametrize(("seed", "targets", "nontargets", "separation"), CASES)
def test_eer_matches_the_interpolated_roc_reference(
    seed: int, targets: int, nontargets: int, separation: float
) -> None:
    scores, target = random_trials(seed, targets, nontargets, separation)
    eer, threshold = equal_error_rate(scores, target)
    assert eer == pytest.approx(reference_eer(scores, target), abs=1e-9)
    # At the interpolated threshold the two empirical rates straddle the EER.
    accept = scores >= threshold
    far, frr = float(accept[~target].double().mean()), float((~accept[target]).double().mean())
    assert min(far, frr) - 1e-9 <= eer <= max(far, frr) + 1.0 / min(targets, nontargets)


def test_eer_by_hand() -> None:
    # Targets 3, 1; non-target 2. ROC (FAR, FRR): (0, 1) (0, .5) (1, .5) (1, 0): the crossing is
    # halfway along the horizontal segment, FAR = FRR = 0.5.
    eer, _ = equal_error_rate(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, True]))
    assert eer == pytest.approx(0.5)
    # Perfectly separated: 0, at a threshold between the classes.
    eer, threshold = equal_error_rate(
        torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([False, False, True, True])
    )
    assert eer == 0.0 and 1.0 <= threshold <= 2.0
    # Reversed scores: every decision is wrong at the crossing.
    eer, _ = equal_error_rate(torch.tensor([0.0, 1.0]), torch.tensor([True, False]))
    assert eer == pytest.approx(1.0)


@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.5])
def test_min_dcf_matches_brute_force(p_target: float) -> None:
    scores, target = random_trials(4, 60, 600, 1.2)
    scores = (scores * 3).round() / 3  # with ties
    value, threshold = min_dcf(scores, target, p_target=p_target)
    assert value == pytest.approx(
        brute_force_min_dcf(scores.numpy(), target.numpy(), p_target, 1.0, 1.0), abs=1e-12
    )
    accept = scores >= threshold
    p_miss, p_fa = float((~accept[target]).double().mean()), float(accept[~target].double().mean())
    assert value == pytest.approx((p_miss * p_target + p_fa * (1 - p_target)) / min(p_target, 1 - p_target))
    costly = min_dcf(scores, target, p_target=p_target, c_miss=10.0)[0]
    assert costly == pytest.approx(brute_force_min_dcf(scores.numpy(), target.numpy(), p_target, 10.0, 1.0))


def test_min_dcf_bounds() -> None:
    # Perfect separation costs nothing; random scores cost about the best fixed decision (1).
    assert min_dcf(torch.tensor([0.0, 1.0, 5.0]), torch.tensor([False, False, True]))[0] == 0.0
    scores, target = random_trials(5, 2000, 2000, 0.0)
    assert 0.9 < min_dcf(scores, target)[0] <= 1.0
    metrics = verification_metrics(scores, target)
    assert set(metrics) == {"eer", "min_dcf", "eer_threshold", "min_dcf_threshold"}
    assert 45.0 < metrics["eer"] < 55.0  # chance, in %


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="one target and one non-target"):
        equal_error_rate(torch.tensor([1.0, 2.0]), torch.tensor([True, True]))
    with pytest.raises(ValueError, match="NaN"):
        min_dcf(torch.tensor([1.0, math.nan]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="p_target"):
        min_dcf(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), p_target=1.0)


# ------------------------------------------------------------------------------ trials, scores


def test_all_pairs_when_few() -> None:
    labels = torch.tensor([0, 0, 1, -1, 1, 2, 0])
    trials = build_trials(labels, max_trials=100)
    known = [0, 1, 2, 4, 5, 6]
    expected = [(a, b) for i, a in enumerate(known) for b in known[i + 1 :]]
    assert (
        trials.mode == "all"
        and list(zip(trials.first.tolist(), trials.second.tolist(), strict=True)) == expected
    )
    assert trials.target.tolist() == [bool(labels[a] == labels[b]) for a, b in expected]
    assert trials.summary() == {"mode": "all", "count": 15, "target": 4, "nontarget": 11}


def test_sampled_trials_are_balanced_distinct_uniform_and_seeded() -> None:
    labels = torch.cat([torch.zeros(10), torch.ones(40), torch.arange(2, 52).repeat_interleave(4)]).long()
    trials = build_trials(labels, max_trials=400, seed=3)
    assert trials.mode == "sampled" and len(trials) == 400 and int(trials.target.sum()) == 200
    assert bool((trials.first < trials.second).all())
    keys = (trials.first * len(labels) + trials.second).tolist()
    assert len(set(keys)) == 400 and keys == sorted(keys)
    assert torch.equal(trials.target, labels[trials.first] == labels[trials.second])
    # Target pairs are uniform over all target pairs: speaker 0 holds 45 of the 45 + 780 + 50 * 6 = 1125.
    from_zero = int((labels[trials.first[trials.target]] == 0).sum())
    assert 2 <= from_zero <= 20  # about 8 expected; a class-uniform draw would give about 4 of 52, per class
    from_one = int((labels[trials.first[trials.target]] == 1).sum())
    assert 110 <= from_one <= 170  # 780 / 1125 * 200 = 139
    again = build_trials(labels, max_trials=400, seed=3)
    assert torch.equal(again.first, trials.first) and torch.equal(again.second, trials.second)
    other = build_trials(labels, max_trials=400, seed=4)
    assert not torch.equal(other.first, trials.first)


def test_sampled_trials_take_every_target_pair_when_few() -> None:
    labels = torch.tensor([0, 0, *range(1, 40)])  # one target pair among 820
    trials = build_trials(labels, max_trials=100)
    assert trials.mode == "sampled" and trials.summary()["target"] == 1 and trials.summary()["nontarget"] == 1


def test_trials_need_both_kinds() -> None:
    with pytest.raises(DataError, match="two utterances of one speaker"):
        build_trials(torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="two speakers"):
        build_trials(torch.tensor([0, 0, 0, -1]))


def test_cosine_scores_against_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=g) + 2.0
    trials = Trials(
        torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 8, 7]), torch.tensor([True, False] * 2), "all"
    )
    mean = x.mean(dim=0)
    for centre in (None, mean):
        y = x.numpy().astype(np.float64) - (0 if centre is None else centre.numpy())
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        expected = (y[[0, 1, 2, 3]] * y[[4, 5, 8, 7]]).sum(axis=1)
        np.testing.assert_allclose(cosine_scores(x, trials, centre).numpy(), expected, rtol=1e-12)


def test_few_speakers_note() -> None:
    note = few_speakers_note(6)
    assert note is not None and "6 speakers" in note and "mechanics only" in note
    assert few_speakers_note(40) is None


def test_cli_parser() -> None:
    parser = argparse.ArgumentParser()
    add_verification_command(parser.add_subparsers(dest="evaluation"))
    args = parser.parse_args(["verification", "--run", "r", "--data", "d?label=speaker", "--layer", "3"])
    assert (
        args.layer == 3 and not args.no_mean_norm and args.max_trials == 1_000_000 and callable(args.handler)
    )
