"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

An online network (encoder → projector → predictor) regresses the projection that a slowly
moving EMA copy of itself (the target: encoder → projector) gives for the other view. No
negatives; the predictor and the EMA target prevent collapse. The target is updated once per
optimizer step, with the cosine momentum schedule of the paper, in :meth:`on_optimizer_step`:
the update after optimizer step ``k`` (counted from 0) uses ``tau(k / K)``, as the authors' code
(``target_ema(global_step)`` before the step counter is incremented), so the first update uses
the base momentum and the last one ``tau((K - 1) / K)`` (not a no-op).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from selfsup.encoders.base import Encoder
from selfsup.heads import EncoderWithHead, MLPHead
from selfsup.losses import byol as byol_loss
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.teacher import EMATeacher
from selfsup.train.schedules import cosine_momentum


@METHODS.register("byol")
class BYOL(Method):
    """BYOL (Grill et al. 2020).

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: projector/predictor output size (256 in the paper).
        hidden_dim: projector/predictor hidden size (4096 in the paper).
        base_momentum: target EMA decay at step 0 (0.996 in the paper).
        final_momentum: target EMA decay at the last step (1.0 in the paper).
    """

    default_view_policies: ClassVar[dict[str, str]] = {
        "image": "byol",
        "vector": "vector_noise",
        "audio": "byol_a",
    }

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ValueError(
                f"need 0 <= base_momentum <= final_momentum <= 1, got {base_momentum}, {final_momentum}"
            )
        self.projector = MLPHead(encoder.embed_dim, hidden_dim, projection_dim)
        self.predictor = MLPHead(projection_dim, hidden_dim, projection_dim)
        self.target = EMATeacher(self._online())
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.last_momentum = base_momentum  # the decay of the latest target update, for logging

    def _online(self) -> EncoderWithHead:
        # Built on demand so that the encoder is registered once (as `encoder`) in the state dict.
        return EncoderWithHead(self.encoder, self.projector)

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global != 2 or len(views.inputs) != 2:
            raise ValueError("BYOL takes exactly two global views per sample")
        (view1, view2), (pad1, pad2) = views.inputs, (views.padding_mask(0), views.padding_mask(1))
        # Each view separately, as in the authors' implementation (BatchNorm statistics per view); the
        # same operations as the online branch, with the first view's pooled output kept for the probe.
        h1 = self.encoder(view1, padding_mask=pad1).pooled
        p1 = self.predictor(self.projector(h1))
        p2 = self.predictor(self._online()(view2, pad2))
        t1, t2 = self.target(view1, pad1), self.target(view2, pad2)
        # The paper's symmetrized loss is the sum of the two directions (eq. 2 and L + L~).
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        logs = {"target_momentum": torch.tensor(self.last_momentum)}
        return MethodOutput(loss=loss, logs=logs, embeddings=p1.detach(), features=h1.detach())

    def on_optimizer_step(self, step: StepInfo) -> None:
        self.last_momentum = cosine_momentum(
            step.step, step.total_steps, self.base_momentum, self.final_momentum
        )
        self.target.update(self._online(), self.last_momentum)
