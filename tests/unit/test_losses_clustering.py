"""Sinkhorn-Knopp and SwAV's swapped prediction loss against transcriptions of the authors' code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import sinkhorn_knopp, swav

# --------------------------------------------------------------------------- references


def reference_distributed_sinkhorn(
    local_scores: list[torch.Tensor], epsilon: float = 0.05, iterations: int = 3
) -> list[torch.Tensor]:
    """facebookresearch/swav ``main_swav.py``, ``distributed_sinkhorn``, transcribed for ``W`` simulated
    ranks: each entry of ``local_scores`` is one rank's ``(B, K)`` scores and every ``dist.all_reduce``
    is a sum over the ranks. Returns each rank's codes. With one entry it is the single-GPU code."""
    qs = [torch.exp(s / epsilon).t() for s in local_scores]  # K x B per rank
    world = len(qs)
    b = qs[0].shape[1] * world
    k = qs[0].shape[0]
    sum_q = sum(q.sum() for q in qs)
    qs = [q / sum_q for q in qs]
    for _ in range(iterations):
        sum_of_rows = sum(q.sum(dim=1, keepdim=True) for q in qs)
        qs = [q / sum_of_rows / k for q in qs]
        qs = [q / q.sum(dim=0, keepdim=True) / b for q in qs]
    return [(q * b).t() for q in qs]


def reference_dinov2_sinkhorn(
    teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
) -> torch.Tensor:
    """facebookresearch/dinov2 ``dinov2/loss/dino_clstoken_loss.py``, ``DINOLoss.sinkhorn_knopp_teacher``,
    one process (``world_size = 1``), transcribed without the float cast (inputs are float64 here)."""
    q = torch.exp(teacher_output / teacher_temp).t()
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def reference_swav_loss(
    output: torch.Tensor,
    codes: list[torch.Tensor],
    bs: int,
    nmb_crops: int,
    crops_for_assign: list[int],
    temperature: float,
) -> torch.Tensor:
    """facebookresearch/swav ``main_swav.py``, ``train``: the loss of one iteration from the concatenated
    prototype scores ``output`` ``(nmb_crops * bs, K)`` and the codes ``q`` of each assigned crop."""
    loss = 0
    for i, crop_id in enumerate(crops_for_assign):
        q = codes[i]
        subloss = 0
        for v in np.delete(np.arange(nmb_crops), crop_id):
            x = output[bs * v : bs * (v + 1)] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (nmb_crops - 1)
    return loss / len(crops_for_assign)


def _cosine_scores(batch: int, k: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    return z @ c.T


# --------------------------------------------------------------------------- sinkhorn_knopp


@pytest.mark.parametrize(("batch", "k", "iterations"), [(12, 5, 3), (7, 16, 1), (2, 3, 5)])
def test_sinkhorn_equals_the_authors(batch: int, k: int, iterations: int) -> None:
    scores = _cosine_scores(batch, k)
    (expected,) = reference_distributed_sinkhorn([scores], 0.05, iterations)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, iterations), expected, rtol=1e-10, atol=1e-12)


def test_sinkhorn_on_the_gathered_batch_equals_the_authors_all_reduce_over_ranks() -> None:
    scores = _cosine_scores(12, 6)
    per_rank = reference_distributed_sinkhorn(list(scores.split(4)), 0.05, 3)  # three ranks of 4
    torch.testing.assert_close(sinkhorn_knopp(scores), torch.cat(per_rank), rtol=1e-10, atol=1e-12)


def test_dinov2_sinkhorn_is_sinkhorn_knopp_with_epsilon_the_teacher_temperature() -> None:
    logits = torch.randn(10, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = reference_dinov2_sinkhorn(logits, teacher_temp=0.07, n_iterations=3)
    torch.testing.assert_close(
        sinkhorn_knopp(logits, epsilon=0.07, iterations=3), expected, rtol=1e-10, atol=1e-12
    )


def test_sinkhorn_rows_sum_to_one_and_columns_approach_equipartition() -> None:
    scores = _cosine_scores(20, 4)
    codes = sinkhorn_knopp(scores, 0.05, 3)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(20, dtype=torch.float64))
    assert (codes >= 0).all()
    converged = sinkhorn_knopp(scores, 0.05, 200)
    torch.testing.assert_close(
        converged.sum(dim=0), torch.full((4,), 20 / 4, dtype=torch.float64), rtol=1e-6, atol=1e-6
    )


