"""Fine-tuning: the whole encoder and a linear head trained on labels, through the engine's loop.

The same loop as pretraining (resume, DDP, precision, checkpoints); only the method differs. The loss
is the cross-entropy of a linear head on the encoder's pooled output of the one view of each sample,
over the samples whose label is known (``-1`` is ignored; a batch with none gives a zero loss that
still reaches every parameter, so DDP's gradient sync stays complete). Under DDP the loss is
normalised by the global count of labelled samples, so N processes equal one process.

Layer-wise learning-rate decay as BEiT (Bao et al. 2022) and MAE (He et al. 2022; ``param_groups_lrd``
in facebookresearch/mae ``util/lr_decay.py``): a parameter at depth ``layer_id`` (the encoder's
:meth:`~selfsup.encoders.base.Encoder.layer_id`: 0 = stem / embedding ... ``num_layers``; the head is
``num_layers + 1``) gets ``lr_scale = layer_decay ** (num_layers + 1 - layer_id)``; norms and biases
get no weight decay, as in those references.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.augment import supervised as _supervised  # noqa: F401  (registers the supervised policies)
from selfsup.data.base import UNKNOWN_LABEL, DataInfo
from selfsup.encoders.base import Encoder
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views


def layer_decay_groups(
    named: list[tuple[str, nn.Parameter]], layer_of: dict[str, int], num_layers: int, decay: float, wd: float
) -> list[dict[str, Any]]:
    """Parameter groups per (depth, decayed or not) with ``lr_scale = decay ** (num_layers + 1 - depth)``;
    parameters with ``ndim <= 1`` (norms, biases) get no weight decay and no LARS adaptation."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        depth, decayed = layer_of[name], p.ndim > 1
        group = groups.setdefault(
            (depth, decayed),
            {
                "name": f"layer_{depth}_{'decay' if decayed else 'no_decay'}",
                "params": [],
                "weight_decay": wd if decayed else 0.0,
                "lars_exclude": not decayed,
                "lr_scale": decay ** (num_layers + 1 - depth),
            },
        )
        group["params"].append(p)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]


@METHODS.register("finetune", supervised=True)
class FineTune(Method):
    """Supervised fine-tuning of the encoder with a linear head.

    Args:
        encoder: any encoder of the Encoder contract.
        info: the training data's description (given by the builder): its ``classes`` set the head's size.
        num_classes: the head's size when the data names no classes (overrides ``info``).
        layer_decay: layer-wise learning-rate decay (1.0: none; MAE uses 0.65-0.75 for ViTs).
        label_smoothing: cross-entropy label smoothing (0: none; MAE's fine-tuning uses 0.1).
        head_init_std: the head's weights start from N(0, std^2), its bias at 0.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"image": "supervised", "vector": "vector_supervised"}

    def __init__(
        self,
        encoder: Encoder,
        info: DataInfo | None = None,
        num_classes: int | None = None,
        layer_decay: float = 1.0,
        label_smoothing: float = 0.0,
        head_init_std: float = 0.01,
    ) -> None:
        super().__init__(encoder)
        if num_classes is None:
            if info is None or not info.classes:
                raise ValueError(
                    "finetune needs the number of classes: labelled data whose source names its classes, "
                    "or method.num_classes"
                )
            num_classes = len(info.classes)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        self.layer_decay = layer_decay
        self.label_smoothing = label_smoothing

    def logits(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``(B, num_classes)`` class scores of encoder inputs ``x``."""
        return self.head(self.encoder(x, padding_mask=padding_mask).pooled)

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.labels is None:
            raise ValueError("finetune trains on labels, but the views carry none (views.labels is None)")
        h = self.encoder(views.inputs[0], padding_mask=views.padding_mask(0)).pooled
        logits = self.head(h).float()
        labels = views.labels
        keep = labels != UNKNOWN_LABEL
        losses = F.cross_entropy(
            logits, labels.clamp_min(0), reduction="none", label_smoothing=self.label_smoothing
        )
        total = (losses * keep).sum()
        count = keep.sum().float()
        if dist.is_distributed():
            # DDP averages gradients over W processes: W * local sum / global count is then the
            # gradient of the mean over the global batch.
            count = dist.all_reduce_mean(count) * dist.world_size()
            total = total * dist.world_size()
        loss = total / count.clamp_min(1.0)
        with torch.no_grad():
            correct = ((logits.argmax(dim=1) == labels) & keep).sum()
            top1 = 100.0 * correct / keep.sum().clamp_min(1)
        return MethodOutput(loss=loss, logs={"train_top1": top1}, embeddings=h.detach(), features=h.detach())

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Layer-wise decayed learning rates (see the module docstring); the head is at ``num_layers + 1``."""
        depth = self.encoder.num_layers
        named = list(self.named_parameters())
        layer_of = {name: depth + 1 for name, _ in named}  # the head
        for name, _ in named:
            if name.startswith("encoder."):
                layer_of[name] = self.encoder.layer_id(name.removeprefix("encoder."))
        return layer_decay_groups(named, layer_of, depth, self.layer_decay, weight_decay)
