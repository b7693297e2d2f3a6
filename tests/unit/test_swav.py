"""The SwAV method: prototypes kept unit-norm and frozen at first, the queue, multi-crop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.encoders import ENCODERS
from selfsup.losses import sinkhorn_knopp, swav
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.swav import SwAV

BATCH = 4


def _method(**options: object) -> SwAV:
    torch.manual_seed(0)
    encoder = ENCODERS.create("small_cnn", width=4)
    defaults = {"hidden_dim": 16, "projection_dim": 8, "num_prototypes": 5}
    return METHODS.get("swav")(encoder=encoder, **{**defaults, **options})  # type: ignore[return-value]


def _views(seed: int = 0, num_local: int = 2) -> Views:
    g = torch.Generator().manual_seed(seed)
    globals_ = [torch.randn(BATCH, 3, 16, 16, generator=g) for _ in range(2)]
    locals_ = [torch.randn(BATCH, 3, 8, 8, generator=g) for _ in range(num_local)]
    return Views(inputs=globals_ + locals_, num_global=2)


def _step(method: SwAV, views: Views, step: int, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    info = StepInfo(step, 100)
    out = method(views, info)
    out.loss.backward()
    method.before_optimizer_step(info)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.on_optimizer_step(info)
    return out.loss.detach()


def test_prototypes_are_unit_norm_at_construction_and_after_every_step() -> None:
    method = _method(freeze_prototypes_steps=0)
    norms = method.prototypes.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(5))
    optimizer = torch.optim.SGD(method.parameters(), lr=1.0)
    before = method.prototypes.weight.detach().clone()
    _step(method, _views(), 0, optimizer)
    assert not torch.allclose(method.prototypes.weight, before)  # they were trained...
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(5))  # ...and renormalised


def test_prototypes_are_frozen_for_the_first_steps_only() -> None:
    method = _method(freeze_prototypes_steps=2)
    optimizer = torch.optim.SGD(method.parameters(), lr=1.0, momentum=0.9, weight_decay=0.1)
    initial = method.prototypes.weight.detach().clone()
    encoder_before = next(method.encoder.parameters()).detach().clone()
    for step in range(2):
        _step(method, _views(step), step, optimizer)
        # Unchanged but for the rounding of renormalising unit rows.
        torch.testing.assert_close(method.prototypes.weight.detach(), initial, rtol=0, atol=1e-6)
    assert not torch.equal(next(method.encoder.parameters()), encoder_before)
    _step(method, _views(2), 2, optimizer)
    assert float((method.prototypes.weight.detach() - initial).abs().max()) > 1e-3


def test_multi_crop_loss_is_the_swapped_prediction_over_every_crop() -> None:
    method = _method()
    views = _views(num_local=2)
    out = method(views, StepInfo(0, 10))
    # The same computation by hand: globals in one pass, locals in another, head on all crops.
    h = torch.cat(
        [
            method.encoder(torch.cat(views.inputs[:2])).pooled,
            method.encoder(torch.cat(views.inputs[2:])).pooled,
        ]
    )
    scores = method.prototypes(F.normalize(method.projector(h), dim=1)).split(BATCH)
    codes = [sinkhorn_knopp(scores[c].detach()) for c in (0, 1)]
    torch.testing.assert_close(out.loss, swav(scores, codes, 0.1, (0, 1)))
    assert out.features.shape == (BATCH, method.encoder.embed_dim) and not out.features.requires_grad


def test_the_queue_fills_from_queue_start_newest_first_and_is_used_once_full() -> None:
    method = _method(queue_size=8, queue_start=1, freeze_prototypes_steps=0)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    _step(method, _views(0), 0, optimizer)
    assert int(method.queue_rows) == 0 and torch.count_nonzero(method.queue) == 0  # before queue_start
    for step in (1, 2):
        out = method(_views(step), StepInfo(step, 100))
        assert float(out.logs["queue_used"]) == 0.0  # not full yet
        out.loss.backward()
        before = method.queue.clone()
        method.on_optimizer_step(StepInfo(step, 100))
        assert int(method.queue_rows) == 4 * step
        # The newest rows are in front, the older ones shifted back.
        torch.testing.assert_close(method.queue[:, 4:8], before[:, 0:4])
        torch.testing.assert_close(method.queue[:, :4].norm(dim=2), torch.ones(2, 4))
        optimizer.zero_grad(set_to_none=True)
    # Full: the codes come from Sinkhorn-Knopp over the queue's scores and the batch's, batch rows last.
    views = _views(3)
    out = method(views, StepInfo(3, 100))
    assert float(out.logs["queue_used"]) == 1.0
    with torch.no_grad():
        h = torch.cat(
            [
                method.encoder(torch.cat(views.inputs[:2])).pooled,
                method.encoder(torch.cat(views.inputs[2:])).pooled,
            ]
        )
        scores = method.prototypes(F.normalize(method.projector(h), dim=1)).split(BATCH)
        codes = [
            sinkhorn_knopp(torch.cat([method.queue[i] @ method.prototypes.weight.T, scores[c]]))[-BATCH:]
            for i, c in enumerate((0, 1))
        ]
    torch.testing.assert_close(out.loss, swav(scores, codes, 0.1, (0, 1)))
    without_queue = swav(scores, [sinkhorn_knopp(scores[c]) for c in (0, 1)], 0.1, (0, 1))
    assert not torch.allclose(out.loss, without_queue)


def test_the_queue_changes_once_per_optimizer_step_with_every_micro_batch() -> None:
    method = _method(queue_size=12)
    state = method.queue.clone()
    first_crop = []
    for micro in range(2):  # two micro-batches of one optimizer step
        out = method(_views(micro), StepInfo(0, 10))
        out.loss.backward()
        first_crop.append(out.embeddings)  # the normalised projections of crop 0
        assert torch.equal(method.queue, state)
    method.on_optimizer_step(StepInfo(0, 10))
    assert int(method.queue_rows) == 2 * BATCH
    # Micro-batch 1 is the newest, micro-batch 0 behind it, the rest still empty.
    torch.testing.assert_close(method.queue[0, :BATCH], first_crop[1])
    torch.testing.assert_close(method.queue[0, BATCH : 2 * BATCH], first_crop[0])
    assert torch.count_nonzero(method.queue[:, 2 * BATCH :]) == 0


def test_no_queue_no_local_crops_and_duplicated_images_stay_finite() -> None:
    method = _method()
    image = torch.randn(1, 3, 16, 16).expand(BATCH, 3, 16, 16)
    out = method(Views(inputs=[image, image]), StepInfo(0, 10))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in method.parameters())
    assert method.queue.shape == (2, 0, 8)


def test_freeze_prototypes_steps_may_be_a_fraction_of_the_run() -> None:
    method = _method(freeze_prototypes_steps=0.5)
    for step, frozen in ((49, True), (50, False)):
        method.prototypes.weight.grad = torch.ones_like(method.prototypes.weight)
        method.before_optimizer_step(StepInfo(step, 100))
        assert (method.prototypes.weight.grad is None) == frozen
