"""A spectrogram-patch Transformer for general audio (``audio_spt``), in the AST / SSAST / Audio-MAE family.

Gong et al. 2021 (AST) and 2022 (SSAST, "frame-based" patches for speech), Huang et al. 2022 (Audio-MAE):
the log-mel spectrogram is cut into non-overlapping patches, each linearly embedded, a positional
embedding added, and pre-LN Transformer blocks (the blocks of :mod:`selfsup.encoders.audio`) run on
the tokens; a final LayerNorm; ``pooled`` is the mean over valid tokens (Audio-MAE's fine-tuning pool;
no CLS token).

* **Input**: a ``(B, T)`` waveform (with a sample padding mask) goes through :attr:`frontend`
  (:class:`~selfsup.audio.frontend.LogMelFrontend`: 25 ms Hann window, 10 ms hop, ``n_mels`` = 80 by
  default) and is standardized per clip over its valid frames; a ``(B, F, n_mels)`` log-mel (with a frame
  padding mask) is taken as already normalized (what a spectrogram view policy gives).
* **Patches**: ``patch_freq`` mel bins x ``patch_time`` frames. The default is SSAST's frame-based
  patch: the full band (``patch_freq = n_mels``) x 4 frames (40 ms, 25 tokens per second), which keeps a
  CPU-sized model fast on second-long clips; ``patch_freq=16, patch_time=16`` on 128 mels is AST's
  square patch (without AST's overlap). Tokens are ordered time-major (all bands of a time patch, then the
  next), so a clip's valid tokens are a prefix and ``output_lengths`` counts tokens; ``frame_rate`` is
  tokens per second. The time axis is zero-padded to a whole number of patches.
* **Positions**: fixed 1-D sine-cosine over the time patch (any length; Audio-MAE uses fixed sin-cos too)
  plus a learned embedding per frequency band when there is more than one band.
* **Masking** (``mask_mode = "replace"``): masked tokens are replaced by a learned ``mask_token`` before
  the positions are added (BEiT / data2vec), so data2vec-style methods and the ``speech_mask`` policy
  (masks over ``output_lengths`` positions) apply as to ``wav2vec2``.
* **Padding**: time patches entirely in padding are never attended to and never pooled; frames past a
  clip's end are zeros, as when the clip is encoded alone, so padding never changes a valid token.

``hidden_states`` (``num_layers + 1``): the embedded tokens (positions added), then each block's output,
the last one after the final LayerNorm.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.audio.frontend import LogMelFrontend
from selfsup.data.base import DataInfo
from selfsup.encoders.audio import LAYER_NORM_EPS, Block
from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    padding_mask_from_lengths,
    pool_hidden_state,
)
from selfsup.registry import suggest

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "num_layers": 4, "num_heads": 3, "ffn_dim": 768},
    "small": {"embed_dim": 384, "num_layers": 12, "num_heads": 6, "ffn_dim": 1536},
    # AST / SSAST / Audio-MAE Base (ViT-B): 12 x 768, 12 heads, MLP 3072.
    "base": {"embed_dim": 768, "num_layers": 12, "num_heads": 12, "ffn_dim": 3072},
}


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """Fixed sine-cosine embedding (Vaswani et al. 2017): ``(N,)`` positions → ``(N, dim)``; the first half
    of the channels are sines, the second cosines, frequencies ``10000^(-2i / dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / max(half, 1))
    angles = positions.float().unsqueeze(1) * freqs.unsqueeze(0)
    out = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(out, (0, dim - 2 * half))


def _standardize(features: Tensor, valid: Tensor, eps: float = 1e-5) -> Tensor:
    """Per clip zero mean, unit variance over its valid frames (all mel bins); padded frames stay 0."""
    keep = (torch.arange(features.shape[1], device=features.device) < valid.unsqueeze(1)).unsqueeze(-1)
    keep = keep.to(features.dtype)
    count = (keep.sum(dim=(1, 2), keepdim=True) * features.shape[2]).clamp_min(1.0)
    mean = (features * keep).sum(dim=(1, 2), keepdim=True) / count
    var = ((features - mean).square() * keep).sum(dim=(1, 2), keepdim=True) / count
    return (features - mean) / torch.sqrt(var + eps) * keep


