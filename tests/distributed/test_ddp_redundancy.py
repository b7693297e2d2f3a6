"""Barlow Twins and VICReg on two gloo processes: gathered with gradients, exactly one process.

Both losses are functions of batch statistics. The methods gather the projections with
``all_gather_with_grad`` and every rank evaluates the loss on the global batch: under DDP the
gradients then equal one process's on the global batch (checked on a linear model in float64, and on
the methods themselves with SyncBatchNorm). Two counter-examples show why: the Barlow Twins authors'
formulation (their ``main.py``: each rank's ``bn(z1).T @ bn(z2) / batch_size`` summed with a plain
``torch.distributed.all_reduce`` inside the graph) has the right loss but a gradient divided by the
world size, and a loss on each rank's local batch has the wrong statistics altogether.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from _launch import run_in_processes
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders import ENCODERS
from selfsup.losses import barlow_twins, vicreg
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.sync_batchnorm import convert_sync_batchnorm

BATCH, IN, OUT, WORLD, LAMBDA = 8, 6, 5, 2, 0.0051
LOSSES = {"barlow_twins": lambda a, b: barlow_twins(a, b, lambda_=LAMBDA), "vicreg": vicreg}


class _Pair(nn.Module):
    """One linear layer applied to both views (optionally followed by a BatchNorm without affine)."""

    def __init__(self, standardize: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(IN, OUT).double()
        self.bn = nn.BatchNorm1d(OUT, affine=False).double() if standardize else nn.Identity()

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        return self.bn(self.linear(x1)), self.bn(self.linear(x2))


def _inputs() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(BATCH, IN, generator=g, dtype=torch.float64) * 2 + 1
    return x1, x1 + 0.3 * torch.randn(BATCH, IN, generator=g, dtype=torch.float64)


def _grad(model: nn.Module) -> np.ndarray:
    return model.linear.weight.grad.detach().clone().numpy()  # type: ignore[union-attr]


def _single(loss_name: str) -> tuple[float, np.ndarray]:
    model = _Pair()
    loss = LOSSES[loss_name](*model(*_inputs()))
    loss.backward()
    return float(loss.detach()), _grad(model)


def _authors_barlow_loss(a: Tensor, b: Tensor, global_batch: int) -> Tensor:
    """facebookresearch/barlowtwins main.py, BarlowTwins.forward: ``a``, ``b`` are this rank's rows,
    standardized by the (synchronized) BatchNorm; the matrix is divided by the global batch size and
    summed over ranks by a plain, non-differentiable all_reduce."""
    c = a.T @ b / global_batch
    tdist.all_reduce(c)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c[~torch.eye(c.shape[0], dtype=torch.bool)].pow(2).sum()
    return on + LAMBDA * off


def _method_grads(rank: int, world: int, name: str) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    method = METHODS.get(name)(
        ENCODERS.create("mlp", in_features=IN, hidden_dim=8), hidden_dim=16, projection_dim=8
    )
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(BATCH, IN, generator=g) for _ in range(2)]
    if world > 1:
        method = convert_sync_batchnorm(method)
        model: nn.Module = nn.parallel.DistributedDataParallel(method)
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        inputs = [x[shard] for x in inputs]
    else:
        model = method
    model(Views(inputs=inputs), StepInfo(0, 10)).loss.backward()
    return {n: p.grad.detach().clone().numpy() for n, p in method.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int) -> dict[str, object]:
    x1, x2 = _inputs()
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    out: dict[str, object] = {}
    for name, loss_fn in LOSSES.items():
        # Ours: gather with gradients, the loss of the global batch on every rank.
        model = nn.parallel.DistributedDataParallel(_Pair())
        loss = loss_fn(*dist.gather_views(*model(x1[shard], x2[shard]))[:2])
        loss.backward()
        out[f"{name}/gathered"] = (float(loss.detach()), _grad(model.module))
        # Counter-example: each rank's own batch (what a loss without the gather computes).
        model = nn.parallel.DistributedDataParallel(_Pair())
        loss_fn(*model(x1[shard], x2[shard])).backward()
        out[f"{name}/local"] = _grad(model.module)
        out[f"{name}/method"] = _method_grads(rank, world, name)
    # Counter-example: the Barlow Twins authors' plain all_reduce of the matrix, with global BatchNorm.
    model = nn.parallel.DistributedDataParallel(convert_sync_batchnorm(_Pair(standardize=True)))
    loss = _authors_barlow_loss(*model(x1[shard], x2[shard]), global_batch=BATCH)
    loss.backward()
    out["barlow_twins/authors"] = (float(loss.detach()), _grad(model.module))
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, object]]:
    return run_in_processes(_worker, WORLD)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gathered_loss_and_gradient_equal_one_process_on_the_global_batch(
    ranks: list[dict[str, object]], name: str
) -> None:
    value, grad = _single(name)
    for result in ranks:
        rank_value, rank_grad = result[f"{name}/gathered"]  # type: ignore[misc]
        assert rank_value == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(rank_grad, grad, rtol=1e-10, atol=1e-12)
        # Without the gather, the statistics are those of each rank's half: another gradient.
        assert not np.allclose(result[f"{name}/local"], grad, rtol=1e-3)


@pytest.mark.parametrize("name", list(LOSSES))
def test_methods_gradients_equal_one_process_on_the_global_batch(
    ranks: list[dict[str, object]], name: str
) -> None:
    single = _method_grads(0, 1, name)
    for result in ranks:
        grads = result[f"{name}/method"]
        assert grads.keys() == single.keys()  # type: ignore[attr-defined]
        for key, grad in single.items():
            scale = float(np.abs(grad).max()) + 1e-12
            np.testing.assert_allclose(grads[key], grad, rtol=1e-4, atol=1e-5 * scale, err_msg=key)  # type: ignore[index]


def test_the_authors_plain_all_reduce_gives_the_right_loss_but_a_gradient_off_by_the_world_size(
    ranks: list[dict[str, object]],
) -> None:
    value, grad = _single("barlow_twins")
    for result in ranks:
        rank_value, rank_grad = result["barlow_twins/authors"]  # type: ignore[misc]
        # SyncBatchNorm takes its statistics in fp32: tolerances of fp32 rounding here.
        assert rank_value == pytest.approx(value, rel=1e-6)  # the forward is the global loss
        # ... but the gradient is 1/W of it: DDP averages W per-rank gradients that are each only the
        # one-process gradient of the rank's own samples.
        np.testing.assert_allclose(rank_grad * WORLD, grad, rtol=1e-5, atol=1e-8)
        assert not np.allclose(rank_grad, grad, rtol=0.1)
