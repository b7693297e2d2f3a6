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

from selfsup.api import load, make_config
from selfsup.eval.fewshot import few_label_eval
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.protocols import baseline_extractors
from selfsup.io import write_text_atomic
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
        few = few_label_eval(
            train_features,
            train.labels,
            test_features,
            test.labels,
            per_class=FEW_LABELS,
            seeds=FEW_LABEL_SEEDS,
        )
        spread = {}
        for setting in few.to_dict()["results"]:
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
    report = run_dir / "report.md"
    write_text_atomic(report, report.read_text() + "\n".join(["", *_markdown_table(results, spreads)]) + "\n")
    return results


def _cell(value: float, spread: float | None) -> str:
    return f"{value:.1f}" if spread is None else f"{value:.1f} ± {spread:.1f}"


def _markdown_table(results: dict[str, dict[str, float]], spreads: dict[str, dict[str, float]]) -> list[str]:
    columns = list(next(iter(results.values())))
    lines = [
        "## Demo: accuracy on digits:test (%)",
        "",
        "kNN uses every training label; `linear N/class` is a linear probe on N labels per class, "
        f"mean ± std over {len(FEW_LABEL_SEEDS)} label draws.",
        "",
        "| features | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, row in results.items():
        cells = [_cell(row[c], spreads[name].get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


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
    print(f"\nrun directory: {run_dir} (report.md, loss_curve.png, metrics.jsonl, tensorboard/)")
