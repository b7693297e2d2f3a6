"""Label-free model selection: score checkpoints without labels, and measure whether the scores pick
the checkpoints that labels would.

For each checkpoint of a run (or its final encoder) the frozen features of a fixed random sample of
``data`` get the label-free scores of :mod:`selfsup.eval.rank` (RankMe, alpha-ReQ, per-dimension std,
and — with views made by the run's own view policy — LiDAR, alignment and uniformity). With labelled
``train`` / ``test`` sources, the kNN accuracy of every checkpoint is measured too, and the Spearman and
Kendall rank correlations between each score and the accuracy say how well the score selects; with
fewer than three checkpoints no correlation is reported (it would mean nothing).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfsup.api import Pretrained
from selfsup.build import build_policy, checkpoint_encoder_weights
from selfsup.data.base import Dataset
from selfsup.errors import ConfigError
from selfsup.eval.knn import KNNProbe
from selfsup.eval.protocols import as_model, labelled, write_record
from selfsup.eval.rank import label_free_scores
from selfsup.eval.splits import random_subset
from selfsup.train.checkpoint import list_checkpoints
from selfsup.train.sampler import view_seed

# Scores where a larger value is not better: alignment (a distance) and uniformity (a log-potential).
LOWER_IS_BETTER = frozenset({"alignment", "uniformity", "dead_fraction"})
# Reported but not correlated: constants of the encoder (1/sqrt(D)) and flags.
NOT_SCORES = frozenset({"std_ideal", "collapsed"})


@torch.no_grad()
def policy_views(model: Pretrained, dataset: Dataset, views: int, seed: int = 0) -> Tensor:
    """``(Q, V, D)`` pooled features of ``views`` augmented views of each of the ``Q`` samples of
    ``dataset``, made by the run's own view policy (its global views), in eval mode: the input of
    LiDAR (Thilak et al. 2023) and of alignment."""
    config = model.config
    policy = build_policy(config, model.info, model.transform, model.encoder)
    batch = dataset.batch(torch.arange(len(dataset))).to(model.device)
    collected: list[Tensor] = []
    call = 0
    while sum(v.shape[1] for v in collected) < views:
        generator = torch.Generator(device=model.device).manual_seed(view_seed(seed, 0, call, 0))
        made = policy(batch, generator)
        outs = []
        for i, x in enumerate(made.global_inputs):
            outs.append(model.encoder(x, padding_mask=made.padding_mask(i)).pooled.float().cpu())
        collected.append(torch.stack(outs, dim=1))
        call += 1
    return torch.cat(collected, dim=1)[:, :views]


def rank_correlations(rows: list[dict[str, Any]], scores: list[str], targets: list[str]) -> dict[str, Any]:
    """Spearman and Kendall rank correlations of every score with every target over ``rows``; for scores
    where lower is better the sign is flipped, so a positive value always means "selects well"."""
    from scipy.stats import kendalltau, spearmanr

    out: dict[str, Any] = {}
    for score in scores:
        for target in targets:
            pairs = [(r[score], r[target]) for r in rows if _finite(r.get(score)) and _finite(r.get(target))]
            if len(pairs) < 3:
                continue
            x, y = zip(*pairs, strict=True)
            sign = -1.0 if score in LOWER_IS_BETTER else 1.0
            with warnings.catch_warnings():  # a constant score or accuracy: undefined, reported as None
                warnings.simplefilter("ignore")
                rho, tau = spearmanr(x, y).statistic, kendalltau(x, y).statistic
            out[f"{score}~{target}"] = {
                "spearman": None if not _finite(rho) else round(sign * float(rho), 4),
                "kendall": None if not _finite(tau) else round(sign * float(tau), 4),
                "n": len(pairs),
            }
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def evaluate_label_free(
    run: Any,
    data: str | Dataset,
    *,
    checkpoints: str = "last",
    train: str | Dataset | None = None,
    test: str | Dataset | None = None,
    max_samples: int = 5000,
    lidar_samples: int = 500,
    lidar_views: int = 8,
    seed: int = 0,
    device: str = "cpu",
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Label-free scores of the run's encoder (``checkpoints="last"``) or of every kept checkpoint
    (``"all"``; keep more with ``train.keep_every``), with kNN accuracy and rank correlations when
    ``train`` and ``test`` are given. Saved to ``RUN/eval/rankme.json``; returns the record plus a
    printable ``"table"``."""
    if checkpoints not in ("last", "all"):
        raise ConfigError(f"checkpoints must be 'last' or 'all', got {checkpoints!r}")
    if (train is None) != (test is None):
        raise ConfigError("give both --train and --test (kNN per checkpoint), or neither")
    model = as_model(run, device)
    dataset = model.load_data(data) if isinstance(data, str) else data
    scored = random_subset(dataset, max_samples, seed)
    queries = random_subset(scored, lidar_samples, seed + 1)
    labelled_pair = None
    if train is not None and test is not None:
        # The scored source is often the kNN training source too: decode it once.
        same = train == data and isinstance(train, str)
        labelled_pair = (labelled(model, dataset if same else train, "kNN"), labelled(model, test, "kNN"))
    candidates: list[tuple[int | None, Pretrained]] = [(None, model)]
    if checkpoints == "all":
        paths = list_checkpoints(model.run_dir / "checkpoints")
        if not paths:
            raise ConfigError(f"{model.run_dir} has no checkpoints to score; use --checkpoints last")
        candidates = [(step, model.with_weights(checkpoint_encoder_weights(path))) for step, path in paths]
    rows = []
    for step, candidate in candidates:
        row: dict[str, Any] = {"step": step}
        views = policy_views(candidate, queries, lidar_views, seed) if lidar_views >= 2 else None
        row.update(label_free_scores(candidate.features(scored, progress=False), views=views))
        if labelled_pair is not None:
            train_data, test_data = labelled_pair
            probe = KNNProbe(k=tuple(model.config.eval.knn_k), temperature=model.config.eval.knn_temperature)
            probe.fit(candidate.features(train_data, progress=False), train_data.labels)
            row.update(probe.evaluate(candidate.features(test_data, progress=False), test_data.labels))
        rows.append(row)
    score_names = [
        k
        for k, v in rows[-1].items()
        if k not in NOT_SCORES | {"step"} and not k.startswith("knn") and _finite(v)
    ]
    target_names = [k for k in rows[-1] if k.startswith("knn_top1")]
    record: dict[str, Any] = {
        "train": train if isinstance(train, str) else None,
        "test": test if isinstance(test, str) else None,
        "data": data if isinstance(data, str) else None,
        "samples": len(scored),
        "lidar": {"samples": len(queries), "views": lidar_views},
        "metrics": {k: v for k, v in rows[-1].items() if k != "step" and _finite(v)},
        "checkpoints": rows,
        "correlation": rank_correlations(rows, score_names, target_names),
    }
    write_record(model, "rankme", out, record)
    return {**record, "table": format_table(rows, record["correlation"])}


def format_table(rows: list[dict[str, Any]], correlation: dict[str, Any]) -> str:
    keys = [k for k in rows[-1] if k != "step" and (_finite(rows[-1][k]) or rows[-1][k] is None)]
    lines = ["step      " + "  ".join(f"{k[:14]:>14}" for k in keys)]
    for row in rows:
        step = "final" if row["step"] is None else str(row["step"])
        cells = [f"{row[k]:14.4g}" if _finite(row.get(k)) else f"{'-':>14}" for k in keys]
        lines.append(f"{step:<10}" + "  ".join(cells))
    if correlation:
        lines.append("")
        lines.append("rank correlation with accuracy (positive: the score selects well)")
        for name, values in correlation.items():
            lines.append(
                f"  {name:<36} spearman {values['spearman']}  kendall {values['kendall']}  n={values['n']}"
            )
    elif len(rows) > 1:
        lines.append("(no correlation: give --train and --test, and at least three checkpoints)")
    return "\n".join(lines)


__all__ = ["evaluate_label_free", "policy_views", "rank_correlations"]
