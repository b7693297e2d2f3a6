"""selfsup.dist, NT-Xent across processes and SyncBatchNorm: 2 CPU processes (gloo) vs one process.

How gradients compare. DDP averages parameter gradients over the W ranks, so it optimizes
``L = (1/W) Σ_r L_r``, where rank r's loss ``L_r`` may depend on every rank's activations through
the gradient-carrying collectives. Autograd on rank r, with the collectives' backward summing over
ranks, yields ``∂(Σ_r' L_r')/∂a_r = W · ∂L/∂a_r`` for its local activations (inputs) ``a_r``; hence
``grad_r / W`` must equal the slice of the single-process gradient of ``L``. Parameters used only
locally get ``∂L_r/∂θ``, and their DDP average ``(1/W) Σ_r ∂L_r/∂θ`` must equal ``∂L/∂θ``.
Workers run in fresh processes (see ``_launch.py``), so they take and return numpy arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _launch import run_in_processes
from torch import nn

from selfsup import dist
from selfsup.losses import nt_xent
from selfsup.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this PyTorch build has no torch.distributed")

WORLD = 2


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- collectives


def _collectives_worker(rank: int, world: int, x_global: np.ndarray, weights: np.ndarray) -> dict:
    batch = x_global.shape[0] // world
    x = torch.tensor(x_global[rank * batch : (rank + 1) * batch], requires_grad=True)
    gathered = dist.all_gather_with_grad(x)
    # A different loss on every rank, so that the backward's sum over ranks matters.
    (gathered * torch.tensor(weights[rank])).sum().backward()

    y = torch.tensor(x_global[rank * batch : (rank + 1) * batch], requires_grad=True)
    reduced = dist.all_reduce_sum_with_grad(y)
    (reduced * torch.tensor(weights[rank, :batch])).sum().backward()

    try:  # rank 1 brings one sample more: a clear error on every rank, not a hang
        dist.all_gather_with_grad(torch.zeros(batch + rank, 3))
        mismatch = ""
    except ValueError as error:
        mismatch = str(error)

    return {
        "info": (dist.rank(), dist.world_size(), dist.is_main(), dist.is_distributed(), dist.local_rank()),
        "gathered": gathered.detach().numpy(),
        "gather_grad": x.grad.numpy(),
        "reduced": reduced.detach().numpy(),
        "reduce_grad": y.grad.numpy(),
        "mean": dist.all_reduce_mean(torch.tensor([float(rank), 10.0])).numpy(),
        "broadcast": dist.broadcast_object({"from": rank}, src=1),
        "objects": dist.all_gather_object(rank * 10),
        "mismatch": mismatch,
    }


def test_collectives_forward_and_backward() -> None:
    batch = 3
    x_global = _rng(0).standard_normal((WORLD * batch, 3)).astype(np.float32)
    weights = _rng(1).standard_normal((WORLD, WORLD * batch, 3)).astype(np.float32)
    results = run_in_processes(_collectives_worker, WORLD, x_global, weights)

    for rank, out in enumerate(results):
        assert out["info"] == (rank, WORLD, rank == 0, True, rank)
        np.testing.assert_array_equal(out["gathered"], x_global)  # rank order
        # Σ_r' L_r' = Σ_r' <gathered, w_r'>: rank r's rows get Σ_r' w_r' restricted to its slice.
        rows = slice(rank * batch, (rank + 1) * batch)
        np.testing.assert_allclose(out["gather_grad"], weights.sum(axis=0)[rows], rtol=1e-6)
        np.testing.assert_allclose(out["reduced"], x_global[:batch] + x_global[batch:], rtol=1e-6)
        np.testing.assert_allclose(out["reduce_grad"], weights[:, :batch].sum(axis=0), rtol=1e-6)
        np.testing.assert_allclose(out["mean"], [0.5, 10.0])
        assert out["broadcast"] == {"from": 1}
        assert out["objects"] == [0, 10]
        assert "same shape on every rank" in out["mismatch"] and "drop_last" in out["mismatch"]


def test_collectives_are_identity_in_one_process() -> None:
    assert not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    x = torch.randn(4, 2, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x
    assert dist.all_reduce_sum_with_grad(x) is x
    mean = dist.all_reduce_mean(x)
    assert not mean.requires_grad
    torch.testing.assert_close(mean, x.detach())
    assert dist.broadcast_object("a") == "a" and dist.all_gather_object("a") == ["a"]
    dist.barrier()


def test_init_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert dist.init_from_env("cpu") is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.init_from_env("cpu") is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="torchrun"):
        dist.init_from_env("cpu")
    for name, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "1"),
    ):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="'cuda' \\(NCCL\\) and 'cpu' \\(gloo\\)"):
        dist.init_from_env("mps")
    assert not dist.is_distributed()


# ---------------------------------------------------------------- NT-Xent across ranks


def _nt_xent_worker(
    rank: int, world: int, x1: np.ndarray, x2: np.ndarray, theta: np.ndarray, temperature: float
) -> dict:
    batch = x1.shape[0] // world
    rows = slice(rank * batch, (rank + 1) * batch)
    weight = torch.tensor(theta, requires_grad=True)  # a shared "projection head"
    z1 = (torch.tensor(x1[rows]) @ weight).detach().requires_grad_()
    z2 = (torch.tensor(x2[rows]) @ weight).detach().requires_grad_()
    # The same graph once more, through the weight, to check the parameter gradient DDP would average.
    w1, w2 = torch.tensor(x1[rows]) @ weight, torch.tensor(x2[rows]) @ weight
    z1_all, z2_all = dist.all_gather_with_grad(z1), dist.all_gather_with_grad(z2)
    loss = nt_xent(z1, z2, temperature, z1_all=z1_all, z2_all=z2_all, offset=rank * batch)
    loss.backward()
    loss_w = nt_xent(
        w1,
        w2,
        temperature,
        z1_all=dist.all_gather_with_grad(w1),
        z2_all=dist.all_gather_with_grad(w2),
        offset=rank * batch,
    )
    loss_w.backward()
    return {
        "loss": loss.item(),
        "grad1": z1.grad.numpy(),
        "grad2": z2.grad.numpy(),
        "theta_grad": weight.grad.numpy(),
    }


def test_nt_xent_two_ranks_equal_one_process() -> None:
    batch, dim_in, dim, temperature = 4, 5, 3, 0.3
    rng = _rng(2)
    x1 = rng.standard_normal((WORLD * batch, dim_in))
    x2 = x1 + 0.5 * rng.standard_normal((WORLD * batch, dim_in))
    theta = rng.standard_normal((dim_in, dim))
    results = run_in_processes(_nt_xent_worker, WORLD, x1, x2, theta, temperature)

    weight = torch.tensor(theta, requires_grad=True)
    z1 = (torch.tensor(x1) @ weight).detach().requires_grad_()
    z2 = (torch.tensor(x2) @ weight).detach().requires_grad_()
    loss = nt_xent(z1, z2, temperature)
    loss.backward()
    nt_xent(torch.tensor(x1) @ weight, torch.tensor(x2) @ weight, temperature).backward()

    assert np.mean([r["loss"] for r in results]) == pytest.approx(loss.item(), rel=1e-6)
    assert results[0]["loss"] != pytest.approx(results[1]["loss"])  # ranks see different anchors
    for rank, out in enumerate(results):
        rows = slice(rank * batch, (rank + 1) * batch)
        np.testing.assert_allclose(out["grad1"] / WORLD, z1.grad[rows].numpy(), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(out["grad2"] / WORLD, z2.grad[rows].numpy(), rtol=1e-6, atol=1e-12)
    ddp_theta_grad = np.mean([r["theta_grad"] for r in results], axis=0)
    np.testing.assert_allclose(ddp_theta_grad, weight.grad.numpy(), rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------- SyncBatchNorm

# (per-rank batch sizes, per-sample shape (C, *spatial), momentum)
_BN_CASES = [((3, 3), (4, 5, 6), 0.1), ((2, 5), (3,), None), ((4, 4), (2, 3), 0.3)]


def _bn_reference(num_features: int, momentum: float | None, state: dict) -> nn.Module:
    bn = (
        nn.BatchNorm1d(num_features, momentum=momentum)
        if len(state["shape"]) < 3
        else nn.BatchNorm2d(num_features, momentum=momentum)
    )
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(state["weight"]))
        bn.bias.copy_(torch.tensor(state["bias"]))
        bn.running_mean.copy_(torch.tensor(state["running_mean"]))
        bn.running_var.copy_(torch.tensor(state["running_var"]))
    return bn


def _bn_run(
    bn: nn.Module,
    steps: list[tuple[np.ndarray, np.ndarray]],
    scale: float,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Two training steps (loss = scale · Σ y·G, gradients accumulate), then an eval forward."""
    outputs, input_grads = [], []
    bn.to(dtype).train()
    for x_np, g_np in steps:
        x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
        y = bn(x)
        (scale * (y * torch.tensor(g_np, dtype=dtype)).sum()).backward()
        outputs.append(y.detach().numpy())
        input_grads.append(x.grad.numpy())
    bn.eval()
    evaluated = bn(torch.tensor(steps[0][0], dtype=dtype)).detach().numpy()
    return {
        "outputs": outputs,
        "input_grads": input_grads,
        "weight_grad": bn.weight.grad.numpy(),
        "bias_grad": bn.bias.grad.numpy(),
        "running_mean": bn.running_mean.numpy(),
        "running_var": bn.running_var.numpy(),
        "num_batches_tracked": int(bn.num_batches_tracked),
        "eval": evaluated,
    }


