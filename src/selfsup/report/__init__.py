"""``selfsup report``: report.md and a self-contained report.html (with plots) for one or several runs.

One run: ``RUN/report.md``, ``RUN/report.html`` and ``RUN/plots/*.png``. Several runs: the same
files under ``out`` (default :data:`DEFAULT_OUT`), with a comparison table in the style of the
LightlySSL / solo-learn benchmark tables and each run's plots in ``plots/<run>/``.

The pieces: ``collect.py`` reads run directories (skipping damaged files with a note),
``sections.py`` decides what the report says, ``plots.py`` draws the PNGs, ``markdown.py`` and
``html.py`` render the same document, ``embedding.py`` computes the 2-D embedding map that the
evaluation glue stores in ``eval/embedding_map.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from selfsup.errors import ConfigError
from selfsup.io import write_text_atomic
from selfsup.report.collect import RunData, collect_run, unique_names
from selfsup.report.document import Document, Section, Text, slug
from selfsup.report.embedding import embedding_map
from selfsup.report.html import render_html
from selfsup.report.markdown import render_markdown
from selfsup.report.sections import (
    anchor_sections,
    comparison_section,
    fmt_duration,
    knn_top1,
    linear_top1,
    run_sections,
)

DEFAULT_OUT = Path("runs/report")
"""Where a report of several runs goes when no ``out`` is given (beside ``runs/pretrain``)."""


@dataclass(frozen=True)
class ReportPaths:
    md: Path
    html: Path
    plots: tuple[Path, ...]
    notes: tuple[str, ...]
    """Every file that was skipped or plot that could not be drawn, prefixed with its run's name."""


def _headline(run: RunData) -> str:
    facts = []
    knn = knn_top1(run)
    if knn is not None:
        facts.append(f"kNN top-1 {knn[0]:.2f}%" + (" (monitor)" if knn[1] else ""))
    if (linear := linear_top1(run)) is not None:
        facts.append(f"linear top-1 {linear:.2f}%")
    steps = run.summary.get("steps")
    if steps is not None:
        facts.append(f"{steps} steps")
    if run.summary.get("wall_seconds") is not None:
        facts.append(fmt_duration(run.summary["wall_seconds"]))
    return " · ".join(facts)


def _plot_dirs(runs: Sequence[RunData], root: Path) -> list[Path]:
    used: set[str] = set()
    dirs = []
    for run in runs:
        name, index = slug(run.name), 1
        while name in used:
            index += 1
            name = f"{slug(run.name)}-{index}"
        used.add(name)
        dirs.append(root / name)
    return dirs


def build_document(runs: Sequence[RunData], out_dir: Path) -> Document:
    """The report of ``runs`` with its plots drawn under ``out_dir / "plots"``."""
    plot_root = out_dir / "plots"
    if len(runs) == 1:
        run = runs[0]
        intro = [Text(f"Run directory: {run.path}")]
        if headline := _headline(run):
            intro.append(Text(headline))
        document = Document(f"selfsup report: {run.title}", intro, run_sections(run, plot_root))
    else:
        sections = [comparison_section(runs, plot_root)]
        for run, plot_dir in zip(runs, _plot_dirs(runs, plot_root)):
            blocks = [Text(f"Run directory: {run.path}")]
            if headline := _headline(run):
                blocks.append(Text(headline))
            sections.append(Section(f"{run.name}: {run.title}", blocks, run_sections(run, plot_dir)))
        document = Document(f"selfsup report: {len(runs)} runs", [], sections)
    anchor_sections(document.sections)
    return document


def write_report(run_dirs: str | Path | Sequence[str | Path], out: str | Path | None = None) -> ReportPaths:
    """Write report.md, report.html and the PNGs for one or several run directories.

    ``out``: the directory to write to; default the run directory itself for one run, and
    :data:`DEFAULT_OUT` for several. Damaged or missing files are skipped and listed in each run's
    "Notes" section (and in ``ReportPaths.notes``); a path that is not a run directory raises
    :class:`~selfsup.errors.CheckpointError`.
    """
    paths = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(p) for p in run_dirs]
    if not paths:
        raise ConfigError("selfsup report needs at least one run directory")
    runs = [collect_run(p, n) for p, n in zip(paths, unique_names(paths))]
    out_dir = (Path(out) if out is not None else paths[0] if len(runs) == 1 else DEFAULT_OUT).resolve()
    document = build_document(runs, out_dir)
    md = write_text_atomic(out_dir / "report.md", render_markdown(document, out_dir))
    html = write_text_atomic(out_dir / "report.html", render_html(document))
    notes = tuple(f"{run.name}: {note}" for run in runs for note in run.notes)
    return ReportPaths(md=md, html=html, plots=tuple(p.path for p in document.plots()), notes=notes)


__all__ = ["DEFAULT_OUT", "ReportPaths", "build_document", "collect_run", "embedding_map", "write_report"]
