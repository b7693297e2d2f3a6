"""``selfsup demo``: SimCLR on scikit-learn's bundled digits, end to end on a CPU.

Pretrains a small ConvNet on the training split (16x16 upsampled digits), then compares three
feature extractors on the test split — the pretrained encoder, the same encoder at its initial
weights, and the raw pixels — by kNN with every label and by linear probes with 1, 5 and 10 labels
per class (five label draws each): the few-label regime is where pretraining must pay. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from selfsup.api import Pretrained, load, make_config
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.protocols import baseline_extractors, few_label_by_features, fewshot_record, write_record
from selfsup.io import write_text_atomic
from selfsup.report import write_report
from selfsup.train.loop import pretrain_run

DEMO_RECIPE = "simclr_digits"


def _fresh_directory(out: Path) -> Path:
    """The demo never resumes or overwrites: runs/demo, runs/demo-2, ..."""
    candidate, n = out, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = out.with_name(f"{out.name}-{n}")
    return candidate


FEW_LABELS = (1, 5, 10)  # labels per class of the few-label columns
FEW_LABEL_SEEDS = (0, 1, 2, 3, 4)  # label draws per column


def run_demo(
    out: str | Path = "runs/demo",
    steps: int | None = None,
    device: str = "cpu",
    overrides: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Pretrain, then one table: kNN with every training label, and linear probes with 1, 5 and 10
    labels per class (mean ± spread over five draws), for the pretrained encoder, the same encoder
    at its initial weights, and the raw pixels."""
    start = time.perf_counter()
    config = make_config(DEMO_RECIPE, steps=steps, device=device, overrides=overrides)
    run_dir = _fresh_directory(Path(out))
    pretrain_run(config, run_dir)

    pretrained = load(run_dir, device=device)
    train, test = pretrained.load_data("digits:train"), pretrained.load_data("digits:test")
    extractors = baseline_extractors(pretrained, train, test)
    names = {"encoder": "pretrained (SimCLR)", "random init": "random init", "raw inputs": "raw pixels"}
    few_label = few_label_by_features(extractors, train, test, per_class=FEW_LABELS, seeds=FEW_LABEL_SEEDS)
    results: dict[str, dict[str, float]] = {}
    spreads: dict[str, dict[str, float]] = {}
    for key, (train_features, test_features) in extractors.items():
        row = knn_accuracy(
            train_features,
            train.labels,
            test_features,
            test.labels,
            k=tuple(config.eval.knn_k),
            temperature=config.eval.knn_temperature,
        )
        spread = {}
        for setting in few_label[key].to_dict()["results"]:
            column = f"linear {setting['setting'].replace(' per class', '/class')}"
            row[column], spread[column] = setting["mean"], setting["std"]
        results[names[key]], spreads[names[key]] = row, spread
    seconds = time.perf_counter() - start
    _print_table(results, spreads, run_dir, seconds)
    record = {
        "results": results,
        "std": spreads,
        "few_label_seeds": list(FEW_LABEL_SEEDS),
        "seconds": round(seconds, 1),
    }
    write_text_atomic(run_dir / "demo.json", json.dumps(record, indent=2) + "\n")
    _write_records(pretrained, results, few_label)
    return results


def _write_records(
    pretrained: Pretrained, results: dict[str, dict[str, float]], few_label: dict[str, Any]
) -> None:
    """The demo's numbers as evaluation records, so that the run's report (rewritten here) shows them."""
    encoder, *baselines = results
    others = {name: results[name] for name in baselines}
    specs = {"train": "digits:train", "test": "digits:test"}
    write_record(pretrained, "demo", None, {**specs, "metrics": results[encoder], "baselines": others})
    record = fewshot_record("digits:train", "digits:test", FEW_LABEL_SEEDS, few_label)
    write_record(pretrained, "fewshot", None, record)
    write_report(pretrained.run_dir)


def _cell(value: float, spread: float | None) -> str:
    return f"{value:.1f}" if spread is None else f"{value:.1f} ± {spread:.1f}"


def _print_table(
    results: dict[str, dict[str, float]], spreads: dict[str, dict[str, float]], run_dir: Path, seconds: float
) -> None:
    columns = list(next(iter(results.values())))
    width = max(len(name) for name in results)
    print(f"\naccuracy on digits:test (%), {seconds:.0f} s in all")
    print(
        "  kNN: every training label; linear N/class: N labels per class, mean ± std over "
        f"{len(FEW_LABEL_SEEDS)} draws"
    )
    print(f"  {'features':<{width}}  " + "  ".join(f"{c:>14}" for c in columns))
    for name, row in results.items():
        cells = [f"{_cell(row[c], spreads[name].get(c)):>14}" for c in columns]
        print(f"  {name:<{width}}  " + "  ".join(cells))
    print(f"\nrun directory: {run_dir} (report.html, report.md, metrics.jsonl, tensorboard/)")
