"""Training throughput of SimCLR / ResNet-18 on CIFAR-10 shards, through the real training loop.

Measures images per second (source images, each giving two augmented views) of complete optimizer
steps: batch indexing, on-device augmentation, forward, backward, LARS step. The first steps are
discarded as warm-up; the rest are read back from the run's ``metrics.jsonl``. Results are
appended to ``bench/RESULTS.md`` with the machine and the command.

    python bench/throughput.py --data '../shared/data/cifar10/train-000.tar' --device cpu
    python bench/throughput.py --data '.../train-*.tar' --device cuda --steps 60 --warmup 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from selfsup.api import make_config
from selfsup.train.loop import pretrain_run
from selfsup.train.monitor import read_metrics

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({torch.cuda.device_count()} GPU), {os.cpu_count()} CPU cores"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def command_line(script: str) -> str:
    """The command that ran ``bench/<script>``, its arguments quoted where a shell would need it (a space, a
    ``key=value`` override, an empty string), so that it can be pasted back."""
    quoted = (f'"{a}"' if " " in a or "=" in a or not a else a for a in sys.argv[1:])
    return " ".join([f"python bench/{script}", *quoted])


def append_results(lines: list[str]) -> None:
    """Append one section to bench/RESULTS.md and print it (a log, not a file the library writes)."""
    text = "\n".join(lines)
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write(text + "\n")
    print(text)


def measure(args: argparse.Namespace, precision: str, channels_last: bool) -> dict[str, float]:
    overrides = [
        "method=simclr",
        "encoder=resnet18",
        "encoder.stem=cifar",
        f"data.source={args.data}",
        f"data.max_samples={args.max_samples}",
        f"train.batch_size={args.batch_size}",
        f"train.steps={args.steps}",
        f"train.precision={precision}",
        f"train.channels_last={str(channels_last).lower()}",
        f"train.device={args.device}",
        "train.log_every=1",
        "train.knn_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "augment.params={blur_p: 0.0}",  # SimCLR's CIFAR-10 policy has no blur (appendix B.9)
    ]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    with tempfile.TemporaryDirectory() as run_dir:
        pretrain_run(make_config(overrides=overrides), run_dir)
        records = read_metrics(Path(run_dir))
    rates = [r["samples_per_s"] for r in records if r["step"] > args.warmup]
    return {
        "images_per_s": statistics.median(rates),
        "spread": (max(rates) - min(rates)) / 2,
        "steps": len(rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 shards (path, list or glob)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps excluded from the measurement")
    parser.add_argument("--max-samples", type=int, default=10_000)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    settings = [("fp32", False), ("fp32", True), ("bf16", True)]
    rows = []
    for precision, channels_last in settings:
        start = time.perf_counter()
        result = measure(args, precision, channels_last)
        rows.append((precision, channels_last, result, time.perf_counter() - start))
        print(json.dumps({"precision": precision, "channels_last": channels_last, **result}), flush=True)

    base = rows[0][2]["images_per_s"]
    lines = [
        f"\n## SimCLR ResNet-18 (CIFAR stem), batch {args.batch_size}, {args.device}"
        f" — {time.strftime('%Y-%m-%d')}",
        "",
        f"- machine: {machine()}; torch {torch.__version__}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- commit: {_commit()}; median of {rows[0][2]['steps']} steps after {args.warmup} warm-up steps",
        "",
        "| precision | channels_last | images/s (median ± half-range) | vs fp32 |",
        "|---|---|---|---|",
    ]
    for precision, channels_last, result, _ in rows:
        lines.append(
            f"| {precision} | {channels_last} | {result['images_per_s']:.1f} ± {result['spread']:.1f} "
            f"| {result['images_per_s'] / base:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with RESULTS.open("a") as handle:
            handle.write(text)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
