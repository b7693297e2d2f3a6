"""wav2vec 2.0 / HuBERT-style speech encoder: convolutional feature extractor + Transformer (``wav2vec2``).

Architecture of Baevski et al. 2020 ("wav2vec 2.0", fairseq ``fairseq/models/wav2vec/wav2vec2.py``)
and Hsu et al. 2021 (HuBERT, same backbone), laid out so that every parameter maps onto Hugging Face
transformers' ``Wav2Vec2Model`` / ``HubertModel`` by a renaming of keys
(:mod:`selfsup.interop.hf_speech`):

1. **Feature extractor**: 7 convolutions of ``conv_dim`` channels, kernels (10, 3, 3, 3, 3, 2, 2),
   strides (5, 2, 2, 2, 2, 2, 2) — 400 samples of receptive field, 320 samples (20 ms at 16 kHz)
   between frames — each followed by GELU; ``conv_norm="group"`` puts a GroupNorm with one group per
   channel on the first layer only (wav2vec 2.0 Base, HuBERT Base: fairseq ``extractor_mode=default``),
   ``"layer"`` a LayerNorm over channels after every convolution (Large / "stable": ``layer_norm``).
2. **Feature projection**: LayerNorm over ``conv_dim`` (its output is ``LocalFeatures.features``,
   fairseq's ``unmasked_features``, the quantizer's input) → Linear to ``embed_dim`` → dropout
   (``LocalFeatures.projected``, the Transformer's input).
3. **Context network**: masked frames replaced by ``mask_embedding``; padded frames zeroed (fairseq's
   ``x[padding_mask] = 0``); a convolutional relative positional embedding (Conv1d, kernel 128,
   16 groups, padding 64, weight norm over dim 2, the last output frame removed for an even kernel,
   GELU) added to the input; then ``layer_norm_first=False`` (Base): encoder LayerNorm, dropout,
   post-LN blocks; or ``True`` (Large / stable): dropout, pre-LN blocks, final LayerNorm.
   A block is self-attention (q, k, v, out projections) → dropout → residual (→ LN for post-LN) and a
   GELU FFN → dropout → residual (→ LN).

``hidden_states`` (``num_layers + 1`` entries, as Hugging Face's ``output_hidden_states``): entry 0 is
the input of the first block (post-LN: after the encoder LayerNorm; pre-LN: pos-emb added, no norm),
entry ``i`` the output of block ``i``; for pre-LN the last entry has the final LayerNorm applied (the
intermediate ones are the un-normalized residual stream), again as Hugging Face.

Padding (a deliberate difference from fairseq and transformers, which normalize over the padded zeros
too): the first layer's GroupNorm takes its statistics over each sample's valid samples only, the
positional convolution sees zeros at padded frames, attention ignores padded keys, so the valid
frames and the pooled output of a sample are the same alone and padded in a batch. Without padding the
computation equals Hugging Face's exactly (tested to fp32 tolerance).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.base import DataInfo
from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    padding_mask_from_lengths,
    pool_hidden_state,
)
from selfsup.registry import suggest

# fairseq's default conv_feature_layers "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2".
CONV_KERNELS = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)
CONV_NORMS = ("group", "layer")
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class Wav2Vec2Config:
    """Every architectural choice of :class:`Wav2Vec2Encoder` (what interop maps onto a transformers config).

    Dropouts are fairseq's wav2vec 2.0 Base pretraining values (``dropout``/``attention_dropout``/
    ``dropout_input`` 0.1, ``activation_dropout`` 0); ``layerdrop`` is 0 here (fairseq Base: 0.05), since
    skipping blocks leaves parameters without gradients under DDP. ``feature_grad_mult`` scales the
    gradient reaching the convolutions (fairseq Base recipes: 0.1; 1.0 here, the plain gradient).
    """

    embed_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 1024
    conv_dim: int = 256
    conv_norm: str = "group"
    conv_bias: bool = False
    layer_norm_first: bool = False
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feature_dropout: float = 0.1
    layerdrop: float = 0.0
    feature_grad_mult: float = 1.0
    sample_rate: float = 16000.0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_layers", "num_heads", "ffn_dim", "conv_dim", "pos_conv_kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"wav2vec2: {name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"wav2vec2: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        groups = self.pos_conv_groups
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or self.embed_dim % groups:
            raise ValueError(
                f"wav2vec2: pos_conv_groups must divide embed_dim {self.embed_dim}, got {groups!r}"
            )
        if self.conv_norm not in CONV_NORMS:
            raise ValueError(
                f"wav2vec2: conv_norm must be one of {CONV_NORMS}, got {self.conv_norm!r}."
                f"{suggest(str(self.conv_norm), CONV_NORMS)}"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout", "feature_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"wav2vec2: {name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 <= self.feature_grad_mult <= 1.0:
            raise ValueError(f"wav2vec2: feature_grad_mult must be in [0, 1], got {self.feature_grad_mult!r}")
        if not self.sample_rate > 0:
            raise ValueError(f"wav2vec2: sample_rate must be positive, got {self.sample_rate!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SIZES: dict[str, dict[str, int]] = {
    # The CPU benchmark size: 4 blocks x 256, conv 7 x 256.
    "tiny": {"num_layers": 4, "embed_dim": 256, "num_heads": 4, "ffn_dim": 1024, "conv_dim": 256},
    "small": {"num_layers": 8, "embed_dim": 512, "num_heads": 8, "ffn_dim": 2048, "conv_dim": 512},
    # wav2vec 2.0 Base / HuBERT Base (Baevski et al. 2020, table 1): 94.4M parameters without the quantizer.
    "base": {"num_layers": 12, "embed_dim": 768, "num_heads": 12, "ffn_dim": 3072, "conv_dim": 512},
}


@dataclass
class LocalFeatures:
    """The convolutional half of the encoder.

    features: ``(B, F, conv_dim)`` conv features after the feature LayerNorm (fairseq ``unmasked_features``).
    projected: ``(B, F, embed_dim)`` after the projection (the Transformer's input; its input dropout,
        fairseq ``dropout_input``, is applied in :meth:`Wav2Vec2Encoder.contextualize`, so that data2vec's
        teacher gets these features undropped as fairseq's ``pre_encoder_features``).
    padding_mask: ``(B, F)`` bool, True at padded frames; None when nothing is padded.
    conv_features: ``(B, F, conv_dim)`` the conv output before the feature LayerNorm, whose mean square is
        wav2vec 2.0's and HuBERT's feature penalty (fairseq ``features_pen``).
    """

    features: Tensor
    projected: Tensor
    padding_mask: Tensor | None
    conv_features: Tensor | None = None


@dataclass
class ContextOutput:
    """The Transformer half: the encoder output and every block's FFN output before its residual
    (``num_layers`` tensors ``(B, F, D)``; fairseq's ``layer_results[i][2]``, data2vec's target layer)."""

    output: EncoderOutput
    ffn_outputs: tuple[Tensor, ...]


def conv_output_lengths(lengths: Tensor, kernels: tuple[int, ...], strides: tuple[int, ...]) -> Tensor:
    """Frames whose receptive field lies within ``lengths`` samples: ``floor((L - k) / s) + 1`` per layer."""
    for kernel, stride in zip(kernels, strides, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp_min(0)


def masked_group_norm(x: Tensor, lengths: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm with one group per channel over each sample's first ``lengths`` time steps only.

    ``x`` ``(B, C, T)``; equals ``norm(x)`` when every length is ``T``. Statistics in fp32 (as autocast
    runs ``group_norm``), so bf16 training normalizes the same way.
    """
    valid = (torch.arange(x.shape[-1], device=x.device) < lengths.unsqueeze(1)).unsqueeze(1)  # (B, 1, T)
    xf = x.float()
    count = valid.sum(-1, keepdim=True).clamp_min(1)
    mean = torch.where(valid, xf, 0.0).sum(-1, keepdim=True) / count
    var = torch.where(valid, (xf - mean).square(), 0.0).sum(-1, keepdim=True) / count
    y = (xf - mean) * torch.rsqrt(var + norm.eps)
    y = y * norm.weight.float().view(1, -1, 1) + norm.bias.float().view(1, -1, 1)
    return y.to(x.dtype) if not torch.is_autocast_enabled() else y


class ConvLayer(nn.Module):
    """Conv1d → norm (``"group"``: GroupNorm per channel; ``"layer"``: LayerNorm over channels; None) → GELU.

    ``(B, C_in, T)`` → ``(B, C_out, T')`` with ``T' = floor((T - kernel) / stride) + 1``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str | None, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        self.norm: nn.Module | None
        if norm == "group":
            self.norm = nn.GroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(c_out, eps=LAYER_NORM_EPS)
        else:
            self.norm = None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        x = self.conv(x)
        if isinstance(self.norm, nn.GroupNorm):
            x = self.norm(x) if lengths is None else masked_group_norm(x, lengths, self.norm)
        elif self.norm is not None:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class PositionalConv(nn.Module):
    """Convolutional relative positional embedding (wav2vec 2.0, section 2): ``(B, F, D)`` → ``(B, F, D)``.

    Grouped Conv1d with weight normalization over dim 2 (``weight = g * v / ||v||``, the norm taken over
    the output and input channels for each kernel position; torch's ``weight_norm(conv, dim=2)``),
    written out so that the parameters are plain ``weight_g`` ``(1, 1, K)`` and ``weight_v``
    ``(D, D / groups, K)``; padding ``K // 2``, the last frame removed when ``K`` is even (fairseq's
    ``SamePad``), GELU.
    """

    def __init__(self, dim: int, kernel: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.kernel, self.groups = kernel, groups
        v = torch.empty(dim, dim // groups, kernel)
        # fairseq: normal(0, sqrt(4 * (1 - dropout) / (kernel * dim))), bias 0, then weight_norm (g = ||v||).
        nn.init.normal_(v, mean=0.0, std=math.sqrt(4 * (1.0 - dropout) / (kernel * dim)))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.square().sum(dim=(0, 1), keepdim=True).sqrt())
        self.bias = nn.Parameter(torch.zeros(dim))

    def weight(self) -> Tensor:
        v = self.weight_v
        return v * (self.weight_g / v.square().sum(dim=(0, 1), keepdim=True).sqrt())

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv1d(
            x.transpose(1, 2), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups
        )
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v, out projections (transformers' layout), computed
    by ``scaled_dot_product_attention``; ``key_mask`` ``(B, 1, 1, F)`` bool, True where a key may be
    attended."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        b, f, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, f, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)),
            split(self.k_proj(x)),
            split(self.v_proj(x)),
            attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, f, d))


class Block(nn.Module):
    """One Transformer block, post-LN (``layer_norm_first=False``) or pre-LN; returns ``(output, ffn_output)``
    where ``ffn_output`` is the FFN's output before its dropout and residual (fairseq's ``layer_result``)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        *,
        pre_norm: bool,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.attention = SelfAttention(dim, heads, attention_dropout)
        self.attention_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def ffn(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))

    def forward(self, x: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), key_mask))
            ffn_out = self.ffn(self.ffn_norm(x))
            return x + self.dropout(ffn_out), ffn_out
        x = self.attention_norm(x + self.dropout(self.attention(x, key_mask)))
        ffn_out = self.ffn(x)
        return self.ffn_norm(x + self.dropout(ffn_out)), ffn_out


