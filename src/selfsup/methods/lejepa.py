"""LeJEPA: Lean Joint-Embedding Predictive Architecture (Balestriero & LeCun, 2025, arXiv:2511.08544).

Every view (2 global + several local crops in the paper) goes through the encoder and a projection
MLP; each view's projection is pulled towards the mean of the global views' projections, and SIGReg
pushes every view's projections towards an isotropic Gaussian (:func:`selfsup.losses.lejepa`). No
teacher, no stop-gradient, no queue: nothing persists across steps.

The SIGReg directions are drawn per step from a generator seeded by ``(seed, step)``, so every
process uses the same ones (the authors seed theirs with a step counter synchronised across ranks).
Distributed: the projections are gathered from every process *with gradients* and the loss is
computed on the global batch, the same on every rank, so N processes train exactly like one process
(the authors all-reduce the characteristic functions instead: the same statistic).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.heads import MLPHead
from selfsup.losses import lejepa_terms, random_directions
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.methods.crops import encode_crops


@METHODS.register("lejepa")
class LeJEPA(Method):
    """LeJEPA (Balestriero & LeCun 2025).

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: projector output (``proj_dim``: 128 in MINIMAL.md's ``ViTEncoder``, 16 in its
            command line).
        hidden_dim: projector hidden size (2048, MINIMAL.md).
        num_layers: Linear layers of the projector (3: torchvision ``MLP(512, [2048, 2048, proj_dim],
            norm_layer=BatchNorm1d)`` in MINIMAL.md, Linear-BN-ReLU twice then Linear).
        lambda_: SIGReg's weight λ; the prediction term gets ``1 - λ`` (0.05, the paper's default).
        num_slices: SIGReg directions per step (256: the paper's listing and MINIMAL.md).
        num_points: Epps-Pulley integration knots (17), on ``[0, t_max]``.
        t_max: end of the integration grid (3, the released ``EppsPulley``).
        seed: mixed with the step to seed the directions.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "dino", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        num_layers: int = 3,
        lambda_: float = 0.05,
        num_slices: int = 256,
        num_points: int = 17,
        t_max: float = 3.0,
        seed: int = 0,
    ) -> None:
        super().__init__(encoder)
        if not 0.0 <= lambda_ <= 1.0:
            raise ConfigError(f"lejepa: lambda_ must be in [0, 1], got {lambda_}")
        if num_slices < 1 or num_points < 2 or t_max <= 0:
            raise ConfigError(
                "lejepa: need num_slices >= 1, num_points >= 2 and t_max > 0, got "
                f"{num_slices}, {num_points}, {t_max}"
            )
        self.projector = MLPHead(encoder.embed_dim, hidden_dim, projection_dim, num_layers=num_layers)
        self.lambda_ = lambda_
        self.num_slices = num_slices
        self.num_points = num_points
        self.t_max = t_max
        self.seed = seed

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if len(views.inputs) < 2:
            raise ValueError("LeJEPA takes at least two views per sample")
        num_views, batch = len(views.inputs), views.batch_size
        h = encode_crops(self.encoder, views)
        # The projector runs once over every view (BatchNorm statistics over all of them), as MINIMAL.md.
        z = self.projector(h)  # (V·B, K)
        per_view = torch.stack(z.split(batch), dim=1)  # (B, V, K)
        if dist.is_distributed():
            per_view = dist.all_gather_with_grad(per_view)  # (W·B, V, K)
        generator = torch.Generator().manual_seed(self.seed * 2**32 + step.step)
        directions = random_directions(z.shape[1], self.num_slices, generator).to(z.device)
        prediction, regulariser = lejepa_terms(
            [per_view[:, v] for v in range(num_views)],
            directions,
            views.num_global,
            self.num_points,
            self.t_max,
        )
        loss = (1.0 - self.lambda_) * prediction + self.lambda_ * regulariser
        logs = {"prediction": prediction.detach(), "sigreg": regulariser.detach()}
        return MethodOutput(loss=loss, logs=logs, embeddings=z[:batch].detach(), features=h[:batch].detach())
