"""``selfsup demo``: SimCLR on scikit-learn's bundled digits, end to end on a CPU.

Pretrains a small ConvNet on the training split (16x16 upsampled digits), then compares kNN
accuracy on the test split for three feature extractors: the pretrained encoder, the same
encoder freshly initialised, and the raw pixels. Nothing is downloaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from selfsup.api import Pretrained, load, make_config
from selfsup.build import build_encoder
from selfsup.eval.features import raw_input_features
from selfsup.eval.knn import knn_accuracy
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


def run_demo(
    out: str | Path = "runs/demo",
    steps: int | None = None,
    device: str = "cpu",
    overrides: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    start = time.perf_counter()
    config = make_config(DEMO_RECIPE, steps=steps, device=device, overrides=overrides)
    run_dir = _fresh_directory(Path(out))
    pretrain_run(config, run_dir)

    pretrained = load(run_dir, device=device)
    train, test = pretrained.load_data("digits:train"), pretrained.load_data("digits:test")
    # The same architecture with the same initial weights as the pretrained run, never trained.
    torch.manual_seed(pretrained.config.train.seed)
    encoder = build_encoder(pretrained.config, pretrained.info).to(pretrained.device)
    untrained = Pretrained(
        run_dir, pretrained.config, encoder, pretrained.info, pretrained.transform, pretrained.device
    )

    def knn(train_features: torch.Tensor, test_features: torch.Tensor) -> dict[str, float]:
        return knn_accuracy(
            train_features,
            train.labels,
            test_features,
            test.labels,
            k=tuple(config.eval.knn_k),
            temperature=config.eval.knn_temperature,
        )

    results = {
        "pretrained (SimCLR)": knn(pretrained.features(train), pretrained.features(test)),
        "random init": knn(untrained.features(train, cache=False), untrained.features(test, cache=False)),
        "raw pixels": knn(
            raw_input_features(train, pretrained.transform), raw_input_features(test, pretrained.transform)
        ),
    }
    seconds = time.perf_counter() - start
    _print_table(results, run_dir, seconds)
    write_text_atomic(
        run_dir / "demo.json", json.dumps({"knn": results, "seconds": round(seconds, 1)}, indent=2) + "\n"
    )
    columns = list(results["raw pixels"])
    table = ["", "## Demo: kNN accuracy on digits:test (%)", "", "| features | " + " | ".join(columns) + " |"]
    table.append("|---" * (len(columns) + 1) + "|")
    table += [
        f"| {name} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |" for name, row in results.items()
    ]
    report = run_dir / "report.md"
    write_text_atomic(report, report.read_text() + "\n".join(table) + "\n")
    return results


def _print_table(results: dict[str, dict[str, float]], run_dir: Path, seconds: float) -> None:
    columns = list(next(iter(results.values())))
    width = max(len(name) for name in results)
    print(f"\nkNN accuracy on digits:test (%), {len(columns)} metrics, {seconds:.0f} s in all")
    print(f"  {'features':<{width}}  " + "  ".join(f"{c:>12}" for c in columns))
    for name, row in results.items():
        print(f"  {name:<{width}}  " + "  ".join(f"{row[c]:>12.1f}" for c in columns))
    print(f"\nrun directory: {run_dir} (report.md, loss_curve.png, metrics.jsonl, tensorboard/)")
