"""The Encoder contract shared by every backbone of every modality.

An encoder maps a batch to an :class:`EncoderOutput`:

* ``pooled`` — ``(B, D)`` one vector per sample, ``D == encoder.embed_dim``;
* ``last_hidden_state`` — the last layer before pooling: ``(B, C, H, W)`` for convolutional
  image encoders, ``(B, T, D)`` for token encoders (ViT, audio, text, sequences);
* ``hidden_states`` — ``num_layers + 1`` tensors, the input embedding (stem) first and the
  last layer last, so any evaluator can probe any layer of any modality (S3PRL's upstream
  contract);
* ``padding_mask`` — ``(B, T)`` bool, True at padded positions, for variable-length inputs
  (None for fixed-size inputs).

Sizes and geometry are declared as attributes, so that no caller runs a dummy forward pass to
discover them: ``embed_dim``, ``num_layers``, ``modality``; for token encoders ``token_grid``
(e.g. ``(H/p, W/p)`` patches of a ViT) or ``frame_rate`` (output frames per second of audio), and
``output_lengths(lengths)`` mapping input lengths to output lengths; and ``mask_mode``, how a
token mask applies (:data:`MASK_MODES`). ``layer_id(parameter_name)`` places each parameter at a
depth, for layer-wise learning-rate decay when fine-tuning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.registry import Registry


@dataclass
class EncoderOutput:
    pooled: Tensor
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...]
    padding_mask: Tensor | None = None


# How an encoder applies a token mask: "none" (it cannot: CNNs, MLPs), "drop" (masked tokens are
# removed before the blocks, as MAE / I-JEPA do) or "replace" (masked tokens are replaced by a
# learned mask embedding and stay in the sequence, as data2vec / wav2vec 2.0 / HuBERT do).
MASK_MODES = ("none", "drop", "replace")
# The names encoders give their learned mask embeddings (see Encoder.mask_parameters).
MASK_PARAMETER_NAMES = ("mask_token", "mask_embedding")


class Encoder(nn.Module):
    """Base class: declares the attributes of the contract; subclasses implement ``forward``.

    ``forward(x, *, padding_mask=None, mask=None)``: ``mask`` (``(B, N)`` bool, True where a
    token is masked) is for masked-modelling methods and applies as ``mask_mode`` says; encoders
    whose ``mask_mode`` is ``"none"`` raise if given one. An encoder that can apply a mask in several
    ways lists them in ``mask_modes`` and takes ``forward(..., mask_mode=...)`` to choose one per call
    (``mask_mode`` is then the default); such an encoder's ``pooled`` covers only the tokens it kept
    or left unmasked. ``padding_mask`` (``(B, T)`` bool, True
    at padded input positions) is for variable-length inputs; the returned
    ``EncoderOutput.padding_mask`` marks the padded *output* positions, and ``pooled`` averages
    only the others.
    """

    embed_dim: int
    num_layers: int
    modality: str
    mask_mode: str = "none"
    # Every mask mode forward accepts as ``mask_mode=`` (a ViT drops tokens for MAE / I-JEPA and replaces
    # them for data2vec / iBOT); empty means only ``mask_mode``.
    mask_modes: tuple[str, ...] = ()
    token_grid: tuple[int, ...] | None = None
    frame_rate: float | None = None

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid output positions per sample for ``lengths`` valid input positions (``(B,)`` int64).

        The default (one output position per input position) fits encoders that keep the length;
        downsampling encoders (audio feature extractors, patching) override it.
        """
        return lengths

    def layer_id(self, name: str) -> int:
        """Depth of the parameter ``name`` (as in ``self.named_parameters()``), for layer-wise
        learning-rate decay: 0 for the stem / input embedding, ``i`` for the parameters that produce
        ``hidden_states[i]``, ``num_layers`` at most (a head on top is ``num_layers + 1``).

        The ids follow ``hidden_states``, as BEiT's ``get_layer_id_for_vit`` numbers a ViT (embedding
        0, block ``i`` -> ``i + 1``). This generic default reads the usual names: ``stem.*`` /
        ``embed*`` / ``patch_embed*`` / ``cls_token`` / ``pos_embed*`` are 0, ``(blocks|stages|layers).i.*``
        is ``i + 1``, anything else (e.g. a final norm) ``num_layers``. Encoders override it where
        their names differ.
        """
        if name.startswith(("stem.", "embed", "patch_embed", "cls_token", "pos_embed", "mask_token")):
            return 0
        match = _NUMBERED_BLOCK.match(name)
        if match:
            return min(int(match.group(1)) + 1, self.num_layers)
        return self.num_layers

    def mask_parameters(self) -> list[nn.Parameter]:
        """The learned mask embedding(s) that a ``"replace"`` mask uses (``mask_token`` /
        ``mask_embedding``): only masked-modelling methods train them, so the builder freezes them for the
        others (a parameter without a gradient would stall DDP)."""
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] in MASK_PARAMETER_NAMES]

    def forward(  # pragma: no cover - abstract
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        raise NotImplementedError


ENCODERS: Registry[Encoder] = Registry("encoder")

_NUMBERED_BLOCK = re.compile(r"^(?:blocks|stages|layers)\.(\d+)\.")


def numbered_layer_id(name: str, container: str, num_layers: int, owner: str) -> int:
    """``0`` for ``stem.*``, ``i + 1`` for ``<container>.i.*``; anything else is an error (exact ids)."""
    if name.startswith("stem."):
        return 0
    match = re.match(rf"^{container}\.(\d+)\.", name)
    if match is None or int(match.group(1)) >= num_layers:
        raise ValueError(f"{owner} has no parameter {name!r} to place at a layer")
    return int(match.group(1)) + 1


def pool_hidden_state(hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Reduce one hidden state to ``(B, C)``: global average over space or over unpadded tokens.

    Accepts ``(B, C, H, W)`` maps, ``(B, T, C)`` token sequences (with an optional ``(B, T)``
    padding mask, True = padded) and ``(B, C)`` vectors.
    """
    if hidden.ndim == 2:
        return hidden
    # Average in at least fp32 (bf16 sums over many positions lose precision); keep fp64 as is.
    if hidden.dtype not in (torch.float32, torch.float64):
        hidden = hidden.float()
    if hidden.ndim == 4:
        return hidden.mean(dim=(2, 3))
    if hidden.ndim == 3:
        if padding_mask is None:
            return hidden.mean(dim=1)
        keep = (~padding_mask).unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"cannot pool a hidden state of shape {tuple(hidden.shape)}")


def pool_unmasked(hidden: Tensor, padding_mask: Tensor | None, mask: Tensor) -> Tensor:
    """``(B, D)``: ``hidden`` ``(B, N, D)`` averaged over the positions neither padded nor masked (``mask``
    ``(B, N)``, True where masked): what a masked-modelling method reports as its ``MethodOutput.features``
    (masked positions hold the mask embedding's predictions, not a view of the input). A sample masked
    everywhere falls back to all its valid positions."""
    excluded = mask if padding_mask is None else mask | padding_mask
    fallback = padding_mask if padding_mask is not None else torch.zeros_like(mask)
    excluded = torch.where(excluded.all(dim=1, keepdim=True), fallback, excluded)
    return pool_hidden_state(hidden, excluded)


def check_image_batch(x: Tensor, in_channels: int) -> None:
    """Raise a clear error for input that is not ``(B, in_channels, H, W)`` floating point."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected images of shape (B, {in_channels}, H, W), got {tuple(x.shape)}; "
            "image encoders take normalized float batches (see selfsup.augment)"
        )
    if not torch.is_floating_point(x):
        raise TypeError(f"expected a floating-point image batch, got {x.dtype}; normalize uint8 images first")


def supported_mask_modes(encoder: Encoder) -> tuple[str, ...]:
    """The mask modes ``encoder`` can apply: its ``mask_modes``, else its single ``mask_mode``."""
    return tuple(getattr(encoder, "mask_modes", ())) or (getattr(encoder, "mask_mode", "none"),)


def missing_capabilities(encoder: Encoder, needs: tuple[str, ...]) -> list[str]:
    """What ``encoder`` lacks of ``needs``, the capabilities a method or view policy declares in its
    registry metadata (``needs=...``): an attribute name (``"local_features"``, ``"contextualize"``,
    ``"frontend"``) or ``"mask:<mode>"`` for a :data:`MASK_MODES` entry the encoder must apply."""
    missing = []
    for need in needs:
        if need.startswith("mask:"):
            if need.removeprefix("mask:") not in supported_mask_modes(encoder):
                missing.append(f"mask_mode {need.removeprefix('mask:')!r}")
        elif getattr(encoder, need, None) is None:
            missing.append(need)
    return missing


def require_capabilities(owner: str, encoder: Encoder, needs: tuple[str, ...]) -> None:
    """A ConfigError naming what ``encoder`` lacks of the capabilities ``owner`` (a method) needs."""
    missing = missing_capabilities(encoder, needs)
    if missing:
        raise ConfigError(
            f"{owner} needs an encoder with {', '.join(missing)}; {type(encoder).__name__} has none "
            "(the 'wav2vec2' encoder has them all)"
        )


def padding_mask_from_lengths(lengths: Tensor, max_length: int) -> Tensor:
    """``(B,)`` valid lengths → ``(B, max_length)`` bool, True at padded positions."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)
