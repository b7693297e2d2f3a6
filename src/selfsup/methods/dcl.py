"""DCL / DCLW: decoupled contrastive learning (Yeh et al., ECCV 2022).

SimCLR's two views and projection head with :func:`selfsup.losses.dcl`, NT-Xent without the positive
pair in the denominator (which removes the "negative-positive coupling" that makes SimCLR need large
batches). One method, ``dcl``: ``weight_sigma=None`` is DCL, ``weight_sigma=0.5`` is DCLW (the paper's
von Mises-Fisher weighting of the positive term), so the two share every other option and recipe.
Candidates are gathered from every process with gradients, as SimCLR's.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.losses import dcl
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.methods.simclr import project_two_views, simclr_projector


@METHODS.register("dcl")
class DCL(Method):
    """DCL and DCLW (Yeh et al. 2022) on SimCLR's architecture.

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: output size of the projection head (128, as SimCLR and the DCL paper).
        hidden_dim: hidden size of the head; None uses the encoder's ``embed_dim``.
        temperature: ``τ`` (0.1: the DCL paper's SimCLR setting and lightly's ``DCLLoss`` default).
        weight_sigma: None for DCL; ``σ`` of DCLW's weighting (0.5 in the paper) otherwise.
        gather_negatives: use the candidates of every process (default).
        head_last_bn: SimCLR's authors' head (a BatchNorm with scale after the last Linear, N(0, 0.01²)
            weights); default False, the head of the SimCLR paper's figure (Linear-BN-ReLU-Linear with a
            bias), as the DCL reimplementations (raminnakhli/Decoupled-Contrastive-Learning, lightly) use.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "simclr", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        temperature: float = 0.1,
        weight_sigma: float | None = None,
        gather_negatives: bool = True,
        head_last_bn: bool = False,
    ) -> None:
        super().__init__(encoder)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if weight_sigma is not None and weight_sigma <= 0:
            raise ConfigError(
                f"weight_sigma must be positive (0.5 for DCLW) or null for DCL, got {weight_sigma}"
            )
        self.projector = simclr_projector(encoder, projection_dim, hidden_dim, head_last_bn)
        self.temperature = temperature
        self.weight_sigma = weight_sigma
        self.gather_negatives = gather_negatives

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        h, z1, z2 = project_two_views(self.encoder, self.projector, views, "DCL")
        batch = views.batch_size
        z1_all, z2_all, offset = dist.gather_views(z1, z2) if self.gather_negatives else (z1, z2, 0)
        loss = dcl(
            z1,
            z2,
            self.temperature,
            weight_sigma=self.weight_sigma,
            z1_all=z1_all,
            z2_all=z2_all,
            offset=offset,
        )
        with torch.no_grad():
            positive = torch.nn.functional.cosine_similarity(z1.float(), z2.float()).mean()
        return MethodOutput(
            loss=loss,
            logs={"positive_similarity": positive},
            embeddings=z1.detach(),
            features=h[:batch].detach(),
        )
