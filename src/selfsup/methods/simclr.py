"""SimCLR: contrastive learning of visual representations (Chen et al., ICML 2020).

Two augmented views of each sample go through the encoder and a projection MLP; the NT-Xent
loss pulls the two projections of a sample together and pushes away the other ``2N - 2``
projections of the global batch. Negatives are gathered from every process with gradients
(``selfsup.dist.all_gather_with_grad``), so N processes train exactly like one process on the
global batch. Nothing here is image-specific: any encoder of the Encoder contract works, with the
view policy of its modality.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.heads import MLPHead
from selfsup.losses import nt_xent
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views

# The authors' head initialises its Linear layers from N(0, 0.01²) (``linear_layer`` in
# google-research/simclr model_util.py).
AUTHORS_HEAD_INIT_STD = 0.01


def simclr_projector(
    encoder: Encoder, projection_dim: int, hidden_dim: int | None, authors_head: bool
) -> MLPHead:
    """SimCLR's projection head on ``encoder``: the authors' (last BatchNorm with a scale, N(0, 0.01²)
    weights) when ``authors_head``, else the paper's figure (Linear-BN-ReLU-Linear with a bias)."""
    return MLPHead(
        encoder.embed_dim,
        hidden_dim or encoder.embed_dim,
        projection_dim,
        last_bn=authors_head,
        last_bn_scale=authors_head,
        init_std=AUTHORS_HEAD_INIT_STD if authors_head else None,
    )


def project_two_views(
    encoder: Encoder, projector: nn.Module, views: Views, name: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(h (2B, D) pooled, z1 (B, P), z2 (B, P))``: both views in one encoder pass, as the reference
    implementation (BatchNorm statistics over all 2B samples), then the projector."""
    if views.num_global != 2 or len(views.inputs) != 2:
        raise ValueError(f"{name} takes exactly two global views per sample")
    x, padding = views.global_batch()
    h = encoder(x, padding_mask=padding).pooled
    z = projector(h)
    return h, z[: views.batch_size], z[views.batch_size :]


@METHODS.register("simclr")
class SimCLR(Method):
    """SimCLR (Chen et al. 2020) with the authors' projection head.

    The head is the one of the authors' code (``projection_head``, ``proj_head_mode=nonlinear``):
    Linear-BN-ReLU, then Linear followed by a BatchNorm with a learnable scale and no shift; Linear
    weights start from N(0, 0.01²).

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: output size of the projection head (128 in the paper).
        hidden_dim: hidden size of the head; None uses the encoder's ``embed_dim`` as in the paper.
        temperature: NT-Xent temperature. 0.1 is the default of the authors' ``run.py`` (their ImageNet
            setting) and was the best of {0.05, 0.1, 0.2, 0.5} for vectors (bench/RESULTS.md, HIGGS);
            the paper's CIFAR-10 runs use 0.5 (appendix B.9, recipe ``simclr_cifar10``).
        gather_negatives: use the negatives of every process (default, as in the paper).
        head_last_bn: the BatchNorm (with scale) on the head's last layer, as the authors' code;
            False gives the paper's figure (Linear-BN-ReLU-Linear with a bias).
        loss_scale: multiplies the loss. Our NT-Xent is the paper's mean over the 2N anchors; the
            authors' code returns the sum of the two directions, twice as large: ``loss_scale=2``
            reproduces their gradients, which matters with weight decay (LARS normalizes the step
            size, not the balance between the loss gradient and the decay term).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "simclr", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        temperature: float = 0.1,
        gather_negatives: bool = True,
        head_last_bn: bool = True,
        loss_scale: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if loss_scale <= 0:
            raise ValueError(f"loss_scale must be positive, got {loss_scale}")
        self.projector = simclr_projector(encoder, projection_dim, hidden_dim, head_last_bn)
        self.temperature = temperature
        self.gather_negatives = gather_negatives
        self.loss_scale = loss_scale

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        h, z1, z2 = project_two_views(self.encoder, self.projector, views, "SimCLR")
        batch = views.batch_size
        z1_all, z2_all, offset = dist.gather_views(z1, z2) if self.gather_negatives else (z1, z2, 0)
        loss = nt_xent(z1, z2, self.temperature, z1_all=z1_all, z2_all=z2_all, offset=offset)
        with torch.no_grad():
            positive_similarity = torch.nn.functional.cosine_similarity(z1, z2).mean()
        return MethodOutput(
            loss=loss * self.loss_scale if self.loss_scale != 1.0 else loss,
            logs={"positive_similarity": positive_similarity},
            embeddings=z1.detach(),
            features=h[:batch].detach(),
        )
