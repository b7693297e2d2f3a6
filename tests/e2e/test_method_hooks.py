"""The trainer honours the Method contract's hooks: before_optimizer_step sees the summed gradients
before the weights move, parameter groups set per-group learning rates, and views carry labels and
indices to the method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from selfsup.api import make_config
from selfsup.methods import StepInfo, Views
from selfsup.methods.simclr import SimCLR
from selfsup.train.loop import pretrain_run
from selfsup.train.optim import param_groups

RUN = [
    "data.source=digits:train",
    "data.image_size=16",
    "data.max_samples=128",
    "encoder=small_cnn",
    "encoder.width=4",
    "method=simclr",
    "method.hidden_dim=32",
    "method.projection_dim=16",
    "train.steps=3",
    "train.batch_size=32",
    "train.accumulate=2",
    "train.progress=false",
    "train.knn_every=0",
    "train.device=cpu",
    "optim.name=sgd",
]


def test_before_optimizer_step_sees_gradients_before_the_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, bool, bool]] = []
    weights_before: dict[int, torch.Tensor] = {}

    def before(self: SimCLR, step: StepInfo) -> None:
        weight = self.projector.layers[0].weight
        weights_before[step.step] = weight.detach().clone()
        seen.append(
            (
                step.step,
                weight.grad is not None,
                bool(weight.grad is not None and weight.grad.abs().sum() > 0),
            )
        )
        # DINO-style: cancel the gradient of a layer; it must then not move (SGD without weight decay).
        self.projector.layers[0].weight.grad = None

    monkeypatch.setattr(SimCLR, "before_optimizer_step", before)
    result = pretrain_run(
        make_config(overrides=[*RUN, "optim.weight_decay=0", "optim.momentum=0"]), tmp_path / "r"
    )
    assert seen == [(0, True, True), (1, True, True), (2, True, True)]
    assert result.finished
    from selfsup.train import checkpoint as ckpt

    final = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "r" / "checkpoints")).model
    assert torch.equal(final["projector.layers.0.weight"], weights_before[0])


def test_parameter_groups_set_per_group_learning_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer-wise learning rates: a group with lr_scale 0 never moves, the others do."""

    def groups(self: SimCLR, weight_decay: float) -> list[dict[str, Any]]:
        frozen = [p for n, p in self.named_parameters() if n.startswith("encoder.stem.")]
        rest = [p for n, p in self.named_parameters() if not n.startswith("encoder.stem.")]
        return [
            {"params": frozen, "weight_decay": 0.0, "lr_scale": 0.0, "lars_exclude": True},
            {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0, "lars_exclude": True},
        ]

    monkeypatch.setattr(SimCLR, "parameter_groups", groups)
    pretrain_run(make_config(overrides=[*RUN, "train.steps=0"]), tmp_path / "init")
    pretrain_run(make_config(overrides=RUN), tmp_path / "trained")
    from safetensors.torch import load_file

    before = load_file(str(tmp_path / "init" / "encoder.safetensors"))
    after = load_file(str(tmp_path / "trained" / "encoder.safetensors"))
    assert torch.equal(before["stem.0.weight"], after["stem.0.weight"])
    assert not torch.equal(before["stages.0.0.weight"], after["stages.0.0.weight"])
    assert param_groups  # the default grouping stays importable for methods that extend it


def test_views_carry_labels_and_indices_to_the_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfsup.data import load_dataset

    received: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = SimCLR.forward

    def recording(self: SimCLR, views: Views, step: StepInfo) -> Any:
        assert views.labels is not None and views.indices is not None
        received.append((views.labels.clone(), views.indices.clone()))
        return original(self, views, step)

    monkeypatch.setattr(SimCLR, "forward", recording)
    pretrain_run(make_config(overrides=RUN), tmp_path / "r")
    data = load_dataset("digits:train", image_size=16, max_samples=128)
    assert len(received) == 6  # 3 steps x 2 micro-batches
    for labels, indices in received:
        assert len(indices) == 16 and torch.equal(labels, data.labels[indices])
