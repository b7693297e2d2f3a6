"""Multi-crop encoding shared by the methods that take local crops (DINO, SwAV, LeJEPA)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.views import Views


def encode_crops(encoder: nn.Module, views: Views) -> Tensor:
    """The pooled encoder outputs of every view, ``(V·B, D)`` in view order.

    The global views go through the encoder in one pass (BatchNorm statistics over all of them);
    each run of consecutive local views of one shape (and without padding) in another, as SwAV's and
    DINO's multi-crop wrappers group crops by resolution.
    """
    x, padding = views.global_batch()
    pooled = [encoder(x, padding_mask=padding).pooled]
    index = views.num_global
    while index < len(views.inputs):
        end = index + 1
        if views.padding_mask(index) is None:
            shape = views.inputs[index].shape
            while (
                end < len(views.inputs)
                and views.inputs[end].shape == shape
                and views.padding_mask(end) is None
            ):
                end += 1
            pooled.append(encoder(torch.cat(views.inputs[index:end])).pooled)
        else:
            pooled.append(encoder(views.inputs[index], padding_mask=views.padding_mask(index)).pooled)
        index = end
    return torch.cat([p.float() if p.dtype != torch.float64 else p for p in pooled])
