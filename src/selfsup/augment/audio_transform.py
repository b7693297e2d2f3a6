"""The input transform of audio: stored int16 clips to the float waveforms encoders take.

``(B, T)`` int16 zero-padded clips → ``(B, T)`` float32 ``x / 32768`` in [-1, 1), zeros at padding,
and the batch's padding mask. With ``normalize`` each clip is standardised over its valid samples
only: ``(x - mean) / sqrt(var + 1e-5)`` with the biased variance, which is fairseq's
``normalize=True`` (``F.layer_norm(wav, wav.shape)`` on the unpadded clip in
``fairseq/data/audio/raw_audio_dataset.py``); padding stays 0. wav2vec 2.0 Base and HuBERT Base were
trained without it, wav2vec 2.0 Large (LV-60) and data2vec with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup.data.base import Batch

# fairseq's normalize=True is F.layer_norm with its default eps.
NORMALIZE_EPS = 1e-5


def int16_to_float(inputs: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """``(B, T)`` int16 → float32 ``x / 32768``, zero where ``padding_mask`` (``(B, T)`` bool) is True."""
    wave = inputs.float().div_(32768.0)
    return wave.masked_fill_(padding_mask, 0.0) if padding_mask is not None else wave


def normalize_waveform(
    wave: Tensor, padding_mask: Tensor | None = None, eps: float = NORMALIZE_EPS
) -> Tensor:
    """Per-clip zero mean, unit variance over the valid samples of ``(B, T)`` ``wave``; 0 at padding.

    Equals ``F.layer_norm(clip, clip.shape, eps=eps)`` on every unpadded clip (fairseq normalize=True).
    Computed in float32 at least (a float16/bf16 mean over 10^5 samples loses digits).
    """
    x = wave.float()
    if padding_mask is None:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).square().mean(dim=1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + eps)
    valid = (~padding_mask).to(x.dtype)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (x * valid).sum(dim=1, keepdim=True) / count
    # Two passes (mean, then centred squares): the one-pass E[x^2] - E[x]^2 cancels badly for quiet clips.
    var = ((x - mean) * valid).square().sum(dim=1, keepdim=True) / count
    return ((x - mean) * torch.rsqrt(var + eps)) * valid


@dataclass(frozen=True)
class AudioTransform:
    """Audio: int16 ``(B, T)`` clips → (float32 ``(B, T)`` waveform, ``(B, T)`` padding mask or None).

    sample_rate: the rate of the clips (Hz), as the data was decoded; encoders and frontends read it.
    normalize: per-clip zero mean / unit variance over valid samples (fairseq ``normalize=True``).
    """

    sample_rate: int = 16000
    normalize: bool = False
    modality: str = "audio"

    def __post_init__(self) -> None:
        if (
            isinstance(self.sample_rate, bool)
            or not isinstance(self.sample_rate, int)
            or self.sample_rate < 1
        ):
            raise ValueError(f"sample_rate must be a positive integer, got {self.sample_rate!r}")

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        inputs = batch.inputs
        if not isinstance(inputs, Tensor) or inputs.ndim != 2 or inputs.dtype != torch.int16:
            raise ValueError("AudioTransform expects a batch of int16 (B, T) clips")
        return self.waveform(inputs, batch.padding_mask), batch.padding_mask

    def waveform(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """The float32 waveform of int16 ``(B, T)`` clips (normalized when asked; 0 at padding)."""
        wave = int16_to_float(inputs, padding_mask)
        return normalize_waveform(wave, padding_mask) if self.normalize else wave

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "sample_rate": self.sample_rate, "normalize": self.normalize}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioTransform:
        return cls(sample_rate=int(data["sample_rate"]), normalize=bool(data.get("normalize", False)))


__all__ = ["NORMALIZE_EPS", "AudioTransform", "int16_to_float", "normalize_waveform"]
