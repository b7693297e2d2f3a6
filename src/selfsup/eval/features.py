"""Feature extraction: run a frozen encoder over a uint8 image set and keep pooled features.

The features are what every probe works on (kNN, linear, clustering, …), so they are
extracted once, in eval mode, with the deterministic evaluation transform
(:func:`selfsup.augment.base.to_normalized_float`), and returned as float32 on the CPU where a
large set fits better than on an accelerator. Any layer can be extracted through the
encoder's ``hidden_states`` (the S3PRL-style contract of :mod:`selfsup.encoders.base`).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Sequence
from typing import overload

import torch
from torch import Tensor

from selfsup.augment.base import to_normalized_float
from selfsup.encoders.base import Encoder, pool_hidden_state


def _positive_int(name: str, value: object) -> int:
    try:
        number = operator.index(value)  # ints and numpy integers, not floats or bools
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _check_encoder_device(encoder: Encoder, device: torch.device) -> None:
    param = next(encoder.parameters(), None)
    if param is None:
        return
    same = param.device.type == device.type and (device.index is None or param.device.index == device.index)
    if not same:
        raise ValueError(
            f"the encoder is on {param.device} but extraction was asked to run on {device}; "
            f"move it first with encoder.to({str(device)!r})"
        )


def _check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty sequence of ints, got {layers!r}")
    count = num_layers + 1
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(
                f"layer {layer!r} does not exist: the encoder has {count} hidden states "
                f"(indices 0..{num_layers}, or negative from the end)"
            )
    return list(dict.fromkeys(layers))


@overload
def extract_features(
    encoder: Encoder,
    images: Tensor,
    *,
    size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = ...,
    device: str | torch.device = ...,
    layers: None = ...,
    amp_dtype: torch.dtype | None = ...,
) -> Tensor: ...


@overload
def extract_features(
    encoder: Encoder,
    images: Tensor,
    *,
    size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = ...,
    device: str | torch.device = ...,
    layers: Sequence[int],
    amp_dtype: torch.dtype | None = ...,
) -> dict[int, Tensor]: ...


@torch.no_grad()
def extract_features(
    encoder: Encoder,
    images: Tensor,
    *,
    size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    layers: Sequence[int] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> Tensor | dict[int, Tensor]:
    """Encode ``images`` ``(N, 3, H, W)`` uint8 in batches and return their pooled features.

    Each batch is moved to ``device`` (where the encoder must already be), scaled, resized to
    ``size`` x ``size`` (unless ``size`` is None) and normalized with ``mean``/``std``, then
    encoded in eval mode (under autocast with ``amp_dtype`` if given). Every module's
    training flag is restored afterwards.

    Returns ``(N, embed_dim)`` float32 on the CPU (``encoder(x).pooled``), or, when
    ``layers`` is given, ``{layer: (N, C_layer)}`` with ``hidden_states[layer]`` pooled by
    :func:`~selfsup.encoders.base.pool_hidden_state` (keys as given; negative indices count
    from the last layer). The result does not depend on ``batch_size``.
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images of shape (N, C, H, W), got {tuple(images.shape)} {images.dtype}; "
            "pass the decoded data set (ImageDataset.images), not normalized floats"
        )
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(
            f"mean and std need one value per channel ({images.shape[1]}), got {len(mean)} and {len(std)}"
        )
    batch_size = _positive_int("batch_size", batch_size)
    size = None if size is None else _positive_int("size", size)
    wanted = None if layers is None else _check_layers(layers, encoder.num_layers)
    dev = torch.device(device)
    _check_encoder_device(encoder, dev)

    n = images.shape[0]
    if n == 0 and wanted is None:
        return torch.zeros(0, encoder.embed_dim)
    # An empty batch is still run when layers are asked for: it is the only way to learn their
    # channel counts, and convolutions and norms accept a batch of zero.
    starts = range(0, n, batch_size) if n else [0]
    autocast = (
        torch.autocast(device_type=dev.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )

    flags = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    # Filled in place (allocated once the first batch tells the width) so that peak memory
    # stays at one copy of the features, not a list of chunks plus their concatenation.
    results: dict[int | None, Tensor] = {}
    try:
        for start in starts:
            batch = images[start : start + batch_size].to(dev, non_blocking=True)
            x = to_normalized_float(batch, tuple(mean), tuple(std), size)
            with autocast:
                out = encoder(x)
            named: dict[int | None, Tensor]
            if wanted is None:
                named = {None: out.pooled}
            else:
                named = {i: pool_hidden_state(out.hidden_states[i], out.padding_mask) for i in wanted}
            for key, feats in named.items():
                if key not in results:
                    results[key] = torch.empty(n, feats.shape[1], dtype=torch.float32)
                results[key][start : start + feats.shape[0]] = feats.float().cpu()
    finally:
        for module, training in flags:
            module.training = training

    if wanted is None:
        return results[None]
    return {layer: results[layer] for layer in wanted}
