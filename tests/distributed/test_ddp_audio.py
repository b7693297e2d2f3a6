"""Two gloo processes train the masked speech methods exactly like one process on the same global batch.

wav2vec 2.0, HuBERT and data2vec normalise their losses by the masked frames of the *global* batch
(fairseq's sample size), whatever number of them each process holds: the same views (one speech_mask
batch of tiny clips of different lengths), split over two ranks, must give the one-process losses,
gradients and weights after optimizer steps (data2vec's EMA teacher included).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _launch import run_in_processes
from tiny_data import SMALL_ENCODER, tiny_audio
from torch import nn

from selfsup import dist
from selfsup.api import make_config
from selfsup.build import build_encoder, build_method, build_policy, fit_transform, resolve_components
from selfsup.methods import StepInfo, Views

STEPS = 2
# The contract tests' small encoder (no dropout: the one- and two-process runs draw no random masks).
ENCODER = ["encoder=wav2vec2", *(f"encoder.{k}={v}" for k, v in SMALL_ENCODER["wav2vec2"].items())]
METHOD = {
    "wav2vec2": [
        "method.final_dim=16",
        "method.num_codes=8",
        "method.num_negatives=5",
        "method.feature_dropout=0.0",
    ],
    "hubert": [
        "method.num_clusters=8",
        "method.final_dim=16",
        "method.kmeans_n_init=1",
        "method.kmeans_fraction=1.0",
    ],
    # A fast EMA, so that an update missed or doubled on a rank shows.
    "data2vec": ["method.ema_decay=0.5", "method.ema_end_decay=0.5"],
}


def _build(method_name: str) -> tuple[nn.Module, list[Views]]:
    data = tiny_audio(n=8)
    overrides = [f"method={method_name}", *ENCODER, *METHOD[method_name]]
    config = resolve_components(make_config(overrides=overrides), data.info)
    transform = fit_transform(config, data)
    torch.manual_seed(0)
    encoder = build_encoder(config, data.info)
    method = build_method(config, encoder, data.info, dataset=data, transform=transform)
    policy = build_policy(config, data.info, transform, method.encoder)
    batch = data.batch(torch.arange(len(data)))
    views = [policy(batch, torch.Generator().manual_seed(10 + step)) for step in range(STEPS)]
    return method, views


def _shard(views: Views, part: slice) -> Views:
    def cut(items: list | None) -> list | None:
        return None if items is None else [None if x is None else x[part] for x in items]

    return Views(
        inputs=[x[part] for x in views.inputs],
        num_global=views.num_global,
        padding_masks=cut(views.padding_masks),
        masks=cut(views.masks),
        labels=None if views.labels is None else views.labels[part],
        indices=None if views.indices is None else views.indices[part],
        crop_starts=cut(views.crop_starts),
    )


def _train(method: nn.Module, model: nn.Module, all_views: list[Views], part: slice) -> dict[str, object]:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    losses, grads = [], {}
    for step, views in enumerate(all_views):
        info = StepInfo(step, 10)
        out = model(_shard(views, part), info)
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


def _rank_worker(rank: int, world: int, method_name: str) -> dict[str, object]:
    method, views = _build(method_name)
    model = nn.parallel.DistributedDataParallel(method, **type(method).ddp_options)
    # Unequal shards (3 and 5 clips): masked-frame counts differ between the ranks.
    part = slice(0, 3) if rank == 0 else slice(3, 8)
    return _train(method, model, views, part)


@pytest.mark.parametrize("method_name", ["wav2vec2", "hubert", "data2vec"])
def test_two_processes_match_one_process(method_name: str) -> None:
    method, views = _build(method_name)
    single = _train(method, method, views, slice(None))
    ranks = run_in_processes(_rank_worker, 2, method_name)
    for result in ranks:
        # The losses logged per rank are averaged over ranks: equal to one process only through the
        # gradients; the weights after the steps are what must agree.
        for kind in ("grads", "state"):
            # Tolerances relative to the largest value of the kind: a gradient that is zero in exact
            # arithmetic (the keys' bias under softmax) is fp32 noise of either sign in both runs.
            scale = max(float(np.abs(v).max()) for v in single[kind].values())
            for name, value in single[kind].items():
                np.testing.assert_allclose(
                    result[kind][name], value, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{kind} {name}"
                )
