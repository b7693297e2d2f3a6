"""DINO and DINOv2 methods and DINO's head: weight norm equal to torch's, teacher-temperature schedule,
center updated once per optimizer step from the whole step's batch, last layer frozen for the first
steps only, one student pass per crop size, and DINOv2's loss composed as the authors compose it."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from tiny_data import build_parts, make_views
from torch import Tensor, nn

from selfsup.encoders.base import Encoder, EncoderOutput
from selfsup.heads import DINOHead, WeightNormLinear
from selfsup.losses import dino as dino_loss
from selfsup.losses import ibot_patch, koleo
from selfsup.methods import StepInfo, Views
from selfsup.methods.dino import DINO, teacher_temperature
from selfsup.methods.dinov2 import DINOv2


class TinyEncoder(Encoder):
    """Spatial mean → Linear: no BatchNorm, so per-micro-batch and full-batch forwards agree exactly."""

    modality = "image"

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.embed_dim, self.num_layers = dim, 1
        self.proj = nn.Linear(3, dim)
        self.calls: list[tuple[int, ...]] = []

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        self.calls.append(tuple(x.shape))
        h = self.proj(x.mean(dim=(2, 3)))
        return EncoderOutput(pooled=h, last_hidden_state=h, hidden_states=(h,))


def _dino(**options: object) -> DINO:
    torch.manual_seed(0)
    defaults = {"out_dim": 10, "hidden_dim": 12, "bottleneck_dim": 5}
    return DINO(encoder=TinyEncoder(), **{**defaults, **options})  # type: ignore[arg-type]


def _views(batch: int = 6, local: int = 3, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, 3, 8, 8, generator=g) for _ in range(2)]
    inputs += [torch.randn(batch, 3, 4, 4, generator=g) for _ in range(local)]
    return Views(inputs=inputs, num_global=2)


def _half(views: Views, part: slice) -> Views:
    return Views(inputs=[x[part] for x in views.inputs], num_global=views.num_global)


# ----------------------------------------------------------------------------- head


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_weight_norm_equals_torchs_weight_norm(norm_last_layer: bool) -> None:
    torch.manual_seed(0)
    ours = WeightNormLinear(5, 7, learn_scale=not norm_last_layer)
    with torch.no_grad():
        ours.weight_g.mul_(torch.linspace(0.5, 2.0, 7).unsqueeze(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        reference = nn.utils.weight_norm(nn.Linear(5, 7, bias=False))
    with torch.no_grad():
        reference.weight_v.copy_(ours.weight_v)
        reference.weight_g.copy_(ours.weight_g)
    x = torch.randn(4, 5, requires_grad=True)
    torch.testing.assert_close(ours(x), reference(x))
    ours(x).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(ours.weight_v.grad, reference.weight_v.grad)
    assert ours.weight_g.requires_grad is (not norm_last_layer)
    if not norm_last_layer:
        torch.testing.assert_close(ours.weight_g.grad, reference.weight_g.grad)


def test_dino_head_shapes_freezing_and_plain_state_dict() -> None:
    head = DINOHead(8, out_dim=11, hidden_dim=16, bottleneck_dim=4, num_layers=3, use_bn=True)
    assert head(torch.randn(5, 8)).shape == (5, 11)
    assert not head.last_layer.weight_g.requires_grad and torch.equal(
        head.last_layer.weight_g, torch.ones(11, 1)
    )
    # With norm_last_layer every row of the effective weight has unit norm.
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(11))
    state = head.state_dict()
    assert {"last_layer.weight_v", "last_layer.weight_g"} <= set(state)
    assert set(load_bytes(save_bytes({k: v.contiguous() for k, v in state.items()}))) == set(state)
    assert DINOHead(8, 11, 16, 4, num_layers=1).mlp[0].out_features == 4
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(8, 11, num_layers=0)


# ----------------------------------------------------------------------------- schedules


def test_teacher_temperature_warms_up_linearly_then_stays() -> None:
    values = [teacher_temperature(StepInfo(s, 100), 0.04, 0.07, 0.3) for s in (0, 15, 29, 30, 99)]
    torch.testing.assert_close(
        torch.tensor(values), torch.tensor([0.04, 0.055, 0.04 + 0.03 * 29 / 30, 0.07, 0.07])
    )
    assert teacher_temperature(StepInfo(0, 100), 0.04, 0.07, 0.0) == 0.07
    method = _dino(teacher_temp=0.06, warmup_teacher_temp=0.02, warmup_teacher_temp_fraction=0.5)
    out = method(_views(), StepInfo(5, 20))
    assert float(out.logs["teacher_temp"]) == pytest.approx(0.02 + 0.04 * 5 / 10)


# ----------------------------------------------------------------------------- state


def test_forward_matches_the_loss_on_the_methods_own_parts() -> None:
    method = _dino()
    views = _views()
    method.center.copy_(torch.linspace(-0.5, 0.5, 10))
    out = method(views, StepInfo(0, 10))
    students = [method.head(method.encoder(x).pooled) for x in views.inputs]
    teachers = [
        method.teacher.module.head(method.teacher.module.encoder(x).pooled) for x in views.global_inputs
    ]
    torch.testing.assert_close(out.loss, dino_loss(students, teachers, method.center, 0.1, 0.04))
    torch.testing.assert_close(out.features, method.encoder(views.inputs[0]).pooled.detach())


def test_one_student_pass_per_crop_size_and_teacher_on_globals_only() -> None:
    method = _dino()
    method(_views(batch=6, local=3), StepInfo(0, 10))
    teacher_calls = method.teacher.module.encoder.calls
    assert method.encoder.calls == [(12, 3, 8, 8), (18, 3, 4, 4)]
    assert teacher_calls == [(12, 3, 8, 8)]


def test_center_changes_once_per_optimizer_step_from_the_whole_steps_batch() -> None:
    views = _views(batch=6)
    full, accumulated = _dino(), _dino()
    step = StepInfo(0, 10)
    with torch.no_grad():
        teacher = torch.cat([full.teacher(x) for x in views.global_inputs])
    full(views, step).loss.backward()
    for part in (slice(0, 3), slice(3, 6)):  # two micro-batches of one optimizer step
        accumulated(_half(views, part), step).loss.backward()
        assert torch.equal(accumulated.center, torch.zeros(10))  # unchanged by forward
    full.on_optimizer_step(step)
    accumulated.on_optimizer_step(step)
    expected = 0.1 * teacher.mean(0)  # 0.9 * 0 + 0.1 * batch mean
    torch.testing.assert_close(full.center, expected)
    torch.testing.assert_close(accumulated.center, expected)
    accumulated.on_optimizer_step(StepInfo(1, 10))  # nothing pending: the center stays
    torch.testing.assert_close(accumulated.center, expected)


def test_last_layer_gets_no_gradient_only_during_the_first_steps() -> None:
    for option, frozen in ((0.2, 2), (3, 3)):
        method = _dino(freeze_last_layer=option)
        views = _views()
        for s in range(5):
            step = StepInfo(s, 10)
            method.zero_grad(set_to_none=True)
            method(views, step).loss.backward()
            method.before_optimizer_step(step)
            last = [p.grad for p in method.head.last_layer.parameters() if p.requires_grad]
            assert last, "the last layer has a trainable weight"
            assert all((g is None) == (s < frozen) for g in last), (option, s)
            assert method.head.mlp[0].weight.grad is not None
    with pytest.raises(ValueError, match="freeze_last_layer"):
        _dino(freeze_last_layer=2.5)


def test_teacher_follows_the_cosine_momentum() -> None:
    method = _dino(base_momentum=0.5, final_momentum=1.0)
    views = _views()
    before = [p.clone() for p in method.teacher.parameters()]
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method(views, StepInfo(0, 4)).loss.backward()
    optimizer.step()
    method.on_optimizer_step(StepInfo(0, 4))
    student = [p.detach() for p in method._student().parameters()]
    for t, b, s in zip(method.teacher.parameters(), before, student):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)


# ----------------------------------------------------------------------------- DINOv2


def reference_sinkhorn_knopp_teacher(
    teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3
) -> Tensor:
    """facebookresearch/dinov2 dinov2/loss/dino_clstoken_loss.py, DINOLoss.sinkhorn_knopp_teacher
    (one process)."""
    q = torch.exp(teacher_output.float() / teacher_temp).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(n_iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def _dinov2(**options: object) -> tuple[DINOv2, Views]:
    method, policy, _, data = build_parts("dinov2", "vit_tiny")
    if options:
        torch.manual_seed(0)
        method = DINOv2(encoder=method.encoder, out_dim=16, hidden_dim=32, bottleneck_dim=8, **options)
    views = make_views(policy, data)
    return method, views  # type: ignore[return-value]


@pytest.mark.parametrize("separate", [False, True])
def test_dinov2_loss_is_dino_plus_ibot_plus_koleo_with_sinkhorn_targets(separate: bool) -> None:
    method, views = _dinov2(ibot_separate_head=separate, ibot_out_dim=12)
    step = StepInfo(0, 10)
    out = method(views, step)
    temperature = float(out.logs["teacher_temp"])
    assert temperature == pytest.approx(0.04)
    batch, prefix = views.batch_size, method.encoder.num_prefix_tokens
    mask = torch.cat([views.masks[0], views.masks[1]])
    assert mask.any() and not mask.all()
    x = torch.cat(views.global_inputs)
    ibot_head = method.ibot_head if separate else method.head
    t_ibot_head = method.teacher.module.ibot_head if separate else method.teacher.module.head
    with torch.no_grad():
        t_out = method.teacher.module.encoder(x)
        t_cls = method.teacher.module.head(t_out.pooled)
        t_patch = t_ibot_head(t_out.last_hidden_state[:, prefix:][mask])
    s_out = method.encoder(x, mask=mask, mask_mode="replace")
    s_locals = method.encoder(torch.cat(views.local_inputs)).pooled
    s_cls = method.head(torch.cat([s_out.pooled, s_locals]))
    s_patch = ibot_head(s_out.last_hidden_state[:, prefix:][mask])
    q_cls = reference_sinkhorn_knopp_teacher(t_cls, temperature)
    q_patch = reference_sinkhorn_knopp_teacher(t_patch, temperature)
    # DINO term as DINOv2 composes it: every student crop vs the other global crops' targets.
    lsm = [F.log_softmax(s / 0.1, dim=-1) for s in s_cls.split(batch)]
    q = list(q_cls.split(batch))
    pairs = [(i, v) for i in range(2) for v in range(len(lsm)) if v != i]
    dino_term = sum(-(q[i] * lsm[v]).sum(-1).mean() for i, v in pairs) / len(pairs)
    ibot_term = ibot_patch(s_patch, q_patch, mask)
    koleo_term = koleo(s_out.pooled[:batch]) + koleo(s_out.pooled[batch:])
    expected = dino_term + ibot_term + 0.1 * koleo_term
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert method.encoder.mask_token.grad is not None and method.encoder.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ibot_head.parameters() if p.requires_grad)


def test_dinov2_centers_change_once_per_optimizer_step() -> None:
    method, views = _dinov2(centering="center")
    step = StepInfo(0, 10)
    for _ in range(2):
        method(views, step).loss.backward()
    assert torch.equal(method.center, torch.zeros(16)) and torch.equal(method.patch_center, torch.zeros(16))
    mask = torch.cat([views.masks[0], views.masks[1]])
    with torch.no_grad():
        x = torch.cat(views.global_inputs)
        t_out = method.teacher.module.encoder(x)
        t_cls = method.teacher.module.head(t_out.pooled)
        t_patch = method.teacher.module.head(
            t_out.last_hidden_state[:, method.encoder.num_prefix_tokens :][mask]
        )
    method.on_optimizer_step(step)
    torch.testing.assert_close(method.center, 0.1 * t_cls.mean(0))
    torch.testing.assert_close(method.patch_center, 0.1 * t_patch.mean(0))


def test_dinov2_needs_masks_and_a_vit() -> None:
    method, views = _dinov2()
    with pytest.raises(ValueError, match="dinov2"):
        method(Views(inputs=views.inputs, num_global=2), StepInfo(0, 10))
    with pytest.raises(ValueError, match="ViT"):
        DINOv2(encoder=TinyEncoder())
    with pytest.raises(ValueError, match="centering"):
        DINOv2(encoder=method.encoder, centering="mean")
