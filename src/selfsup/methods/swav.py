"""SwAV: Swapping Assignments between Views (Caron et al., NeurIPS 2020).

Every crop goes through the encoder, a projection MLP, L2 normalisation and a bank of prototypes
(a Linear layer without bias whose rows are kept unit-norm), giving ``(B, K)`` cosine scores. For
each assigned crop (the two global crops), Sinkhorn-Knopp turns the scores of the *global* batch
into equipartitioned soft codes; the loss predicts each crop's code from the scores of every other
crop (:func:`selfsup.losses.swav`). Multi-crop: the global crops share one encoder pass, the local
crops of one size another, as the authors' resolution groups; the head then runs once on all crops.

State, changed only in :meth:`SwAV.on_optimizer_step` (once per optimizer step, whatever the
accumulation):

* the prototypes are L2-normalised after every optimizer step and at construction. The authors
  normalise at the start of every iteration; that is the same weights at every forward.
* the queue (``queue_size > 0``): from step ``queue_start`` on, the detached projections of the
  assigned crops of the global batch (gathered from every process, so every rank's queue is the
  same) are pushed, newest first, once per optimizer step; once full it is used: its scores against
  the current prototypes are prepended to the batch's before Sinkhorn-Knopp, as the authors'. The
  authors keep a queue per GPU of ``queue_length / world_size`` local rows; the union is the same.

The prototypes' gradients are cancelled in :meth:`SwAV.before_optimizer_step` for the first
``freeze_prototypes_steps`` optimizer steps (the authors' ``freeze_prototypes_niters``: 313, one
ImageNet epoch at batch 4096; a number of steps, since the method has no epochs, or a float in
``[0, 1)``: a fraction of the run, as DINO's ``freeze_last_layer``). Cancelled as the
authors do, by setting the gradient to None: the optimizer then also skips their weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.heads import MLPHead
from selfsup.losses import sinkhorn_knopp
from selfsup.losses import swav as swav_loss
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.methods.crops import encode_crops
from selfsup.train.schedules import steps_of


@METHODS.register("swav")
class SwAV(Method):
    """SwAV (Caron et al. 2020) with the authors' head, prototypes, Sinkhorn-Knopp and queue.

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: output of the projection head (``feat_dim`` 128 in the authors' code).
        hidden_dim: hidden size of the head (``hidden_mlp`` 2048): Linear-BN-ReLU-Linear.
        num_prototypes: ``nmb_prototypes`` (3000).
        temperature: softmax temperature of the swapped prediction (0.1).
        epsilon: Sinkhorn-Knopp regularisation (0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        crops_for_assign: the crops whose codes are computed ((0, 1): the two global crops).
        queue_size: rows of the queue per assigned crop (the authors' ``queue_length``; 0 = no queue,
            their default; 3840 in their small-batch and solo-learn's CIFAR runs).
        queue_start: the optimizer step from which the queue is filled (the authors count epochs,
            ``epoch_queue_starts``); it is used once full.
        freeze_prototypes_steps: optimizer steps during which the prototypes get no update (313); a
            float in ``[0, 1)`` is a fraction of ``total_steps``.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "swav", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
        queue_size: int = 0,
        queue_start: int = 0,
        freeze_prototypes_steps: float = 313,
    ) -> None:
        super().__init__(encoder)
        crops = tuple(int(c) for c in crops_for_assign)
        if not crops or len(set(crops)) != len(crops) or min(crops) < 0:
            raise ConfigError(f"swav: crops_for_assign must name distinct crops (0 = first), got {crops}")
        for name, value in (("queue_size", queue_size), ("queue_start", queue_start)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"swav: {name} must be an integer >= 0, got {value!r}")
        freeze = freeze_prototypes_steps
        if (
            isinstance(freeze, bool)
            or not isinstance(freeze, (int, float))
            or not 0 <= freeze < math.inf
            or (isinstance(freeze, float) and freeze >= 1 and not freeze.is_integer())
        ):
            raise ConfigError(
                f"swav: freeze_prototypes_steps={freeze!r} must be a number of steps (an integer >= 0) or a "
                "fraction of the run in [0, 1)"
            )
        if temperature <= 0 or epsilon <= 0 or sinkhorn_iterations < 1:
            raise ConfigError(
                "swav: temperature and epsilon must be positive and sinkhorn_iterations >= 1, got "
                f"{temperature}, {epsilon}, {sinkhorn_iterations}"
            )
        self.projector = MLPHead(encoder.embed_dim, hidden_dim, projection_dim)
        self.prototypes = nn.Linear(projection_dim, num_prototypes, bias=False)
        self._normalize_prototypes()
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.crops_for_assign = crops
        self.queue_size = queue_size
        self.queue_start = queue_start
        self.freeze_prototypes_steps = freeze_prototypes_steps
        # (assigned crops, queue rows, projection_dim), newest rows first; `queue_rows` of them are filled.
        self.register_buffer("queue", torch.zeros(len(crops), queue_size, projection_dim))
        self.register_buffer("queue_rows", torch.zeros((), dtype=torch.int64))
        # Detached, gathered projections of the assigned crops, (crops, W·B, D) per micro-batch, pushed
        # into the queue in on_optimizer_step.
        self._pending: list[Tensor] = []

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1, p=2))

    def _queue_in_use(self, step: StepInfo) -> bool:
        return (
            self.queue_size > 0 and step.step >= self.queue_start and int(self.queue_rows) >= self.queue_size
        )

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        num_crops, batch = len(views.inputs), views.batch_size
        if num_crops < 2 or max(self.crops_for_assign) >= num_crops:
            raise ConfigError(
                f"swav: crops_for_assign={self.crops_for_assign} needs more than {num_crops} views; use a "
                "multi-crop view policy (augment.policy=swav) or assign crops that exist"
            )
        h = encode_crops(self.encoder, views)
        # The head runs once on every crop, as the authors' forward_head on the concatenated features.
        z = F.normalize(self.projector(h), dim=1, p=2)
        scores = self.prototypes(z).split(batch)
        use_queue = self._queue_in_use(step)
        queued = self.queue_size if use_queue else 0
        offset = queued + dist.rank() * batch
        codes = []
        with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
            for i, crop in enumerate(self.crops_for_assign):
                # Codes are targets: a gather without gradient is enough (every rank gets the same codes).
                everything = dist.all_gather_with_grad(scores[crop].detach().float())
                if use_queue:
                    everything = torch.cat([self.queue[i] @ self.prototypes.weight.float().T, everything])
                q = sinkhorn_knopp(everything, self.epsilon, self.sinkhorn_iterations)
                codes.append(q[offset : offset + batch])
        loss = swav_loss(scores, codes, self.temperature, self.crops_for_assign)
        if (
            self.queue_size > 0
            and step.step >= self.queue_start
            and self.training
            and torch.is_grad_enabled()
        ):
            assigned = torch.stack(
                [z[c * batch : (c + 1) * batch].detach().float() for c in self.crops_for_assign]
            )
            # (B, crops, D) gathered along the batch → (crops, W·B, D).
            self._pending.append(
                dist.all_gather_with_grad(assigned.transpose(0, 1).contiguous()).transpose(0, 1)
            )
        logs = {"queue_used": torch.tensor(float(use_queue))}
        return MethodOutput(loss=loss, logs=logs, embeddings=z[:batch].detach(), features=h[:batch].detach())

    def before_optimizer_step(self, step: StepInfo) -> None:
        if step.step < steps_of(self.freeze_prototypes_steps, step.total_steps):
            for p in self.prototypes.parameters():
                p.grad = None

    @torch.no_grad()
    def on_optimizer_step(self, step: StepInfo) -> None:
        self._normalize_prototypes()
        pending, self._pending = self._pending, []
        for rows in pending:
            n = min(rows.shape[1], self.queue_size)
            # Shift the older rows back and put the newest in front, as the authors.
            self.queue[:, n:] = self.queue[:, : self.queue_size - n].clone()
            self.queue[:, :n] = rows[:, :n].to(self.queue.dtype)
            self.queue_rows.fill_(min(int(self.queue_rows) + n, self.queue_size))
