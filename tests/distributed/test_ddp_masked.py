"""Masked image modelling on a ViT under DDP: two processes equal one process on the global batch.

MAE and I-JEPA average their loss per rank (MAE over the masked patches, I-JEPA over the target tokens, as
the authors' code); with the views' masks drawn for the global batch every rank holds as many masked
patches / target tokens, so DDP's gradient average is the one-process gradient. data2vec divides by the
global count of masked patches, so its block masks, whose counts differ per image, are exact too. The EMA
teachers move fast (momentum 0.5) so that an update missed or doubled on one rank would show.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from selfsup import dist
from selfsup.augment.image_masks import block_mask, multi_block_masks, random_patch_mask
from selfsup.data.base import DataInfo
from selfsup.encoders import ENCODERS
from selfsup.methods import METHODS, StepInfo, Views
from tests.distributed._compare import assert_matches_one_process
from tests.distributed._launch import run_in_processes

BATCH, SIZE, STEPS = 8, 16, 2
# Patch 2 for I-JEPA: an 8x8 grid leaves room for context and target blocks that do not overlap.
PATCH = {"mae": 4, "ijepa": 2, "data2vec": 4}
OPTIONS = {
    "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
    "ijepa": {"predictor_dim": 16, "predictor_depth": 1, "base_momentum": 0.5, "final_momentum": 0.5},
    "data2vec": {"top_k": 2, "ema_decay": 0.5, "ema_end_decay": 0.5, "ema_transformer_only": False},
}
# I-JEPA's predictor starts tiny (std 0.02, rescaled blocks): the encoder's gradient is ~1e-6, so it gets a
# large learning rate here for the encoder, and with it the EMA target, to move measurably.
ENCODER_LR = {"ijepa": 1e4}
ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2, "pos_embed": "sincos"}


def _build(method_name: str) -> nn.Module:
    torch.manual_seed(0)
    info = DataInfo(modality="image", sample_shape=(3, SIZE, SIZE), dtype="uint8")
    class_token = method_name != "ijepa"  # I-JEPA's ViT has none
    encoder = ENCODERS.create(
        "vit_tiny",
        info=info,
        patch_size=PATCH[method_name],
        class_token=class_token,
        pool="cls" if class_token else "mean",
        **ENCODER,
    )
    return METHODS.get(method_name)(encoder=encoder, **OPTIONS[method_name])


def _global_views(step: int, method_name: str) -> Views:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    side = SIZE // PATCH[method_name]
    aux = {}
    if method_name == "mae":
        mask = random_patch_mask(BATCH, side * side, 0.75, g)
    elif method_name == "ijepa":
        mask, aux["target_masks"] = multi_block_masks(BATCH, (side, side), g, min_keep=4)
    else:
        mask = block_mask(BATCH, (side, side), g, ratio_range=(0.4, 0.4), min_num_patches=2)
    return Views(inputs=[x], num_global=1, masks=[mask], aux=aux)


def _shard(views: Views, part: slice) -> Views:
    return Views(
        inputs=[v[part] for v in views.inputs],
        num_global=1,
        masks=[m[part] for m in views.masks],
        aux={k: v[part] for k, v in views.aux.items()},
    )


def _train(method: nn.Module, model: nn.Module, part: slice, method_name: str) -> dict[str, object]:
    encoder = [p for n, p in method.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    rest = [p for n, p in method.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    groups = [{"params": encoder, "lr": ENCODER_LR.get(method_name, 0.1)}, {"params": rest}]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    losses, grads = [], {}
    for step in range(STEPS):
        info = StepInfo(step, 10)
        out = model(_shard(_global_views(step, method_name), part), info)
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


def _rank_worker(rank: int, world: int, names: list[str]) -> dict[str, dict[str, object]]:
    results = {}
    for method_name in names:
        method = _build(method_name)
        model = nn.parallel.DistributedDataParallel(method, **type(method).ddp_options)
        per_rank = BATCH // world
        results[method_name] = _train(
            method, model, slice(rank * per_rank, (rank + 1) * per_rank), method_name
        )
    return results


METHOD_NAMES = ["mae", "ijepa", "data2vec"]


def test_two_processes_match_one_process() -> None:
    """One launch of two processes for all three methods (spawning interpreters is the slow part)."""
    ranks = run_in_processes(_rank_worker, 2, METHOD_NAMES)
    for method_name in METHOD_NAMES:
        method = _build(method_name)
        initial = {
            k: v.detach().clone().numpy() for k, v in method.state_dict().items() if v.is_floating_point()
        }
        single = _train(method, method, slice(None), method_name)
        teacher = [k for k in initial if k.startswith(("target.", "teacher."))]
        if teacher:  # the test can fail: the EMA teacher really moved
            moved = max(float(np.abs(single["state"][k] - initial[k]).max()) for k in teacher)
            assert moved > 1e-3, method_name
        assert_matches_one_process(single, [per_rank[method_name] for per_rank in ranks], method_name)
