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

from selfsup.api import load, make_config
from selfsup.augment.base import to_normalized_float
from selfsup.encoders import ENCODERS
from selfsup.eval.features import extract_features
from selfsup.eval.knn import KNNProbe
from selfsup.train.loop import load_training_data, pretrain_run

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

    model = load(run_dir, device=device)
    train = load_training_data(config, "digits:train")
    test = load_training_data(config, "digits:test")
    k, temperature = tuple(config.eval.knn_k), config.eval.knn_temperature

    def knn(train_features: torch.Tensor, test_features: torch.Tensor) -> dict[str, float]:
        probe = KNNProbe(k=k, temperature=temperature)
        probe.fit(train_features, train.labels)
        return probe.evaluate(test_features, test.labels)

    torch.manual_seed(config.train.seed)
    random_encoder = ENCODERS.create(config.encoder.name, **config.encoder.params)
    size = config.augment.size or train.image_size[0]
    augment = config.augment

    def random_features(images: torch.Tensor) -> torch.Tensor:
        return extract_features(
            random_encoder, images, size=size, mean=augment.mean, std=augment.std, device=device
        )

    def pixels(images: torch.Tensor) -> torch.Tensor:
        return to_normalized_float(images, augment.mean, augment.std, size).flatten(1)

    results = {
        "pretrained (SimCLR)": knn(model.features(train.images), model.features(test.images)),
        "random init": knn(random_features(train.images), random_features(test.images)),
        "raw pixels": knn(pixels(train.images), pixels(test.images)),
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
