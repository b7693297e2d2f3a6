"""NNCLR: the nearest-neighbour lookup, the loss against solo-learn's, and the support set's updates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.encoders import ENCODERS
from selfsup.losses import info_nce, l2_normalize
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.nnclr import NNCLR

WIDTH, BATCH = 6, 4


def solo_learn_nnclr_loss(nn: Tensor, p: Tensor, temperature: float) -> Tensor:
    """vturrisi/solo-learn, solo/losses/nnclr.py, ``nnclr_loss_func`` on one process (``gather`` is the
    identity, rank 0)."""
    nn = F.normalize(nn, dim=-1)
    p = F.normalize(p, dim=-1)
    logits = nn @ p.T / temperature
    labels = torch.arange(nn.size(0))
    return F.cross_entropy(logits, labels)


def solo_learn_find_nn(z: Tensor, queue: Tensor) -> Tensor:
    """solo/methods/nnclr.py, ``NNCLR.find_nn`` (z normalized by ``forward``)."""
    idx = (z @ queue.T).max(dim=1)[1]
    return queue[idx]


def _nnclr(**options: object) -> NNCLR:
    torch.manual_seed(0)
    encoder = ENCODERS.create("mlp", in_features=WIDTH, hidden_dim=12, num_layers=2)
    defaults: dict[str, object] = {
        "hidden_dim": 16,
        "projection_dim": 8,
        "predictor_hidden_dim": 16,
        "queue_size": 32,
    }
    return METHODS.get("nnclr")(encoder=encoder, **{**defaults, **options})


def _views(seed: int) -> Views:
    g = torch.Generator().manual_seed(seed)
    return Views(inputs=[torch.randn(BATCH, WIDTH, generator=g) for _ in range(2)])


def test_info_nce_without_queue_is_solo_learns_nnclr_loss() -> None:
    g = torch.Generator().manual_seed(0)
    nn = torch.randn(5, 4, generator=g, dtype=torch.float64)
    p = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ours = info_nce(nn, p, temperature=0.1)
    ref = solo_learn_nnclr_loss(nn, p, 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, p)
    (g_ref,) = torch.autograd.grad(ref, p)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_method_loss_equals_solo_learns_with_nearest_neighbours_from_the_support_set() -> None:
    method = _nnclr(temperature=0.2)
    views = _views(1)
    out = method(views, StepInfo(0, 10))
    x1, x2 = views.inputs
    z1 = method.projector(method.encoder(x1).pooled)
    z2 = method.projector(method.encoder(x2).pooled)
    p1, p2 = method.predictor(z1), method.predictor(z2)
    queue = method.support.keys
    nn1 = solo_learn_find_nn(F.normalize(z1, dim=-1), queue)
    nn2 = solo_learn_find_nn(F.normalize(z2, dim=-1), queue)
    expected = 0.5 * solo_learn_nnclr_loss(nn1, p2, 0.2) + 0.5 * solo_learn_nnclr_loss(nn2, p1, 0.2)
    torch.testing.assert_close(out.loss, expected)


def test_nearest_neighbour_is_a_support_row_without_gradient() -> None:
    method = _nnclr()
    z = torch.randn(3, 8, requires_grad=True)
    neighbour, similarity = method.nearest_neighbour(z)
    assert not neighbour.requires_grad
    rows = [int((method.support.keys == row).all(dim=1).nonzero()) for row in neighbour]
    best = (l2_normalize(z.detach()) @ method.support.keys.T).argmax(dim=1)
    assert rows == best.tolist()
    torch.testing.assert_close(similarity, (l2_normalize(z.detach()) * neighbour).sum(dim=1))


def test_an_exact_neighbour_is_found() -> None:
    method = _nnclr()
    row = method.support.keys[5].clone()
    neighbour, similarity = method.nearest_neighbour(3.0 * row[None])
    torch.testing.assert_close(neighbour[0], row)
    torch.testing.assert_close(similarity, torch.ones(1))


def test_support_set_gets_view_one_of_every_micro_batch_once_per_step() -> None:
    method = _nnclr()
    before = method.support.keys.clone()
    expected = []
    for seed in (2, 3):
        views = _views(seed)
        expected.append(l2_normalize(method.projector(method.encoder(views.inputs[0]).pooled)).detach())
        method(views, StepInfo(0, 10)).loss.backward()
    assert torch.equal(method.support.keys, before)
    method.on_optimizer_step(StepInfo(0, 10))
    assert int(method.support.ptr) == 2 * BATCH
    torch.testing.assert_close(method.support.keys[: 2 * BATCH], torch.cat(expected))
    assert torch.equal(method.support.keys[2 * BATCH :], before[2 * BATCH :])


def test_gradients_reach_projector_and_predictor_only_through_the_predictions() -> None:
    method = _nnclr()
    out = method(_views(4), StepInfo(0, 10))
    out.loss.backward()
    assert method.support.keys.grad is None
    assert all(p.grad is not None for p in method.parameters())
