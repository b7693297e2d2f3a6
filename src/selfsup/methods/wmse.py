"""W-MSE: Whitening for Self-Supervised Representation Learning (Ermolov et al., ICML 2021).

Two views go through the encoder (one pass per view, as the authors' code) and a projection MLP
(one pass over both views); each view's projections are whitened (Cholesky) within random
sub-batches of ``whiten_size`` samples, and the loss is ``2 - 2·cos`` between the whitened views
(:func:`selfsup.losses.wmse`). Whitening scatters the embeddings over the sphere, which prevents
collapse without negatives, predictor or momentum encoder.

Distributed: the projections are gathered from every process *with gradients* and the global batch
is whitened, the same loss on every rank, so N processes train exactly like one process on the
global batch. The authors whiten per GPU (``WMSE.forward`` sees only its device's batch), which
makes their loss depend on how the batch is split; with one GPU, as in their CIFAR runs, the two agree.

The random sub-batches are drawn from a generator seeded by ``(seed, step)``: a run is repeatable
and every process draws the same permutation of the global batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from selfsup import dist
from selfsup.encoders.base import Encoder
from selfsup.errors import CollapseError, ConfigError
from selfsup.heads import MLPHead
from selfsup.losses import wmse
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views


@METHODS.register("wmse")
class WMSE(Method):
    """W-MSE 2 (Ermolov et al. 2021): two views, the authors' head and whitening.

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: whitened embedding size (``emb`` 64 in the authors' CIFAR commands).
        hidden_dim: hidden size of the head (``head_size`` 1024): Linear-BN-ReLU-Linear (``head_layers`` 2).
        whiten_size: sub-batch size for whitening (``w_size`` 128 in their CIFAR commands); must divide
            the global batch and exceed ``projection_dim`` (unless ``eps > 0``). 0 whitens the whole
            global batch at once (the authors' ``w_size=None``: the batch size).
        iterations: repeats with fresh sub-batches, averaged (``w_iter`` 1).
        eps: covariance shrinkage ``(1 - eps)·Σ + eps·I`` (``w_eps`` 0); > 0 keeps a singular
            covariance (collapsed embeddings) finite instead of failing.
        seed: mixed with the step to seed the sub-batch permutation.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "byol", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 64,
        hidden_dim: int = 1024,
        whiten_size: int = 128,
        iterations: int = 1,
        eps: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(encoder)
        if whiten_size < 0 or whiten_size == 1:
            raise ConfigError(f"wmse: whiten_size must be >= 2 (or 0 for the whole batch), got {whiten_size}")
        if 0 < whiten_size <= projection_dim and eps == 0:
            raise ConfigError(
                f"wmse: whiten_size={whiten_size} samples cannot be whitened in {projection_dim} dimensions "
                "(their covariance is singular): use whiten_size > projection_dim, or eps > 0"
            )
        if iterations < 1 or not 0.0 <= eps <= 1.0:
            raise ConfigError(f"wmse: need iterations >= 1 and 0 <= eps <= 1, got {iterations}, {eps}")
        self.projector = MLPHead(encoder.embed_dim, hidden_dim, projection_dim)
        self.whiten_size = whiten_size
        self.iterations = iterations
        self.eps = eps
        self.seed = seed

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global != 2 or len(views.inputs) != 2:
            raise ValueError("W-MSE takes exactly two global views per sample")
        batch = views.batch_size
        h1 = self.encoder(views.inputs[0], padding_mask=views.padding_mask(0)).pooled
        h2 = self.encoder(views.inputs[1], padding_mask=views.padding_mask(1)).pooled
        z = self.projector(torch.cat([h1, h2]))
        z1, z2 = z[:batch], z[batch:]
        z1_all, z2_all, _ = dist.gather_views(z1, z2)
        total = z1_all.shape[0]
        size = self.whiten_size or total
        if total % size != 0:
            raise ConfigError(
                f"wmse: whiten_size={size} must divide the global batch of {total} samples (per micro-batch "
                "with train.accumulate); set method.params.whiten_size to a divisor, or 0 for the whole batch"
            )
        generator = torch.Generator().manual_seed(self.seed * 2**32 + step.step)
        try:
            loss = wmse(z1_all, z2_all, size, self.iterations, self.eps, generator=generator)
        except ValueError as error:
            if "singular" not in str(error):
                raise
            raise CollapseError(
                f"wmse at step {step.step}: {error}. The batch's embeddings are collapsed or duplicated, "
                "or a "
                f"whitening sub-batch ({size} samples) is too small for {z1_all.shape[1]} dimensions; set "
                "method.eps (e.g. 1e-3) to shrink the covariance towards the identity, or use larger batches"
            ) from error
        return MethodOutput(loss=loss, embeddings=z1.detach(), features=h1.detach())
