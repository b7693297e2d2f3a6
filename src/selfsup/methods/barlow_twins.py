"""Barlow Twins: self-supervised learning via redundancy reduction (Zbontar et al., ICML 2021).

Two views of each sample go through the encoder and a wide projector; the loss drives the
cross-correlation matrix of the two views' standardized projections towards the identity (invariance
on the diagonal, decorrelation off it). No negatives, no predictor, no EMA target. The statistics are
those of the global batch: projections are gathered from every process with gradients and each
process evaluates the loss on the whole batch, so N processes train exactly like one (the authors'
plain ``all_reduce`` of the matrix gives a gradient ``1/N`` of that: see
:func:`selfsup.losses.barlow_twins`). Nothing here is image-specific.
"""

from __future__ import annotations

from typing import ClassVar

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.heads import MLPHead
from selfsup.losses import barlow_twins_terms
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views


def redundancy_projector(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> MLPHead:
    """The Barlow Twins / VICReg projector: ``num_layers - 1`` blocks of Linear-BN-ReLU, then a Linear
    without bias and without BatchNorm (facebookresearch/barlowtwins and /vicreg: the last layer of
    ``--projector`` / ``--mlp 8192-8192-8192`` has ``bias=False``; both losses cancel a bias anyway,
    since they only see batch-centred statistics)."""
    return MLPHead(in_dim, hidden_dim, out_dim, num_layers=num_layers, last_bias=False)


@METHODS.register("barlow_twins")
class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al. 2021) with the authors' projector.

    Args:
        encoder: any encoder of the Encoder contract.
        hidden_dim: width of the projector's hidden layers (8192 in the paper and the authors' code;
            solo-learn's CIFAR recipe: 2048).
        projection_dim: output size of the projector, the side of the cross-correlation matrix (8192;
            solo-learn CIFAR: 2048).
        num_layers: Linear layers in the projector (3 in the paper).
        lambda_: weight of the off-diagonal term. 0.0051 is the authors' ``main.py`` ``--lambd`` (and
            solo-learn's default); the paper's text and the loss function's default say 5e-3.
        scale_loss: multiplies the loss (1.0: the authors' current code, which has no loss scale;
            solo-learn's CIFAR recipe uses 0.1, its default is 0.024, the authors' first release 1/32).
            With SGD it scales every step; with LARS it shifts the balance against weight decay and scales
            the steps of norms and biases (which LARS does not adapt).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "byol", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        hidden_dim: int = 8192,
        projection_dim: int = 8192,
        num_layers: int = 3,
        lambda_: float = 0.0051,
        scale_loss: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        if lambda_ < 0:
            raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
        if scale_loss <= 0:
            raise ValueError(f"scale_loss must be positive, got {scale_loss}")
        self.projector = redundancy_projector(encoder.embed_dim, hidden_dim, projection_dim, num_layers)
        self.lambda_ = lambda_
        self.scale_loss = scale_loss

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global != 2 or len(views.inputs) != 2:
            raise ValueError("Barlow Twins takes exactly two global views per sample")
        # Each view separately, as in the authors' code (BatchNorm statistics per view).
        h1 = self.encoder(views.inputs[0], padding_mask=views.padding_mask(0)).pooled
        z1 = self.projector(h1)
        z2 = self.projector(self.encoder(views.inputs[1], padding_mask=views.padding_mask(1)).pooled)
        on, off = barlow_twins_terms(*dist.gather_views(z1, z2)[:2])
        loss = (on + self.lambda_ * off) * self.scale_loss
        logs = {"on_diagonal": on.detach(), "off_diagonal": off.detach()}
        return MethodOutput(loss=loss, logs=logs, embeddings=z1.detach(), features=h1.detach())
