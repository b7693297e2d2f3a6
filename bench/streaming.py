"""Streaming benchmarks: peak memory on a data set far larger than its budget, and images/s of the
streamed path against the in-memory path on a set that fits.

Each measured run is a separate child process running the real ``selfsup pretrain`` command, and
reports its own peak resident set size (``ru_maxrss``: the decoding threads live in the same
process, so this is the whole footprint). Throughput is read back from the run's
``metrics.jsonl`` (samples per second over complete optimizer steps, the first ``--warmup`` steps
discarded).

    # a set far larger than its resident budget (bench/make_jpeg_shards.py writes it)
    python bench/streaming.py rss --data '/tmp/js100k/train-*.tar' --steps 20
    # the same model on a set that fits: in-memory vs streamed images/s
    python bench/streaming.py throughput --data ../shared/data/cifar10/train-000.tar --steps 8
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from selfsup.train.monitor import read_metrics


def child(argv: list[str]) -> None:
    """Run one ``selfsup`` command in this process, then print its peak RSS as a JSON line."""
    from selfsup.cli import main

    code = main(argv)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"exit": code, "peak_rss_gib": peak_kib / 2**20}), flush=True)


def run(command: list[str], run_dir: Path, warmup: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "_child", *command, "--out", str(run_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rates = [r["samples_per_s"] for r in read_metrics(run_dir) if r["step"] > warmup]
    result["images_per_s"] = statistics.median(rates) if rates else float("nan")
    result["spread"] = (max(rates) - min(rates)) / 2 if rates else float("nan")
    result["streamed"] = "streamed" in done.stderr
    result["first_line"] = next(
        (ln for ln in done.stderr.splitlines() if ln.startswith("selfsup pretrain")), ""
    )
    return result


def pretrain_args(data: str, steps: int, extra: list[str]) -> list[str]:
    return [
        "pretrain",
        "--data",
        data,
        "--method",
        "simclr",
        "--encoder",
        "resnet18",
        "--steps",
        str(steps),
        "--batch-size",
        "256",
        "--device",
        "cpu",
        "train.log_every=1",
        "train.knn_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "eval.monitor_samples=500",
        *extra,
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["rss", "throughput"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--memory-limit-gb", type=float, default=1.0, help="rss: the budget that auto compares to"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="more config overrides")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "rss":
            # The model of the throughput runs (ResNet-18, CIFAR stem, batch 256, SimCLR's CIFAR-10
            # views) unless --set says otherwise; loading=auto with the given budget.
            extra = [
                f"data.memory_limit_gb={args.memory_limit_gb}",
                "encoder.stem=cifar",
                "augment.params={blur_p: 0.0}",
                *args.set,
            ]
            rows.append(("auto", run(pretrain_args(args.data, args.steps, extra), Path(tmp) / "a", 0)))
        else:
            # SimCLR ResNet-18, CIFAR stem, batch 256, SimCLR's CIFAR-10 views, fp32 (the CPU default).
            common = ["encoder.stem=cifar", "augment.params={blur_p: 0.0}", *args.set]
            for name, loading in (("in memory", "memory"), ("streamed", "stream")):
                result = run(
                    pretrain_args(args.data, args.steps, [*common, f"data.loading={loading}"]),
                    Path(tmp) / loading,
                    args.warmup,
                )
                rows.append((name, result))
    print("\n| path | images/s (median ± half-range) | peak RSS (GiB) | streamed |")
    print("|---|---|---|---|")
    for name, result in rows:
        rate = f"{result['images_per_s']:.1f} ± {result['spread']:.1f}"
        print(f"| {name} | {rate} | {result['peak_rss_gib']:.2f} | {result['streamed']} |")
    for name, result in rows:
        print(f"{name}: {result['first_line']}")
    print(json.dumps({name: result for name, result in rows}, indent=1))


if __name__ == "__main__":
    main()