def test_sinkhorn_stays_finite_where_the_authors_overflow() -> None:
    # Unnormalised logits (DINOv2's teacher) at epsilon 0.05: exp(10 / 0.05) is inf in float32.
    logits = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)) * 10
    (theirs,) = reference_distributed_sinkhorn([logits.float()], 0.05, 3)
    assert not torch.isfinite(theirs).all()
    ours = sinkhorn_knopp(logits.float(), 0.05, 3)
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    (exact,) = reference_distributed_sinkhorn([logits.double()], 0.05, 3)  # no overflow in float64
    torch.testing.assert_close(ours.double(), exact, rtol=1e-4, atol=1e-6)


def test_sinkhorn_is_detached_and_handles_bf16_and_duplicates() -> None:
    scores = _cosine_scores(6, 4).float().requires_grad_()
    assert not sinkhorn_knopp(scores).requires_grad
    bf16 = sinkhorn_knopp(scores.detach().bfloat16())
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, sinkhorn_knopp(scores.detach().bfloat16().float()))
    duplicated = sinkhorn_knopp(scores.detach()[:1].expand(6, 4))
    torch.testing.assert_close(duplicated, torch.full((6, 4), 0.25))  # identical rows: uniform codes


def test_sinkhorn_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(torch.zeros(2, 2), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(torch.zeros(2, 2), iterations=0)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        sinkhorn_knopp(torch.zeros(2))


# --------------------------------------------------------------------------- swav


def _crops(batch: int, k: int, num_crops: int, seed: int = 0) -> list[torch.Tensor]:
    return [_cosine_scores(batch, k, seed=seed + v).requires_grad_() for v in range(num_crops)]


@pytest.mark.parametrize(("num_crops", "crops_for_assign"), [(2, [0, 1]), (4, [0, 1]), (3, [1])])
def test_swav_equals_the_authors_value_and_gradient(num_crops: int, crops_for_assign: list[int]) -> None:
    batch, k, temperature = 6, 5, 0.1
    ours_in = _crops(batch, k, num_crops)
    theirs_in = [s.detach().clone().requires_grad_() for s in ours_in]
    codes = [reference_distributed_sinkhorn([ours_in[c].detach()])[0] for c in crops_for_assign]
    ours = swav(ours_in, codes, temperature, crops_for_assign)
    theirs = reference_swav_loss(torch.cat(theirs_in), codes, batch, num_crops, crops_for_assign, temperature)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.backward()
    theirs.backward()
    for a, b in zip(ours_in, theirs_in):
        # An assigned crop that no other crop predicts (crops_for_assign=[1]) is outside our graph.
        grad = a.grad if a.grad is not None else torch.zeros_like(a)
        torch.testing.assert_close(grad, b.grad, rtol=1e-10, atol=1e-12)


def test_swav_detaches_the_codes() -> None:
    scores = _crops(4, 3, 2)
    codes = [s.softmax(dim=1) for s in scores]  # codes that would carry gradient
    swav(scores, codes).backward()
    plain = [s.detach().clone().requires_grad_() for s in scores]
    swav(plain, [c.detach() for c in codes]).backward()
    for a, b in zip(scores, plain):
        torch.testing.assert_close(a.grad, b.grad)


def test_swav_batch_of_two_duplicates_and_bf16_stay_finite() -> None:
    scores = _crops(2, 4, 2)
    codes = [sinkhorn_knopp(s) for s in scores]
    assert torch.isfinite(swav(scores, codes))
    same = [scores[0].detach()[:1].expand(2, 4).clone().requires_grad_() for _ in range(2)]
    loss = swav(same, [sinkhorn_knopp(s) for s in same])
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(s.grad).all() for s in same)
    bf16 = [s.detach().bfloat16() for s in scores]
    value = swav(bf16, [sinkhorn_knopp(s) for s in bf16])
    assert value.dtype == torch.float32 and torch.isfinite(value)
    reference = swav([s.float() for s in bf16], [sinkhorn_knopp(s.float()) for s in bf16])
    torch.testing.assert_close(value, reference)


def test_swav_rejects_mismatched_arguments() -> None:
    scores = _crops(4, 3, 2)
    with pytest.raises(ValueError, match="assignments"):
        swav(scores, [scores[0].detach()])
    with pytest.raises(ValueError, match="crop 2"):
        swav(scores, [scores[0].detach()], crops_for_assign=(2,))
    with pytest.raises(ValueError, match="temperature"):
        swav(scores, [s.detach() for s in scores], temperature=0)
