"""train.keep_every: checkpoints at multiples of K are never pruned (besides the newest keep_checkpoints),
the last one always stays, list_checkpoints lists them, and a run that keeps them still resumes exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.api import make_config
from selfsup.train import checkpoint as ckpt
from selfsup.train.loop import pretrain_run

RUN = [
    "data.source=digits:train",
    "data.image_size=16",
    "data.max_samples=64",
    "encoder=small_cnn",
    "encoder.width=4",
    "method.hidden_dim=16",
    "method.projection_dim=8",
    "train.batch_size=16",
    "train.precision=fp32",
    "train.progress=false",
    "train.knn_every=0",
    "train.device=cpu",
    "augment.params={blur_p: 0.0}",
]


def _save(directory: Path, step: int, **kw: object) -> None:
    ckpt.save_checkpoint(
        directory, step, model={"w": torch.ones(2)}, optimizer=None, extra_tensors=None, state={}, **kw
    )


def test_multiples_of_keep_every_survive_pruning(tmp_path: Path) -> None:
    for step in range(1, 11):
        _save(tmp_path, step, keep=2, keep_every=4)
    # Hand-computed: the newest two (9, 10) and the multiples of 4 (4, 8).
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 8, 9, 10]
    assert all(
        p == tmp_path / f"step_{s:08d}.json" and p.exists() for s, p in ckpt.list_checkpoints(tmp_path)
    )
    assert ckpt.list_checkpoints(tmp_path / "missing") == []


def test_trainer_keeps_every_kth_checkpoint_and_resumes_exactly(tmp_path: Path) -> None:
    keep = ["train.checkpoint_every=5", "train.keep_checkpoints=1", "train.keep_every=2"]
    straight = pretrain_run(make_config(steps=7, overrides=RUN + keep), tmp_path / "straight")
    # Saved at 2, 4, 5, 6 (multiples of 2 or 5) and 7 (the end); kept: the multiples of 2 and the last.
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "straight" / "checkpoints")] == [2, 4, 6, 7]
    assert straight.finished
    pretrain_run(make_config(steps=7, overrides=[*RUN, *keep, "train.stop_after=3"]), tmp_path / "resumed")
    # keep_every is a runtime key: changing it on resume is allowed (what is kept, not what is computed).
    changed = [*RUN, "train.checkpoint_every=5", "train.keep_checkpoints=1", "train.keep_every=3"]
    pretrain_run(make_config(steps=7, overrides=changed), tmp_path / "resumed", resume=True)
    # Pruning follows the current keep_every: step 2 (kept under K=2 by the first invocation) goes.
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [3, 6, 7]
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints"))
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
