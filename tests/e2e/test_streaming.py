"""Streaming through the trainer: the same run whether the shards are decoded once into memory or
streamed by the prefetching loader (bit for bit), exact resume while streaming, and the same
samples on 2 processes as on one."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from selfsup.api import make_config
from selfsup.train.loop import pretrain_run


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    for shard in range(2):
        with tarfile.open(root / f"train-{shard}.tar", "w") as tar:
            for i in range(96):
                image = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                for name, data in (
                    (f"s{shard}_{i:03d}.jpg", buffer.getvalue()),
                    (f"s{shard}_{i:03d}.cls", b"1"),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "train-*.tar")


def options(data: str, loading: str, extra: list[str] | None = None) -> list[str]:
    return [
        f"data.source={data}",
        f"data.loading={loading}",
        "data.image_size=16",
        "encoder=small_cnn",
        "encoder.width=4",
        "method=simclr",
        "method.hidden_dim=32",
        "method.projection_dim=16",
        "train.steps=6",
        "train.batch_size=32",
        "train.accumulate=2",
        "train.progress=false",
        "train.knn_every=3",
        "train.checkpoint_every=2",
        "train.device=cpu",
        *(extra or []),
    ]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "encoder.safetensors"))


def test_streamed_run_equals_in_memory_run(shards: str, tmp_path: Path) -> None:
    memory = pretrain_run(make_config(overrides=options(shards, "memory")), tmp_path / "memory")
    streamed = pretrain_run(
        make_config(overrides=options(shards, "stream", ["data.workers=2", "data.prefetch=3"])),
        tmp_path / "stream",
    )
    assert memory.summary["samples"] == streamed.summary["samples"] == 192
    a, b = weights(tmp_path / "memory"), weights(tmp_path / "stream")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert memory.summary["knn_top1@20"] == streamed.summary["knn_top1@20"]


def test_auto_loading_streams_above_the_memory_limit(shards: str, tmp_path: Path) -> None:
    from selfsup.data import load_dataset

    assert not load_dataset(shards, image_size=16).streaming  # 192 x 3 x 16 x 16 bytes: fits
    assert load_dataset(shards, image_size=16, memory_limit_gb=1e-6).streaming  # 1 KiB budget: streams


def test_streamed_run_resumes_exactly(shards: str, tmp_path: Path) -> None:
    pretrain_run(make_config(overrides=options(shards, "stream")), tmp_path / "straight")
    pretrain_run(
        make_config(overrides=options(shards, "stream", ["train.stop_after=3"])), tmp_path / "resumed"
    )
    pretrain_run(make_config(overrides=options(shards, "stream")), tmp_path / "resumed", resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
