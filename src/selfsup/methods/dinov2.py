"""DINOv2's self-distillation (Oquab et al., TMLR 2024): DINO + iBOT + KoLeo on a ViT.

As facebookresearch/dinov2 ``dinov2/train/ssl_meta_arch.py`` (``forward_backward``):

* **image level** -- DINO's loss on the class tokens (:func:`~selfsup.losses.dino_cross_entropy`, every
  student crop against the teacher's other global crops, averaged over the pairs);
* **patch level** -- iBOT's masked-patch loss (:func:`~selfsup.losses.ibot_patch`): the student sees its
  global crops with block masks (``Views.masks``, from the ``dinov2`` view policy; masked patches replaced
  by the encoder's mask token), the teacher sees them unmasked, and at every masked patch the student's
  head output is trained towards the teacher's; the head is DINO's (shared) or a separate one;
* **KoLeo** on the student's class tokens, per global crop (weight 0.1);
* the teacher's targets are centred either by Sinkhorn-Knopp (``centering="sinkhorn"``, the released
  ViT-L/g configs' ``sinkhorn_knopp``; codes over the global batch, :func:`~selfsup.losses.sinkhorn_knopp`)
  or by DINO's running centers (``"center"``, one for the class tokens, one for the patches, updated once
  per optimizer step from the global batch);
* the teacher is an EMA copy (cosine momentum 0.992 → 1) kept in evaluation mode.

Deliberate differences: KoLeo runs on the class tokens of the *global* batch (gathered with gradients,
so N processes equal one; DINOv2 computes it per GPU); the patch center's batch statistic is the mean
over the masked patches (DINOv2's passes its zero-padded buffer, so padding rows enter the mean); the last
layers get no gradient during the freeze (DINOv2 sets their learning rate to 0, which still feeds AdamW's
moments).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.heads import DINOHead
from selfsup.losses import dino_center_update, dino_cross_entropy, ibot_patch, koleo, sinkhorn_knopp
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.methods.dino import (
    check_schedule_options,
    check_temperatures,
    pending_mean,
    teacher_temperature,
)
from selfsup.teacher import EMATeacher
from selfsup.train.schedules import check_steps_option, cosine_momentum, steps_of

CENTERINGS = ("sinkhorn", "center")


class _Parts(nn.Module):
    """The student's (or, as an EMA copy, the teacher's) encoder and heads."""

    def __init__(self, encoder: nn.Module, head: nn.Module, ibot_head: nn.Module | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.ibot_head = ibot_head


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """``x`` ``(M_r, K)`` of every rank concatenated in rank order (detached; ranks may differ in ``M_r``)
    and where this rank's rows start. One process: ``(x, 0)``."""
    if dist.world_size() == 1:
        return x, 0
    with torch.no_grad():
        count = torch.tensor([[x.shape[0]]], device=x.device)
        counts = dist.all_gather_with_grad(count, check_shapes=False).flatten().tolist()
        longest = max(counts)
        padded = x.new_zeros(longest, *x.shape[1:])
        padded[: x.shape[0]] = x
        gathered = dist.all_gather_with_grad(padded.contiguous(), check_shapes=False)
        parts = [gathered[r * longest : r * longest + n] for r, n in enumerate(counts)]
        return torch.cat(parts), sum(counts[: dist.rank()])


def sinkhorn_targets(logits: Tensor, temperature: float) -> Tensor:
    """Sinkhorn-Knopp codes of this rank's rows, computed over the global batch (3 iterations, DINOv2's
    ``sinkhorn_knopp_teacher`` with ``epsilon = teacher_temp``)."""
    rows, offset = gather_rows(logits.detach())
    if rows.shape[0] == 0:  # no masked patch anywhere in the global batch
        return logits.detach().clone()
    codes = sinkhorn_knopp(rows, epsilon=temperature, iterations=3)
    return codes[offset : offset + logits.shape[0]]


