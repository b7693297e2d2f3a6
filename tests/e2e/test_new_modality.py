"""The "adding a modality" example (docs/examples/toy_sequence_modality.py) runs end to end in a fresh
interpreter: a variable-length modality with its own source, transform, encoder and view policy
trains, checkpoints, embeds and evaluates through the unchanged loop and evaluators. Run in a
subprocess so that its registrations do not leak into the other tests' registries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "toy_sequence_modality.py"


def test_toy_sequence_modality_trains_and_evaluates(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert scores["knn_top1@5"] > 90  # two well-separated classes of sequences
    assert (tmp_path / "run" / "encoder.safetensors").exists()
    assert "96 sequence samples" in done.stderr
