"""EMA teacher: the update formula per parameter, the momentum 0/1 limits, buffer copying,
frozen gradients, mode propagation, mismatch errors and state_dict round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.teacher import EMATeacher


def _student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _perturb(module: nn.Module, seed: int = 1) -> None:
    """Move the student away from the teacher: new weights and new BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    module.train()
    module(torch.randn(8, 3, generator=gen))  # updates running_mean/var and num_batches_tracked


def test_teacher_is_a_frozen_copy() -> None:
    student = _student()
    teacher = EMATeacher(student)
    for (name, t), (_, s) in zip(teacher.module.named_parameters(), student.named_parameters()):
        assert torch.equal(t, s), name
        assert t.data_ptr() != s.data_ptr()
        assert not t.requires_grad
    assert all(s.requires_grad for s in student.parameters())


def test_no_gradient_flows_into_teacher() -> None:
    student = _student()
    teacher = EMATeacher(student)
    x = torch.randn(6, 3)
    target = teacher(x)
    assert not target.requires_grad
    loss = (student(x) - target).pow(2).sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_momentum_zero_copies_student_and_one_keeps_teacher() -> None:
    student = _student()
    teacher = EMATeacher(student)
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    _perturb(student)
    teacher.update(student, 1.0)
    for name, t in teacher.module.named_parameters():
        assert torch.equal(t, before[name]), name
    teacher.update(student, 0.0)
    for (name, t), (_, s) in zip(teacher.module.named_parameters(), student.named_parameters()):
        assert torch.equal(t, s), name


def test_one_update_matches_formula_per_tensor() -> None:
    student = _student()
    teacher = EMATeacher(student)
    _perturb(student)
    t_before = {k: v.clone() for k, v in teacher.module.named_parameters()}
    teacher.update(student, 0.9)
    t_after = dict(teacher.module.named_parameters())
    for name, s in student.named_parameters():
        expected = 0.9 * t_before[name] + 0.1 * s.detach()
        torch.testing.assert_close(t_after[name], expected, rtol=1e-6, atol=1e-7)
    # Buffers are copied, not averaged (float running stats and the integer batch counter alike).
    for (name, t), (_, s) in zip(teacher.module.named_buffers(), student.named_buffers()):
        assert torch.equal(t, s), name
    assert int(teacher.module[1].num_batches_tracked) == 1


def test_teacher_follows_train_and_eval_mode() -> None:
    holder = nn.Module()
    holder.student = _student()
    holder.teacher = EMATeacher(holder.student)
    holder.train()
    assert holder.teacher.module.training
    x = torch.randn(5, 3)
    # Same weights, train mode: both normalize with the statistics of this batch.
    torch.testing.assert_close(holder.teacher(x), holder.student(x).detach())
    holder.eval()
    assert not holder.teacher.module[1].training


def test_mismatched_student_is_rejected() -> None:
    teacher = EMATeacher(_student())
    wider = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"'0.weight' is \(5, 3\)"):
        teacher.update(wider, 0.5)
    with pytest.raises(ValueError, match="missing from student"):
        teacher.update(nn.Sequential(nn.Linear(3, 4)), 0.5)
    with pytest.raises(ValueError, match="momentum must be in"):
        teacher.update(_student(), 1.5)


def test_state_dict_round_trip() -> None:
    student = _student()
    teacher = EMATeacher(student)
    _perturb(student)
    teacher.update(student, 0.7)
    state = teacher.state_dict()
    assert all(k.startswith("module.") for k in state)
    restored = EMATeacher(_student(seed=5))
    restored.load_state_dict(state)
    for k, v in restored.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(p.requires_grad for p in restored.parameters())
    restored.eval()
    teacher.eval()
    x = torch.randn(4, 3)
    assert torch.equal(restored(x), teacher(x))


def test_eval_mode_teacher_stays_in_eval_mode() -> None:
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    teacher = EMATeacher(student, eval_mode=True)
    holder = nn.ModuleDict({"student": student, "teacher": teacher})
    holder.train()
    assert student.training and not any(m.training for m in teacher.module.modules())
    x = torch.randn(8, 3)
    before = teacher.module[1].running_mean.clone()
    out1, out2 = teacher(x), teacher(x)
    # Eval mode: dropout off (deterministic) and running statistics used, not updated.
    assert torch.equal(out1, out2) and torch.equal(teacher.module[1].running_mean, before)
    # The default teacher follows the method's mode, as BYOL's target does.
    follower = EMATeacher(student)
    nn.ModuleDict({"s": student, "t": follower}).train()
    assert follower.module.training


def test_ema_filter_averages_a_subset_and_copies_the_rest() -> None:
    torch.manual_seed(0)
    student = nn.ModuleDict({"embed": nn.Linear(2, 2), "blocks": nn.Linear(2, 2)})
    teacher = EMATeacher(student, ema_filter=lambda name: name.startswith("blocks."))
    old = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student, momentum=0.75)
    for name, value in teacher.module.state_dict().items():
        new_student = student.state_dict()[name]
        if name.startswith("blocks."):
            torch.testing.assert_close(value, 0.75 * old[name] + 0.25 * new_student)
        else:  # tracks the student exactly
            assert torch.equal(value, new_student)


def test_teacher_of_a_subset_of_the_student() -> None:
    """MoCo v3 style: the momentum branch is backbone + projector of a student that also has a predictor."""
    torch.manual_seed(0)
    backbone, projector, predictor = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4)
    branch = nn.Sequential(backbone, projector)
    teacher = EMATeacher(branch)
    assert len(list(teacher.module.parameters())) == 4  # no predictor
    with torch.no_grad():
        predictor.weight.add_(1.0)
        backbone.weight.add_(1.0)
    old = teacher.module[0].weight.clone()
    teacher.update(branch, momentum=0.5)
    torch.testing.assert_close(teacher.module[0].weight, 0.5 * old + 0.5 * backbone.weight)
