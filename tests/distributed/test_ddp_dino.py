"""DINO and DINOv2 on two gloo processes train exactly like one process on the global batch.

What the generic test (test_ddp_training.py) does not cover: local crops of another size (one student
pass per size, SyncBatchNorm per pass), the center (the mean of the teacher's logits over the global batch,
identical on every rank), DINOv2's Sinkhorn-Knopp targets over the global batch (masked-patch counts differ
per rank), KoLeo's nearest neighbours over the global batch, and DINOv2's two running centers.
"""

from __future__ import annotations

import numpy as np
import torch
from _compare import assert_matches_one_process
from _launch import run_in_processes
from torch import nn

from selfsup import dist
from selfsup.encoders import ENCODERS
from selfsup.methods import StepInfo, Views
from selfsup.sync_batchnorm import convert_sync_batchnorm

BATCH, STEPS = 8, 2
HEAD = {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8}


def _dino() -> nn.Module:
    from selfsup.methods.dino import DINO

    torch.manual_seed(0)
    # A low teacher momentum: a missed or doubled teacher update on one rank would show.
    return DINO(encoder=ENCODERS.create("small_cnn", width=4), base_momentum=0.5, final_momentum=0.5, **HEAD)


def _dinov2(centering: str) -> nn.Module:
    from tiny_data import small_encoder

    from selfsup.methods.dinov2 import DINOv2

    torch.manual_seed(0)
    encoder = small_encoder("vit_tiny")  # 16 px images, patch 4: a 4 x 4 grid
    return DINOv2(encoder=encoder, centering=centering, base_momentum=0.5, final_momentum=0.5, **HEAD)


def _dino_views(step: int) -> Views:
    g = torch.Generator().manual_seed(100 + step)
    inputs = [torch.randn(BATCH, 3, 12, 12, generator=g) for _ in range(2)]
    inputs += [torch.randn(BATCH, 3, 6, 6, generator=g) for _ in range(2)]
    return Views(inputs=inputs, num_global=2)


def _dinov2_views(step: int) -> Views:
    from tiny_data import small_encoder, tiny_images

    from selfsup.augment import VIEW_POLICIES, ImageTransform

    data = tiny_images(n=BATCH, size=16)
    policy = VIEW_POLICIES.get("dinov2")(
        info=data.info, transform=ImageTransform(size=16), encoder=small_encoder("vit_tiny"), num_local=2
    )
    return policy(data.batch(torch.arange(BATCH)), torch.Generator().manual_seed(100 + step))


def _shard(views: Views, part: slice) -> Views:
    masks = None if views.masks is None else [None if m is None else m[part] for m in views.masks]
    return Views(inputs=[x[part] for x in views.inputs], num_global=views.num_global, masks=masks)


def _train(method: nn.Module, model: nn.Module, shard: slice, kind: str) -> dict[str, object]:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    losses, grads = [], {}
    for step in range(STEPS):
        info = StepInfo(step, 10)
        views = _dino_views(step) if kind == "dino" else _dinov2_views(step)
        out = model(_shard(views, shard), info)
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


def _build(kind: str) -> nn.Module:
    return _dino() if kind == "dino" else _dinov2(kind.split(":")[1])


def _worker(rank: int, world: int, kinds: list[str]) -> list[dict[str, object]]:
    results = []
    for kind in kinds:
        method = convert_sync_batchnorm(_build(kind))
        model = nn.parallel.DistributedDataParallel(method, **type(method).ddp_options)
        per_rank = BATCH // world
        results.append(
            _train(method, model, slice(rank * per_rank, (rank + 1) * per_rank), kind.split(":")[0])
        )
    return results


def _compare(single: dict, ranks: list[dict], centers: tuple[str, ...]) -> None:
    assert_matches_one_process(single, ranks)
    for name in centers:
        assert np.abs(single["state"][name]).max() > 1e-3  # the center really moved
        np.testing.assert_array_equal(ranks[0]["state"][name], ranks[1]["state"][name])


def test_dino_with_local_crops_on_two_processes_matches_one() -> None:
    method = _dino()
    single = _train(method, method, slice(None), "dino")
    (ranks,) = zip(*run_in_processes(_worker, 2, ["dino"]))
    _compare(single, list(ranks), ("center",))


def test_dinov2_on_two_processes_matches_one() -> None:
    kinds = ["dinov2:sinkhorn", "dinov2:center"]
    singles = []
    for kind in kinds:
        method = _build(kind)
        singles.append(_train(method, method, slice(None), "dinov2"))
    per_kind = list(zip(*run_in_processes(_worker, 2, kinds)))
    _compare(singles[0], list(per_kind[0]), ())
    _compare(singles[1], list(per_kind[1]), ("center", "patch_center"))
