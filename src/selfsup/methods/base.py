"""The Method contract: an ``nn.Module`` built from an encoder and hyper-parameters.

The trainer drives every method the same way, once per optimizer step ``s`` of ``S``::

    info = StepInfo(step=s, total_steps=S)
    for each micro-batch:
        views = view_policy(batch, generator)          # selfsup.augment, on the device
        out = method(views, info)                      # MethodOutput(loss, logs, embeddings, features)
        out.loss.backward()
    method.before_optimizer_step(info)                 # e.g. cancel a frozen layer's gradient
    clip; optimizer.step()
    method.on_optimizer_step(info)                     # EMA / centers / queues, once per optimizer step

Views are made outside the method so that augmentation randomness (seeded generators, per
device) stays separate from the maths, and tests can feed identical views to a one-process
and a two-process run. A method never contains trainer code (no optimizer, no loop): it only
answers the three calls above, may declare its parameter groups (layer-wise learning-rate decay,
no weight decay on some parameters) and its DDP options, and names the view policy it uses per
modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from selfsup.encoders.base import Encoder
from selfsup.registry import Registry
from selfsup.views import Views

__all__ = ["METHODS", "Method", "MethodOutput", "StepInfo", "Views"]


@dataclass(frozen=True)
class StepInfo:
    """Where training stands: ``step`` optimizer steps were taken before this one (0 for the first),
    out of ``total_steps``. Schedules inside methods (DINO's teacher temperature, BYOL's and data2vec's
    EMA momentum) are pure functions of these two numbers, like the learning rate."""

    step: int
    total_steps: int

    @property
    def progress(self) -> float:
        """Fraction of training done before this step, in [0, 1]."""
        return min(self.step / self.total_steps, 1.0) if self.total_steps > 0 else 1.0


@dataclass
class MethodOutput:
    """loss: scalar, fp32. logs: scalars to record (detached). embeddings: ``(B, D)`` detached
    representations of the first view, used for collapse monitoring. features: ``(B, embed_dim)``
    the encoder's detached pooled output for the first global view, which the trainer's online
    linear probe learns from (:mod:`selfsup.train.online_probe`); every method sets it (the contract
    tests check it), and the probe is skipped, with a warning, for a method that leaves it None."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None
    features: Tensor | None = None


class Method(nn.Module):
    """Base class for SSL methods. Subclasses implement ``forward`` and name their view policies.

    default_view_policies: the view policy used per modality unless ``augment.policy`` says otherwise,
        e.g. ``{"image": "simclr", "vector": "vector_noise"}``; a modality missing here needs an
        explicit policy.
    ddp_options: keyword arguments for ``DistributedDataParallel`` (e.g. ``broadcast_buffers=False``
        when a queue buffer must not be overwritten by rank 0's at every forward).
    """

    default_view_policies: ClassVar[dict[str, str]] = {}
    ddp_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def before_optimizer_step(self, step: StepInfo) -> None:
        """Called once per optimizer step after backward (gradients summed over micro-batches and
        averaged over processes) and before clipping and the optimizer step: e.g. DINO cancels the
        gradient of its last layer during the first epoch."""

    def on_optimizer_step(self, step: StepInfo) -> None:
        """Update state that must advance once per optimizer step (EMA teachers, centers, queues),
        right after the optimizer step ``step.step`` (0 for the first) of ``step.total_steps``."""

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: by default matrices decayed and LARS-adapted, vectors
        (norms, biases) not (:func:`selfsup.train.optim.param_groups`). A method may return its own
        groups; each may set ``lr_scale`` (multiplies the scheduled learning rate, e.g. layer-wise
        decay), ``weight_decay`` and ``lars_exclude``."""
        from selfsup.train.optim import param_groups

        return param_groups(self, weight_decay)


# Factories take ``(encoder, **hyper_parameters)``.
METHODS: Registry[Method] = Registry("method")
