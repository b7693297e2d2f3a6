"""State advances once per optimizer step, whatever the number of accumulation micro-batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfsup.api import make_config
from selfsup.methods import StepInfo
from selfsup.methods.byol import BYOL
from selfsup.train.loop import pretrain_run
from selfsup.train.schedules import cosine_momentum


@pytest.mark.parametrize("accumulate", [1, 4])
def test_byol_target_updates_once_per_optimizer_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accumulate: int
) -> None:
    calls: list[tuple[int, int]] = []
    original = BYOL.on_optimizer_step

    def counting(self: BYOL, step: StepInfo) -> None:
        calls.append((step.step, step.total_steps))
        original(self, step)

    monkeypatch.setattr(BYOL, "on_optimizer_step", counting)
    overrides = [
        "data.source=digits:train",
        "data.image_size=16",
        "data.max_samples=128",
        "encoder=small_cnn",
        "encoder.width=4",
        "method=byol",
        "method.hidden_dim=32",
        "method.projection_dim=16",
        "train.steps=5",
        "train.batch_size=32",
        f"train.accumulate={accumulate}",
        "train.progress=false",
        "train.knn_every=0",
        "train.log_every=1",
        "augment.params={blur_p: [0.0, 0.0]}",
    ]
    result = pretrain_run(make_config(overrides=overrides), tmp_path / "run")
    # One call per optimizer step, with the index of the step just taken (0 for the first).
    assert calls == [(step, 5) for step in range(5)]
    assert result.summary["steps"] == 5
    from selfsup.train.monitor import read_metrics

    momenta = [r["target_momentum"] for r in read_metrics(tmp_path / "run")]
    # Logged at step s (counted from 1) is the decay of the update made after the previous step,
    # taken at that step's index as in the authors' code: tau(0) is used by the first update.
    assert momenta[1:] == pytest.approx([cosine_momentum(s, 5, 0.996, 1.0) for s in range(4)])
