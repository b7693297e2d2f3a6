"""Choose the short-run settings of the image recipes without CIFAR-10's test split: short pretraining runs
per setting, scored on a validation split carved from CIFAR-10 train.

Per setting (``--grid``: one string of space-separated ``key=value`` overrides per setting) the method's
recipe at CPU scale (:func:`selfsup.benchmark.cpu_recipe`, the slow test's batch and image count) pretrains
for ``--steps`` on the first 10,000 images of ``train-000.tar``; kNN (k=20, T=0.07) — or the linear probe
for the masked-modelling methods — is fitted on those images and scored on the first ``--validation``
images of ``train-001.tar`` (other CIFAR-10 training images, never pretrained on here). The same encoder at
its initial weights is scored the same way as the reference. CIFAR-10's test split is never read.

    python bench/vision_tune.py --method byol --steps 140 --grid "" "method.base_momentum=0.9"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import append_results, command_line, machine
from vision_zoo import SHARED

from selfsup.api import load
from selfsup.benchmark import VISION_RECIPES, ShortRun, cpu_recipe, encoder_label, short_run_settings
from selfsup.eval.protocols import evaluate_knn, evaluate_linear
from selfsup.train.loop import pretrain_run

MASKED_MODELLING = ("mae", "ijepa", "data2vec")
PRETRAIN = str(SHARED / "cifar10" / "train-000.tar")
HELD_OUT = str(SHARED / "cifar10" / "train-001.tar")


def validation_score(run: Path, method: str, images: int, validation: int) -> float:
    """kNN top-1 @20 (linear top-1 for masked modelling) on held-out CIFAR-10 training images."""
    model = load(run)
    bank = model.load_data(PRETRAIN)
    bank = bank.subset(torch.arange(min(images, len(bank))))
    held = model.load_data(HELD_OUT)
    held = held.subset(torch.arange(min(validation, len(held))))
    if method in MASKED_MODELLING:
        return float(evaluate_linear(run, bank, held)["top1"])
    return float(evaluate_knn(run, bank, held, k=(20,))["knn_top1@20"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=list(VISION_RECIPES))
    parser.add_argument("--steps", type=int, help="default: 140, or the method's SHORT_RUNS steps")
    parser.add_argument("--grid", nargs="+", required=True, help='e.g. "" "optim.lr=0.5"')
    parser.add_argument("--images", type=int, default=10000, help="pretraining images (and kNN bank)")
    parser.add_argument("--validation", type=int, default=2000, help="held-out train-001 images scored")
    parser.add_argument(
        "--batch", type=int, help="default: the recipe's 256, or the method's SHORT_RUNS batch"
    )
    parser.add_argument(
        "--short-run", action="store_true", help='start from SHORT_RUNS\' settings (to confirm them): grid ""'
    )
    parser.add_argument("--out", default="runs/vision_tune")
    args = parser.parse_args()
    short = short_run_settings(args.method) if args.short_run else ShortRun()
    if args.steps is None:
        args.steps = short.steps
    if args.batch is None:
        args.batch = short.batch_size
    out = Path(args.out)
    common = [
        f"data.max_samples={args.images}",
        f"train.batch_size={args.batch}",
        "train.progress=false",
        "train.knn_every=0",
        "train.precision=fp32",
        "train.device=cpu",
        f"data.cache_dir={out / 'cache'}",
    ]
    baselines: dict[str, float] = {}

    def random_init_score(setting: str) -> float:
        """The setting's encoder at its initial weights: settings that change the encoder's options (its
        pooling, say) are compared with their own random encoder, not the recipe's."""
        config = cpu_recipe(
            args.method,
            data=PRETRAIN,
            steps=0,
            overrides=[*common, *setting.split()],
            short_run=args.short_run,
        )
        key = encoder_label(config)
        if key not in baselines:
            random_run = out / f"{args.method}-random"
            shutil.rmtree(random_run, ignore_errors=True)
            pretrain_run(config, random_run)
            baselines[key] = validation_score(random_run, args.method, args.images, args.validation)
            shutil.rmtree(random_run, ignore_errors=True)
            print(json.dumps({"encoder": key, "random_init": baselines[key]}), flush=True)
        return baselines[key]

    rows = []
    for index, setting in enumerate(args.grid):
        run = out / f"{args.method}-{index}"
        shutil.rmtree(run, ignore_errors=True)
        start = time.perf_counter()
        config = cpu_recipe(
            args.method,
            data=PRETRAIN,
            steps=args.steps,
            overrides=[*common, *setting.split()],
            short_run=args.short_run,
        )
        result = pretrain_run(config, run)
        minutes = (time.perf_counter() - start) / 60
        score = validation_score(run, args.method, args.images, args.validation)
        loss = result.summary.get("final_loss", result.summary.get("loss"))
        random_score = random_init_score(setting)
        rows.append((setting, minutes, score, random_score, loss))
        record = {"setting": setting, "minutes": round(minutes, 2), "val": score, "random_init": random_score}
        print(json.dumps({**record, "loss": loss}), flush=True)
        shutil.rmtree(run, ignore_errors=True)
    probe = "linear top-1" if args.method in MASKED_MODELLING else "kNN top-1 @20"
    command = command_line("vision_tune.py")
    lines = [
        f"\n### Short-run settings on a CIFAR-10-train validation split ({args.method}"
        f"{', from SHORT_RUNS' if args.short_run else ''}) — {date.today()}\n",
        f"Machine: {machine()}. Command: `{command}`. {args.steps} steps at batch {args.batch} on the first "
        f"{args.images} images of train-000; {probe} fitted on those, scored on the first {args.validation} "
        f"images of train-001; CIFAR-10 test unused. Random init: the setting's encoder before any step.\n",
        f"| setting | minutes | validation {probe} | random init | final loss |",
        "|---|---|---|---|---|",
    ]
    for setting, minutes, score, random_score, loss in rows:
        loss_cell = f"{loss:.3g}" if isinstance(loss, float) else "-"
        lines.append(
            f"| `{setting or '(recipe)'}` | {minutes:.1f} | {score:.1f} | {random_score:.1f} | {loss_cell} |"
        )
    append_results(lines)


if __name__ == "__main__":
    main()
