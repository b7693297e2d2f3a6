"""Speaker verification on frozen embeddings: trials built from a labelled split, cosine scores, EER
and minDCF (SUPERB's SV task, VoxCeleb's metrics).

A *trial* is a pair of utterances; it is a *target* trial when both have the same speaker. A system
scores every trial and accepts it when the score reaches a threshold; it errs by missing a target
(false rejection) or accepting a non-target (false acceptance). Everything here is a pure function
of tensors, and the protocol :func:`evaluate_verification` writes ``RUN/eval/verification.json``.

**Trials** (:func:`build_trials`). Every unordered pair of distinct labelled utterances while there
are at most ``max_trials`` of them (FSDD's test split: 300 clips, 44,850 pairs): no sampling noise,
and the natural target ratio (1 / speakers), which neither metric depends on (both use rates within
the target and non-target trials). Beyond that, a seeded sample of ``max_trials`` pairs, half target
and half non-target as VoxCeleb1-O's list (18,860 + 18,860 trials), each half drawn uniformly from
its kind (all target pairs when there are fewer). The same seed gives the same trials everywhere.

**Scores** (:func:`cosine_scores`). The cosine similarity of the two embeddings, after subtracting a
mean embedding when given (``mean_normalize``; the mean of the training split's embeddings, else of
the trial split's own, labels unused). Cosine scoring of embeddings is how SUPERB's SV task scores its
x-vectors (``s3prl/downstream/sv_voxceleb1``) and how VoxCeleb trainers score theirs; the mean
subtraction is the usual centring before it (Kaldi's ``ivector-subtract-global-mean``), since
embeddings of untrained or lightly trained encoders share a large common component that makes
every cosine close to 1. No head is trained, so any encoder and any baseline is scored the same way.

**EER** (:func:`equal_error_rate`). The error rate where the false-acceptance rate equals the
false-rejection rate, found on the ROC polyline (one point per distinct threshold, from reject-all
to accept-all) by linear interpolation between the two points where ``FRR - FAR`` changes sign:
the same value as the common ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` on scikit-learn's
``roc_curve`` (tested against it), and never the coarser ``max(FAR, FRR)`` at the nearest point.

**minDCF** (:func:`min_dcf`). NIST's detection cost ``C_det(t) = C_miss P_miss(t) p_target + C_fa
P_fa(t) (1 - p_target)``, minimised over the thresholds and normalised by the cost of the best
fixed decision, ``min(C_miss p_target, C_fa (1 - p_target))``, as Kaldi's
``sid/compute_min_dcf.py`` and clovaai/voxceleb_trainer's ``ComputeMinDcf`` do, with VoxCeleb's
``p_target = 0.01, C_miss = C_fa = 1``. Deliberate difference: the thresholds are the *distinct*
scores (plus accept-all and reject-all), as scikit-learn's ``roc_curve``; Kaldi steps through sorted
trials one at a time, which with tied scores also visits operating points no threshold can reach.

**Few speakers.** With fewer than :data:`MIN_SPEAKERS` speakers (VoxCeleb1-O's test set has 40) the
record carries a ``note``: FSDD's 6 speakers test the mechanics only, not speaker verification.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL, Dataset
from selfsup.errors import DataError

DEFAULT_MAX_TRIALS = 1_000_000
MIN_SPEAKERS = 40  # VoxCeleb1-O, the smallest standard SV test set, has 40 speakers
P_TARGET, C_MISS, C_FA = 0.01, 1.0, 1.0  # VoxCeleb / SUPERB SV
_CHUNK = 65536  # trials scored at a time (bounded memory for millions of trials)


@dataclass(frozen=True)
class Trials:
    """Utterance pairs: ``first`` / ``second`` ``(P,)`` int64 indices (``first < second``), ``target``
    ``(P,)`` bool (same speaker); ``mode`` is ``"all"`` (every pair) or ``"sampled"`` (balanced)."""

    first: Tensor
    second: Tensor
    target: Tensor
    mode: str

    def __len__(self) -> int:
        return int(self.first.shape[0])

    def summary(self) -> dict[str, Any]:
        targets = int(self.target.sum())
        return {"mode": self.mode, "count": len(self), "target": targets, "nontarget": len(self) - targets}


# ---------------------------------------------------------------------------- trials


def _all_pairs(m: int) -> tuple[Tensor, Tensor]:
    first, second = torch.triu_indices(m, m, offset=1)
    return first, second


def _sample_target(labels: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` distinct same-label pairs, uniform over all of them: a class with probability
    proportional to its pairs, then a uniform pair inside it; duplicates redrawn."""
    _, inverse, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    members = torch.argsort(inverse, stable=True)  # class 0's samples, then class 1's, ...
    starts = torch.cumsum(sizes, 0) - sizes
    pairs = (sizes * (sizes - 1) // 2).double()
    keys = torch.zeros(0, dtype=torch.long)
    m = labels.numel()
    while keys.numel() < count:
        need = 2 * (count - keys.numel()) + 16
        chosen = torch.multinomial(pairs, need, replacement=True, generator=generator)
        size = sizes[chosen]
        a = (torch.rand(need, generator=generator, dtype=torch.float64) * size).long()
        b = (torch.rand(need, generator=generator, dtype=torch.float64) * (size - 1)).long()
        b = b + (b >= a).long()  # uniform over the other members
        i, j = members[starts[chosen] + a], members[starts[chosen] + b]
        new = torch.minimum(i, j) * m + torch.maximum(i, j)
        keys = _append_unique(keys, new, count)
    return keys // m, keys % m


def _sample_nontarget(labels: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` distinct different-label pairs, uniform over all of them (uniform pairs, rejecting
    same-label ones; duplicates redrawn)."""
    m = labels.numel()
    keys = torch.zeros(0, dtype=torch.long)
    while keys.numel() < count:
        need = 2 * (count - keys.numel()) + 16
        i = torch.randint(0, m, (need,), generator=generator)
        j = torch.randint(0, m, (need,), generator=generator)
        keep = labels[i] != labels[j]
        i, j = i[keep], j[keep]
        keys = _append_unique(keys, torch.minimum(i, j) * m + torch.maximum(i, j), count)
    return keys // m, keys % m


def _append_unique(keys: Tensor, new: Tensor, count: int) -> Tensor:
    """``keys`` then the entries of ``new`` not seen yet (first occurrences, in draw order), at most
    ``count`` in all: the draw order, not a sort, decides which are kept, so the sample stays uniform."""
    seen = set(keys.tolist())
    fresh = []
    for key in new.tolist():
        if key not in seen:
            seen.add(key)
            fresh.append(key)
            if len(seen) >= count:
                break
    return torch.cat([keys, torch.tensor(fresh, dtype=torch.long)])


def build_trials(labels: Tensor, *, max_trials: int = DEFAULT_MAX_TRIALS, seed: int = 0) -> Trials:
    """Verification trials among the labelled samples of ``labels`` ``(N,)`` (speaker ids, -1 unknown).

    Every unordered pair when there are at most ``max_trials``; else ``max_trials`` pairs drawn with
    ``seed``, half target and half non-target (all target pairs, and as many non-target ones, when
    there are fewer target pairs than half). Indices refer to positions in ``labels``; trials are sorted
    by ``(first, second)``. Raises :class:`DataError` without a target or a non-target trial.
    """
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 2:
        raise ValueError(f"max_trials must be an integer >= 2, got {max_trials!r}")
    labels = labels.long().cpu()
    known = torch.nonzero(labels != UNKNOWN_LABEL).flatten()
    speakers = labels[known]
    m = known.numel()
    _, sizes = torch.unique(speakers, return_counts=True)
    target_pairs = int((sizes * (sizes - 1) // 2).sum())
    total = m * (m - 1) // 2
    if target_pairs == 0 or total - target_pairs == 0:
        raise DataError(
            f"speaker verification needs at least two utterances of one speaker and two speakers; the "
            f"data has {m} labelled utterance(s) of {sizes.numel()} speaker(s)"
        )
    if total <= max_trials:
        first, second = _all_pairs(m)
        mode = "all"
    else:
        generator = torch.Generator().manual_seed(seed)
        half = min(max_trials // 2, target_pairs)
        t_first, t_second = _sample_target(speakers, half, generator)
        n_first, n_second = _sample_nontarget(speakers, min(half, total - target_pairs), generator)
        first, second = torch.cat([t_first, n_first]), torch.cat([t_second, n_second])
        order = torch.argsort(first * m + second)
        first, second = first[order], second[order]
        mode = "sampled"
    target = speakers[first] == speakers[second]
    return Trials(known[first], known[second], target, mode)


# ---------------------------------------------------------------------------- scores


def cosine_scores(embeddings: Tensor, trials: Trials, mean: Tensor | None = None) -> Tensor:
    """``(P,)`` float64 cosine similarity of each trial's two embeddings (``embeddings`` ``(N, D)``),
    after subtracting ``mean`` ``(D,)`` when given. Zero vectors score 0. Computed a chunk of trials at
    a time, so millions of trials never materialise ``(P, D)``."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {tuple(embeddings.shape)}")
    x = embeddings.double()
    if mean is not None:
        x = x - mean.double().reshape(1, -1)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scores = torch.empty(len(trials), dtype=torch.float64)
    for start in range(0, len(trials), _CHUNK):
        a = x[trials.first[start : start + _CHUNK]]
        b = x[trials.second[start : start + _CHUNK]]
        scores[start : start + a.shape[0]] = (a * b).sum(dim=1)
    return scores


# ---------------------------------------------------------------------------- metrics


def _check(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if scores.ndim != 1 or target.shape != scores.shape:
        raise ValueError(
            f"scores and target must be (P,), got {tuple(scores.shape)} and {tuple(target.shape)}"
        )
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinite values")
    target = target.bool()
    if not bool(target.any()) or bool(target.all()):
        raise ValueError("need at least one target and one non-target trial")
    return scores.double().cpu(), target.cpu()


def error_rates(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The ROC as ``(far, frr, thresholds)``, each ``(K + 1,)`` float64 for ``K`` distinct scores:
    point ``k`` accepts the trials scoring ``>= thresholds[k]``; point 0 rejects everything
    (threshold +inf: FAR 0, FRR 1) and the last accepts everything (FAR 1, FRR 0). ``far`` is the
    fraction of non-target trials accepted, ``frr`` of target trials rejected."""
    scores, target = _check(scores, target)
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, hits = scores[order], target[order].double()
    # The last trial of each run of equal scores closes one operating point.
    ends = torch.nonzero(torch.cat([ranked[1:] != ranked[:-1], torch.tensor([True])])).flatten()
    accepted_targets = torch.cumsum(hits, 0)[ends]
    accepted_nontargets = torch.cumsum(1.0 - hits, 0)[ends]
    zero = torch.zeros(1, dtype=torch.float64)
    far = torch.cat([zero, accepted_nontargets / (1.0 - hits).sum()])
    frr = torch.cat([zero + 1.0, 1.0 - accepted_targets / hits.sum()])
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), ranked[ends]])
    return far, frr, thresholds


def equal_error_rate(scores: Tensor, target: Tensor) -> tuple[float, float]:
    """``(EER, threshold)``: the rate (0..1) where FAR equals FRR on the ROC polyline, linearly
    interpolated between the two operating points around the crossing, and the threshold there
    (interpolated between theirs; the higher one's when it is the reject-all point). scores,
    target: ``(P,)``; higher scores mean "same speaker"."""
    far, frr, thresholds = error_rates(scores, target)
    gap = frr - far  # 1 at reject-all, -1 at accept-all, never increasing
    k = int(torch.nonzero(gap <= 0).flatten()[0])
    before, after = float(gap[k - 1]), float(gap[k])
    t = before / (before - after)
    eer = float(far[k - 1]) + t * float(far[k] - far[k - 1])
    high, low = float(thresholds[k - 1]), float(thresholds[k])
    threshold = low if math.isinf(high) else high + t * (low - high)
    return eer, threshold


def min_dcf(
    scores: Tensor, target: Tensor, *, p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA
) -> tuple[float, float]:
    """``(minDCF, threshold)``: ``min_t [C_miss P_miss(t) p_target + C_fa P_fa(t) (1 - p_target)]``
    over every operating point, divided by ``min(C_miss p_target, C_fa (1 - p_target))`` (so 1 is the
    cost of always rejecting or always accepting, whichever is cheaper). Kaldi's
    ``compute_min_dcf.py``; VoxCeleb / SUPERB SV use ``p_target = 0.01, C_miss = C_fa = 1``."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target!r}")
    if not (c_miss > 0 and c_fa > 0):
        raise ValueError(f"c_miss and c_fa must be > 0, got {c_miss!r}, {c_fa!r}")
    far, frr, thresholds = error_rates(scores, target)
    cost = c_miss * frr * p_target + c_fa * far * (1.0 - p_target)
    best = int(torch.argmin(cost))  # the first (highest threshold) of equal minima
    return float(cost[best]) / min(c_miss * p_target, c_fa * (1.0 - p_target)), float(thresholds[best])


def verification_metrics(
    scores: Tensor, target: Tensor, *, p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA
) -> dict[str, float]:
    """``{"eer" (%), "min_dcf", "eer_threshold", "min_dcf_threshold"}`` of trial scores."""
    eer, eer_threshold = equal_error_rate(scores, target)
    dcf, dcf_threshold = min_dcf(scores, target, p_target=p_target, c_miss=c_miss, c_fa=c_fa)
    return {
        "eer": 100.0 * eer,
        "min_dcf": dcf,
        "eer_threshold": eer_threshold,
        "min_dcf_threshold": dcf_threshold,
    }


def score_embeddings(
    embeddings: Tensor,
    trials: Trials,
    *,
    mean: Tensor | None = None,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> dict[str, float]:
    """:func:`verification_metrics` of the cosine scores of ``embeddings`` ``(N, D)`` on ``trials``."""
    scores = cosine_scores(embeddings, trials, mean)
    return verification_metrics(scores, trials.target, p_target=p_target, c_miss=c_miss, c_fa=c_fa)


def few_speakers_note(speakers: int) -> str | None:
    """The record's ``note`` when ``speakers`` are too few for the EER to say much, else None."""
    if speakers >= MIN_SPEAKERS:
        return None
    return (
        f"only {speakers} speakers (fewer than {MIN_SPEAKERS}, VoxCeleb1-O's test set): trials among so "
        "few speakers test the mechanics only, not speaker verification"
    )


# ---------------------------------------------------------------------------- protocol


def _embeddings(extractor: Any, data: Dataset, layer: int | None) -> Tensor:
    if layer is None:
        return extractor.features(data)
    return extractor.features(data, layers=[layer])[layer]


def evaluate_verification(
    run: Any,
    data: str | Dataset,
    *,
    train: str | Dataset | None = None,
    layer: int | None = None,
    mean_normalize: bool = True,
    max_trials: int = DEFAULT_MAX_TRIALS,
    seed: int = 0,
    baselines: bool = True,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
    device: str = "cpu",
    out: str | Path | None = None,
) -> dict[str, float]:
    """Speaker verification of frozen embeddings on trials built from ``data`` (speaker labels, e.g.
    ``fsdd/metadata.csv?label=speaker&split=test``): cosine scores of the pooled output (or hidden
    state ``layer``, mean-pooled), centred by the mean embedding of ``train`` (label-free; of
    ``data`` itself without ``train``) unless ``mean_normalize=False``; EER (%) and minDCF. With
    ``baselines``, the same trials and scoring for the encoder at its initial weights and the input
    baselines (log-mel and MFCC statistics for audio, raw inputs otherwise). Saved to
    ``RUN/eval/verification.json``; returns the encoder's metrics."""
    from selfsup.eval.protocols import _spec, as_model, input_baselines, labelled, write_record

    model = as_model(run, device)
    test_data = labelled(model, data, "speaker verification")
    train_data = None
    if train is not None:
        train_data = model.load_data(train) if isinstance(train, str) else train
    trials = build_trials(test_data.labels, max_trials=max_trials, seed=seed)
    options = {"p_target": p_target, "c_miss": c_miss, "c_fa": c_fa}

    def score(test_features: Tensor, train_features: Tensor | None) -> dict[str, float]:
        mean = None
        if mean_normalize:
            mean = (train_features if train_features is not None else test_features).double().mean(dim=0)
        return score_embeddings(test_features, trials, mean=mean, **options)

    def features_of(extractor: Any) -> tuple[Tensor, Tensor | None]:
        test_features = _embeddings(extractor, test_data, layer)
        wanted = train_data is not None and mean_normalize
        return test_features, (_embeddings(extractor, train_data, layer) if wanted else None)

    results = {"encoder": score(*features_of(model))}
    if baselines:
        results["random init"] = score(*features_of(model.random_init()))
        reference = train_data if train_data is not None and mean_normalize else test_data
        for name, (ref, test_features) in input_baselines(model, reference, test_data).items():
            results[name] = score(test_features, ref if reference is not test_data else None)
    speakers = int(torch.unique(test_data.labels[test_data.labels != UNKNOWN_LABEL]).numel())
    main = results["encoder"]
    record: dict[str, Any] = {
        "train": _spec(train) if train is not None else None,
        "test": _spec(data),
        "metrics": {"eer": main["eer"], "min_dcf": main["min_dcf"]},
        "speakers": speakers,
        "utterances": int((test_data.labels != UNKNOWN_LABEL).sum()),
        "trials": {**trials.summary(), "seed": seed, "max_trials": max_trials},
        "scoring": {
            "embedding": "pooled" if layer is None else f"layer{layer}",
            "similarity": "cosine",
            "mean_normalize": bool(mean_normalize),
            "mean_from": None if not mean_normalize else ("train" if train_data is not None else "test"),
        },
        "dcf": options,
        "thresholds": {"eer": main["eer_threshold"], "min_dcf": main["min_dcf_threshold"]},
        "note": few_speakers_note(speakers),
    }
    if baselines:
        record["baselines"] = {
            name: {"eer": r["eer"], "min_dcf": r["min_dcf"]}
            for name, r in results.items()
            if name != "encoder"
        }
    write_record(model, "verification", out, record)
    return record["metrics"]


# ---------------------------------------------------------------------------- CLI


def _eval_verification(args: argparse.Namespace) -> int:
    metrics = evaluate_verification(
        args.run,
        args.data,
        train=args.train,
        layer=args.layer,
        mean_normalize=not args.no_mean_norm,
        max_trials=args.max_trials,
        seed=args.seed,
        baselines=not args.no_baselines,
        device=args.device,
        out=args.out,
    )
    print("speaker verification (cosine scoring)")
    print(f"  EER     {metrics['eer']:8.3f} %")
    print(f"  minDCF  {metrics['min_dcf']:8.4f}  (p_target {P_TARGET}, C_miss = C_fa = 1)")
    return 0


def add_verification_command(evaluations: Any) -> argparse.ArgumentParser:
    """Add ``selfsup eval verification`` to the ``eval`` sub-parsers ``evaluations`` (the handler is
    set as ``handler``, as the other protocols')."""
    q = evaluations.add_parser(
        "verification", help="speaker verification: EER and minDCF of cosine scores on trials from a split"
    )
    q.add_argument("--run", required=True, help="run directory")
    q.add_argument(
        "--data", required=True, help="source with speaker labels (e.g. ...?label=speaker&split=test)"
    )
    q.add_argument("--train", help="source whose mean embedding centres the scores (default: --data's own)")
    q.add_argument(
        "--layer", type=int, help="hidden state to embed with, mean-pooled (default: pooled output)"
    )
    q.add_argument("--no-mean-norm", action="store_true", help="cosine of the raw embeddings, uncentred")
    q.add_argument(
        "--max-trials", type=int, default=DEFAULT_MAX_TRIALS, help="all pairs up to this many, else a sample"
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the sampled trials")
    q.add_argument("--no-baselines", action="store_true", help="skip the random-init and input baselines")
    q.add_argument("--device", default="cpu")
    q.add_argument("--out", help="JSON file for the results (default RUN/eval/verification.json)")
    q.set_defaults(handler=_eval_verification)
    return q


__all__ = [
    "C_FA",
    "C_MISS",
    "DEFAULT_MAX_TRIALS",
    "MIN_SPEAKERS",
    "P_TARGET",
    "Trials",
    "add_verification_command",
    "build_trials",
    "cosine_scores",
    "equal_error_rate",
    "error_rates",
    "evaluate_verification",
    "few_speakers_note",
    "min_dcf",
    "score_embeddings",
    "verification_metrics",
]
