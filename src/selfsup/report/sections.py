"""What the report says about runs: from :class:`RunData` to sections of tables and plots.

A section appears only when its data exists. A plot that cannot be drawn from the data on disk (a
confusion matrix that is not square, a few-label result without a mean) becomes a note in the run's
"Notes" section instead of an exception.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfsup.report import plots
from selfsup.report.collect import RunData, is_number
from selfsup.report.document import Notes, Plot, Section, Table, Text, slug

SUMMARY_HIDDEN = {"skipped_examples"}
MAX_GRID_ROWS = 10
MAX_PER_CLASS_ROWS = 30
_TOP1_AT = re.compile(r"top1@(\d+)$")


def fmt(value: Any) -> str:
    """A table cell: ``-`` for missing, 4 significant digits for floats, thousands separators above 10^4."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def fmt_duration(seconds: Any) -> str:
    if not is_number(seconds) or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _spec(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


class _Drawer:
    """Draws a run's plots into ``plot_dir``, turning a failure into a note."""

    def __init__(self, run: RunData, plot_dir: Path) -> None:
        self.run = run
        self.plot_dir = plot_dir

    def __call__(
        self, name: str, title: str, caption: str, draw: Callable[..., Path | None], *args: Any
    ) -> list[Plot]:
        """``draw(*args, path, title)`` into ``plot_dir/name.png``; the caption is shown under it."""
        try:
            path = draw(*args, self.plot_dir / f"{name}.png", title)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            self.run.notes.append(f"plot {name}.png could not be drawn ({error}); skipped")
            return []
        return [Plot(path.resolve(), caption)] if path is not None else []


def _plot_name(kind: str, protocol: str, usual: str) -> str:
    """``fewshot.png`` for eval/fewshot.json, ``fewshot_<protocol>.png`` for another file with such data."""
    return kind if protocol == usual else f"{kind}_{protocol}"


def summary_section(run: RunData) -> Section:
    rows = [[key, fmt(value)] for key, value in run.summary.items() if key not in SUMMARY_HIDDEN]
    blocks: list[Any] = [Table(["metric", "value"], rows)] if rows else []
    info = run.run_info
    facts = [
        f"{label} {info[key]}"
        for key, label in (
            ("device", "device"),
            ("precision", "precision"),
            ("world_size", "processes:"),
            ("torch_version", "torch"),
            ("selfsup_version", "selfsup"),
            ("started", "started"),
        )
        if info.get(key) is not None
    ]
    if facts:
        blocks.append(Text("Run: " + ", ".join(facts) + "."))
    skipped = run.summary.get("skipped_examples")
    if isinstance(skipped, list) and skipped:
        blocks.append(Text("Skipped inputs (first five): " + "; ".join(str(s) for s in skipped)))
    return Section("Summary", blocks)


def training_section(run: RunData, draw: _Drawer) -> Section:
    caption = "Training loss and learning rate against the optimizer step (metrics.jsonl)"
    return Section("Training", draw("training", run.title, caption, plots.plot_training, run.train))


def monitor_section(run: RunData, draw: _Drawer) -> Section:
    caption = "kNN and online-probe top-1 (held-out training queries) and RankMe during pretraining"
    blocks: list[Any] = draw("monitor", run.title, caption, plots.plot_monitor, run.monitor)
    if run.monitor_rows:
        keys = [k for k in run.monitor if k != "step"]
        rows = [[str(r["step"]), *(fmt(r.get(k)) for k in keys)] for r in run.monitor_rows]
        blocks.append(Table(["step", *keys], rows, "kNN monitor, online probe and label-free scores"))
    return Section("Monitor during training", blocks)


def _metrics_table(metrics: Mapping[str, float]) -> list[Table]:
    return [Table(["metric", "value"], [[k, fmt(v)] for k, v in metrics.items()])] if metrics else []


def _fewshot_blocks(name: str, record: dict[str, Any], draw: _Drawer) -> list[Any]:
    by_features = record.get("results_by_features")
    if not isinstance(by_features, dict) or not by_features:
        by_features = {"encoder": record["results"]} if isinstance(record.get("results"), list) else {}
    if not by_features:
        return []
    blocks: list[Any] = draw(
        _plot_name("fewshot", name, "fewshot"),
        "Few-label accuracy",
        "Few-label top-1 accuracy: mean ± std (error bars) over label draws, per feature extractor",
        plots.plot_fewshot,
        by_features,
    )
    settings: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for features, rows in by_features.items():
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not is_number(row.get("mean")):
                continue
            setting = str(row.get("setting", "?"))
            settings += [] if setting in settings else [setting]
            spread = f" ± {row['std']:.2f}" if is_number(row.get("std")) else ""
            count = f" (n={len(row['values'])})" if isinstance(row.get("values"), list) else ""
            cells[(setting, str(features))] = f"{row['mean']:.2f}{spread}{count}"
    if settings:
        columns = [str(f) for f in by_features]
        rows = [[s, *(cells.get((s, f), "-") for f in columns)] for s in settings]
        blocks.append(Table(["labels", *columns], rows, "top-1 accuracy (%), mean ± std over label draws"))
    return blocks


def _numbers(*values: Any) -> bool:
    return all(is_number(v) for v in values)


def correlation_pairs(record: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(score, target, stats)`` from ``record["correlation"]`` (keys ``"score~target"``); when the file
    has none, the Spearman / Kendall correlations of each label-free score with the first top-1 column
    of the checkpoints, computed here with scipy."""
    correlation = record.get("correlation")
    if isinstance(correlation, dict) and correlation:
        pairs = []
        for key, stats in correlation.items():
            score, _, target = str(key).partition("~")
            if target and isinstance(stats, dict):
                pairs.append((score, target, stats))
        return pairs
    checkpoints = [c for c in record.get("checkpoints") or [] if isinstance(c, dict)]
    keys = [k for k in (checkpoints[0] if checkpoints else {}) if k != "step"]
    target = next((k for k in keys if "top1" in k), None)
    if target is None:
        return []
    from scipy import stats as scipy_stats

    pairs = []
    for score in (k for k in keys if "top" not in k):
        both = [(c[score], c[target]) for c in checkpoints if _numbers(c.get(score), c.get(target))]
        if not both:
            continue
        x, y = zip(*both)
        undefined = len(both) < 3 or len(set(x)) < 2 or len(set(y)) < 2
        rho = math.nan if undefined else float(scipy_stats.spearmanr(x, y).statistic)
        tau = math.nan if undefined else float(scipy_stats.kendalltau(x, y).statistic)
        pairs.append((score, target, {"spearman": rho, "kendall": tau, "n": len(both), "computed": True}))
    return pairs


def _checkpoint_blocks(name: str, record: dict[str, Any], draw: _Drawer) -> list[Any]:
    checkpoints = [c for c in record.get("checkpoints") or [] if isinstance(c, dict)]
    pairs = correlation_pairs(record)
    blocks: list[Any] = []
    if pairs:
        blocks += draw(
            _plot_name("checkpoint_study", name, "rankme"),
            "Label-free score vs accuracy over checkpoints",
            "Each point is a checkpoint of the run (colour: its step); the panel title gives the Spearman "
            "rank correlation between the label-free score and the accuracy",
            plots.plot_checkpoint_study,
            checkpoints,
            pairs,
        )
        rows = [
            [f"{s} ~ {t}", fmt(st.get("spearman")), fmt(st.get("kendall")), fmt(st.get("n"))]
            for s, t, st in pairs
        ]
        computed = any(st.get("computed") for _, _, st in pairs)
        caption = "rank correlation over checkpoints" + (" (computed by the report)" if computed else "")
        blocks.append(Table(["score ~ accuracy", "Spearman", "Kendall", "n"], rows, caption))
    if checkpoints:
        keys: list[str] = []
        for c in checkpoints:
            keys += [k for k in c if k not in keys]
        blocks.append(Table(keys, [[fmt(c.get(k)) for k in keys] for c in checkpoints], "checkpoints"))
    return blocks


def _linear_blocks(record: dict[str, Any]) -> list[Any]:
    blocks: list[Any] = []
    selected = record.get("selected")
    if isinstance(selected, dict) and selected:
        blocks.append(Table(["selected setting", "value"], [[k, fmt(v)] for k, v in selected.items()]))
    grid = [g for g in record.get("grid") or [] if isinstance(g, dict)]
    if grid:
        ranked = sorted(grid, key=lambda g: -g["val_top1"] if is_number(g.get("val_top1")) else math.inf)
        keys: list[str] = []
        for g in ranked:
            keys += [k for k in g if k not in keys]
        shown = ranked[:MAX_GRID_ROWS]
        caption = f"grid: best {len(shown)} of {len(grid)} settings by validation top-1"
        blocks.append(Table(keys, [[fmt(g.get(k)) for k in keys] for g in shown], caption))
    return blocks


def _baseline_blocks(record: dict[str, Any]) -> list[Any]:
    """The same probe on other features (``"baselines": {name: metrics}``, e.g. random init, raw inputs)."""
    baselines = record.get("baselines")
    if not isinstance(baselines, dict) or not baselines:
        return []
    by_features = {"encoder": record["metrics"]}
    by_features.update({str(k): v for k, v in baselines.items() if isinstance(v, dict)})
    keys: list[str] = []
    for metrics in by_features.values():
        keys += [k for k, v in metrics.items() if is_number(v) and k not in keys]
    rows = [[name, *(fmt(m.get(k)) for k in keys)] for name, m in by_features.items()]
    return [Table(["features", *keys], rows, "the same probe on the encoder's features and on baselines")]


def _per_class_blocks(record: dict[str, Any]) -> list[Any]:
    per_class = record.get("per_class")
    accuracy = per_class.get("accuracy") if isinstance(per_class, dict) else None
    if not isinstance(accuracy, list) or not accuracy or len(accuracy) > MAX_PER_CLASS_ROWS:
        return []
    classes = record.get("classes") if isinstance(record.get("classes"), list) else []
    names = [str(classes[i]) if i < len(classes) else str(i) for i in range(len(accuracy))]
    rows = [[n, fmt(a)] for n, a in zip(names, accuracy)]
    return [Table(["class", "accuracy (%)"], rows, "per-class accuracy")]


def eval_section(name: str, record: dict[str, Any], run: RunData, draw: _Drawer) -> Section:
    blocks: list[Any] = []
    splits = [f"{key}: {_spec(record[key])}" for key in ("train", "test") if record.get(key) is not None]
    if splits:
        blocks.append(Text(" · ".join(splits)))
    if isinstance(record.get("note"), str):  # e.g. too few speakers for a meaningful EER
        blocks.append(Text(f"Note: {record['note']}"))
    blocks += _metrics_table(record["metrics"])
    if name == "linear" or "selected" in record or "grid" in record:
        blocks += _linear_blocks(record)
    if "results" in record or "results_by_features" in record:
        blocks += _fewshot_blocks(name, record, draw)
    blocks += _baseline_blocks(record)
    if isinstance(record.get("layer_weights"), list):
        layers = record.get("layers") if isinstance(record.get("layers"), list) else None
        blocks += draw(
            _plot_name("layer_weights", name, "layer"),
            "Weighted-layer probe",
            "Softmax weight the weighted-layer probe gives each hidden state (dashed: uniform)",
            plots.plot_layer_weights,
            record["layer_weights"],
            layers,
        )
    if "checkpoints" in record or "correlation" in record:
        blocks += _checkpoint_blocks(name, record, draw)
    blocks += _per_class_blocks(record)
    if record.get("confusion") is not None:
        classes = record.get("classes") if isinstance(record.get("classes"), list) else None
        blocks += draw(
            f"confusion_{name}",
            f"Confusion matrix: eval/{name}.json",
            f"Confusion matrix of eval/{name}.json in % of each true class (rows: true, columns: predicted)",
            plots.plot_confusion,
            record["confusion"],
            classes,
        )
    title = str(record.get("protocol") or name)
    return Section(f"{title} (eval/{name}.json)", blocks)


def run_sections(run: RunData, plot_dir: Path) -> list[Section]:
    """The sections of one run, in reading order; empty ones dropped."""
    draw = _Drawer(run, plot_dir)
    evaluation = Section("Evaluation", children=[eval_section(n, r, run, draw) for n, r in run.evals.items()])
    embedding = Section("Embedding map")
    if run.embedding_map is not None:
        record = run.embedding_map
        total = record.get("total")
        caption = f"2-D {str(record.get('method', 'pca')).upper()} map of the embeddings, coloured by label"
        if is_number(total) and isinstance(record.get("points"), list):
            caption += f" ({len(record['points'])} of {total} samples)"
        caption += " (eval/embedding_map.json)"
        embedding.blocks += draw("embedding_map", run.title, caption, plots.plot_embedding_map, record)
    sections = [
        summary_section(run),
        training_section(run, draw),
        monitor_section(run, draw),
        evaluation,
        embedding,
    ]
    sections = [s for s in sections if s]
    if run.notes:  # last: drawing the plots above may have added notes
        sections.append(Section("Notes", [Notes(list(run.notes))]))
    return sections


def _top1_at(metrics: Mapping[str, Any]) -> float | None:
    """Top-1 at k = 20 (DINO's reported k) when present, else at the smallest k."""
    found = sorted(
        (int(m.group(1)) != 20, int(m.group(1)), float(v))
        for k, v in metrics.items()
        if (m := _TOP1_AT.search(k)) and is_number(v)
    )
    return found[0][2] if found else None


def knn_top1(run: RunData) -> tuple[float, bool] | None:
    """kNN top-1 of eval/knn.json (``(value, False)``), else the last monitor value (``(value, True)``)."""
    record = run.evals.get("knn")
    if record is not None and (value := _top1_at(record["metrics"])) is not None:
        return value, False
    value = _top1_at(run.summary)
    return (value, True) if value is not None else None


def linear_top1(run: RunData) -> float | None:
    metrics = run.evals.get("linear", {}).get("metrics", {})
    for key in ("top1", "test_top1", "linear_top1"):
        if is_number(metrics.get(key)):
            return float(metrics[key])
    return next((float(v) for k, v in metrics.items() if "top1" in k and "val" not in k), None)


def comparison_table(runs: Sequence[RunData]) -> Table:
    """One row per run in the style of the LightlySSL / solo-learn benchmark tables."""
    with_linear = any(linear_top1(r) is not None for r in runs)
    headers = ["run", "method", "encoder", "steps", "kNN top-1"]
    headers += ["linear top-1"] if with_linear else []
    headers += ["wall-clock", "peak memory", "samples/s"]
    rows = []
    for run in runs:
        knn = knn_top1(run)
        knn_cell = "-" if knn is None else f"{knn[0]:.2f}" + (" †" if knn[1] else "")
        memory = run.summary.get("peak_memory_mb")
        throughput = run.summary.get("samples_per_s")
        row = [run.name, run.component("method") or "-", run.component("encoder") or "-"]
        row += [fmt(run.summary.get("steps")), knn_cell]
        if with_linear:
            linear = linear_top1(run)
            row.append("-" if linear is None else f"{linear:.2f}")
        row += [
            fmt_duration(run.summary.get("wall_seconds")),
            f"{memory:,.0f} MB" if is_number(memory) else "-",
            f"{throughput:,.0f}" if is_number(throughput) else "-",
        ]
        rows.append(row)
    caption = (
        "kNN top-1 (%) from eval/knn.json (k = 20 where measured); † the pretraining monitor's last "
        "value (held-out training queries) where the run has no eval/knn.json. "
        "Wall-clock and samples/s of pretraining."
    )
    return Table(headers, rows, caption)


def comparison_section(runs: Sequence[RunData], plot_dir: Path) -> Section:
    blocks: list[Any] = [comparison_table(runs)]
    train = {r.name: r.train for r in runs}
    monitor = {r.name: r.monitor for r in runs}
    knn_keys = ["knn_top1@20", *sorted({k for r in runs for k in r.monitor if "knn_top1" in k})]
    for name, caption, series, keys, ylabel in (
        ("comparison_loss", "Training loss of every run", train, ["loss"], "loss"),
        ("comparison_knn", "kNN top-1 during training (monitor)", monitor, knn_keys, "top-1 accuracy (%)"),
    ):
        path = plots.plot_runs(series, keys, plot_dir / f"{name}.png", caption, ylabel)
        if path is not None:
            blocks.append(Plot(path.resolve(), caption))
    return Section("Comparison", blocks)


def anchor_sections(sections: list[Section], prefix: str = "") -> None:
    """Give every section a unique HTML id from its title (and its parents')."""
    for section in sections:
        section.anchor = slug(f"{prefix} {section.title}")
        anchor_sections(section.children, section.anchor)
