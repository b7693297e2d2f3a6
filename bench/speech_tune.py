"""Choose a speech recipe's settings without FSDD's test split: short pretraining runs per setting, scored
by the 5-labels-per-digit linear probe on a validation split carved from FSDD's train split.

Per setting (``--grid``: one string of space-separated ``key=value`` overrides per setting): pretrain
the recipe for ``--steps`` on LJ Speech + FSDD train (no labels, as ``bench/speech_ssl.py``), embed FSDD
train, hold out ``--validation`` of its clips (a fixed permutation), draw 5 labels per digit from the
rest (5 draws) and score the held-out clips, on the average / concatenation of every layer. The same
encoder at random init is scored as the reference. FSDD's test split is never read.

    python bench/speech_tune.py --method byol_a --steps 100 --grid "optim.lr=3e-4" "optim.lr=1e-3"
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_ssl import POOL, RECIPES, _all_layers, fsdd
from throughput import append_results, command_line, machine

from selfsup.api import Pretrained, load, pretrain
from selfsup.eval.fewshot import few_label_eval


def validation_score(model: Pretrained, validation: int, seed: int = 0) -> tuple[float, float]:
    """(mean, std) top-1 over 5 draws of 5 labels per digit, scored on held-out FSDD-train clips."""
    data = model.load_data(fsdd("digit", "train"))
    layers = list(range(model.encoder.num_layers + 1))
    features = _all_layers(model.features(data, layers=layers, progress=False))
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))
    held, rest = order[:validation], order[validation:]
    labels = data.labels.clone()
    result = few_label_eval(
        features[rest], labels[rest], features[held], labels[held], per_class=(5,), seeds=(0, 1, 2, 3, 4)
    )
    top1 = result.results[0].top1
    return statistics.mean(top1), statistics.stdev(top1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=[m for m in RECIPES if m != "hubert"])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--grid", nargs="+", required=True, help='e.g. "optim.lr=1e-3 train.batch_size=32"')
    parser.add_argument("--validation", type=int, default=600, help="FSDD-train clips held out")
    parser.add_argument("--out", default="runs/speech_tune")
    parser.add_argument("--keep", action="store_true", help="keep the runs (default: deleted after scoring)")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for index, setting in enumerate(args.grid):
        run = out / f"{args.method}-{index}"
        shutil.rmtree(run, ignore_errors=True)
        start = time.perf_counter()
        overrides = [*setting.split(), "train.progress=false", f"data.cache_dir={out / 'cache'}"]
        pretrain(data=POOL, out=str(run), config=RECIPES[args.method], steps=args.steps, overrides=overrides)
        minutes = (time.perf_counter() - start) / 60
        model = load(run)
        score = validation_score(model, args.validation)
        random_score = validation_score(model.random_init(), args.validation)
        rows.append((setting, minutes, score, random_score))
        print(json.dumps({"setting": setting, "minutes": minutes, "val": score, "random": random_score}))
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    command = command_line("speech_tune.py")
    lines = [
        f"\n### Speech recipe settings on FSDD-train validation ({args.method}) — {date.today()}\n",
        f"Machine: {machine()}. Command: `{command}`. {args.steps} pretraining steps per setting; 5 labels "
        f"per digit (5 draws) from FSDD train, scored on {args.validation} held-out FSDD-train clips; FSDD "
        "test unused.\n",
        "| setting | minutes | validation top-1, 5/class | same encoder at random init |",
        "|---|---|---|---|",
    ]
    for setting, minutes, (mean, std), (r_mean, r_std) in rows:
        lines.append(f"| `{setting}` | {minutes:.1f} | {mean:.1f} ± {std:.1f} | {r_mean:.1f} ± {r_std:.1f} |")
    append_results(lines)


if __name__ == "__main__":
    main()
