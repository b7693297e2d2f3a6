"""DINO: self-distillation with no labels (Caron et al., ICCV 2021).

A student (encoder → :class:`~selfsup.heads.DINOHead`) learns to match, on every crop, the output
distribution that its EMA copy, the teacher, gives for the *other* global crops; the teacher's logits are
centred (a running mean of them is subtracted) and sharpened (a low temperature), which together prevent
collapse. As facebookresearch/dino ``main_dino.py``:

* multi-crop: the student runs the global crops in one batched pass and the local crops in another
  (``MultiCropWrapper``: one pass per resolution, BatchNorm statistics per pass), then the head on all of
  them; the teacher runs the global crops only;
* the center is updated once per optimizer step (in :meth:`DINO.on_optimizer_step`) from the mean of the
  teacher's logits over the *global* batch (every micro-batch of the step, every process), with momentum
  0.9;
* the teacher's momentum follows a cosine from 0.996 to 1, the update after optimizer step ``k`` using
  ``cosine_momentum(k, K)`` (``momentum_schedule[it]``);
* the teacher temperature rises linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over the first
  ``warmup_teacher_temp_fraction`` of the optimizer steps (DINO: ``warmup_teacher_temp_epochs`` 30 of 100
  or 300 epochs, then constant);
* the last layer's gradient is dropped for the first ``freeze_last_layer`` optimizer steps
  (``cancel_gradients_last_layer``, DINO: 1 epoch).

Gradient clipping (DINO: 3.0) and the weight-decay schedule (0.04 → 0.4) are the trainer's business
(``optim`` / ``train`` settings of the recipe). The teacher is kept in evaluation mode unless the encoder
or head has BatchNorm: DINO's ViT teacher is built without stochastic depth (eval mode is the same thing
here), while its ResNet teacher normalises with batch statistics (train mode).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.heads import DINOHead, EncoderWithHead
from selfsup.losses import dino as dino_loss
from selfsup.losses import dino_center_update
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.methods.crops import encode_crops
from selfsup.teacher import EMATeacher
from selfsup.train.schedules import check_steps_option, cosine_momentum, steps_of


def teacher_temperature(step: StepInfo, warmup: float, final: float, warmup_fraction: float) -> float:
    """DINO's teacher temperature at optimizer step ``step``: linear from ``warmup`` at step 0 to ``final``
    at step ``round(warmup_fraction · total_steps)``, then constant.

    DINO steps it per epoch (``np.linspace(warmup, final, warmup_epochs)``: the last warm-up epoch already
    at ``final``); here it moves per optimizer step, reaching ``final`` at the end of the warm-up.
    """
    warmup_steps = round(warmup_fraction * step.total_steps)
    if warmup_steps <= 0 or step.step >= warmup_steps:
        return final
    return warmup + (final - warmup) * step.step / warmup_steps


def has_batch_norm(*modules: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for module in modules for m in module.modules())


def check_schedule_options(
    base_momentum: float, final_momentum: float, warmup_teacher_temp_fraction: float, center_momentum: float
) -> None:
    if not 0.0 <= base_momentum <= final_momentum <= 1.0:
        raise ValueError(
            f"need 0 <= base_momentum <= final_momentum <= 1, got {base_momentum}, {final_momentum}"
        )
    if not 0.0 <= warmup_teacher_temp_fraction <= 1.0:
        raise ValueError(
            f"warmup_teacher_temp_fraction must be in [0, 1], got {warmup_teacher_temp_fraction}"
        )
    if not 0.0 <= center_momentum <= 1.0:
        raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")


def check_temperatures(**temperatures: float) -> None:
    for name, value in temperatures.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def pending_mean(pending: list[Tensor]) -> Tensor:
    """The global-batch mean of the stashed ``[Σ rows, count]`` vectors: summed over the micro-batches,
    then over the processes (one small collective; the ratio is unchanged by ``all_reduce_mean``'s
    division by the world size)."""
    total = dist.all_reduce_mean(torch.stack(pending).sum(0))
    return total[:-1] / total[-1].clamp_min(1.0)


@METHODS.register("dino")
class DINO(Method):
    """DINO (Caron et al. 2021).

    Args:
        encoder: any encoder of the Encoder contract (a ViT's pooled output is its class token, as DINO's).
        out_dim: number of prototypes K (65536 in ``main_dino.py``).
        hidden_dim, bottleneck_dim, num_layers, use_bn_in_head, norm_last_layer: the head
            (:class:`~selfsup.heads.DINOHead`; DINO: 2048, 256, 3, False, True).
        student_temp: 0.1. teacher_temp: the teacher temperature after the warm-up (0.04, ``main_dino.py``'s
            default; its README uses 0.07 for longer ViT runs). warmup_teacher_temp: at step 0 (0.04).
        warmup_teacher_temp_fraction: fraction of the optimizer steps of the linear warm-up (0.3: DINO's
            recommended 30 epochs of 100; 0.1 for its 300-epoch runs).
        center_momentum: 0.9.
        base_momentum, final_momentum: the teacher's EMA decay, cosine from 0.996 to 1.
        freeze_last_layer: optimizer steps during which the head's last layer gets no gradient (DINO:
            one epoch); a float in [0, 1) is a fraction of the steps (default 0.01: one epoch of 100), an
            integer a number of steps (e.g. the recipe's steps per epoch).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "dino", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn_in_head: bool = False,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_fraction: float = 0.3,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        freeze_last_layer: float = 0.01,
    ) -> None:
        super().__init__(encoder)
        check_temperatures(
            student_temp=student_temp, teacher_temp=teacher_temp, warmup_teacher_temp=warmup_teacher_temp
        )
        check_schedule_options(base_momentum, final_momentum, warmup_teacher_temp_fraction, center_momentum)
        self.freeze_last_layer = check_steps_option("freeze_last_layer", freeze_last_layer)
        self.head = DINOHead(
            encoder.embed_dim,
            out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            num_layers=num_layers,
            use_bn=use_bn_in_head,
            norm_last_layer=norm_last_layer,
        )
        student = self._student()
        self.teacher = EMATeacher(student, eval_mode=not has_batch_norm(student))
        self.register_buffer("center", torch.zeros(out_dim))
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_fraction = warmup_teacher_temp_fraction
        self.center_momentum = center_momentum
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.last_momentum = base_momentum
        # [Σ teacher logits (K), count] per micro-batch since the last optimizer step: not state (consumed
        # by on_optimizer_step), so a plain list rather than a buffer.
        self._pending: list[Tensor] = []

    def _student(self) -> EncoderWithHead:
        # Built on demand so that the encoder and head are registered once in the state dict.
        return EncoderWithHead(self.encoder, self.head)

    def teacher_temperature(self, step: StepInfo) -> float:
        return teacher_temperature(
            step, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_fraction
        )

    def student_logits(self, views: Views) -> tuple[list[Tensor], Tensor]:
        """The head's logits per crop (``V`` tensors ``(B, K)``, globals first) and the pooled encoder
        output of the global crops ``(G·B, D)``: one encoder pass per crop size, one head pass."""
        pooled = encode_crops(self.encoder, views)
        logits = self.head(pooled)
        return list(logits.split(views.batch_size)), pooled[: views.num_global * views.batch_size]

    def teacher_logits(self, views: Views) -> list[Tensor]:
        x, padding = views.global_batch()
        return list(self.teacher(x, padding).float().split(views.batch_size))

    def stash_center_statistics(self, teacher_logits: list[Tensor]) -> None:
        if self.training:
            rows = torch.cat(teacher_logits).detach()
            self._pending.append(torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])]))

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global < 2:
            raise ValueError("DINO needs at least two global views per sample")
        teacher = self.teacher_logits(views)
        student, pooled = self.student_logits(views)
        temperature = self.teacher_temperature(step)
        loss = dino_loss(student, teacher, self.center, self.student_temp, temperature)
        self.stash_center_statistics(teacher)
        batch = views.batch_size
        logs = {
            "teacher_temp": torch.tensor(temperature),
            "teacher_momentum": torch.tensor(self.last_momentum),
        }
        return MethodOutput(
            loss=loss, logs=logs, embeddings=student[0].detach(), features=pooled[:batch].detach()
        )

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return list(self.head.last_layer.parameters())

    def before_optimizer_step(self, step: StepInfo) -> None:
        # As DINO's cancel_gradients_last_layer: no gradient at all (not a zero one), so the optimizer
        # leaves the last layer untouched, weight decay and momentum included.
        if step.step < steps_of(self.freeze_last_layer, step.total_steps):
            for parameter in self.last_layer_parameters():
                parameter.grad = None

    def update_center(self) -> None:
        if self._pending:
            mean = pending_mean(self._pending)
            self._pending = []
            self.center.copy_(dino_center_update(self.center, mean, self.center_momentum))

    @torch.no_grad()
    def on_optimizer_step(self, step: StepInfo) -> None:
        self.last_momentum = cosine_momentum(
            step.step, step.total_steps, self.base_momentum, self.final_momentum
        )
        self.teacher.update(self._student(), self.last_momentum)
        self.update_center()