@METHODS.register("dinov2", needs=("mask:replace",))
class DINOv2(Method):
    """DINOv2 (Oquab et al. 2024): DINO's image-level loss + iBOT's masked-patch loss + KoLeo.

    Args:
        encoder: a ViT (its class token is the pooled output; ``last_hidden_state[:, num_prefix_tokens:]``
            are the patch tokens; masks applied with ``mask_mode="replace"``).
        out_dim, hidden_dim, bottleneck_dim, num_layers: DINO's head (``ssl_default_config.yaml``:
            65536, 2048, 256, 3). norm_last_layer: freeze the head's weight-norm scale (False: DINOv2's
            head learns it).
        ibot_separate_head: a separate iBOT head (False in the default config: shared).
        ibot_out_dim: its number of prototypes (65536); ignored with a shared head.
        dino_weight, ibot_weight, koleo_weight: loss weights (1.0, 1.0, 0.1).
        centering: ``"sinkhorn"`` (default, the ViT-L/g training configs) or ``"center"``.
        center_momentum: 0.9 (``"center"`` only).
        student_temp: 0.1. teacher_temp, warmup_teacher_temp, warmup_teacher_temp_fraction: 0.07 after a
            linear warm-up from 0.04 over 30 % of the steps (30 of 100 epochs).
        base_momentum, final_momentum: the teacher's EMA decay, cosine from 0.992 to 1.
        freeze_last_layer: as DINO's (default 0.01 of the steps: DINOv2's first epoch of 100).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "dinov2"}

    def __init__(
        self,
        encoder: Encoder,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = False,
        ibot_separate_head: bool = False,
        ibot_out_dim: int = 65536,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        centering: str = "sinkhorn",
        center_momentum: float = 0.9,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_fraction: float = 0.3,
        base_momentum: float = 0.992,
        final_momentum: float = 1.0,
        freeze_last_layer: float = 0.01,
    ) -> None:
        super().__init__(encoder)
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        if getattr(encoder, "num_prefix_tokens", None) is None:
            raise ValueError(
                "DINOv2 needs a ViT encoder (patch tokens after num_prefix_tokens prefix tokens)"
            )
        check_temperatures(
            student_temp=student_temp, teacher_temp=teacher_temp, warmup_teacher_temp=warmup_teacher_temp
        )
        check_schedule_options(base_momentum, final_momentum, warmup_teacher_temp_fraction, center_momentum)
        for name, weight in (
            ("dino_weight", dino_weight),
            ("ibot_weight", ibot_weight),
            ("koleo_weight", koleo_weight),
        ):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        self.freeze_last_layer = check_steps_option("freeze_last_layer", freeze_last_layer)

        def head(k: int) -> DINOHead:
            return DINOHead(
                encoder.embed_dim,
                k,
                hidden_dim=hidden_dim,
                bottleneck_dim=bottleneck_dim,
                num_layers=num_layers,
                norm_last_layer=norm_last_layer,
            )

        self.head = head(out_dim)
        self.ibot_head = head(ibot_out_dim) if ibot_separate_head else None
        self.teacher = EMATeacher(self._student(), eval_mode=True)
        self.centering = centering
        if centering == "center":
            self.register_buffer("center", torch.zeros(out_dim))
            self.register_buffer("patch_center", torch.zeros(ibot_out_dim if ibot_separate_head else out_dim))
        self.dino_weight, self.ibot_weight, self.koleo_weight = dino_weight, ibot_weight, koleo_weight
        self.center_momentum = center_momentum
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_fraction = warmup_teacher_temp_fraction
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.last_momentum = base_momentum
        self._pending: list[tuple[Tensor, Tensor]] = []  # (cls, patch) [Σ logits, count] per micro-batch

    def _student(self) -> _Parts:
        return _Parts(self.encoder, self.head, self.ibot_head)

    def teacher_temperature(self, step: StepInfo) -> float:
        return teacher_temperature(
            step, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_fraction
        )

    def _global_masks(self, views: Views) -> Tensor:
        masks = [views.mask(i) for i in range(views.num_global)]
        if any(m is None for m in masks):
            raise ValueError(
                "DINOv2 needs iBOT masks on its global views (Views.masks): use the 'dinov2' view policy"
            )
        return torch.cat(masks)  # type: ignore[arg-type]

    def _heads(self, parts: _Parts, cls: Tensor, patches: Tensor) -> tuple[Tensor, Tensor]:
        """(class-token logits, masked-patch logits): one pass through a shared head, as DINOv2."""
        if parts.ibot_head is None:
            logits = parts.head(torch.cat([cls, patches]))
            return logits[: cls.shape[0]], logits[cls.shape[0] :]
        return parts.head(cls), parts.ibot_head(patches)

    def _teacher_logits(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        parts = self.teacher.module
        with torch.no_grad():
            out = parts.encoder(x)
            patches = out.last_hidden_state[:, self.encoder.num_prefix_tokens :][mask]
            cls_logits, patch_logits = self._heads(parts, out.pooled, patches)
        return cls_logits.float(), patch_logits.float()

    def _teacher_targets(
        self, cls_logits: Tensor, patch_logits: Tensor, temperature: float
    ) -> tuple[Tensor, Tensor]:
        if self.centering == "sinkhorn":
            return sinkhorn_targets(cls_logits, temperature), sinkhorn_targets(patch_logits, temperature)
        cls = torch.softmax((cls_logits - self.center) / temperature, dim=-1)
        patch = torch.softmax((patch_logits - self.patch_center) / temperature, dim=-1)
        if self.training:
            self._pending.append(
                tuple(  # type: ignore[arg-type]
                    torch.cat([t.sum(0), t.new_tensor([t.shape[0]])]) for t in (cls_logits, patch_logits)
                )
            )
        return cls, patch

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global != 2:
            raise ValueError("DINOv2 takes exactly two global views per sample")
        batch = views.batch_size
        mask = self._global_masks(views)  # (2B, N)
        x = torch.cat(views.global_inputs)
        temperature = self.teacher_temperature(step)
        t_cls, t_patch = self._teacher_logits(x, mask)
        q_cls, q_patch = self._teacher_targets(t_cls, t_patch, temperature)

        out = self.encoder(x, mask=mask, mask_mode="replace")
        cls = out.pooled  # (2B, D)
        patches = out.last_hidden_state[:, self.encoder.num_prefix_tokens :][mask]  # (M, D)
        tokens = [cls]
        if views.local_inputs:
            tokens.append(self.encoder(torch.cat(views.local_inputs)).pooled)
        s_cls, s_patch = self._heads(self._student(), torch.cat(tokens), patches)

        dino_term = dino_cross_entropy(list(s_cls.split(batch)), list(q_cls.split(batch)), self.student_temp)
        ibot_term = ibot_patch(s_patch, q_patch, mask, self.student_temp)
        # KoLeo per global crop over the global batch: one gather (with gradients) for both crops.
        both = dist.all_gather_with_grad(torch.stack(cls.split(batch), dim=1))  # (W·B, 2, D)
        koleo_term = koleo(both[:, 0]) + koleo(both[:, 1])
        loss = self.dino_weight * dino_term + self.ibot_weight * ibot_term + self.koleo_weight * koleo_term
        logs = {
            "dino_loss": dino_term.detach(),
            "ibot_loss": ibot_term.detach(),
            "koleo_loss": koleo_term.detach(),
            "teacher_temp": torch.tensor(temperature),
            "masked_fraction": mask.float().mean(),
        }
        return MethodOutput(
            loss=loss, logs=logs, embeddings=s_cls[:batch].detach(), features=cls[:batch].detach()
        )

    def before_optimizer_step(self, step: StepInfo) -> None:
        if step.step < steps_of(self.freeze_last_layer, step.total_steps):
            heads = [self.head] if self.ibot_head is None else [self.head, self.ibot_head]
            for head in heads:
                for parameter in head.last_layer.parameters():
                    parameter.grad = None

    @torch.no_grad()
    def on_optimizer_step(self, step: StepInfo) -> None:
        self.last_momentum = cosine_momentum(
            step.step, step.total_steps, self.base_momentum, self.final_momentum
        )
        self.teacher.update(self._student(), self.last_momentum)
        if self.centering == "center" and self._pending:
            cls_stats, patch_stats = zip(*self._pending)
            self._pending = []
            cls_mean, patch_mean = pending_mean(list(cls_stats)), pending_mean(list(patch_stats))
            self.center.copy_(dino_center_update(self.center, cls_mean, self.center_momentum))
            self.patch_center.copy_(dino_center_update(self.patch_center, patch_mean, self.center_momentum))
