"""Reading a run directory for the report, tolerating whatever a stopped, old or damaged run left.

Nothing here raises for a missing or corrupt file: the file is skipped and a note says why, so a
report of ten runs is still written when one run's ``eval/linear.json`` was cut off. Only a path that
is not a run directory at all raises :class:`~selfsup.errors.CheckpointError`.

What a run directory holds is the contract in ``notes/EVAL_FILES.md`` (``config.yaml``,
``summary.json``, ``run.json``, ``metrics.jsonl`` as written by ``train/monitor.py``, ``eval/*.json``
and ``eval/embedding_map.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import CheckpointError

Series = list[tuple[int, float]]
"""``[(step, value)]`` in step order."""

EMBEDDING_MAP = "embedding_map.json"


@dataclass
class RunData:
    """Everything the report shows about one run; empty fields mean the file was absent or unusable."""

    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Series] = field(default_factory=dict)
    """Series of the ``"kind": "train"`` rows of ``metrics.jsonl`` (loss, lr, samples_per_s, ...)."""
    monitor: dict[str, Series] = field(default_factory=dict)
    """Series of every other row kind (the kNN monitor, online probe and label-free scores)."""
    monitor_rows: list[dict[str, Any]] = field(default_factory=list)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``eval/<protocol>.json`` by file stem, in name order (``embedding_map.json`` excluded)."""
    embedding_map: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def component(self, key: str) -> str | None:
        """``method``, ``encoder`` or ``data``: from summary.json, else from the resolved config."""
        value = self.summary.get(key)
        if value is None:
            section = self.config.get(key)
            if key == "data" and isinstance(section, dict):
                value = section.get("source")
            elif isinstance(section, dict):
                value = section.get("name")
        return None if value is None else str(value)

    @property
    def title(self) -> str:
        parts = [self.component("method") or "?", self.component("encoder") or "?"]
        data = self.component("data")
        return " / ".join(parts) + (f" on {data}" if data else "")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_json(path: Path, notes: list[str], relative: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        notes.append(f"{relative}: could not be read ({error}); skipped")
    except json.JSONDecodeError as error:
        notes.append(f"{relative}: not valid JSON ({error}); skipped")
    return None


def _read_object(path: Path, notes: list[str], relative: str) -> dict[str, Any] | None:
    value = _read_json(path, notes, relative)
    if value is not None and not isinstance(value, dict):
        notes.append(f"{relative}: expected a JSON object, found {type(value).__name__}; skipped")
        return None
    return value


def _read_config(path: Path, notes: list[str]) -> dict[str, Any]:
    """The resolved config as a plain dict: read as YAML, not as a Config, so a config written by
    another version of selfsup (renamed or removed keys) still gives its method and encoder names."""
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        notes.append(f"config.yaml: could not be read ({str(error).splitlines()[0]}); skipped")
        return {}
    if not isinstance(value, dict):
        notes.append("config.yaml: expected a mapping; skipped")
        return {}
    return value


def _read_metrics(path: Path, notes: list[str]) -> tuple[dict[str, Series], dict[str, Series], list[dict]]:
    """Train series, monitor series and monitor rows from ``metrics.jsonl``.

    Every key other than ``step`` / ``kind`` is an optional float series; non-numeric values are
    ignored. Unreadable lines are skipped and counted (a run killed while writing leaves a torn last
    line; ``train/monitor.py::_read_records`` drops it the same way).
    """
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        notes.append(f"metrics.jsonl: could not be read ({error}); skipped")
        return {}, {}, []
    train: dict[str, Series] = {}
    monitor: dict[str, Series] = {}
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if not isinstance(record, dict) or not is_number(record.get("step")):
            bad.append(number)
            continue
        step = int(record["step"])
        values = {k: float(v) for k, v in record.items() if k not in ("step", "kind") and is_number(v)}
        target = train if record.get("kind", "train") == "train" else monitor
        for key, value in values.items():
            target.setdefault(key, []).append((step, value))
        if target is monitor and values:
            rows.append({"step": step, **values})
    if bad:
        where = ", ".join(str(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        torn = " (a run stopped while writing leaves a torn last line)" if bad == [len(lines)] else ""
        notes.append(f"metrics.jsonl: {len(bad)} unreadable line(s) skipped: line {where}{torn}")
    for series in (*train.values(), *monitor.values()):
        series.sort(key=lambda point: point[0])
    rows.sort(key=lambda row: row["step"])
    return train, monitor, rows


def _eval_record(record: dict[str, Any]) -> dict[str, Any]:
    """A protocol record with a ``metrics`` dict of floats.

    Older ``eval/knn.json`` files (before the protocol contract) hold their numbers at the top level;
    those become the metrics.
    """
    metrics = record.get("metrics")
    if isinstance(metrics, dict):
        cleaned = {str(k): float(v) for k, v in metrics.items() if is_number(v)}
    else:
        cleaned = {str(k): float(v) for k, v in record.items() if is_number(v)}
    return {**record, "metrics": cleaned}


def unique_names(paths: list[Path]) -> list[str]:
    """Short distinct names for runs: the directory name, with parent directories prefixed to the
    names that collide (``a/run``, ``b/run``, ``other``); the same directory given twice gets ``(2)``."""
    resolved = [p.resolve() for p in paths]
    depths = [1] * len(resolved)
    while True:
        names = ["/".join(p.parts[-d:]).lstrip("/") or "/" for p, d in zip(resolved, depths)]
        grown = False
        for index, name in enumerate(names):
            clash = names.count(name) > 1 and resolved.count(resolved[index]) < names.count(name)
            if clash and depths[index] < len(resolved[index].parts):
                depths[index] += 1
                grown = True
        if not grown:
            break
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return result


def collect_run(path: str | Path, name: str | None = None) -> RunData:
    """Read one run directory. Raises CheckpointError only when ``path`` is not a run directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"run directory {str(path)!r} does not exist (give the --out of a pretraining run)"
        )
    known = ("config.yaml", "summary.json", "metrics.jsonl", "run.json", "eval")
    if not any((path / item).exists() for item in known):
        raise CheckpointError(
            f"{str(path)!r} is not a selfsup run directory: it has none of {', '.join(known)}"
        )
    run = RunData(path=path, name=name or path.resolve().name)
    notes = run.notes
    if (path / "config.yaml").exists():
        run.config = _read_config(path / "config.yaml", notes)
    else:
        notes.append("config.yaml: missing")
    if (path / "summary.json").exists():
        run.summary = _read_object(path / "summary.json", notes, "summary.json") or {}
    else:
        notes.append("summary.json: missing (the run has not finished, or was stopped before its end)")
    if (path / "run.json").exists():
        run.run_info = _read_object(path / "run.json", notes, "run.json") or {}
    if (path / "metrics.jsonl").exists():
        run.train, run.monitor, run.monitor_rows = _read_metrics(path / "metrics.jsonl", notes)
    else:
        notes.append("metrics.jsonl: missing")
    eval_dir = path / "eval"
    if eval_dir.is_dir():
        for file in sorted(eval_dir.glob("*.json")):
            relative = f"eval/{file.name}"
            record = _read_object(file, notes, relative)
            if record is None:
                continue
            if file.name == EMBEDDING_MAP:
                run.embedding_map = record
            else:
                run.evals[file.stem] = _eval_record(record)
    return run
