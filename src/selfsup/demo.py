"""``selfsup demo``: SimCLR on scikit-learn's bundled digits, end to end on a CPU.

Pretrains a small ConvNet on the training split (16x16 upsampled digits), then compares kNN
accuracy on the test split for three feature extractors: the pretrained encoder, the same
encoder freshly initialised, and the raw pixels. Nothing is downloaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from selfsup.api import Pretrained, load, make_config
from selfsup.augment.base import to_normalized_float
from selfsup.encoders import ENCODERS
from selfsup.eval.knn import knn_accuracy
from selfsup.train.loop import crop_size, pretrain_run

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
    torch.manual_seed(config.train.seed)
    encoder = ENCODERS.create(config.encoder.name, **config.encoder.params).to(pretrained.device)
    untrained = Pretrained(run_dir, config, encoder, pretrained.device)
    augment, size = config.augment, crop_size(config, train.image_size[0])

    def pixels(images: torch.Tensor) -> torch.Tensor:
        return to_normalized_float(images, augment.mean, augment.std, size).flatten(1)

    def knn(features: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        return knn_accuracy(
            features(train.images),
            train.labels,
            features(test.images),
            test.labels,
            k=tuple(config.eval.knn_k),
            temperature=config.eval.knn_temperature,
        )

    results = {
        "pretrained (SimCLR)": knn(pretrained.features),
        "random init": knn(untrained.features),
        "raw pixels": knn(pixels),
    }
    seconds = time.perf_counter() - start
    _print_table(results, run_dir, seconds)
    (run_dir / "demo.json").write_text(json.dumps({"knn": results, "seconds": round(seconds, 1)}, indent=2))
    with (run_dir / "report.md").open("a") as report:
        report.write(
            "\n## Demo: kNN accuracy on digits:test (%)\n\n| features | "
            + " | ".join(results["raw pixels"])
            + " |\n"
        )
        report.write("|---" * (len(results["raw pixels"]) + 1) + "|\n")
        for name, row in results.items():
            report.write(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |\n")
    return results


def _print_table(results: dict[str, dict[str, float]], run_dir: Path, seconds: float) -> None:
    columns = list(next(iter(results.values())))
    width = max(len(name) for name in results)
    print(f"\nkNN accuracy on digits:test (%), {len(columns)} metrics, {seconds:.0f} s in all")
    print(f"  {'features':<{width}}  " + "  ".join(f"{c:>12}" for c in columns))
    for name, row in results.items():
        print(f"  {name:<{width}}  " + "  ".join(f"{row[c]:>12.1f}" for c in columns))
    print(f"\nrun directory: {run_dir} (report.md, loss_curve.png, metrics.jsonl, tensorboard/)")
