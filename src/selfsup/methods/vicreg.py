"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022).

Two views go through the encoder and a wide expander; the loss pulls the two embeddings of a sample
together (invariance), keeps every dimension's standard deviation above 1 over the batch (variance)
and decorrelates the dimensions (covariance). No negatives, no predictor, no EMA target. As the
authors' ``FullGatherLayer``, the embeddings are gathered from every process with gradients and the
loss is evaluated on the global batch, so N processes train exactly like one. Nothing here is
image-specific.
"""

from __future__ import annotations

from typing import ClassVar

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.losses import vicreg_terms
from selfsup.methods.barlow_twins import redundancy_projector
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views


@METHODS.register("vicreg")
class VICReg(Method):
    """VICReg (Bardes et al. 2022) with the authors' expander.

    Args:
        encoder: any encoder of the Encoder contract.
        hidden_dim: width of the expander's hidden layers (8192 in the paper and the authors'
            ``--mlp 8192-8192-8192``; solo-learn's CIFAR recipe: 2048).
        projection_dim: output size of the expander (8192; solo-learn CIFAR: 2048).
        num_layers: Linear layers in the expander (3), the last one without bias or BatchNorm.
        sim_coeff, std_coeff, cov_coeff: weights of the invariance, variance and covariance terms
            (25, 25, 1 in the paper and the authors' code). solo-learn sums the two views' variance terms
            where the authors average them: its ``var_loss_weight`` 25 is ``std_coeff=50`` here.

    Logs the three unweighted terms (``invariance``, ``variance``, ``covariance``) of the global batch.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "byol", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        hidden_dim: int = 8192,
        projection_dim: int = 8192,
        num_layers: int = 3,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.projector = redundancy_projector(encoder.embed_dim, hidden_dim, projection_dim, num_layers)
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global != 2 or len(views.inputs) != 2:
            raise ValueError("VICReg takes exactly two global views per sample")
        # Each view separately, as in the authors' code (BatchNorm statistics per view).
        h1 = self.encoder(views.inputs[0], padding_mask=views.padding_mask(0)).pooled
        z1 = self.projector(h1)
        z2 = self.projector(self.encoder(views.inputs[1], padding_mask=views.padding_mask(1)).pooled)
        invariance, variance, covariance = vicreg_terms(*dist.gather_views(z1, z2)[:2])
        loss = self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance
        logs = {
            "invariance": invariance.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
        }
        return MethodOutput(loss=loss, logs=logs, embeddings=z1.detach(), features=h1.detach())
