"""The evaluation suite measured on scikit-learn's digits: where pretraining pays, over seeds.

For each pretraining seed (the demo recipe, SimCLR + small_cnn, 300 steps):
* the linear probe (default grid, selected on a validation split of digits:train) against scikit-learn's
  LogisticRegression with C chosen on the same split, on the same features, with wall-clock for both;
* fine-tuning the whole encoder on 10 labels per class and on 10% of the labels, from the pretrained
  weights and from random initialisation (the same recipe), against the linear probe on the same draw;
* the few-label table of the demo (1 / 5 / 10 labels per class over 5 draws) for encoder, random init
  and raw pixels.

    python bench/eval_suite.py --out runs/eval_suite --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import selfsup
from selfsup.eval.fewshot import few_label_eval
from selfsup.eval.finetune import finetune
from selfsup.eval.linear import LinearProbe
from selfsup.eval.protocols import baseline_extractors
from selfsup.eval.splits import stratified_draw, train_val_split
from selfsup.io import write_text_atomic

QUIET = ["train.progress=false"]


def sklearn_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    """LogisticRegression with C chosen on the same stratified validation split as our probe."""
    start = time.perf_counter()
    fit, val = (t.numpy() for t in train_val_split(torch.from_numpy(y_train), 0.1, seed=0))
    mean, std = x_train[fit].mean(0), x_train[fit].std(0) + 1e-6
    scores = []
    for c in np.logspace(-3, 3, 13):
        model = LogisticRegression(C=c, max_iter=3000).fit((x_train[fit] - mean) / std, y_train[fit])
        scores.append((model.score((x_train[val] - mean) / std, y_train[val]), -c, c))
    best = max(scores)[2]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    model = LogisticRegression(C=best, max_iter=3000).fit((x_train - mean) / std, y_train)
    return {
        "top1": 100.0 * model.score((x_test - mean) / std, y_test),
        "C": float(best),
        "seconds": time.perf_counter() - start,
    }


def one_seed(out: Path, seed: int) -> dict[str, Any]:
    run = out / f"simclr-seed{seed}"
    if not (run / "encoder.safetensors").exists():
        selfsup.pretrain(config="simclr_digits", out=run, seed=seed, overrides=QUIET)
    model = selfsup.load(run)
    train, test = model.load_data("digits:train"), model.load_data("digits:test")
    result: dict[str, Any] = {}

    x_train, x_test = model.features(train), model.features(test)
    start = time.perf_counter()
    probe = LinearProbe(seed=0).fit(x_train, train.labels)
    ours = {**probe.evaluate(x_test, test.labels), "seconds": time.perf_counter() - start}
    reference = sklearn_probe(x_train.numpy(), train.labels.numpy(), x_test.numpy(), test.labels.numpy())
    result["linear"] = {"selfsup": ours, "sklearn": reference, "selected": probe.selected}

    extractors = baseline_extractors(model, train, test)
    result["few_label"] = {
        name: few_label_eval(a, train.labels, b, test.labels, per_class=(1, 5, 10)).to_dict()["results"]
        for name, (a, b) in extractors.items()
    }

    finetuned = {}
    for budget, options in (("10 per class", {"labels_per_class": 10}), ("10%", {"label_fraction": 0.1})):
        for init in ("pretrained", "random init"):
            target = (
                out / f"finetune-seed{seed}-{budget.replace(' ', '').replace('%', 'pct')}-{init.split()[0]}"
            )
            start = time.perf_counter()
            metrics = finetune(
                run, "digits:train", "digits:test", out=target, seed=seed, pretrained=init == "pretrained",
                resume=(target / "checkpoints").is_dir(), overrides=QUIET, **options,
            )  # fmt: skip
            finetuned[f"{budget} / {init}"] = {
                "top1": metrics["top1"],
                "seconds": time.perf_counter() - start,
            }
        drawn = stratified_draw(train.labels, seed=seed, **_draw_options(options))
        probe = LinearProbe(seed=0).fit(x_train[drawn], train.labels[drawn])
        finetuned[f"{budget} / linear probe"] = {"top1": probe.evaluate(x_test, test.labels)["top1"]}
    result["finetune"] = finetuned
    return result


def _draw_options(options: dict[str, Any]) -> dict[str, Any]:
    if "labels_per_class" in options:
        return {"per_class": options["labels_per_class"]}
    return {"fraction": options["label_fraction"]}


def summarize(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def spread(values: list[float]) -> str:
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.1f} ± {std:.1f}"

    seeds = list(per_seed.values())
    table: dict[str, Any] = {
        "linear: selfsup": spread([s["linear"]["selfsup"]["top1"] for s in seeds]),
        "linear: sklearn": spread([s["linear"]["sklearn"]["top1"] for s in seeds]),
    }
    for key in seeds[0]["finetune"]:
        table[f"finetune {key}"] = spread([s["finetune"][key]["top1"] for s in seeds])
    for name in seeds[0]["few_label"]:
        for i, setting in enumerate(seeds[0]["few_label"][name]):
            values = [s["few_label"][name][i]["mean"] for s in seeds]
            table[f"few-label {setting['setting']} / {name}"] = spread(values)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/eval_suite")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    per_seed = {f"seed{seed}": one_seed(out, seed) for seed in args.seeds}
    table = summarize(per_seed)
    for key, value in table.items():
        print(f"{key:<48} {value}")
    record = {"per_seed": per_seed, "summary": table, "seconds": round(time.perf_counter() - start, 1)}
    write_text_atomic(out / "eval_suite.json", json.dumps(record, indent=1) + "\n")
    print(f"{record['seconds']} s; {out / 'eval_suite.json'}")


if __name__ == "__main__":
    main()
