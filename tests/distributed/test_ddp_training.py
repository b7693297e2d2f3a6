"""Two gloo processes train exactly like one process on the same global batch.

Method level, for every method on an image and a vector encoder: identical views, SyncBatchNorm on
the ranks vs BatchNorm on the whole batch; losses, every gradient, and the weights after optimizer
steps (incl. BYOL's EMA target, with a momentum low enough that a missed update would show) agree.
Trainer level: with deterministic views, ``pretrain_run`` on 2 processes ends with the weights of
the 1-process run, for images and for vectors; a NaN loss on one process stops both with the same
error. CLI level: ``torchrun -m selfsup pretrain`` runs and writes one run directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _compare import assert_matches_one_process
from _launch import free_port, run_in_processes
from tiny_data import SMALL_METHOD
from torch import nn

from selfsup import dist
from selfsup.encoders import ENCODERS
from selfsup.encoders.base import missing_capabilities
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.sync_batchnorm import convert_sync_batchnorm

BATCH, SIZE, WIDTH, STEPS = 8, 12, 6, 2
# Options per method: BYOL's target moves by half its distance to the online network per update, so
# an update missed (or doubled) on one rank changes the target far beyond the tolerance.
OPTIONS = {
    "byol": {"base_momentum": 0.5, "final_momentum": 0.5},
    # The same for the MoCo key encoders. MoCo v3 at temperature 0.2 takes a step-0 update larger than
    # the tiny CNN's weights, after which a max-pool / ReLU decision sits within fp32 rounding of a tie
    # and the 1-process and 2-process step-1 gradients of the first layers differ by 5% (loading either
    # run's step-0 state into the other removes the difference: the maths agree). 1.0 is the authors'
    # ResNet temperature.
    "mocov2": {"base_momentum": 0.5, "final_momentum": 0.5},
    "mocov3": {"temperature": 1.0, "base_momentum": 0.5, "final_momentum": 0.5},
    # Barlow Twins' unscaled loss (about 10 here) gives the same oversized step-0 update and the same fp32
    # tie in the step-1 state (4 % on a few stem weights); 0.1 is solo-learn's CIFAR scale.
    "barlow_twins": {"scale_loss": 0.1},
}
ENCODER_FOR = {
    "image": ("small_cnn", {"width": 4}),
    "vector": ("mlp", {"in_features": WIDTH, "hidden_dim": 16}),
}


def _build(method_name: str, modality: str) -> nn.Module:
    torch.manual_seed(0)
    name, options = ENCODER_FOR[modality]
    encoder = ENCODERS.create(name, **options)
    options = {**SMALL_METHOD.get(method_name, {}), **OPTIONS.get(method_name, {})}
    return METHODS.get(method_name)(encoder=encoder, **options)


def _global_views(step: int, modality: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    shape = (BATCH, 3, SIZE, SIZE) if modality == "image" else (BATCH, WIDTH)
    return [torch.randn(shape, generator=g) for _ in range(2)]


def _train(method: nn.Module, model: nn.Module, shard: slice, modality: str) -> dict[str, object]:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    losses, grads = [], {}
    for step in range(STEPS):
        info = StepInfo(step, 10)
        views = Views(inputs=[v[shard] for v in _global_views(step, modality)])
        out = model(views, info)
        out.loss.backward()
        losses.append(float(dist.all_reduce_mean(out.loss.detach())))
        if step == 0:
            grads = {n: p.grad.clone().numpy() for n, p in method.named_parameters() if p.grad is not None}
        method.before_optimizer_step(info)
        optimizer.step()
        optimizer.zero_grad()
        method.on_optimizer_step(info)
    state = {k: v.detach().clone().numpy() for k, v in method.state_dict().items() if v.is_floating_point()}
    return {"losses": losses, "grads": grads, "state": state}


def _rank_worker(rank: int, world: int, method_name: str, modality: str) -> dict[str, object]:
    method = convert_sync_batchnorm(_build(method_name, modality))
    model = nn.parallel.DistributedDataParallel(method, **type(method).ddp_options)
    per_rank = BATCH // world
    return _train(method, model, slice(rank * per_rank, (rank + 1) * per_rank), modality)


# Self-supervised methods, fed label-free views; fine-tuning has its own test (test_finetune_ddp.py).
SSL_METHODS = [name for name in METHODS.names() if not METHODS.metadata(name).get("supervised")]


# Every self-supervised method with a view policy for images or vectors (the masked speech methods have
# their own test on audio: test_ddp_audio.py).
# Methods that need a token encoder (masked modelling on a ViT: MAE, I-JEPA, DINOv2's iBOT) have 2-process
# tests of their own with masked views (test_ddp_masked.py, test_ddp_dino.py).
# Vectors go through the same method code as images (only the encoder differs): two methods check the
# vector path, every method the image one.
VECTOR_CHECKS = ("simclr", "byol")
PAIRS = [
    (m, modality)
    for m in SSL_METHODS
    for modality in ("image", "vector")
    if modality in METHODS.get(m).default_view_policies
    and (modality == "image" or m in VECTOR_CHECKS)
    and not missing_capabilities(
        ENCODERS.create(ENCODER_FOR[modality][0], **ENCODER_FOR[modality][1]),
        tuple(METHODS.metadata(m).get("needs", ())),
    )
]


@pytest.mark.parametrize(("method_name", "modality"), PAIRS)
def test_two_processes_match_one_process(method_name: str, modality: str) -> None:
    method = _build(method_name, modality)
    initial = {k: v.detach().clone().numpy() for k, v in method.state_dict().items() if v.is_floating_point()}
    single = _train(method, method, slice(None), modality)
    ranks = run_in_processes(_rank_worker, 2, method_name, modality)
    if method_name == "byol":
        # The test can fail: the EMA target really moved, by far more than the tolerance below.
        moved = max(
            float(np.abs(single["state"][k] - initial[k]).max()) for k in initial if k.startswith("target.")
        )
        assert moved > 1e-2
    assert_matches_one_process(single, ranks)


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
    # The authors' head (a BatchNorm after the last Linear, weights N(0, 0.01²)) amplifies fp32
    # rounding ~40x over these 3 steps: a 1-thread and a 2-thread single-process run then differ by 1%
    # (3e-4 with the plain head). The method-level test above covers the authors' head exactly.
    # A temperature of 0.1 (the default) amplifies it further; 0.5 keeps the comparison sharp.
    "method.head_last_bn=false",
    "method.temperature=0.5",
    "train.steps=3",
    "train.batch_size=32",
    # SGD: LARS normalises each update, which amplifies fp32 rounding (a 1-thread and a 2-thread
    # single-process run differ by 6e-3 relative after 3 LARS steps, by 1e-4 with SGD).
    "optim.name=sgd",
    "train.precision=fp32",
    # train.sync_bn is left at its default: global BatchNorm under DDP, without which this test fails.
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


def _vector_config(data: str, out_steps: int = 3) -> list[str]:
    # No corruption, no noise: the views are the standardized vectors, whatever the seeds.
    return [
        f"data.source={data}",
        "method=simclr",
        "method.hidden_dim=32",
        "method.projection_dim=16",
        "encoder.hidden_dim=16",
        f"train.steps={out_steps}",
        "train.batch_size=32",
        "optim.name=sgd",
        "train.progress=false",
        "train.knn_every=0",
        "train.device=cpu",
        "augment.params={corruption_p: 0.0, noise_std: 0.0}",
    ]


def _vector_trainer_worker(rank: int, world: int, data: str, out: str) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    from selfsup.api import make_config
    from selfsup.train.loop import pretrain_run

    pretrain_run(make_config(overrides=_vector_config(data)), out)
    return {k: v.numpy() for k, v in load_file(str(Path(out) / "encoder.safetensors")).items()}


def test_trainer_on_two_processes_matches_one_for_vectors(tmp_path: Path) -> None:
    """The vector modality through the unchanged loop: default encoder (an MLP with BatchNorm, global BN
    by default under DDP) and the standardization fitted on the data."""
    from safetensors.torch import load_file

    from selfsup.api import make_config
    from selfsup.train.loop import pretrain_run

    rng = np.random.default_rng(0)
    data = tmp_path / "vectors.npz"
    np.savez(data, features=rng.normal(size=(96, 7)) * np.arange(1, 8) + 3, labels=np.arange(96) % 3)
    pretrain_run(make_config(overrides=_vector_config(str(data))), tmp_path / "one")
    single = load_file(str(tmp_path / "one" / "encoder.safetensors"))
    ranks = run_in_processes(_vector_trainer_worker, 2, str(data), str(tmp_path / "two"))
    for name, value in single.items():
        if value.is_floating_point():
            scale = float(value.abs().max()) + 1e-12
            np.testing.assert_allclose(
                ranks[0][name], value.numpy(), rtol=1e-4, atol=1e-4 * scale, err_msg=name
            )
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name])


def _nan_worker(rank: int, world: int, out: str) -> str:
    from selfsup.api import make_config
    from selfsup.methods.simclr import SimCLR
    from selfsup.train.loop import pretrain_run

    original = SimCLR.forward

    def poisoned(self: SimCLR, views: Views, step: StepInfo) -> object:
        output = original(self, views, step)
        if rank == 1 and step.step == 1:
            output.loss = output.loss * float("nan")
        return output

    SimCLR.forward = poisoned  # type: ignore[method-assign]
    try:
        # Per-process BatchNorm: the set-up in which a rank that stops alone leaves the others hanging.
        pretrain_run(make_config(overrides=[*DETERMINISTIC, "train.sync_bn=false"]), out)
    except FloatingPointError as error:
        return str(error)
    return "finished"


def test_a_nan_loss_on_one_process_stops_every_process_with_the_same_error(tmp_path: Path) -> None:
    messages = run_in_processes(_nan_worker, 2, str(tmp_path / "run"), timeout=120)
    assert messages[0] == messages[1]
    assert "not finite at step 1 on process(es) [1]" in messages[0]


def _ddp_options_worker(rank: int, world: int, out: str) -> dict[str, object]:
    from selfsup.api import make_config
    from selfsup.methods.simclr import SimCLR
    from selfsup.train.loop import pretrain_run

    recorded: dict[str, object] = {}
    original = nn.parallel.DistributedDataParallel.__init__

    def recording(self: nn.Module, module: nn.Module, *args: object, **kwargs: object) -> None:
        recorded.update(kwargs)
        original(self, module, *args, **kwargs)

    nn.parallel.DistributedDataParallel.__init__ = recording  # type: ignore[method-assign]
    SimCLR.ddp_options = {"broadcast_buffers": False}
    pretrain_run(make_config(overrides=[*DETERMINISTIC, "train.steps=1"]), out)
    return {k: v for k, v in recorded.items() if k == "broadcast_buffers"}


def test_a_methods_ddp_options_reach_ddp(tmp_path: Path) -> None:
    """e.g. a queue buffer must not be overwritten by rank 0's at every forward (broadcast_buffers)."""
    assert (
        run_in_processes(_ddp_options_worker, 2, str(tmp_path / "run")) == [{"broadcast_buffers": False}] * 2
    )


def _torchrun(out: Path) -> subprocess.CompletedProcess[str]:
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
        str(out),
        *DETERMINISTIC,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_torchrun_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _torchrun(out)
    if done.returncode != 0 and "address already in use" in done.stderr.lower():
        # free_port() races with other processes on the machine: the port was free a moment ago.
        out = tmp_path / "retry"
        done = _torchrun(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    assert (out / "encoder.safetensors").exists()
    assert done.stdout.count("pretraining finished") == 1  # only the main process reports
