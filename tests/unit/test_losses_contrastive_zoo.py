"""``info_nce`` (MoCo v2 / v3) and ``dcl`` (DCL / DCLW) against references transcribed from released code.

Each reference below is written in plain torch from the named repository, file and function; values and
gradients are compared in float64 on the same inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses import dcl, info_nce, nt_xent

# --------------------------------------------------------------------------- references


def moco_v2_reference(q: Tensor, k: Tensor, queue_dk: Tensor, t: float) -> Tensor:
    """facebookresearch/moco, moco/builder.py, ``MoCo.forward`` (logits, labels) + ``nn.CrossEntropyLoss``
    in main_moco.py. The queue is stored ``(dim, K)`` there, columns normalized; q and k normalized."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue_dk.clone().detach())
    logits = torch.cat([l_pos, l_neg], dim=1) / t
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels)


def moco_v3_reference(q: Tensor, k_gathered: Tensor, t: float, rank: int) -> Tensor:
    """facebookresearch/moco-v3, moco/builder.py, ``MoCo.contrastive_loss`` with ``concat_all_gather(k)``
    already applied (``k_gathered``: every rank's keys in rank order). Includes their ``* (2 * T)``."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k_gathered, dim=1)
    logits = torch.einsum("nc,mc->nm", q, k) / t
    n = logits.shape[0]
    labels = torch.arange(n, dtype=torch.long) + n * rank
    return F.cross_entropy(logits, labels) * (2 * t)


def lightly_dcl_reference(out0: Tensor, out1: Tensor, t: float, sigma: float | None) -> Tensor:
    """lightly, lightly/loss/dcl_loss.py: ``DCLLoss.forward`` / ``_loss`` (one process) with
    ``negative_mises_fisher_weights`` as the weight function for DCLW."""

    def weights(a: Tensor, b: Tensor) -> Tensor:
        similarity = torch.einsum("nm,nm->n", a.detach(), b.detach()) / sigma
        return (2 - a.shape[0] * F.softmax(similarity, dim=0)).detach()

    def one_direction(a: Tensor, b: Tensor) -> Tensor:
        n = a.shape[0]
        diag = torch.eye(n, dtype=torch.bool)
        sim_00 = torch.einsum("nc,mc->nm", a, a) / t
        sim_01 = torch.einsum("nc,mc->nm", a, b) / t
        positive = -sim_01[diag]
        if sigma is not None:
            positive = positive * weights(a, b)
        negatives = torch.cat([sim_00[~diag].view(n, -1), sim_01[~diag].view(n, -1)], dim=1)
        return (positive + torch.logsumexp(negatives, dim=1)).mean()

    out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    return 0.5 * (one_direction(out0, out1) + one_direction(out1, out0))


def raminnakhli_dcl_reference(z1: Tensor, z2: Tensor, t: float) -> Tensor:
    """raminnakhli/Decoupled-Contrastive-Learning, loss/dcl.py, ``DCL.__call__`` (inputs normalized by its
    model), called as ``l(z1, z2) + l(z2, z1)`` in experiment/simclr/main.py."""
    small = torch.log(torch.tensor(1e-45, dtype=torch.float64))

    def call(a: Tensor, b: Tensor) -> Tensor:
        cross = a @ b.T
        positive = -torch.diag(cross) / t
        neg = torch.cat([a @ a.T, cross], dim=1) / t
        mask = torch.eye(a.shape[0], dtype=a.dtype).repeat(1, 2)
        return (positive + torch.logsumexp(neg + mask * small, dim=1)).mean()

    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    return call(a, b) + call(b, a)


# --------------------------------------------------------------------------- helpers


def _inputs(*shapes: tuple[int, ...], seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True) for shape in shapes]


def _grads(loss: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, tensors))


# --------------------------------------------------------------------------- info_nce


def test_info_nce_with_queue_equals_moco_v2() -> None:
    q, k = _inputs((6, 8), (6, 8))
    queue = F.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    ours = info_nce(q, k, queue, 0.2)
    ref = moco_v2_reference(q, k, queue.T.contiguous(), 0.2)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(ours, [q, k]), _grads(ref, [q, k]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert ours.dtype == torch.float64


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_info_nce_without_queue_equals_moco_v3_on_every_rank(rank: int) -> None:
    q, k_all = _inputs((4, 8), (12, 8), seed=rank)
    ours = info_nce(q, k_all, temperature=0.2, offset=rank * 4) * (2 * 0.2)
    ref = moco_v3_reference(q, k_all, 0.2, rank)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(ours, [q, k_all]), _grads(ref, [q, k_all]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_info_nce_without_queue_splits_over_ranks_like_the_global_batch() -> None:
    """The mean of the per-rank losses (offset = rank * B) is the one-process loss on the global batch."""
    q, k = _inputs((8, 5), (8, 5), seed=3)
    whole = info_nce(q, k, temperature=0.3)
    parts = [info_nce(q[r * 4 : (r + 1) * 4], k, temperature=0.3, offset=r * 4) for r in range(2)]
    torch.testing.assert_close(sum(parts) / 2, whole, rtol=1e-12, atol=1e-12)


def test_info_nce_uses_the_queue_as_given_and_detached() -> None:
    q, k = _inputs((3, 4), (3, 4))
    queue = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    loss = info_nce(q, k, queue)
    loss.backward()
    assert queue.grad is None
    # Not normalized a second time: scaling the queue changes the loss.
    assert not torch.allclose(info_nce(q, k, queue.detach() * 3), loss)
    # ...while scaling q or k does not (they are normalized inside).
    torch.testing.assert_close(info_nce(q * 5, k * 0.1, queue), loss)


def test_info_nce_rejects_misuse() -> None:
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="aligned"):
        info_nce(q, torch.randn(8, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="offset"):
        info_nce(q, k, torch.randn(5, 3), offset=1)
    with pytest.raises(ValueError, match="offset"):
        info_nce(q, k, offset=1)
    with pytest.raises(ValueError, match="queue"):
        info_nce(q, k, torch.randn(5, 2))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, temperature=0.0)


# --------------------------------------------------------------------------- dcl


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_equals_lightly(sigma: float | None) -> None:
    z1, z2 = _inputs((6, 8), (6, 8), seed=4)
    ours = dcl(z1, z2, 0.1, weight_sigma=sigma)
    ref = lightly_dcl_reference(z1, z2, 0.1, sigma)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(ours, [z1, z2]), _grads(ref, [z1, z2]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dcl_is_half_of_raminnakhlis_two_direction_sum() -> None:
    z1, z2 = _inputs((5, 6), (5, 6), seed=5)
    ours = dcl(z1, z2, 0.5)
    ref = raminnakhli_dcl_reference(z1, z2, 0.5)
    torch.testing.assert_close(2 * ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(2 * ours, [z1, z2]), _grads(ref, [z1, z2]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dcl_differs_from_nt_xent_only_by_the_positive_in_the_denominator() -> None:
    z1, z2 = _inputs((4, 3), (4, 3), seed=6)
    # NT-Xent = -pos + log(exp(pos) + Σ neg) >= DCL = -pos + log Σ neg.
    assert nt_xent(z1, z2, 0.2).item() > dcl(z1, z2, 0.2).item()


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_splits_over_ranks_like_the_global_batch(sigma: float | None) -> None:
    """Each rank's loss with the gathered batch and its offset; their mean is the one-process loss, and
    DCLW's weights come from the global batch (lightly's DDP path uses the local batch)."""
    z1, z2 = _inputs((8, 5), (8, 5), seed=7)
    whole = dcl(z1, z2, 0.2, weight_sigma=sigma)
    parts = [
        dcl(
            z1[r * 4 : (r + 1) * 4],
            z2[r * 4 : (r + 1) * 4],
            0.2,
            weight_sigma=sigma,
            z1_all=z1,
            z2_all=z2,
            offset=r * 4,
        )
        for r in range(2)
    ]
    torch.testing.assert_close(sum(parts) / 2, whole, rtol=1e-12, atol=1e-12)


def test_dclw_weights_average_to_one() -> None:
    """With identical positive similarities every weight is 2 - N/N = 1, so DCLW equals DCL."""
    z = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(dcl(z, z, 0.3, weight_sigma=0.5), dcl(z, z, 0.3))


def test_dcl_rejects_misuse() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="at least 2"):
        dcl(z[:1], z[:1])
    with pytest.raises(ValueError, match="weight_sigma"):
        dcl(z, z, weight_sigma=0.0)
    with pytest.raises(ValueError, match="both"):
        dcl(z, z, z1_all=z)
    with pytest.raises(ValueError, match="offset"):
        dcl(z, z, z1_all=z, z2_all=z, offset=1)


# --------------------------------------------------------------------------- robustness


def _all_losses(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    queue = F.normalize(torch.randn(7, a.shape[1])).to(a.dtype)
    return {
        "info_nce_queue": info_nce(a, b, queue),
        "info_nce_batch": info_nce(a, b),
        "dcl": dcl(a, b),
        "dclw": dcl(a, b, weight_sigma=0.5),
    }


def test_batch_of_two_is_finite_with_finite_gradients() -> None:
    a, b = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    for name, loss in _all_losses(a, b).items():
        ga, gb = torch.autograd.grad(loss, [a, b])
        assert torch.isfinite(loss) and torch.isfinite(ga).all() and torch.isfinite(gb).all(), name


def test_duplicated_embeddings_are_finite() -> None:
    row = torch.randn(1, 4)
    a = row.repeat(6, 1).requires_grad_(True)
    b = row.repeat(6, 1).requires_grad_(True)
    for name, loss in _all_losses(a, b).items():
        ga, gb = torch.autograd.grad(loss, [a, b])
        assert torch.isfinite(loss) and torch.isfinite(ga).all() and torch.isfinite(gb).all(), name


def test_bf16_inputs_compute_in_fp32_under_autocast() -> None:
    a32, b32 = torch.randn(6, 8), torch.randn(6, 8)
    reference = _all_losses(a32, b32)
    a, b = a32.bfloat16().requires_grad_(True), b32.bfloat16().requires_grad_(True)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _all_losses(a, b)
    for name, loss in losses.items():
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name
        grads = torch.autograd.grad(loss, [a, b])
        assert all(torch.isfinite(g).all() for g in grads), name
        if name != "info_nce_queue":  # the random queue differs between the two calls
            torch.testing.assert_close(loss, reference[name], rtol=0.05, atol=0.05)