class Wav2Vec2Encoder(Encoder):
    """Waveform ``(B, T)`` float → frames ``(B, F, D)`` at ``frame_rate = sample_rate / 320`` per second.

    ``forward(waveform, padding_mask=(B, T) | None, mask=(B, F) | None)``: ``hidden_states`` has
    ``num_layers + 1`` entries ``(B, F, D)``; ``pooled`` averages the last one over valid frames;
    ``EncoderOutput.padding_mask`` is the ``(B, F)`` frame padding mask. Padding is at the end of each row.
    """

    modality = "audio"
    mask_mode = "replace"

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.num_layers = config.num_layers
        self.conv_dim = config.conv_dim
        self.sample_rate = float(config.sample_rate)
        self.frame_rate = self.sample_rate / math.prod(CONV_STRIDES)
        convs = []
        for i, (kernel, stride) in enumerate(zip(CONV_KERNELS, CONV_STRIDES, strict=True)):
            norm = "layer" if config.conv_norm == "layer" else ("group" if i == 0 else None)
            c_in = 1 if i == 0 else config.conv_dim
            convs.append(ConvLayer(c_in, config.conv_dim, kernel, stride, norm, config.conv_bias))
        self.conv_layers = nn.ModuleList(convs)
        self.feature_norm = nn.LayerNorm(config.conv_dim, eps=LAYER_NORM_EPS)
        self.projection = nn.Linear(config.conv_dim, config.embed_dim)
        self.feature_dropout = nn.Dropout(config.feature_dropout)
        self.mask_embedding = nn.Parameter(torch.empty(config.embed_dim).uniform_())
        self.pos_conv = PositionalConv(
            config.embed_dim, config.pos_conv_kernel, config.pos_conv_groups, config.dropout
        )
        self.encoder_norm = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(
                config.embed_dim,
                config.num_heads,
                config.ffn_dim,
                pre_norm=config.layer_norm_first,
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
                activation_dropout=config.activation_dropout,
            )
            for _ in range(config.num_layers)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # fairseq: init_bert_params for the Transformer (Linear N(0, 0.02), bias 0), Kaiming-normal convs.
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and name != "projection":
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight)

    # --- geometry -------------------------------------------------------------------------------
    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid frames for ``lengths`` valid samples (``(B,)`` int64): the conv stack's formula."""
        return conv_output_lengths(lengths, CONV_KERNELS, CONV_STRIDES)

    def layer_id(self, name: str) -> int:
        """Conv stack, projection, mask embedding, positional conv (and post-LN's encoder norm) 0;
        ``blocks.i`` ``i + 1``; pre-LN's final norm ``num_layers`` (it makes the last hidden state)."""
        if name.startswith("blocks."):
            index = int(name.split(".")[1])
            if index >= self.num_layers:
                raise ValueError(f"wav2vec2 has no parameter {name!r}")
            return index + 1
        if name.startswith("encoder_norm."):
            return self.num_layers if self.config.layer_norm_first else 0
        if name.startswith(("conv_layers.", "feature_norm.", "projection.", "mask_embedding", "pos_conv.")):
            return 0
        raise ValueError(f"wav2vec2 has no parameter {name!r} to place at a layer")

    # --- the two halves ---------------------------------------------------------------------------
    def local_features(self, waveform: Tensor, padding_mask: Tensor | None = None) -> LocalFeatures:
        """Conv features of ``waveform`` ``(B, T)`` float (``padding_mask`` ``(B, T)``, True at padding)."""
        if waveform.ndim != 2:
            raise ValueError(f"wav2vec2 expects waveforms of shape (B, T), got {tuple(waveform.shape)}")
        if not torch.is_floating_point(waveform):
            raise TypeError(f"wav2vec2 expects a float waveform in [-1, 1], got {waveform.dtype}")
        if padding_mask is not None and padding_mask.shape != waveform.shape:
            raise ValueError(f"padding_mask {tuple(padding_mask.shape)} != waveform {tuple(waveform.shape)}")
        total = waveform.shape[1]
        if int(self.output_lengths(torch.tensor([total]))[0]) < 1:
            raise ValueError(
                f"wav2vec2 needs at least 400 samples (one 25 ms frame at 16 kHz), got {total}; "
                "drop or pad clips this short"
            )
        lengths = None if padding_mask is None else (~padding_mask).sum(dim=1)
        x = waveform.unsqueeze(1)
        layer_lengths = lengths
        for layer in self.conv_layers:
            if layer_lengths is not None:
                kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
                layer_lengths = torch.div(layer_lengths - kernel, stride, rounding_mode="floor") + 1
            x = layer(x, layer_lengths.clamp_min(0) if layer_lengths is not None else None)
        mult = self.config.feature_grad_mult
        if mult != 1.0 and torch.is_grad_enabled():
            # fairseq's GradMultiply: the forward value unchanged, the gradient into the convs scaled.
            x = x * mult + x.detach() * (1.0 - mult)
        conv_features = x.transpose(1, 2)
        features = self.feature_norm(conv_features)
        projected = self.projection(features)
        frame_mask = None
        if lengths is not None:
            frames = self.output_lengths(lengths)
            if bool((frames < 1).any()):
                raise ValueError("a sample is shorter than one frame (400 samples); drop clips this short")
            frame_mask = padding_mask_from_lengths(frames, features.shape[1])
            if not bool(frame_mask.any()):
                frame_mask = None
        return LocalFeatures(
            features=features, projected=projected, padding_mask=frame_mask, conv_features=conv_features
        )

    def contextualize(
        self, projected: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> ContextOutput:
        """The Transformer over ``projected`` ``(B, F, D)``; ``mask`` ``(B, F)`` frames are replaced by
        ``mask_embedding``; ``padding_mask`` ``(B, F)`` frames are zeroed and never attended to."""
        b, f, _ = projected.shape
        x = self.feature_dropout(projected)
        if mask is not None:
            if mask.shape != (b, f):
                raise ValueError(f"mask must be (B, F) = {(b, f)} frames, got {tuple(mask.shape)}")
            x = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        key_mask = None
        if padding_mask is not None:
            if padding_mask.shape != (b, f):
                raise ValueError(f"padding_mask must be (B, F) = {(b, f)}, got {tuple(padding_mask.shape)}")
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            key_mask = (~padding_mask).view(b, 1, 1, f)
        x = x + self.pos_conv(x)
        if not self.config.layer_norm_first:
            x = self.encoder_norm(x)
        x = self.dropout(x)
        hidden = [x]
        ffn_outputs = []
        for block in self.blocks:
            if self.training and self.config.layerdrop > 0 and float(torch.rand(())) < self.config.layerdrop:
                ffn_outputs.append(torch.zeros_like(x))
                hidden.append(x)
                continue
            x, ffn_out = block(x, key_mask)
            hidden.append(x)
            ffn_outputs.append(ffn_out)
        if self.config.layer_norm_first:
            hidden[-1] = self.encoder_norm(x)
        last = hidden[-1]
        output = EncoderOutput(
            pooled=pool_hidden_state(last, padding_mask),
            last_hidden_state=last,
            hidden_states=tuple(hidden),
            padding_mask=padding_mask,
        )
        return ContextOutput(output=output, ffn_outputs=tuple(ffn_outputs))

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        local = self.local_features(x, padding_mask)
        return self.contextualize(local.projected, padding_mask=local.padding_mask, mask=mask).output


def build_config(size: str = "tiny", **overrides: Any) -> Wav2Vec2Config:
    """A :class:`Wav2Vec2Config` of a named ``size`` with ``overrides`` (None values ignored)."""
    if size not in SIZES:
        raise ValueError(f"wav2vec2: unknown size {size!r}.{suggest(size, SIZES)} Sizes: {', '.join(SIZES)}.")
    names = {f.name for f in fields(Wav2Vec2Config)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"wav2vec2: unknown options {sorted(unknown)}")
    values = {**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
    return replace(Wav2Vec2Config(), **values)


@ENCODERS.register("wav2vec2", modality="audio")
def wav2vec2(
    info: DataInfo | None = None,
    size: str = "tiny",
    num_layers: int | None = None,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    ffn_dim: int | None = None,
    conv_dim: int | None = None,
    conv_norm: str = "group",
    conv_bias: bool = False,
    layer_norm_first: bool = False,
    pos_conv_kernel: int = 128,
    pos_conv_groups: int = 16,
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    activation_dropout: float = 0.0,
    feature_dropout: float = 0.1,
    layerdrop: float = 0.0,
    feature_grad_mult: float = 1.0,
    sample_rate: float | None = None,
) -> Wav2Vec2Encoder:
    """wav2vec 2.0 / HuBERT speech encoder (conv + Transformer); size tiny 4x256, small 8x512, base 12x768."""
    data_rate = None if info is None else info.sample_rate
    if sample_rate is not None and data_rate is not None and float(sample_rate) != float(data_rate):
        raise ValueError(
            f"wav2vec2: sample_rate={sample_rate} but the data is at {data_rate} Hz; "
            "load the data at the encoder's rate (load_dataset(..., sample_rate=...))"
        )
    rate = float(sample_rate if sample_rate is not None else (data_rate or 16000.0))
    config = build_config(
        size,
        num_layers=num_layers,
        embed_dim=embed_dim,
        num_heads=num_heads,
        ffn_dim=ffn_dim,
        conv_dim=conv_dim,
        conv_norm=conv_norm,
        conv_bias=conv_bias,
        layer_norm_first=layer_norm_first,
        pos_conv_kernel=pos_conv_kernel,
        pos_conv_groups=pos_conv_groups,
        dropout=dropout,
        attention_dropout=attention_dropout,
        activation_dropout=activation_dropout,
        feature_dropout=feature_dropout,
        layerdrop=layerdrop,
        feature_grad_mult=feature_grad_mult,
        sample_rate=rate,
    )
    return Wav2Vec2Encoder(config)
