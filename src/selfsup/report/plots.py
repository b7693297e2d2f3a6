"""The report's figures: one function per plot, each writing a PNG atomically and returning its path.

Every function takes plain data (lists and dicts read from the run directory), checks its shape and
raises ``ValueError`` for data it cannot draw (the report turns that into a note). Figures are drawn
with matplotlib's object API on an Agg canvas, never through ``pyplot``: no global backend switch, no
figure left open, and safe in a process that already uses another backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.io import write_atomic

DPI = 100
MAX_CONFUSION_CLASSES = 30
"""Above this, the confusion matrix keeps the most frequent classes and sums the rest into "other"."""
MAX_LEGEND_CLASSES = 20
MAX_STUDY_PANELS = 9


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return path


def _line(axis: Any, series: Sequence[tuple[int, float]], label: str, **style: Any) -> None:
    steps = [s for s, _ in series]
    values = [v for _, v in series]
    axis.plot(steps, values, label=label, marker="o" if len(series) < 20 else None, markersize=3, **style)


def _check_series(name: str, series: Sequence[Any]) -> None:
    if not all(isinstance(p, tuple | list) and len(p) == 2 for p in series):
        raise ValueError(f"series {name!r} must be (step, value) pairs")


def plot_training(train: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path | None:
    """Training loss and learning rate against the optimizer step, in two panels sharing the x axis."""
    labels = (("loss", "training loss"), ("lr", "learning rate"))
    panels = [(key, label) for key, label in labels if train.get(key)]
    if not panels:
        return None
    figure = _figure(7, 2.4 * len(panels) + 0.6)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, (key, label) in zip(axes, panels):
        _check_series(key, train[key])
        _line(axis, train[key], label, linewidth=1.5, color="C0" if key == "loss" else "C1")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("optimizer step")
    return _save(figure, path)


def accuracy_keys(series: Mapping[str, Any]) -> list[str]:
    """Monitor series that are accuracies in %: kNN top-1 at each k, the online probe's top-1."""
    return [k for k in series if "top1" in k]


def rank_keys(series: Mapping[str, Any]) -> list[str]:
    """Label-free effective-rank scores (RankMe, LiDAR): one scale, so one panel."""
    return [k for k in series if k.startswith(("rankme", "lidar"))]


