"""The vision method zoo on CPU: every image method at one wall-clock budget on a CIFAR-10 subset.

Each method pretrains its CIFAR-10 recipe at CPU scale (:func:`selfsup.benchmark.cpu_recipe`: the recipe's
loss, heads, views and optimizer on a 4-layer ConvNet, or a 6-block ViT-Tiny/4 for the ViT methods) for
``--budget`` seconds: a short calibration run measures seconds per step, then ``train.steps`` is set so that
the schedules (learning rate, EMA momentum, teacher temperature) complete within the budget
(``train.time_limit_s`` stops a run that would overrun). Then kNN (k=20, T=0.07) and the linear probe grid
on the CIFAR-10 test set, beside the same encoder at random initialisation and the raw pixels through the
same probes. ``--seeds`` repeats pretraining (and nothing else) with other seeds.

    python bench/vision_zoo.py --budget 300 --out runs/vision_zoo
    python bench/vision_zoo.py --methods simclr dino --seeds 0 1 2 --out runs/vision_zoo
    python bench/vision_zoo.py --data ../shared/data/images/imagenette64/train-000.tar.gz \\
        --test ../shared/data/images/imagenette64/val-000.tar.gz --methods simclr dino vicreg --short-run \\
        --set data.image_size=64 augment.size=64 --out runs/zoo_inet
    (the ViT methods with ``encoder.patch_size=8`` added: 64 patches, as 4-pixel patches of CIFAR-10)

Results accumulate in ``OUT/vision_zoo.json`` (runs already measured are kept) and are written to
``bench/RESULTS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import append_results, command_line, machine

from selfsup.api import load, make_config
from selfsup.benchmark import VISION_RECIPES, cpu_recipe, encoder_label
from selfsup.config import Config
from selfsup.eval.knn import KNNProbe
from selfsup.eval.protocols import evaluate_knn, evaluate_linear, raw_inputs
from selfsup.train.loop import pretrain_run

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_TRAIN = str(SHARED / "cifar10" / "train-000.tar")
CIFAR_TEST = str(SHARED / "cifar10" / "test-000.tar")

COMMON = ["train.progress=false", "train.knn_every=0", "train.precision=fp32"]
CALIBRATION_STEPS = 6


def encoder_name(method: str, args: argparse.Namespace) -> str:
    """The encoder a method's runs train, with every option: the ViT recipes keep different ones (class token,
    pooling, positions, LayerScale), so each such encoder gets its own random-init row."""
    return encoder_label(config_for(method, 0, 0, args))


def config_for(method: str, seed: int, steps: int, args: argparse.Namespace) -> Config:
    """The method's CIFAR-10 recipe at CPU scale (:func:`selfsup.benchmark.cpu_recipe`), fp32, batch 256 or,
    with ``--short-run``, the method's :data:`selfsup.benchmark.SHORT_RUNS` batch and overrides (the step
    count still comes from the budget)."""
    options = [*COMMON, f"data.cache_dir={Path(args.out) / 'cache'}"]
    if not args.short_run:
        options.append("train.batch_size=256")
    config = cpu_recipe(
        method, data=args.data, steps=steps, seed=seed, overrides=options, short_run=args.short_run
    )
    # --set applies after the CPU encoder is in place, so that it can change the encoder's options too.
    return make_config(config, overrides=args.set) if args.set else config


def seconds_per_step(run: Path, batch: int) -> float:
    """Seconds per optimizer step of a calibration run, from the throughput it logged after warming up (its
    first steps include start-up and first-call costs, which made the 2026-12-01 runs use 60-80 % of the
    budget)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["samples_per_s"] for r in rows if r.get("kind") == "train" and r["step"] > 2]
    return batch / statistics.median(speeds)