class SpectrogramTransformer(Encoder):
    """``(B, T)`` waveform or ``(B, F, n_mels)`` log-mel → tokens ``(B, N, D)``, ``N = ceil(F / patch_time)
    * (n_mels / patch_freq)``; ``pooled`` ``(B, D)`` their mean over valid tokens."""

    modality = "audio"
    mask_mode = "replace"

    def __init__(
        self,
        *,
        sample_rate: float = 16000.0,
        n_mels: int = 80,
        patch_freq: int | None = None,
        patch_time: int = 4,
        embed_dim: int = 192,
        num_layers: int = 4,
        num_heads: int = 3,
        ffn_dim: int = 768,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        n_fft: int = 400,
        hop_length: int = 160,
    ) -> None:
        super().__init__()
        patch_freq = n_mels if patch_freq is None else patch_freq
        for name, value in (
            ("n_mels", n_mels),
            ("patch_freq", patch_freq),
            ("patch_time", patch_time),
            ("embed_dim", embed_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("ffn_dim", ffn_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"audio_spt: {name} must be a positive integer, got {value!r}")
        if n_mels % patch_freq:
            raise ValueError(f"audio_spt: patch_freq {patch_freq} must divide n_mels {n_mels}")
        if embed_dim % num_heads:
            raise ValueError(f"audio_spt: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        for name, value in (("dropout", dropout), ("attention_dropout", attention_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"audio_spt: {name} must be in [0, 1), got {value!r}")
        self.frontend = LogMelFrontend(sample_rate, n_fft, n_fft, hop_length, n_mels)
        self.n_mels, self.patch_freq, self.patch_time = n_mels, patch_freq, patch_time
        self.bands = n_mels // patch_freq
        self.embed_dim, self.num_layers = embed_dim, num_layers
        self.sample_rate = float(sample_rate)
        self.frame_rate = self.frontend.frame_rate / patch_time * self.bands
        self.patch_embed = nn.Linear(patch_freq * patch_time, embed_dim)
        self.pos_embed_band = nn.Parameter(torch.zeros(self.bands, embed_dim)) if self.bands > 1 else None
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                ffn_dim,
                pre_norm=True,
                dropout=dropout,
                attention_dropout=attention_dropout,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT / MAE: truncated-normal(0.02) linear layers and tokens, LayerNorm (1, 0).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        if self.pos_embed_band is not None:
            nn.init.trunc_normal_(self.pos_embed_band, std=0.02)

    # --- geometry -------------------------------------------------------------------------------
    def time_patches(self, frames: Tensor) -> Tensor:
        """Time patches holding at least one of ``frames`` valid frames: ``ceil(frames / patch_time)``."""
        return torch.div(frames + self.patch_time - 1, self.patch_time, rounding_mode="floor")

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid tokens for ``lengths`` valid samples: valid time patches x frequency bands."""
        return self.time_patches(self.frontend.output_lengths(lengths)) * self.bands

    def layer_id(self, name: str) -> int:
        """Patch and position embeddings and the mask token 0, ``blocks.i`` ``i + 1``, the final norm
        ``num_layers``."""
        if name.startswith(("patch_embed.", "pos_embed_band", "mask_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith("norm."):
            return self.num_layers
        raise ValueError(f"audio_spt has no parameter {name!r} to place at a layer")

    # --- forward ----------------------------------------------------------------------------------
    def log_mel(self, x: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The normalized log-mel ``(B, F, n_mels)`` and frame padding mask of the encoder's input."""
        if x.ndim == 2:
            features, frame_padding = self.frontend(x, padding_mask)
            frames = features.shape[1]
            valid = (
                torch.full((x.shape[0],), frames, device=x.device)
                if frame_padding is None
                else (~frame_padding).sum(1)
            )
            return _standardize(features, valid), frame_padding
        if x.ndim == 3 and x.shape[2] == self.n_mels:
            if padding_mask is not None and padding_mask.shape != x.shape[:2]:
                raise ValueError(f"padding_mask {tuple(padding_mask.shape)} does not fit {tuple(x.shape)}")
            if padding_mask is not None:
                x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            return x, padding_mask
        raise ValueError(
            f"audio_spt takes a (B, T) waveform or a (B, F, {self.n_mels}) log-mel, got {tuple(x.shape)}"
        )

    def patchify(self, features: Tensor) -> Tensor:
        """``(B, F, n_mels)`` → ``(B, N, patch_freq * patch_time)``, time-major, time zero-padded."""
        b, frames, _ = features.shape
        t = -(-frames // self.patch_time)
        x = F.pad(features, (0, 0, 0, t * self.patch_time - frames))
        x = x.view(b, t, self.patch_time, self.bands, self.patch_freq)
        return x.permute(0, 1, 3, 4, 2).reshape(b, t * self.bands, self.patch_freq * self.patch_time)

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        features, frame_padding = self.log_mel(x, padding_mask)
        b, frames, _ = features.shape
        if frames < 1:
            raise ValueError("audio_spt: the input has no frame (a clip shorter than one hop?)")
        tokens = self.patch_embed(self.patchify(features))
        n = tokens.shape[1]
        token_padding = None
        if frame_padding is not None and bool(frame_padding.any()):
            valid = self.time_patches((~frame_padding).sum(1)) * self.bands
            token_padding = padding_mask_from_lengths(valid, n)
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"mask must be (B, N) = {(b, n)} tokens, got {tuple(mask.shape)}")
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        time_index = torch.arange(n, device=x.device) // self.bands
        pos = sinusoidal_positions(time_index, self.embed_dim).to(tokens.dtype)
        if self.pos_embed_band is not None:
            pos = pos + self.pos_embed_band.to(tokens.dtype).repeat(n // self.bands, 1)
        h = tokens + pos
        key_mask = None if token_padding is None else (~token_padding).view(b, 1, 1, n)
        hidden = [h]
        for block in self.blocks:
            h, _ = block(h, key_mask)
            hidden.append(h)
        hidden[-1] = self.norm(h)
        last = hidden[-1]
        return EncoderOutput(
            pooled=pool_hidden_state(last, token_padding),
            last_hidden_state=last,
            hidden_states=tuple(hidden),
            padding_mask=token_padding,
        )


@ENCODERS.register("audio_spt", modality="audio")
def audio_spt(
    info: DataInfo | None = None,
    size: str = "tiny",
    n_mels: int = 80,
    patch_freq: int | None = None,
    patch_time: int = 4,
    embed_dim: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    ffn_dim: int | None = None,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    hop_length: int = 160,
    n_fft: int = 400,
) -> SpectrogramTransformer:
    """Spectrogram-patch Transformer (AST / SSAST / Audio-MAE style) on log-mel; tiny 4x192, small 12x384."""
    if size not in SIZES:
        raise ValueError(
            f"audio_spt: unknown size {size!r}.{suggest(size, SIZES)} Sizes: {', '.join(SIZES)}."
        )
    given: dict[str, Any] = {"embed_dim": embed_dim, "num_layers": num_layers, "num_heads": num_heads}
    given["ffn_dim"] = ffn_dim
    dims = {**SIZES[size], **{k: v for k, v in given.items() if v is not None}}
    sample_rate = float(info.sample_rate) if info is not None and info.sample_rate else 16000.0
    return SpectrogramTransformer(
        sample_rate=sample_rate,
        n_mels=n_mels,
        patch_freq=patch_freq,
        patch_time=patch_time,
        dropout=dropout,
        attention_dropout=attention_dropout,
        n_fft=n_fft,
        hop_length=hop_length,
        **dims,
    )
