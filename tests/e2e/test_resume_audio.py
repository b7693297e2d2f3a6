"""Resume on audio: the masked speech methods on duration batches, stopped and resumed, end with exactly
the weights (and HuBERT's targets) of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tiny_data import SMALL_ENCODER

from selfsup.api import make_config
from selfsup.train import checkpoint as ckpt
from selfsup.train.loop import pretrain_run

# The contract tests' small encoder with its default dropouts on: resume must restore the RNG states too.
DROPOUTS = ("dropout", "attention_dropout", "feature_dropout")
ENCODER = [
    "encoder=wav2vec2",
    *(f"encoder.{k}={v}" for k, v in SMALL_ENCODER["wav2vec2"].items() if k not in DROPOUTS),
]
METHOD = {
    "wav2vec2": ["method.final_dim=16", "method.num_codes=8", "method.num_negatives=5"],
    "hubert": [
        "method.num_clusters=4",
        "method.final_dim=16",
        "method.kmeans_n_init=1",
        "method.kmeans_fraction=1.0",
    ],
    "data2vec": [],
}


def _clips(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(24):  # 0.2 to 0.9 s: duration batches of different sizes
        samples = int(16000 * (0.2 + 0.03 * i))
        soundfile.write(root / f"{i}.wav", (0.3 * rng.standard_normal(samples)).astype(np.float32), 16000)
    return root


def _config(method: str, data: Path, extra: list[str]):
    overrides = [
        f"data.source={data}",
        "data.batch_seconds=2.5",
        f"method={method}",
        *ENCODER,
        *METHOD[method],
        "train.progress=false",
        "train.knn_every=0",
        "train.checkpoint_every=2",
        "train.device=cpu",
        *extra,
    ]
    return make_config(steps=4, overrides=overrides)


def _model(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).model


@pytest.mark.parametrize("method", ["wav2vec2", "hubert", "data2vec"])
def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path: Path, method: str) -> None:
    data = _clips(tmp_path / "clips")
    pretrain_run(_config(method, data, []), tmp_path / "full")
    pretrain_run(_config(method, data, ["train.stop_after=2"]), tmp_path / "parts")
    pretrain_run(_config(method, data, []), tmp_path / "parts", resume=True)
    full, parts = _model(tmp_path / "full"), _model(tmp_path / "parts")
    assert full.keys() == parts.keys()
    for name, value in full.items():
        assert torch.equal(value, parts[name]), name
