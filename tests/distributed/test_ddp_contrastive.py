"""The contrastive family's state across processes: MoCo v2's queue and NNCLR's support set.

With gradient accumulation (two micro-batches per optimizer step) two gloo processes give the losses and
gradients of one process on the global batch, and the queue / support set ends identical on both ranks
and equal to the one-process queue (keys in the order one process sees them: micro-batch, then rank).
Shuffle-BN on its own: with 2 ranks the keys equal BatchNorm computed by hand over the groups of the
permuted global batch, and the keys of one process with the same ``bn_splits``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _launch import run_in_processes
from torch import nn

from selfsup import dist
from selfsup.encoders import ENCODERS
from selfsup.losses import l2_normalize
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.moco import shuffle_permutation, shuffle_seed
from selfsup.sync_batchnorm import convert_sync_batchnorm

WIDTH, MICRO_BATCH, ACCUMULATE, STEPS, WORLD = 6, 8, 2, 2, 2
CASES = {
    "mocov2": {"queue_size": 24, "base_momentum": 0.5, "final_momentum": 0.5},
    "mocov2_symmetric": {"queue_size": 40, "symmetric": True, "base_momentum": 0.5, "final_momentum": 0.5},
    "nnclr": {"queue_size": 24, "predictor_hidden_dim": 16},
}
QUEUE = {"mocov2": "queue", "mocov2_symmetric": "queue", "nnclr": "support"}


def _build(case: str, **extra: object) -> nn.Module:
    torch.manual_seed(0)
    encoder = ENCODERS.create("mlp", in_features=WIDTH, hidden_dim=12, num_layers=2)
    name = case.split("_")[0]
    return METHODS.get(name)(encoder=encoder, hidden_dim=16, projection_dim=8, **{**CASES[case], **extra})


def _micro_views(step: int, micro: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + 10 * step + micro)
    return [torch.randn(MICRO_BATCH, WIDTH, generator=g) for _ in range(2)]


def _train(method: nn.Module, model: nn.Module, case: str, rank: int, world: int) -> dict[str, object]:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    per_rank = MICRO_BATCH // world
    shard = slice(rank * per_rank, (rank + 1) * per_rank)
    losses, grads, queues = [], {}, []
    for step in range(STEPS):
        info = StepInfo(step, 10)
        for micro in range(ACCUMULATE):
            views = Views(inputs=[v[shard] for v in _micro_views(step, micro)])
            out = model(views, info)
            (out.loss / ACCUMULATE).backward()
            losses.append(float(dist.all_reduce_mean(out.loss.detach())))
        if step == 0:
            grads = {n: p.grad.clone().numpy() for n, p in method.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        method.on_optimizer_step(info)
        queue = getattr(method, QUEUE[case])
        queues.append((queue.keys.clone().numpy(), int(queue.ptr)))
    return {"losses": losses, "grads": grads, "queues": queues}


def _rank_worker(rank: int, world: int, case: str) -> dict[str, object]:
    method = convert_sync_batchnorm(_build(case))
    model = nn.parallel.DistributedDataParallel(method, **type(method).ddp_options)
    return _train(method, model, case, rank, world)


@pytest.mark.parametrize("case", sorted(CASES))
def test_queue_methods_with_accumulation_match_one_process(case: str) -> None:
    method = _build(case)
    initial = getattr(method, QUEUE[case]).keys.clone().numpy()
    single = _train(method, method, case, 0, 1)
    ranks = run_in_processes(_rank_worker, WORLD, case)
    keys_per_step = MICRO_BATCH * ACCUMULATE * (2 if case.endswith("symmetric") else 1)
    # The test can fail: each step really wrote a full accumulated global batch into the queue.
    assert [ptr for _, ptr in single["queues"]] == [
        (keys_per_step * (s + 1)) % initial.shape[0] for s in range(STEPS)
    ]
    assert not np.allclose(single["queues"][0][0][:keys_per_step], initial[:keys_per_step])
    for result in ranks:
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        assert result["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            scale = float(np.abs(grad).max()) + 1e-12
            np.testing.assert_allclose(
                result["grads"][name], grad, rtol=1e-4, atol=1e-4 * scale, err_msg=name
            )
        for (keys, ptr), (single_keys, single_ptr) in zip(result["queues"], single["queues"], strict=True):
            assert ptr == single_ptr
            np.testing.assert_allclose(keys, single_keys, rtol=1e-4, atol=1e-5)
    for (keys0, _), (keys1, _) in zip(ranks[0]["queues"], ranks[1]["queues"], strict=True):
        np.testing.assert_array_equal(keys0, keys1)  # identical on every rank, bit for bit


# --------------------------------------------------------------------------- shuffle-BN

SPLITS, STEP = 4, 3


def _shuffle_keys(method: nn.Module, rank: int, world: int) -> np.ndarray:
    per_rank = MICRO_BATCH // world
    views = Views(inputs=[v[rank * per_rank : (rank + 1) * per_rank] for v in _micro_views(STEP, 0)])
    method(views, StepInfo(STEP, 10))
    return method.queue._pending[0].numpy()  # this rank's normalized keys of view 2


def _shuffle_worker(rank: int, world: int) -> dict[str, object]:
    # The trainer's conversion turns the query encoder's batch norms global, the key's stay split.
    method = convert_sync_batchnorm(_build("mocov2", key_bn="shuffle", bn_splits=SPLITS))
    keys = _shuffle_keys(method, rank, world)
    method.on_optimizer_step(StepInfo(STEP, 10))
    return {"keys": keys, "queue": method.queue.keys.numpy()}


def test_shuffle_bn_on_two_processes_equals_batchnorm_over_the_permuted_groups() -> None:
    method = _build("mocov2", key_bn="shuffle", bn_splits=SPLITS)
    reference = copy.deepcopy(method._query_branch())  # ordinary BatchNorm, the key network's weights
    one_process = _shuffle_keys(method, 0, 1)
    ranks = run_in_processes(_shuffle_worker, WORLD)
    keys = np.concatenate([r["keys"] for r in ranks])

    x = _micro_views(STEP, 0)[1]
    order = shuffle_permutation(MICRO_BATCH, shuffle_seed(STEP, 0, 1))
    with torch.no_grad():
        by_hand = torch.cat([reference(group) for group in x[order].chunk(SPLITS)])
    expected = torch.empty_like(by_hand)
    expected[order] = by_hand
    np.testing.assert_allclose(keys, l2_normalize(expected).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keys, one_process, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        whole = l2_normalize(reference(x)).numpy()
    assert not np.allclose(keys, whole, atol=1e-3)  # not the keys of one BatchNorm over the batch
    np.testing.assert_array_equal(ranks[0]["queue"], ranks[1]["queue"])
    np.testing.assert_allclose(ranks[0]["queue"][:MICRO_BATCH], keys, rtol=1e-6, atol=1e-7)