def _bn_cases(seed: int) -> list[dict]:
    rng = _rng(seed)
    cases = []
    for sizes, shape, momentum in _BN_CASES:
        channels, total = shape[0], sum(sizes)
        cases.append(
            {
                "sizes": sizes,
                "shape": shape,
                "momentum": momentum,
                "weight": rng.uniform(0.5, 2.0, channels).astype(np.float32),
                "bias": rng.standard_normal(channels).astype(np.float32),
                "running_mean": rng.standard_normal(channels).astype(np.float32),
                "running_var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
                # A large common offset: the variance must not cancel catastrophically.
                "steps": [
                    (
                        (rng.standard_normal((total, *shape)) * 2.0 + 1000.0).astype(np.float32),
                        rng.standard_normal((total, *shape)).astype(np.float32),
                    )
                    for _ in range(2)
                ],
            }
        )
    return cases


def _sync_bn_worker(rank: int, world: int, cases: list[dict]) -> list[dict]:
    results = []
    for case in cases:
        start = sum(case["sizes"][:rank])
        rows = slice(start, start + case["sizes"][rank])
        bn = convert_sync_batchnorm(_bn_reference(case["shape"][0], case["momentum"], case))
        assert isinstance(bn, SyncBatchNorm)
        steps = [(x[rows], g[rows]) for x, g in case["steps"]]
        results.append(_bn_run(bn, steps, scale=1.0))
    return results


