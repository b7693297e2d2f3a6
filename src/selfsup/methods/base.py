"""The Method contract: an ``nn.Module`` built from an encoder and hyper-parameters.

The trainer drives every method the same way::

    views = view_policy(images_uint8, generator)   # selfsup.augment, on the device
    out = method(views, step)                      # MethodOutput(loss, logs, embeddings)
    out.loss.backward(); optimizer.step()
    method.on_optimizer_step(step, total_steps)    # EMA / centers / queues, once per optimizer step

Views are made outside the method so that augmentation randomness (seeded generators, per
device) stays separate from the maths, and tests can feed identical views to a one-process
and a two-process run. A method never contains trainer code (no optimizer, no loop, no hooks
beyond ``on_optimizer_step``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from selfsup.encoders.base import Encoder
from selfsup.registry import Registry
from selfsup.views import Views

__all__ = ["METHODS", "Method", "MethodOutput", "Views"]


@dataclass
class MethodOutput:
    """loss: scalar, fp32. logs: scalars to record (detached). embeddings: ``(B, D)`` detached
    representations of the first view, used for collapse monitoring."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None


class Method(nn.Module):
    """Base class for SSL methods. Subclasses set ``default_view_policy`` and implement ``forward``."""

    default_view_policy: str = "simclr"

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, views: Views, step: int) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_optimizer_step(self, step: int, total_steps: int) -> None:
        """Update state that must advance once per optimizer step (EMA teachers, centers, queues).

        ``step`` is the number of optimizer steps taken so far (1 after the first step)."""


# Factories take ``(encoder, **hyper_parameters)``.
METHODS: Registry[Method] = Registry("method")
