"""The human-readable end of a run: ``report.md`` and ``loss_curve.png`` in the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.config import Config


def plot_loss_curve(path: Path, points: list[list[float]], title: str) -> bool:
    """Write a PNG of loss against step; False when there is nothing to plot."""
    if len(points) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    steps, losses = zip(*points, strict=True)
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, losses, linewidth=1.5)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
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
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
