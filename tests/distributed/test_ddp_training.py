"""Two gloo processes train exactly like one process on the same global batch.

Method level: identical views, SyncBatchNorm on the ranks vs BatchNorm on the whole batch;
losses, every gradient, and the weights after optimizer steps (incl. BYOL's EMA target) agree.
Trainer level: with deterministic views, ``pretrain_run`` on 2 processes ends with the weights of
the 1-process run. CLI level: ``torchrun -m selfsup pretrain`` runs and writes one run directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _launch import free_port, run_in_processes
from torch import nn

from selfsup import dist
from selfsup.encoders import ENCODERS
from selfsup.methods import METHODS, Views
from selfsup.sync_batchnorm import convert_sync_batchnorm

BATCH, SIZE, STEPS = 8, 12, 2


def _build(method_name: str) -> nn.Module:
    torch.manual_seed(0)
    encoder = ENCODERS.create("small_cnn", width=4)
    return METHODS.get(method_name)(encoder=encoder, hidden_dim=32, projection_dim=16)


def _global_views(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(BATCH, 3, SIZE, SIZE, generator=g) for _ in range(2)]


def _train(method: nn.Module, model: nn.Module, shard: slice) -> dict[str, object]:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    losses, grads = [], {}
    for step in range(STEPS):
        views = Views(crops=[v[shard] for v in _global_views(step)])
        out = model(views, step)
        out.loss.backward()
        losses.append(float(dist.all_reduce_mean(out.loss.detach())))
        if step == 0:
            grads = {n: p.grad.clone().numpy() for n, p in method.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        method.on_optimizer_step(step + 1, 10)
    state = {k: v.detach().clone().numpy() for k, v in method.state_dict().items() if v.is_floating_point()}
    return {"losses": losses, "grads": grads, "state": state}


def _rank_worker(rank: int, world: int, method_name: str) -> dict[str, object]:
    method = convert_sync_batchnorm(_build(method_name))
    model = nn.parallel.DistributedDataParallel(method)
    per_rank = BATCH // world
    return _train(method, model, slice(rank * per_rank, (rank + 1) * per_rank))


@pytest.mark.parametrize("method_name", METHODS.names())
def test_two_processes_match_one_process(method_name: str) -> None:
    method = _build(method_name)
    single = _train(method, method, slice(None))
    ranks = run_in_processes(_rank_worker, 2, method_name)
    for result in ranks:
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        assert result["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            # fp32 sums run in another order on two processes: tolerance relative to the tensor's scale
            scale = float(np.abs(grad).max()) + 1e-12
            np.testing.assert_allclose(
                result["grads"][name], grad, rtol=1e-4, atol=1e-4 * scale + 1e-6, err_msg=name
            )
        for name, value in single["state"].items():
            np.testing.assert_allclose(result["state"][name], value, rtol=1e-4, atol=1e-5, err_msg=name)


# --------------------------------------------------------------------------- trainer level

# Crops of the whole image, no flip, no colour changes: the views do not depend on the seeds,
# which differ per process, so the 2-process run must equal the 1-process run.
DETERMINISTIC = [
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
    # SGD: LARS normalises each update, which amplifies fp32 rounding (a 1-thread and a 2-thread
    # single-process run differ by 6e-3 relative after 3 LARS steps, by 1e-4 with SGD).
    "optim.name=sgd",
    "train.precision=fp32",
    "train.sync_bn=true",
    "train.progress=false",
    "train.knn_every=0",
    "train.device=cpu",
    "augment.params={crop_scale: [1.0, 1.0], crop_ratio: [1.0, 1.0], flip_p: 0.0, jitter_p: 0.0, "
    "grayscale_p: 0.0, blur_p: 0.0}",
]


def _trainer_worker(rank: int, world: int, out: str) -> dict[str, np.ndarray]:
    from selfsup.api import make_config
    from selfsup.train.loop import pretrain_run

    pretrain_run(make_config(overrides=DETERMINISTIC), out)
    from safetensors.torch import load_file

    return {k: v.numpy() for k, v in load_file(str(Path(out) / "encoder.safetensors")).items()}


def test_trainer_on_two_processes_matches_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from selfsup.api import make_config
    from selfsup.train.loop import pretrain_run

    pretrain_run(make_config(overrides=DETERMINISTIC), tmp_path / "one")
    single = load_file(str(tmp_path / "one" / "encoder.safetensors"))
    ranks = run_in_processes(_trainer_worker, 2, str(tmp_path / "two"))
    for name, value in single.items():
        if value.is_floating_point():
            scale = float(value.abs().max()) + 1e-12
            np.testing.assert_allclose(
                ranks[0][name], value.numpy(), rtol=1e-3, atol=1e-3 * scale, err_msg=name
            )
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name])


def test_torchrun_cli(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "selfsup",
        "pretrain",
        "--out",
        str(tmp_path / "run"),
        *DETERMINISTIC,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    assert (tmp_path / "run" / "encoder.safetensors").exists()
    assert done.stdout.count("pretraining finished") == 1  # only the main process reports
