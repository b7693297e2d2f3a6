"""SimCLR: contrastive learning of visual representations (Chen et al., ICML 2020).

Two augmented views of each image go through the encoder and a projection MLP; the NT-Xent
loss pulls the two projections of an image together and pushes away the other ``2N - 2``
projections of the global batch. Negatives are gathered from every process with gradients
(``selfsup.dist.all_gather_with_grad``), so N processes train exactly like one process on the
global batch.
"""

from __future__ import annotations

import torch

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.heads import MLPHead
from selfsup.losses import nt_xent
from selfsup.methods.base import METHODS, Method, MethodOutput, Views


@METHODS.register("simclr")
class SimCLR(Method):
    """SimCLR (Chen et al. 2020) with the v1 projection head (Linear-BN-ReLU-Linear).

    Args:
        encoder: any image encoder of the Encoder contract.
        projection_dim: output size of the projection head (128 in the paper).
        hidden_dim: hidden size of the head; None uses the encoder's ``embed_dim`` as in the paper.
        temperature: NT-Xent temperature (0.5 for CIFAR-10 in the paper's appendix B.9).
        gather_negatives: use the negatives of every process (default, as in the paper).
    """

    default_view_policy = "simclr"

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        temperature: float = 0.5,
        gather_negatives: bool = True,
    ) -> None:
        super().__init__(encoder)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.projector = MLPHead(encoder.embed_dim, hidden_dim or encoder.embed_dim, projection_dim)
        self.temperature = temperature
        self.gather_negatives = gather_negatives

    def forward(self, views: Views, step: int) -> MethodOutput:
        if views.num_global != 2 or len(views.crops) != 2:
            raise ValueError("SimCLR takes exactly two global views per sample")
        batch = views.batch_size
        # One forward over both views, as in the reference implementation: BatchNorm statistics
        # are computed over all 2B images.
        z = self.projector(self.encoder(torch.cat(views.crops)).pooled)
        z1, z2 = z[:batch], z[batch:]
        if self.gather_negatives and dist.is_distributed():
            # One collective for both views: (B, 2, D) from every process, in rank order.
            gathered = dist.all_gather_with_grad(torch.stack([z1, z2], dim=1))
            z1_all, z2_all = gathered[:, 0], gathered[:, 1]
            offset = dist.rank() * batch
        else:
            z1_all, z2_all, offset = z1, z2, 0
        loss = nt_xent(z1, z2, self.temperature, z1_all=z1_all, z2_all=z2_all, offset=offset)
        with torch.no_grad():
            positive_similarity = torch.nn.functional.cosine_similarity(z1, z2).mean()
        return MethodOutput(
            loss=loss, logs={"positive_similarity": positive_similarity}, embeddings=z1.detach()
        )
