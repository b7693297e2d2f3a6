"""Watching a run: metrics to JSONL and TensorBoard, a progress bar, a collapse detector."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from selfsup.io import write_text_atomic


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Only the main process writes; other processes get a logger whose methods do nothing.

    ``start_step`` is the step the run (re)starts from. A run killed after its last checkpoint has
    logged steps that the resumed run will log again, so records after ``start_step`` are dropped
    from ``metrics.jsonl`` (rewritten atomically) and TensorBoard is told to purge its events from
    ``start_step + 1`` on (``SummaryWriter(purge_step=...)``): no step is ever logged twice.
    """

    def __init__(
        self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True, start_step: int = 0
    ) -> None:
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        if path.exists():
            kept = [r for r in _read_records(path) if int(r.get("step", 0)) <= start_step]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = path.open("a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:  # tensorboard is a dependency, but stay usable without it
                warnings.warn("tensorboard is not installed; metrics go to metrics.jsonl only", stacklevel=2)

    def log(self, step: int, metrics: dict[str, Any], *, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: to_scalar(v) for k, v in metrics.items()}}
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def to_scalar(value: Any) -> Any:
    """A tensor becomes a Python float (for JSON); anything else is returned as it is."""
    if isinstance(value, Tensor):
        return value.detach().float().item()
    return value


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a metrics file (a last line cut off by a kill is dropped)."""
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_metrics(run_dir: Path, kind: str | None = "train") -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in _read_records(path) if kind is None or r.get("kind") == kind]


def progress_bar(total: int, initial: int, *, enabled: bool, unit: str = "step") -> tqdm:
    """A tqdm bar over optimizer steps; throughput (img/s) and loss are set as its postfix."""
    return tqdm(
        total=total,
        initial=initial,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        smoothing=0.1,
    )


def normalized_embedding_std(embeddings: Tensor) -> float:
    """Mean per-dimension std of L2-normalized embeddings, times sqrt(D).

    About 1 for embeddings spread over the sphere, 0 when every sample maps to the same point
    (complete collapse). SimSiam (Chen & He 2021, fig. 2) tracks the unscaled version, whose
    healthy value is 1/sqrt(D).
    """
    z = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    if z.shape[0] < 2:
        return float("nan")
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


class CollapseDetector:
    """Warns once when the normalized embedding std stays below ``threshold`` for ``patience`` checks."""

    def __init__(self, threshold: float = 0.05, patience: int = 3) -> None:
        self.threshold = threshold
        self.patience = patience
        self.low_count = 0
        self.warned = False

    def update(self, value: float, step: int) -> bool:
        """Record one measurement; return True the first time collapse is declared."""
        self.low_count = self.low_count + 1 if value < self.threshold else 0
        if self.low_count >= self.patience and not self.warned:
            self.warned = True
            warnings.warn(
                f"embeddings look collapsed at step {step}: normalized per-dimension std {value:.3f} "
                f"(about 1 is healthy, 0 is collapse). Check the learning rate, the augmentations "
                "and, for BYOL, the predictor and EMA momentum.",
                stacklevel=2,
            )
            return True
        return False
