"""What a person reads about a run: the opening line, the final table, and report.md / report.html."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from selfsup import dist
from selfsup.config import Config
from selfsup.data.base import Dataset, describe


def write_report(run_dir: Path) -> None:
    """The end-of-run report: ``report.md`` + ``report.html`` and their plots, written by the same
    code as ``selfsup report`` (:mod:`selfsup.report`) from what the run directory holds."""
    from selfsup.report import write_report as write_run_report

    write_run_report(run_dir)


def announce(
    config: Config,
    dataset: Dataset,
    val: Dataset | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    step: int,
) -> None:
    print(
        f"selfsup pretrain: {config.method.name} / {config.encoder.name} on {config.data.source} "
        f"({describe(dataset)}); {dist.world_size()} process(es) on {device}, "
        f"{'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')}"
        + (f"; resuming at step {step}" if step else ""),
        file=sys.stderr,
    )
    for data in (dataset, val):
        if data is not None and data.skipped:
            print(f"  skipped {len(data.skipped)} unreadable input(s) in {data.source}", file=sys.stderr)


def peak_memory_mb(device: torch.device | None) -> float:
    """Peak memory of this process in MiB: on CUDA the tensors' peak (``torch.cuda.max_memory_allocated``
    of ``device``), elsewhere the peak resident set size (RSS: tensors, data, code and libraries)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def summarize(
    config: Config,
    dataset: Dataset,
    logs: dict[str, Any],
    history: dict[str, Any],
    step: int,
    seconds: float,
    *,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """The flat ``summary.json`` of a run; ``peak_memory_mb`` is :func:`peak_memory_mb` of ``device``
    (CUDA: peak allocated tensors; CPU: peak RSS of the process), and the last monitor row's metrics
    (kNN, ``rankme``, ``online_top1``) are copied in."""
    summary: dict[str, Any] = {
        "method": config.method.name,
        "encoder": config.encoder.name,
        "data": config.data.source,
        "modality": dataset.info.modality,
        "samples": len(dataset),
        "skipped_inputs": len(dataset.skipped),
        "steps": step,
        "final_loss": logs.get("loss"),
        "samples_per_s": logs.get("samples_per_s"),
        "audio_seconds_per_s": logs.get("audio_seconds_per_s"),
        "wall_seconds": round(seconds, 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    if history.get("knn"):
        summary.update({k: v for k, v in history["knn"][-1].items() if k != "step"})
    if dataset.skipped:
        summary["skipped_examples"] = [f"{i}: {r}" for i, r in dataset.skipped[:5]]
    return summary


def print_summary(summary: dict[str, Any], finished: bool) -> None:
    rows = [(k, v) for k, v in summary.items() if k != "skipped_examples" and v is not None]
    width = max(len(k) for k, _ in rows)
    print("\n" + ("pretraining finished" if finished else "pretraining stopped early (resume with --resume)"))
    for key, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