def _assert_ddp_parameters_and_statistics(
    per_rank: list[dict], reference: dict, *, grad_atol: float, stat_atol: float
) -> None:
    """DDP's average of the ranks' weight / bias gradients equals one process's; every rank's running
    statistics equal one process's."""
    for key in ("weight_grad", "bias_grad"):
        ddp_mean = np.mean([r[key] for r in per_rank], axis=0)
        np.testing.assert_allclose(ddp_mean, reference[key], rtol=1e-4, atol=grad_atol)
    for r in per_rank:
        np.testing.assert_allclose(r["running_mean"], reference["running_mean"], rtol=1e-5, atol=stat_atol)
        np.testing.assert_allclose(r["running_var"], reference["running_var"], rtol=1e-4, atol=stat_atol)


def test_sync_batchnorm_two_ranks_equal_batchnorm_on_global_batch() -> None:
    cases = _bn_cases(3)
    results = run_in_processes(_sync_bn_worker, WORLD, cases)
    for index, case in enumerate(cases):
        # The DDP objective is (1/W) Σ_r L_r with L_r = Σ y_r·G_r: one process minimizes Σ y·G / W.
        reference = _bn_run(
            _bn_reference(case["shape"][0], case["momentum"], case), case["steps"], 1.0 / WORLD
        )
        per_rank = [r[index] for r in results]
        for step in range(2):
            y = np.concatenate([r["outputs"][step] for r in per_rank])
            np.testing.assert_allclose(y, reference["outputs"][step], rtol=1e-4, atol=1e-4)
            grad = np.concatenate([r["input_grads"][step] for r in per_rank]) / WORLD
            np.testing.assert_allclose(grad, reference["input_grads"][step], rtol=1e-4, atol=1e-5)
        _assert_ddp_parameters_and_statistics(per_rank, reference, grad_atol=1e-4, stat_atol=1e-5)
        for r in per_rank:
            assert r["num_batches_tracked"] == reference["num_batches_tracked"] == 2
        evaluated = np.concatenate([r["eval"] for r in per_rank])
        np.testing.assert_allclose(evaluated, reference["eval"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4), (4, 3, 4, 5)])
