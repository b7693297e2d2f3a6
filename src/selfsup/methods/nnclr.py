"""NNCLR: nearest-neighbour contrastive learning (Dwibedi et al., ICCV 2021).

SimCLR with a support set: the positive of a sample is not its other view but the nearest neighbour of
its projection among the projections of past batches (a FIFO queue, the support set), which gives
more semantic variation than augmentation alone. The neighbour carries no gradient; the prediction of
the other view is pulled towards it and pushed away from the predictions of the other samples of the
global batch. The support set is a :class:`~selfsup.methods.moco.KeyQueue`, updated once per optimizer
step from the projections of every micro-batch and process, so it is identical on every rank.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.heads import MLPHead
from selfsup.losses import info_nce
from selfsup.losses.contrastive import l2_normalize
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.methods.moco import KeyQueue


@METHODS.register("nnclr")
class NNCLR(Method):
    """NNCLR (Dwibedi et al. 2021).

    ``z = projector(encoder(x))``, ``p = predictor(z)`` for each view (one encoder pass per view);
    ``NN(z)`` is the support-set row of highest cosine similarity with ``z``. The loss is the paper's eq. 2
    symmetrized, as solo-learn's ``nnclr_loss_func`` (``solo/losses/nnclr.py``) computes it::

        0.5 · [info_nce(NN(z1), p2_all, τ) + info_nce(NN(z2), p1_all, τ)]

    i.e. the cross-entropy of ``NN(z1)_i · p̂2_j / τ`` over the ``j`` of the global batch with target
    ``j = i`` (predictions gathered from every process with gradients). lightly's NNCLR example uses its
    full NT-Xent instead (negatives within each view too); we follow the paper's equation. Only view 1's
    normalized projections enter the support set (solo-learn, and lightly's ``update=True`` on one view).

    Heads follow the paper's implementation details: a 3-layer projector ``[2048, 2048, d]`` with BatchNorm
    after every layer (the last one without affine parameters here; solo-learn's has them) and a 2-layer
    predictor ``[4096, d]``, ``d = 256``.

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: ``d`` (256).
        hidden_dim: projector hidden size (2048).
        predictor_hidden_dim: predictor hidden size (4096).
        queue_size: support-set size (98,304 in the paper; solo-learn's CIFAR recipe: 65,536).
        temperature: ``τ`` (0.1 in the paper; solo-learn's CIFAR recipe: 0.2).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "byol", "vector": "vector_noise"}
    ddp_options: ClassVar[dict[str, object]] = {"broadcast_buffers": False}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 256,
        hidden_dim: int = 2048,
        predictor_hidden_dim: int = 4096,
        queue_size: int = 98304,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(encoder)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.projector = MLPHead(encoder.embed_dim, hidden_dim, projection_dim, num_layers=3, last_bn=True)
        self.predictor = MLPHead(projection_dim, predictor_hidden_dim, projection_dim)
        self.support = KeyQueue(queue_size, projection_dim)
        self.temperature = temperature

    @torch.no_grad()
    def nearest_neighbour(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, D)`` support-set rows nearest (cosine) to ``z``, and their similarity ``(B,)``; in fp32
        (autocast off), so that near ties among the K rows are not decided by bf16 rounding."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            similarity = l2_normalize(z.detach().float()) @ self.support.keys.T  # (B, K)
        best, index = similarity.max(dim=1)
        return self.support.keys[index], best

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global != 2 or len(views.inputs) != 2:
            raise ValueError("NNCLR takes exactly two global views per sample")
        (x1, x2), (pad1, pad2) = views.inputs, (views.padding_mask(0), views.padding_mask(1))
        h1 = self.encoder(x1, padding_mask=pad1).pooled
        z1 = self.projector(h1)
        z2 = self.projector(self.encoder(x2, padding_mask=pad2).pooled)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        nn1, similarity = self.nearest_neighbour(z1)
        nn2, _ = self.nearest_neighbour(z2)
        p1_all, p2_all, offset = dist.gather_views(p1, p2)
        loss = 0.5 * (
            info_nce(nn1, p2_all, temperature=self.temperature, offset=offset)
            + info_nce(nn2, p1_all, temperature=self.temperature, offset=offset)
        )
        if self.training:
            self.support.stash(l2_normalize(z1.detach().float()))
        logs = {"nn_similarity": similarity.mean()}
        return MethodOutput(loss=loss, logs=logs, embeddings=z1.detach(), features=h1.detach())

    def on_optimizer_step(self, step: StepInfo) -> None:
        self.support.flush()
