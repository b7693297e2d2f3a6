"""What a person reads about a run: the opening line, the final table, report.md, loss_curve.png."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from selfsup import dist
from selfsup.config import Config
from selfsup.data.base import Dataset, describe
from selfsup.io import write_atomic, write_text_atomic


def plot_loss_curve(path: Path, points: list[list[float]], title: str) -> bool:
    """Write a PNG of loss against step; False when there is nothing to plot."""
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    steps, losses = zip(*points, strict=True)
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, losses, linewidth=1.5, marker="o" if len(points) < 20 else None)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return True


def write_report(run_dir: Path, config: Config, summary: dict[str, Any], history: dict[str, Any]) -> None:
    title = f"{config.method.name} / {config.encoder.name} on {config.data.source}"
    has_plot = plot_loss_curve(run_dir / "loss_curve.png", history.get("loss", []), title)
    lines = [f"# selfsup run: {title}", "", "| metric | value |", "|---|---|"]
    for key, value in summary.items():
        if key == "skipped_examples":
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    if history.get("knn"):
        lines += [
            "",
            "## kNN monitor",
            "",
            "| step | " + " | ".join(k for k in history["knn"][0] if k != "step") + " |",
        ]
        lines.append("|---" * len(history["knn"][0]) + "|")
        for row in history["knn"]:
            lines.append(
                "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
            )
    if summary.get("skipped_examples"):
        lines += ["", "## Skipped inputs (first five)", ""] + [f"- {s}" for s in summary["skipped_examples"]]
    if has_plot:
        lines += ["", "![loss curve](loss_curve.png)"]
    lines += ["", "Resolved configuration: `config.yaml`; metrics: `metrics.jsonl` and `tensorboard/`."]
    write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")


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