def plot_monitor(monitor: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path | None:
    """kNN / online-probe top-1 (%) and RankMe over training, one panel each (when present)."""
    panels = [
        (keys, label)
        for keys, label in (
            (accuracy_keys(monitor), "top-1 accuracy (%)"),
            (rank_keys(monitor), "effective rank (label-free)"),
        )
        if keys
    ]
    if not panels:
        return None
    figure = _figure(7, 2.6 * len(panels) + 0.6)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, (keys, label) in zip(axes, panels):
        for index, key in enumerate(keys):
            _check_series(key, monitor[key])
            _line(axis, monitor[key], key, linewidth=1.5, color=f"C{index % 10}")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    axes[0].set_title(title)
    axes[-1].set_xlabel("optimizer step")
    return _save(figure, path)


def _class_colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    name = "tab10" if count <= 10 else "tab20" if count <= 20 else "turbo"
    cmap = colormaps[name]
    if name == "turbo":
        return [cmap(i / max(1, count - 1)) for i in range(count)]
    return [cmap(i) for i in range(count)]


def plot_embedding_map(record: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Scatter of ``record["points"]`` ``(N, 2)`` coloured by ``record["labels"]`` (-1: grey, unlabelled)."""
    points = np.asarray(record.get("points", []), dtype=np.float64)
    if points.size == 0:
        return None
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [[x, y], ...], got an array of shape {points.shape}")
    labels = np.asarray(record.get("labels", [-1] * len(points)), dtype=np.int64)
    if labels.shape != (len(points),):
        raise ValueError(f"labels must have one entry per point ({len(points)}), got {labels.shape}")
    classes = [str(c) for c in record.get("classes") or []]
    count = max(len(classes), int(labels.max()) + 1 if labels.size else 0)
    classes += [str(i) for i in range(len(classes), count)]
    colors = _class_colors(max(count, 1))
    figure = _figure(6.5, 5.5)
    axis = figure.subplots()
    unknown = labels < 0
    if unknown.any():
        axis.scatter(*points[unknown].T, s=6, color="0.7", label="unlabelled", linewidths=0)
    for c in range(count):
        members = labels == c
        if members.any():
            axis.scatter(*points[members].T, s=6, color=colors[c], label=classes[c], linewidths=0)
    ratio = record.get("explained_variance_ratio")
    method = str(record.get("method", "pca")).upper()
    for index, setter in enumerate((axis.set_xlabel, axis.set_ylabel)):
        share = ""
        if isinstance(ratio, list) and len(ratio) == 2 and all(isinstance(r, int | float) for r in ratio):
            share = f" ({100 * ratio[index]:.0f}% of variance)"
        setter(f"{method} {index + 1}{share}")
    if count <= MAX_LEGEND_CLASSES:
        axis.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axis.set_title(title)
    axis.grid(alpha=0.2)
    return _save(figure, path)


def plot_layer_weights(
    weights: Sequence[float], layers: Sequence[Any] | None, path: Path, title: str
) -> Path | None:
    """Bar chart of the weighted-layer probe's softmax weights ``(L,)``; ``layers`` names the bars
    (default: the hidden-state index, 0 = the input side). Dashed: the uniform weight ``1/L``."""
    values = np.asarray(weights, dtype=np.float64)
    if values.size == 0:
        return None
    if values.ndim != 1:
        raise ValueError(f"layer_weights must be a list of floats, got shape {values.shape}")
    names = [str(n) for n in layers] if layers is not None else [str(i) for i in range(values.size)]
    if len(names) != values.size:
        raise ValueError(f"{len(names)} layer names for {values.size} layer weights")
    figure = _figure(max(6.0, 0.35 * values.size + 2), 3.2)
    axis = figure.subplots()
    axis.bar(np.arange(values.size), values, color="C2")
    axis.axhline(1.0 / values.size, color="0.4", linestyle="--", linewidth=1, label="uniform")
    axis.set_xticks(np.arange(values.size), labels=names, rotation=90 if values.size > 16 else 0)
    axis.set_xlabel("hidden state (layer)")
    axis.set_ylabel("softmax weight")
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def cap_confusion(
    matrix: np.ndarray, classes: list[str], max_classes: int = MAX_CONFUSION_CLASSES
) -> tuple[np.ndarray, list[str]]:
    """Keep the ``max_classes - 1`` classes with the most true samples (in their original order) and sum
    the other rows and columns into a last class ``"other (n)"``; unchanged when K <= ``max_classes``."""
    k = matrix.shape[0]
    if k <= max_classes:
        return matrix, classes
    support = matrix.sum(axis=1)
    # Stable: among equal counts the lower class index is kept.
    kept = np.sort(np.argsort(-support, kind="stable")[: max_classes - 1])
    rest = np.setdiff1d(np.arange(k), kept)
    groups = [[int(i)] for i in kept] + [rest.tolist()]
    capped = np.array([[matrix[np.ix_(r, c)].sum() for c in groups] for r in groups])
    return capped, [classes[i] for i in kept] + [f"other ({rest.size})"]


def row_normalize(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum, in %; a class with no test samples stays a row of zeros."""
    sums = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(100.0 * matrix, sums, out=np.zeros(matrix.shape), where=sums > 0)


def plot_confusion(
    confusion: Sequence[Sequence[float]], classes: Sequence[str] | None, path: Path, title: str
) -> Path | None:
    """Row-normalised confusion matrix (rows = true class, columns = predicted), class names on the axes.

    Cells are annotated with their % when there are at most 15 classes; above 30 classes the rarest
    are aggregated (:func:`cap_confusion`).
    """
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.size == 0:
        return None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square K x K matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise ValueError("confusion must hold non-negative counts")
    names = [str(c) for c in classes] if classes else []
    if names and len(names) != matrix.shape[0]:
        k = matrix.shape[0]
        raise ValueError(f"{len(names)} class names for a {k} x {k} confusion matrix")
    names = names or [str(i) for i in range(matrix.shape[0])]
    matrix, names = cap_confusion(matrix, names)
    percent = row_normalize(matrix)
    k = len(names)
    size = min(14.0, max(4.5, 0.38 * k + 2.5))
    figure = _figure(size + 1.0, size)
    axis = figure.subplots()
    image = axis.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="% of the true class")
    tilt = {"rotation": 45, "ha": "right"} if k > 5 else {}
    axis.set_xticks(np.arange(k), labels=names, **tilt)
    axis.set_yticks(np.arange(k), labels=names)
    axis.tick_params(labelsize=8 if k <= 15 else 6)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if percent[i, j] >= 0.5:
                    color = "white" if percent[i, j] > 60 else "black"
                    axis.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title)
    return _save(figure, path)


