"""Do label-free scores select checkpoints? The evidence the evaluation issue asks for.

Two studies on scikit-learn's digits (small_cnn, the demo recipe), both scored on digits:train without
its labels and compared with kNN top-1 (digits:train -> digits:test) and, across runs, the linear probe:

* within one run: every 25th checkpoint is kept (``train.keep_every``) and scored;
* across runs: runs that differ in temperature, learning rate and length, each scored at its end.

For each label-free score the Spearman and Kendall rank correlation with accuracy is printed (the sign
is flipped for scores where lower is better, so positive always means "selects well"), and the
results are written to OUT/label_free_selection.json.

    python bench/label_free_selection.py --out runs/selection [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import selfsup
from selfsup.eval.selection import NOT_SCORES, evaluate_label_free, rank_correlations
from selfsup.io import write_text_atomic

BASE = ["train.progress=false", "train.knn_every=0", "eval.online_probe=false"]
# Runs of the across-runs study: (name, overrides). Spread on purpose: some good, some poor.
VARIANTS = [
    ("t0.05", ["method.temperature=0.05"]),
    ("t0.2", []),
    ("t1.0", ["method.temperature=1.0"]),
    ("lr5e-4", ["optim.lr=0.0005"]),
    ("lr5e-2", ["optim.lr=0.05"]),
    ("short", ["train.steps=40"]),
    ("no-crop", ["augment.params={crop_scale: [0.95, 1.0], rotation: 0, jitter_strength: 0.0}"]),
]


def within_run(out: Path, seed: int) -> dict[str, Any]:
    run = out / f"within-seed{seed}"
    if not (run / "encoder.safetensors").exists():
        selfsup.pretrain(
            config="simclr_digits",
            out=run,
            seed=seed,
            overrides=[*BASE, "train.checkpoint_every=25", "train.keep_every=25"],
        )
    result = evaluate_label_free(
        run, "digits:train", checkpoints="all", train="digits:train", test="digits:test"
    )
    print(f"\nwithin one run (seed {seed}):\n{result['table']}")
    return {"checkpoints": result["checkpoints"], "correlation": result["correlation"]}


def across_runs(out: Path, seed: int) -> dict[str, Any]:
    rows = []
    for name, overrides in VARIANTS:
        run = out / f"across-seed{seed}" / name
        if not (run / "encoder.safetensors").exists():
            selfsup.pretrain(config="simclr_digits", out=run, seed=seed, overrides=[*BASE, *overrides])
        scores = evaluate_label_free(run, "digits:train", train="digits:train", test="digits:test")
        linear = selfsup.evaluate_linear(run, "digits:train", "digits:test")
        rows.append({"run": name, **scores["metrics"], "linear_top1": linear["top1"]})
    scores = [k for k in rows[0] if k not in {"run", "linear_top1", *NOT_SCORES} and not k.startswith("knn")]
    correlation = rank_correlations(rows, scores, ["knn_top1@20", "knn_top1@200", "linear_top1"])
    print(f"\nacross {len(rows)} runs (seed {seed}):")
    for row in rows:
        print(
            "  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
    for key, value in correlation.items():
        print(f"  {key:<36} spearman {value['spearman']}  kendall {value['kendall']}  n={value['n']}")
    return {"runs": rows, "correlation": correlation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/selection")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    results = {
        f"seed{seed}": {"within": within_run(out, seed), "across": across_runs(out, seed)}
        for seed in args.seeds
    }
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_text_atomic(out / "label_free_selection.json", json.dumps(results, indent=1) + "\n")
    print(f"\n{results['seconds']} s; results in {out / 'label_free_selection.json'}")


if __name__ == "__main__":
    main()