def test_sync_batchnorm_equals_batchnorm_in_one_process(
    shape: tuple[int, ...], momentum: float | None
) -> None:
    torch.manual_seed(0)
    reference = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(3, momentum=momentum)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
        reference.bias.normal_()
    ours = convert_sync_batchnorm(_copy(reference))
    assert isinstance(ours, SyncBatchNorm)
    for _ in range(3):
        x = torch.randn(shape) * 3 + 1
        upstream = torch.randn(shape)
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y_ours = reference(x_ref), ours(x_ours)
        (y_ref * upstream).sum().backward()
        (y_ours * upstream).sum().backward()
        torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(reference, name))
    reference.eval()
    ours.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize(("affine", "track"), [(False, True), (True, False), (False, False)])
def test_sync_batchnorm_options_equal_batchnorm(affine: bool, track: bool) -> None:
    reference = nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    ours = SyncBatchNorm(3, affine=affine, track_running_stats=track)
    x = torch.randn(4, 3, 2, 2) + 2
    for training in (True, False):  # eval without running stats uses the batch statistics
        reference.train(training)
        ours.train(training)
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    if track:
        torch.testing.assert_close(ours.running_var, reference.running_var)


def test_sync_batchnorm_bf16_input_keeps_dtype() -> None:
    bn = SyncBatchNorm(3)
    x = torch.randn(4, 3, 2, 2)
    y = bn(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), nn.BatchNorm2d(3)(x.bfloat16().float()), rtol=1e-2, atol=1e-2)


def test_sync_batchnorm_rejects_bad_input() -> None:
    bn = SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, \.\.\.\)"):
        bn(torch.randn(4, 5, 2, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 3))


def test_convert_sync_batchnorm_keeps_parameters_buffers_and_keys() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=0.05, eps=1e-3),
        nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6, affine=False)),
    )
    model(torch.randn(5, 3, 6, 6))  # populate the running statistics
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)

    converted = convert_sync_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], SyncBatchNorm) and isinstance(model[3][2], SyncBatchNorm)
    assert model[1].weight is weight  # optimizers built before the conversion keep working
    assert (model[1].eps, model[1].momentum, model[3][2].affine) == (1e-3, 0.05, False)
    assert not model[1].training
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value)
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="lazy batch norm"):
        convert_sync_batchnorm(nn.Sequential(nn.LazyBatchNorm2d()))


def _copy(module: nn.Module) -> nn.Module:
    clone = type(module)(module.num_features, momentum=module.momentum)
    clone.load_state_dict(module.state_dict())
    return clone


# ---------------------------------------------------------------- MaskedBatchNorm2d (BYOL-A's CNN)


def _masked_bn_run(x: np.ndarray, keep: np.ndarray, upstream: np.ndarray, scale: float) -> dict:
    from selfsup.encoders.audio_cnn import MaskedBatchNorm2d

    torch.manual_seed(0)
    bn = MaskedBatchNorm2d(3, momentum=0.2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    inputs = torch.tensor(x, requires_grad=True)
    y = bn(inputs, torch.tensor(keep))
    (scale * (y * torch.tensor(upstream)).sum()).backward()
    return {
        "y": y.detach().numpy(),
        "input_grad": inputs.grad.numpy(),
        "weight_grad": bn.weight.grad.numpy(),
        "bias_grad": bn.bias.grad.numpy(),
        "running_mean": bn.running_mean.numpy(),
        "running_var": bn.running_var.numpy(),
    }


def _masked_bn_worker(rank: int, world: int, x: np.ndarray, keep: np.ndarray, upstream: np.ndarray) -> dict:
    rows = slice(0, 2) if rank == 0 else slice(2, 5)  # uneven shards, differently padded
    return _masked_bn_run(x[rows], keep[rows], upstream[rows], scale=1.0)


def test_masked_batchnorm_two_ranks_equal_one_process_on_the_global_batch() -> None:
    rng = _rng(5)
    x = (rng.standard_normal((5, 3, 4, 6)) * 2 + 3).astype(np.float32)
    keep = np.arange(6)[None, :] < np.array([6, 2, 4, 1, 5])[:, None]
    upstream = rng.standard_normal((5, 3, 4, 6)).astype(np.float32)
    results = run_in_processes(_masked_bn_worker, WORLD, x, keep, upstream)
    reference = _masked_bn_run(x, keep, upstream, scale=1.0 / WORLD)
    np.testing.assert_allclose(
        np.concatenate([r["y"] for r in results]), reference["y"], rtol=1e-5, atol=1e-5
    )
    grad = np.concatenate([r["input_grad"] for r in results]) / WORLD
    np.testing.assert_allclose(grad, reference["input_grad"], rtol=1e-4, atol=1e-6)
    _assert_ddp_parameters_and_statistics(results, reference, grad_atol=1e-5, stat_atol=1e-6)