def _fewshot_rows(rows: Any) -> list[tuple[str, float, float]]:
    if not isinstance(rows, list):
        raise ValueError("few-label results must be a list of {setting, mean, std}")
    result = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("mean"), int | float):
            raise ValueError("each few-label result needs a 'setting' and a numeric 'mean'")
        std = row.get("std")
        spread = float(std) if isinstance(std, int | float) else 0.0
        result.append((str(row.get("setting", "?")), float(row["mean"]), spread))
    return result


def plot_fewshot(by_features: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Grouped bars of few-label accuracy: mean ± std (error bars) per setting and feature extractor."""
    parsed = {str(name): _fewshot_rows(rows) for name, rows in by_features.items()}
    parsed = {name: rows for name, rows in parsed.items() if rows}
    if not parsed:
        return None
    settings: list[str] = []
    for rows in parsed.values():
        settings += [s for s, _, _ in rows if s not in settings]
    width = 0.8 / len(parsed)
    figure = _figure(max(5.0, 1.1 * len(settings) * max(1, len(parsed)) ** 0.5 + 2.5), 3.8)
    axis = figure.subplots()
    for index, (name, rows) in enumerate(parsed.items()):
        lookup = {s: (m, d) for s, m, d in rows}
        xs = [i + (index - (len(parsed) - 1) / 2) * width for i, s in enumerate(settings) if s in lookup]
        means = [lookup[s][0] for s in settings if s in lookup]
        stds = [lookup[s][1] for s in settings if s in lookup]
        axis.bar(xs, means, width=width * 0.95, yerr=stds, capsize=3, label=name, color=f"C{index % 10}")
    axis.set_xticks(np.arange(len(settings)), labels=settings)
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def plot_checkpoint_study(
    checkpoints: Sequence[Mapping[str, Any]],
    pairs: Sequence[tuple[str, str, Mapping[str, Any]]],
    path: Path,
    title: str,
) -> Path | None:
    """One scatter per (score, target) pair over the checkpoints of a run, coloured by step; the panel
    title gives the rank correlation (``pairs``: ``(score, target, {"spearman", "kendall", "n"})``).
    At most :data:`MAX_STUDY_PANELS` pairs are drawn (the tables list them all)."""
    drawable = []
    for score, target, stats in pairs:
        points = [
            (float(c[score]), float(c[target]), float(c.get("step", math.nan)))
            for c in checkpoints
            if isinstance(c, Mapping) and _number(c.get(score)) and _number(c.get(target))
        ]
        if points:
            drawable.append((score, target, stats, np.asarray(points)))
    if not drawable:
        return None
    drawable = drawable[:MAX_STUDY_PANELS]
    columns = min(3, len(drawable))
    rows = math.ceil(len(drawable) / columns)
    figure = _figure(max(6.0, 4.2 * columns), 3.6 * rows + 0.5)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for axis, (score, target, stats, points) in zip(axes, drawable):
        dots = axis.scatter(points[:, 0], points[:, 1], c=points[:, 2], cmap="viridis", s=28)
        figure.colorbar(dots, ax=axis, label="step")
        rho = stats.get("spearman")
        defined = _number(rho) and math.isfinite(rho)
        shown = f"Spearman ρ = {rho:.2f}" if defined else "ρ undefined (constant or n < 3)"
        axis.set_title(f"{score} ~ {target}: {shown} (n = {stats.get('n', len(points))})", fontsize=9)
        axis.set_xlabel(score)
        axis.set_ylabel(target)
        axis.grid(alpha=0.3)
    for axis in axes[len(drawable) :]:
        axis.set_visible(False)
    figure.suptitle(title)
    return _save(figure, path)


def plot_runs(
    series_by_run: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    keys: Sequence[str],
    path: Path,
    title: str,
    ylabel: str,
) -> Path | None:
    """Several runs on one axis: for each run, the first of ``keys`` it has (e.g. ``loss``)."""
    lines = []
    for run, series in series_by_run.items():
        key = next((k for k in keys if series.get(k)), None)
        if key is not None:
            lines.append((run if len(keys) == 1 else f"{run} ({key})", series[key]))
    if not lines:
        return None
    figure = _figure(7, 3.8)
    axis = figure.subplots()
    for index, (label, series) in enumerate(lines):
        _check_series(label, series)
        _line(axis, series, label, linewidth=1.5, color=f"C{index % 10}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)