def run_pretrain(method: str, seed: int, out: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Calibrate seconds per step, then pretrain for the budget. (run dir, summary)."""
    if not (out / "summary.json").exists():
        first = out.parent / f"{method}-seed0" / "summary.json"
        if seed != 0 and first.exists():
            # Other seeds train as many steps as seed 0: the spread is over seeds, not over step counts.
            steps = int(json.loads(first.read_text())["steps"])
        else:
            probe_dir = out.parent / f"{out.name}-calibrate"
            calibration = config_for(method, seed, CALIBRATION_STEPS, args)
            if not (probe_dir / "summary.json").exists():
                pretrain_run(calibration, probe_dir)
            per_step = seconds_per_step(probe_dir, calibration.train.batch_size)
            steps = max(10, int(args.budget / per_step))
        config = make_config(
            config_for(method, seed, steps, args), overrides=[f"train.time_limit_s={args.budget * 1.2}"]
        )
        pretrain_run(config, out, resume=(out / "checkpoints").exists())
    return out, json.loads((out / "summary.json").read_text())


def random_init_run(method: str, args: argparse.Namespace) -> Path:
    """The method's encoder at its initial weights (a 0-step run), shared by methods with one encoder."""
    out = Path(args.out) / f"random-init-{encoder_name(method, args)}"
    if not (out / "summary.json").exists():
        pretrain_run(config_for(method, 0, 0, args), out)
    return out


def probe(run: Path, args: argparse.Namespace) -> dict[str, float | None]:
    knn = evaluate_knn(run, args.data, args.test, k=(20,))
    linear = evaluate_linear(run, args.data, args.test)
    return {"knn": knn.get("knn_top1@20"), "linear": linear.get("top1")}


def raw_pixel_row(run: Path, args: argparse.Namespace) -> dict[str, float | None]:
    """kNN and the linear probe on the raw pixels through the run's input transform."""
    model = load(run)
    train, test = model.load_data(args.data), model.load_data(args.test)
    pair = raw_inputs(model, train, test)
    if pair is None:
        return {"knn": None, "linear": None}
    knn = KNNProbe(k=(20,), temperature=model.config.eval.knn_temperature).fit(pair[0], train.labels)
    raw_knn = knn.evaluate(pair[1], test.labels).get("knn_top1@20")
    if args.no_raw_linear:
        return {"knn": raw_knn, "linear": None}
    linear = evaluate_linear(run, args.data, args.test, baselines=True)
    record = json.loads((run / "eval" / "linear.json").read_text())
    raw = next((v for k, v in record.get("baselines", {}).items() if "raw" in k), {})
    del linear
    return {"knn": raw_knn, "linear": raw.get("top1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(VISION_RECIPES), choices=list(VISION_RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=float, default=300.0, help="pretraining seconds per run")
    parser.add_argument("--data", default=CIFAR_TRAIN)
    parser.add_argument("--test", default=CIFAR_TEST)
    parser.add_argument("--out", default="runs/vision_zoo")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="key=value",
        help="overrides of every run, e.g. data.image_size=64 augment.size=64 for 64-pixel images",
    )
    parser.add_argument(
        "--short-run",
        action="store_true",
        help="each method's SHORT_RUNS batch and overrides (DINO's frozen last layer, queues a run can fill)",
    )
    parser.add_argument(
        "--no-raw-linear",
        action="store_true",
        help="raw pixels by kNN only (the linear grid on 64-pixel images, 12,288 inputs, takes 20+ minutes)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    saved = Path(args.out) / "vision_zoo.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}

    def save() -> None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(results, indent=1, default=str))

    for method in args.methods:
        encoder = encoder_name(method, args)
        if f"random init/{encoder}" not in results:
            baseline = random_init_run(method, args)
            results[f"random init/{encoder}"] = {**probe(baseline, args), "encoder": encoder}
            if "raw pixels" not in results:
                results["raw pixels"] = raw_pixel_row(baseline, args)
            save()
        for seed in args.seeds:
            key = f"{method}/{seed}"
            if key in results:
                continue
            start = time.perf_counter()
            run, summary = run_pretrain(method, seed, Path(args.out) / f"{method}-seed{seed}", args)
            results[key] = {
                **probe(run, args),
                "encoder": encoder,
                "steps": summary.get("steps"),
                "pretrain_s": summary.get("wall_seconds"),
                "finished": summary.get("finished", True),
                "samples_per_s": summary.get("samples_per_s"),
                "total_s": time.perf_counter() - start,
            }
            save()
            print(key, json.dumps(results[key], default=str), flush=True)
    if not args.no_write:
        write_results(args, results)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(results: dict[str, Any]) -> str:
    """One row per method (mean ± std over seeds), then the random-init and raw-pixel rows."""
    lines = [
        "| method | encoder | seeds | steps | pretrain s | kNN top-1 @20 | linear top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    methods = sorted({k.split("/")[0] for k in results if k.count("/") == 1 and not k.startswith("random")})
    rows = []
    for method in methods:
        runs = [v for k, v in results.items() if k.split("/")[0] == method and k.count("/") == 1]
        knn = [float(r["knn"]) for r in runs if r.get("knn") is not None]
        linear = [float(r["linear"]) for r in runs if r.get("linear") is not None]
        steps = "/".join(str(r.get("steps")) for r in runs)
        steps += " | " + "/".join(f"{float(r.get('pretrain_s') or 0):.0f}" for r in runs)
        rows.append(
            (
                statistics.mean(linear) if linear else 0.0,
                method,
                runs[0]["encoder"],
                len(runs),
                steps,
                knn,
                linear,
            )
        )
    for _, method, encoder, seeds, steps, knn, linear in sorted(rows, reverse=True):
        lines.append(f"| {method} | {encoder} | {seeds} | {steps} | {_mean_std(knn)} | {_mean_std(linear)} |")
    for key, value in results.items():
        if key.startswith("random init/"):
            cells = [_mean_std([value[k]]) if value.get(k) is not None else "—" for k in ("knn", "linear")]
            lines.append(f"| random init | {value['encoder']} | — | 0 | — | {cells[0]} | {cells[1]} |")
    if "raw pixels" in results:
        raw = results["raw pixels"]
        cells = [_mean_std([raw[k]]) if raw.get(k) is not None else "—" for k in ("knn", "linear")]
        lines.append(f"| raw pixels | — | — | — | — | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def write_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    batch = "the SHORT_RUNS batch and overrides" if args.short_run else "batch 256"
    extra = "; " + " ".join(args.set) if args.set else ""
    append_results(
        [
            f"\n### Vision method zoo on CPU, {args.budget:.0f} s per method — {date.today().isoformat()}\n",
            f"Machine: {machine()}. Command: `{command_line('vision_zoo.py')}`. "
            f"Train: `{Path(args.data).name}`, test: `{Path(args.test).name}`; {batch}, fp32{extra}.\n",
            table(results),
        ]
    )


if __name__ == "__main__":
    main()
