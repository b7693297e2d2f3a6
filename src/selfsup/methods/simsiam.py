"""SimSiam: exploring simple Siamese representation learning (Chen & He, CVPR 2021).

Two views share one encoder and projector; a small predictor maps one view's projection onto the
other's, which is held fixed by a stop-gradient. No negatives, no EMA target, no batch statistics in
the loss: each process averages its own samples' losses and DDP's gradient average is the global mean,
so nothing is gathered. The authors keep the predictor's learning rate constant (``--fix-pred-lr``, the
setting of their README and of the paper's best ImageNet row); :meth:`SimSiam.parameter_groups` marks
the predictor's groups with ``fixed_lr=True`` for that.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.encoders.base import Encoder
from selfsup.heads import MLPHead
from selfsup.losses import negative_cosine
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.train.optim import param_groups


@METHODS.register("simsiam")
class SimSiam(Method):
    """SimSiam (Chen & He 2021) with the authors' heads (facebookresearch/simsiam ``builder.py``).

    Projector: ``projector_layers - 1`` blocks of Linear(no bias)-BN-ReLU, then Linear and a BatchNorm
    without affine parameters (BN on every layer, the output included). Predictor: Linear(no bias)-BN-
    ReLU, then Linear with bias (a bottleneck). The authors' output Linear keeps a frozen bias, which the
    following BatchNorm cancels: ours has none.

    Args:
        encoder: any encoder of the Encoder contract.
        projection_dim: output size of the projector and the predictor (2048; solo-learn CIFAR: 2048).
        hidden_dim: width of the projector's hidden layers; None uses the encoder's ``embed_dim`` as the
            authors (2048 for a ResNet-50; solo-learn's CIFAR recipe: 2048 on a ResNet-18).
        predictor_hidden_dim: the predictor's bottleneck (512 in the paper and solo-learn).
        projector_layers: Linear layers in the projector (3 in the paper's ImageNet setting).
        fix_predictor_lr: give the predictor a constant learning rate (the base rate, neither warmed up
            nor decayed): the authors' ``--fix-pred-lr`` and solo-learn's ``static_lr``, through the
            ``fixed_lr`` flag of its parameter groups (see :meth:`parameter_groups`), which the trainer's
            schedule skips (:func:`selfsup.train.optim.set_learning_rate`).
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "simclr", "vector": "vector_noise"}

    def __init__(
        self,
        encoder: Encoder,
        projection_dim: int = 2048,
        hidden_dim: int | None = None,
        predictor_hidden_dim: int = 512,
        projector_layers: int = 3,
        fix_predictor_lr: bool = True,
    ) -> None:
        super().__init__(encoder)
        self.projector = MLPHead(
            encoder.embed_dim,
            hidden_dim or encoder.embed_dim,
            projection_dim,
            num_layers=projector_layers,
            last_bn=True,
        )
        self.predictor = MLPHead(projection_dim, predictor_hidden_dim, projection_dim)
        self.fix_predictor_lr = fix_predictor_lr

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.num_global != 2 or len(views.inputs) != 2:
            raise ValueError("SimSiam takes exactly two global views per sample")
        # Each view separately, as in the authors' code (BatchNorm statistics per view).
        h1 = self.encoder(views.inputs[0], padding_mask=views.padding_mask(0)).pooled
        z1 = self.projector(h1)
        z2 = self.projector(self.encoder(views.inputs[1], padding_mask=views.padding_mask(1)).pooled)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # negative_cosine detaches its target: the stop-gradient of the paper.
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        with torch.no_grad():
            # The paper's collapse indicator (sec. 4.1, fig. 2): per-channel std of the l2-normalized
            # output, averaged over channels; about 1/sqrt(projection_dim) when healthy, 0 when collapsed.
            z_std = F.normalize(z1.float(), dim=1).std(dim=0).mean()
        return MethodOutput(loss=loss, logs={"z_std": z_std}, embeddings=z1.detach(), features=h1.detach())

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The default groups (matrices decayed, norms and biases not) for the encoder and projector;
        with ``fix_predictor_lr`` the predictor's own groups, named ``predictor_*`` and flagged
        ``fixed_lr=True``: the trainer leaves their learning rate at the base rate."""
        if not self.fix_predictor_lr:
            return param_groups(self, weight_decay)
        rest = nn.ModuleDict({"encoder": self.encoder, "projector": self.projector})
        groups = param_groups(rest, weight_decay)
        for group in param_groups(self.predictor, weight_decay):
            groups.append({**group, "name": f"predictor_{group['name']}", "fixed_lr": True})
        return groups
