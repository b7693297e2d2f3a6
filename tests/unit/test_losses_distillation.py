"""Self-distillation losses against transcriptions of the authors' code (value and gradient, float64):
DINO's ``DINOLoss`` (facebookresearch/dino ``main_dino.py``), DINOv2's ``KoLeoLoss`` and
``iBOTPatchLoss.forward_masked`` (facebookresearch/dinov2 ``dinov2/loss/``), plus batch 2, duplicated
embeddings, bf16 inputs and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses import dino, dino_center_update, dino_cross_entropy, ibot_patch, koleo

# ----------------------------------------------------------------------------- references


def reference_dino_loss(
    student_output: Tensor,
    teacher_output: Tensor,
    center: Tensor,
    ncrops: int,
    student_temp: float,
    temp: float,
) -> Tensor:
    """facebookresearch/dino main_dino.py, DINOLoss.forward (without its center update): crops
    concatenated along the batch, teacher on the 2 global crops."""
    student_out = (student_output / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher_output - center) / temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss = total_loss + loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def reference_update_center(center: Tensor, teacher_output: Tensor, momentum: float) -> Tensor:
    """facebookresearch/dino main_dino.py, DINOLoss.update_center on one process."""
    batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
    return center * momentum + batch_center * (1 - momentum)


def reference_koleo(student_output: Tensor, eps: float = 1e-8) -> Tensor:
    """facebookresearch/dinov2 dinov2/loss/koleo_loss.py, KoLeoLoss.forward (pairwise_NNs_inner inlined)."""
    student_output = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = torch.mm(student_output, student_output.t())
    n = student_output.shape[0]
    dots = dots.detach().clone()
    dots.view(-1)[:: (n + 1)].fill_(-1)
    _, index = torch.max(dots, dim=1)
    distances = nn.PairwiseDistance(2, eps=1e-8)(student_output, student_output[index])
    return -torch.log(distances + eps).mean()


def reference_ibot_forward_masked(
    s: Tensor, t: Tensor, student_masks_flat: Tensor, student_temp: float
) -> Tensor:
    """facebookresearch/dinov2 dinov2/loss/ibot_patch_loss.py, iBOTPatchLoss.forward_masked, with the
    masks_weight of dinov2/data/collate.py collate_data_and_cast."""
    loss = torch.sum(t * F.log_softmax(s / student_temp, dim=-1), dim=-1)
    masks_weight = (
        (1 / student_masks_flat.sum(-1).clamp(min=1.0))
        .unsqueeze(-1)
        .expand_as(student_masks_flat)[student_masks_flat]
    )
    loss = loss * masks_weight
    return -loss.sum() / student_masks_flat.shape[0]


def reference_dinov2_image_loss(
    student_global: Tensor, student_local: Tensor, teacher_probs: Tensor, n_local: int, student_temp: float
) -> Tensor:
    """facebookresearch/dinov2 ssl_meta_arch.py forward_backward: dino_local_crops_loss +
    dino_global_crops_loss (teacher targets of the two global crops swapped), DINOLoss.forward inlined."""

    def dino_forward(students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        total = 0.0
        for s in students:
            lsm = F.log_softmax(s / student_temp, dim=-1)
            for t in teachers:
                total = total - torch.sum(t * lsm, dim=-1).mean()
        return total

    terms = n_local * 2 + 2
    t0, t1 = teacher_probs.chunk(2)
    local = dino_forward(list(student_local.chunk(n_local)), [t0, t1]) / terms
    swapped = torch.cat([t1, t0])
    global_ = dino_forward([student_global], [swapped]) * 2 / terms
    return local + global_


# ----------------------------------------------------------------------------- DINO


def _crops(batch: int = 4, k: int = 7, global_crops: int = 2, local_crops: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    students = [
        torch.randn(batch, k, generator=g, dtype=torch.float64, requires_grad=True)
        for _ in range(global_crops + local_crops)
    ]
    teachers = [torch.randn(batch, k, generator=g, dtype=torch.float64) for _ in range(global_crops)]
    center = torch.randn(k, generator=g, dtype=torch.float64) * 0.3
    return students, teachers, center


def test_dino_equals_the_reference_value_and_gradient() -> None:
    students, teachers, center = _crops()
    ours = dino(students, teachers, center, student_temp=0.1, teacher_temp=0.04)
    ours_grads = torch.autograd.grad(ours, students)
    reference = reference_dino_loss(torch.cat(students), torch.cat(teachers), center, 5, 0.1, 0.04)
    ref_grads = torch.autograd.grad(reference, students)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The gradient is not trivially zero: every crop gets one.
    assert all(float(g.abs().sum()) > 1e-3 for g in ours_grads)


def test_dino_defaults_and_two_crops_without_locals() -> None:
    students, teachers, center = _crops(local_crops=0)
    ours = dino(students, teachers, center)  # student_temp 0.1, teacher_temp 0.04
    torch.testing.assert_close(
        ours, reference_dino_loss(torch.cat(students), torch.cat(teachers), center, 2, 0.1, 0.04)
    )


def test_dino_cross_entropy_equals_dinov2s_local_plus_global_split() -> None:
    students, teachers, _ = _crops(local_crops=4, seed=3)
    probs = [F.softmax(t / 0.07, dim=-1) for t in teachers]
    ours = dino_cross_entropy(students, probs, 0.1)
    reference = reference_dinov2_image_loss(
        torch.cat(students[:2]), torch.cat(students[2:]), torch.cat(probs), 4, 0.1
    )
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours, students), torch.autograd.grad(reference, students), rtol=1e-10, atol=1e-12
    )


def test_teacher_gets_no_gradient_and_center_shape_is_checked() -> None:
    students, teachers, center = _crops()
    teachers = [t.requires_grad_() for t in teachers]
    dino(students, teachers, center).backward()
    assert all(t.grad is None for t in teachers)
    with pytest.raises(ValueError, match="center"):
        dino(students, teachers, torch.zeros(3))


def test_dino_center_update_equals_the_reference() -> None:
    g = torch.Generator().manual_seed(1)
    center = torch.randn(1, 6, generator=g, dtype=torch.float64)
    teacher = torch.randn(10, 6, generator=g, dtype=torch.float64)
    ours = dino_center_update(center, teacher.mean(0), momentum=0.9)
    torch.testing.assert_close(ours, reference_update_center(center, teacher, 0.9))
    assert ours.shape == center.shape
    flat = dino_center_update(center.flatten(), teacher.mean(0))
    torch.testing.assert_close(flat, ours.flatten())
    with pytest.raises(ValueError, match="momentum"):
        dino_center_update(center, teacher.mean(0), momentum=1.5)


@pytest.mark.parametrize("case", ["batch2", "duplicated", "bf16"])
def test_dino_is_finite(case: str) -> None:
    g = torch.Generator().manual_seed(2)
    batch = 2 if case == "batch2" else 4
    base = torch.randn(batch, 16, generator=g) * 10
    students = [
        base.clone() if case == "duplicated" else torch.randn(batch, 16, generator=g) * 10 for _ in range(4)
    ]
    teachers = [base.clone() for _ in range(2)]
    if case == "bf16":
        students, teachers = [s.bfloat16() for s in students], [t.bfloat16() for t in teachers]
    students = [s.requires_grad_() for s in students]
    loss = dino(students, teachers, torch.zeros(16))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(s.grad).all() for s in students)


def test_dino_input_checks() -> None:
    students, teachers, center = _crops()
    with pytest.raises(ValueError, match="at least two crops"):
        dino(students[:1], teachers[:1], center)
    with pytest.raises(ValueError, match="teacher crops"):
        dino(students[:1], teachers, center)
    with pytest.raises(ValueError, match="one shape"):
        dino([students[0], students[1][:2]], teachers, center)
    with pytest.raises(ValueError, match="teacher_temp"):
        dino(students, teachers, center, teacher_temp=0.0)


# ----------------------------------------------------------------------------- KoLeo


@pytest.mark.parametrize("coincident", [False, True])
def test_koleo_equals_the_reference_value_and_gradient(coincident: bool) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    if coincident:
        x[3] = x[1]  # a duplicate: distance eps * sqrt(D), not 0
        x[6] = 2.0 * x[1]  # the same direction: coincident after normalisation
    x.requires_grad_()
    ours = koleo(x)
    (ours_grad,) = torch.autograd.grad(ours, x)
    reference = reference_koleo(x)
    (ref_grad,) = torch.autograd.grad(reference, x)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(ours) and torch.isfinite(ours_grad).all()


@pytest.mark.parametrize("case", ["batch2", "duplicated", "bf16"])
def test_koleo_is_finite(case: str) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2 if case == "batch2" else 6, 8, generator=g)
    if case == "duplicated":
        x = x[:1].repeat(6, 1)
    if case == "bf16":
        x = x.bfloat16()
    x.requires_grad_()
    loss = koleo(x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_koleo_spreads_points_and_checks_inputs() -> None:
    # Far-apart points have a lower (better) value than clustered ones.
    spread = torch.eye(4)
    clustered = torch.ones(4, 4) + 0.01 * torch.eye(4)
    assert koleo(spread) < koleo(clustered)
    with pytest.raises(ValueError, match="B >= 2"):
        koleo(torch.randn(1, 3))


# ----------------------------------------------------------------------------- iBOT


def _patches(batch: int = 4, n: int = 6, k: int = 5, seed: int = 6):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, n, generator=g) < 0.4
    mask[0] = False  # an image without masked patches counts 0 in the mean over images
    mask[1, :2] = True
    m = int(mask.sum())
    student = torch.randn(m, k, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = F.softmax(torch.randn(m, k, generator=g, dtype=torch.float64) / 0.07, dim=-1)
    return student, teacher, mask


def test_ibot_patch_equals_the_reference_value_and_gradient() -> None:
    student, teacher, mask = _patches()
    ours = ibot_patch(student, teacher, mask, student_temp=0.1)
    reference = reference_ibot_forward_masked(student, teacher, mask, 0.1)
    # The reference's 1 / count weights are float32 (an integer count divided into 1): ~1e-8 relative.
    torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours, student)[0],
        torch.autograd.grad(reference, student)[0],
        rtol=1e-7,
        atol=1e-12,
    )


def test_ibot_patch_takes_full_token_grids_too() -> None:
    student, teacher, mask = _patches()
    full_s = torch.zeros(*mask.shape, student.shape[1], dtype=student.dtype)
    full_t = torch.zeros_like(full_s)
    full_s[mask], full_t[mask] = student.detach(), teacher
    torch.testing.assert_close(ibot_patch(full_s, full_t, mask), ibot_patch(student.detach(), teacher, mask))
    with pytest.raises(ValueError, match="masked patches"):
        ibot_patch(student[:1], teacher, mask)


@pytest.mark.parametrize("case", ["batch2", "duplicated", "bf16", "nothing_masked"])
def test_ibot_patch_is_finite(case: str) -> None:
    g = torch.Generator().manual_seed(7)
    batch = 2 if case == "batch2" else 4
    mask = torch.zeros(batch, 6, dtype=torch.bool)
    if case != "nothing_masked":
        mask[:, 1:4] = True
    m = int(mask.sum())
    student = torch.randn(m, 9, generator=g) * 10
    teacher = F.softmax(torch.randn(m, 9, generator=g), dim=-1)
    if case == "duplicated":
        student = student[:1].repeat(m, 1)
    if case == "bf16":
        student, teacher = student.bfloat16(), teacher.bfloat16()
    student.requires_grad_()
    loss = ibot_patch(student, teacher, mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    if case == "nothing_masked":
        assert float(loss.detach()) == 0.0
