"""BYOL-A's convolutional audio encoder (``byol_a_cnn``): log-mel → 3 conv blocks → FC → mean + max.

AudioNTT2020 of Niizumi et al. 2021 (BYOL for Audio; the authors' ``byol_a/models.py``, itself the
DCASE 2020 task 6 NTT encoder): the log-mel spectrogram ``(1, n_mels, T)`` goes through three blocks of
3x3 convolution (``channels`` = 64) → BatchNorm → ReLU → 2x2 max-pool, the ``(channels, n_mels / 8)``
map of each of the ``T / 8`` frames is flattened (mel-major, as the authors' ``permute(0, 3, 2, 1)``)
and passed through Linear → ReLU → Dropout(0.3) → Linear → ReLU (``embed_dim`` = 2048, BYOL-A v1's
``feature_d``; the released weights also come in 512), and ``pooled`` is the temporal max plus the
temporal mean of the frames. Parameter names are the authors' (``features.0``, ``features.1``, ...,
``fc.0``, ``fc.3``), so their ``state_dict`` loads as is.

Inputs: a waveform ``(B, T)`` float (with a sample padding mask ``(B, T)``) goes through
:attr:`frontend` (:class:`~selfsup.audio.frontend.LogMelFrontend` with BYOL-A's settings: n_fft 1024,
hop 160, 64 mels from 60 Hz to 7.8 kHz, ``log(x + eps)``) and :meth:`normalize_features`; a log-mel
``(B, F, n_mels)`` (with a frame padding mask ``(B, F)``) — what the ``byol_a`` view policy makes — is
taken as already normalized.

Padding never reaches an output: before every convolution the frames past each clip's valid length
(``F // 2^i`` after ``i`` pools) are zeroed, so a valid frame sees the zeros an unpadded clip's
convolution pads with; the batch norms take their training statistics over valid frames only
(:class:`MaskedBatchNorm2d`, synchronised across processes when distributed); pooling uses valid
frames only. So a clip's outputs are the same however much it is padded (tested), in train and eval
mode. ``hidden_states`` (``num_layers + 1 = 5``) are all at the output frame rate (``frame_rate =
sample_rate / hop / 8``) so one frame padding mask fits every layer: the input log-mel and each conv
block's flattened map averaged over its ``8 / 2^i`` frames per output frame, then the FC output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, einsum, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup import dist
from selfsup.audio.frontend import LogMelFrontend
from selfsup.augment.audio import masked_standardize
from selfsup.data.base import DataInfo
from selfsup.encoders.base import ENCODERS, Encoder, EncoderOutput

NUM_BLOCKS = 3
DOWNSAMPLE = 2**NUM_BLOCKS
# BYOL-A's log floor: log(mel + float32 eps).
_EPS32 = float(torch.finfo(torch.float32).eps)


class _MaskedBatchNormFn(torch.autograd.Function):
    """Batch norm of ``x (B, C, H, W)`` over the positions with ``weight (B, W) = 1`` (0: padding).

    One fused forward and backward instead of autograd's chain of element-wise ops (BYOL-A's first
    block normalizes ``128 x 64 x 64 x 96`` activations: the element-wise passes, not the
    convolutions, set the step time). The backward is batch norm's, restricted to the valid
    positions: for valid ``x``, ``dx = γ·rstd·(g − Σg/n − x̂·Σ(g·x̂)/n)`` (``n`` valid positions; the
    sums over every output, since padded outputs are normalized with the same statistics); a padded
    ``x`` does not enter the statistics, so ``dx = γ·rstd·g`` there. When
    ``synchronize``, the three sums of the forward and the two of the backward are all-reduced: the
    statistics and their gradients are the global batch's (as :class:`selfsup.sync_batchnorm.SyncBatchNorm`).
    Returns ``(y, mean, biased var, count)``; only ``y`` carries a gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        gamma: Tensor | None,
        beta: Tensor | None,
        eps: float,
        synchronize: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # The count in float64: fp32 stops counting exactly at 2^24 positions.
        packed = torch.cat(
            [(weight.sum(dtype=torch.float64) * x.shape[2]).view(1), einsum("bchw,bw->c", x, weight).double()]
        )
        if synchronize:
            tdist.all_reduce(packed)
        count = packed[0]
        n = count.clamp_min(1.0).float()
        mean = (packed[1:] / packed[0].clamp_min(1.0)).float()
        centered = x - mean.view(1, -1, 1, 1)
        squares = einsum("bchw,bw->c", centered.square(), weight)
        if synchronize:
            tdist.all_reduce(squares)
        var = squares / n
        rstd = torch.rsqrt(var + eps)
        normalized = centered.mul_(rstd.view(1, -1, 1, 1))
        if gamma is None:
            out = normalized.clone() if beta is None else normalized + beta.view(1, -1, 1, 1)
        else:
            shift = torch.zeros_like(gamma) if beta is None else beta
            out = torch.addcmul(shift.view(1, -1, 1, 1), normalized, gamma.view(1, -1, 1, 1))
        ctx.save_for_backward(normalized, weight, rstd, gamma, n)
        ctx.synchronize = synchronize
        ctx.has_beta = beta is not None
        ctx.mark_non_differentiable(mean, var, count)
        return out, mean, var, count

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        normalized, weight, rstd, gamma, n = ctx.saved_tensors
        grad = grad.contiguous()
        # Every output, padded or not, depends on the statistics: the sums run over all positions.
        sums = torch.stack([grad.sum(dim=(0, 2, 3)), (grad * normalized).sum(dim=(0, 2, 3))])
        grad_beta = sums[0].clone() if ctx.has_beta else None
        grad_gamma = sums[1].clone() if gamma is not None else None
        if ctx.synchronize:
            tdist.all_reduce(sums)
        mean_grad, mean_product = (sums / n).unbind(0)
        scale = rstd if gamma is None else rstd * gamma
        # dx = scale·g − scale·w·(mean(g) + x̂·mean(g·x̂))
        correction = torch.addcmul(mean_grad.view(1, -1, 1, 1), normalized, mean_product.view(1, -1, 1, 1))
        correction.mul_(weight.view(weight.shape[0], 1, 1, -1))
        grad_input = torch.addcmul(
            grad * scale.view(1, -1, 1, 1), correction, scale.view(1, -1, 1, 1), value=-1.0
        )
        return grad_input, None, grad_gamma, grad_beta, None, None


class MaskedBatchNorm2d(_BatchNorm):
    """``BatchNorm2d`` whose training statistics exclude padded time frames.

    ``forward(x (B, C, H, W), keep (B, W) bool | None)``: in training mode the per-channel mean and
    biased variance are over the ``(b, h, w)`` with ``keep[b, w]`` (all positions when None), in fp32,
    combined over processes when distributed with gradients through the global statistics (as
    :class:`selfsup.sync_batchnorm.SyncBatchNorm`; one fused forward and backward,
    :class:`_MaskedBatchNormFn`); running statistics get the unbiased variance, with ``momentum`` and
    ``num_batches_tracked`` as ``nn.BatchNorm2d``. Eval uses the running statistics. Same parameters,
    buffers and ``state_dict`` keys as ``nn.BatchNorm2d``; without padding it equals it.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim != 4:
            raise ValueError(f"MaskedBatchNorm2d expects (B, C, H, W) input, got {tuple(input.shape)}")

    def forward(self, input: Tensor, keep: Tensor | None = None) -> Tensor:  # type: ignore[override]
        self._check_input_dim(input)
        if not self.training and self.running_mean is not None:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        x = input.float()
        weight = x.new_ones(x.shape[0], x.shape[3]) if keep is None else keep.to(x.dtype)
        gamma = None if self.weight is None else self.weight.float()
        beta = None if self.bias is None else self.bias.float()
        out, mean, var, count = _MaskedBatchNormFn.apply(
            x, weight, gamma, beta, self.eps, dist.world_size() > 1
        )
        if self.track_running_stats and self.running_mean is not None:
            assert self.num_batches_tracked is not None and self.running_var is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1.0)).float()
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def _keep(valid: Tensor, frames: int) -> Tensor:
    return torch.arange(frames, device=valid.device).unsqueeze(0) < valid.unsqueeze(1)


class AudioNTT2020(Encoder):
    """BYOL-A's encoder. ``forward(x (B, T) waveform | (B, F, n_mels) log-mel, *, padding_mask)`` →
    pooled ``(B, embed_dim)`` (temporal max + mean over valid frames), ``last_hidden_state``
    ``(B, F // 8, embed_dim)``, 5 ``hidden_states`` at the output frame rate, output ``padding_mask``."""

    modality = "audio"
    mask_mode = "none"

    def __init__(
        self,
        sample_rate: float = 16000,
        n_mels: int = 64,
        embed_dim: int = 2048,
        channels: int = 64,
        dropout: float = 0.3,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 160,
        f_min: float = 60.0,
        f_max: float | None = 7800.0,
        norm_stats: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_mels", n_mels), ("embed_dim", embed_dim), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"byol_a_cnn: {name} must be a positive integer, got {value!r}")
        if n_mels < DOWNSAMPLE:
            raise ValueError(f"byol_a_cnn: n_mels must be >= {DOWNSAMPLE} (three 2x poolings), got {n_mels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"byol_a_cnn: dropout must be in [0, 1), got {dropout!r}")
        if norm_stats is not None and (len(norm_stats) != 2 or not float(norm_stats[1]) > 0):
            raise ValueError(f"byol_a_cnn: norm_stats must be [mean, std] with std > 0, got {norm_stats!r}")
        if f_max is not None and f_max > sample_rate / 2:
            f_max = sample_rate / 2  # e.g. 8 kHz audio: the band ends at Nyquist
        self.frontend = LogMelFrontend(
            sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max, log_offset=_EPS32
        )
        self.norm_stats = None if norm_stats is None else (float(norm_stats[0]), float(norm_stats[1]))
        self.n_mels, self.channels = n_mels, channels
        self.embed_dim = embed_dim
        self.num_layers = NUM_BLOCKS + 1
        self.frame_rate = self.frontend.frame_rate / DOWNSAMPLE
        layers: list[nn.Module] = []
        width = 1
        for _ in range(NUM_BLOCKS):
            layers += [
                nn.Conv2d(width, channels, 3, stride=1, padding=1),
                MaskedBatchNorm2d(channels),
                nn.ReLU(),
                nn.MaxPool2d(2, stride=2),
            ]
            width = channels
        self.features = nn.ModuleList(layers)
        self.fc = nn.Sequential(
            nn.Linear(channels * (n_mels // DOWNSAMPLE), embed_dim),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(),
        )

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid output frames for ``lengths`` valid samples: log-mel frames ``// 8``."""
        return torch.div(self.frontend.output_lengths(lengths), DOWNSAMPLE, rounding_mode="floor")

    def normalize_features(self, features: Tensor, frame_padding: Tensor | None) -> Tensor:
        """The log-mel normalization of the waveform path (the ``byol_a`` policy applies it too):
        ``(x - mean) / std`` with ``norm_stats`` (BYOL-A's precomputed data set statistics) when given,
        else per clip over its valid frames. Padded frames stay 0."""
        frames = features.shape[1]
        if frame_padding is None:
            valid = torch.full((features.shape[0],), frames, dtype=torch.long, device=features.device)
        else:
            valid = (~frame_padding).sum(dim=1)
        if self.norm_stats is None:
            return masked_standardize(features, valid)
        mean, std = self.norm_stats
        return ((features - mean) / std) * _keep(valid, frames).unsqueeze(-1).to(features.dtype)

    def layer_id(self, name: str) -> int:
        """Conv block ``i`` (``features.4i .. 4i+3``) is ``i + 1``; the FC is ``num_layers``."""
        if name.startswith("features."):
            return int(name.split(".")[1]) // 4 + 1
        if name.startswith("fc."):
            return self.num_layers
        raise ValueError(f"byol_a_cnn has no parameter {name!r} to place at a layer")

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        if mask is not None:
            raise ValueError("byol_a_cnn cannot apply a token mask (mask_mode none)")
        if x.ndim == 2:
            features, frame_padding = self.frontend(x, padding_mask)
            features = self.normalize_features(features, frame_padding)
        elif x.ndim == 3 and x.shape[2] == self.n_mels:
            features, frame_padding = x, padding_mask
        else:
            raise ValueError(
                f"byol_a_cnn takes a (B, T) waveform or a (B, F, {self.n_mels}) log-mel, got {tuple(x.shape)}"
            )
        batch, frames, _ = features.shape
        if frame_padding is not None and frame_padding.shape != (batch, frames):
            raise ValueError(f"padding_mask {tuple(frame_padding.shape)} does not fit input {tuple(x.shape)}")
        valid = (
            torch.full((batch,), frames, dtype=torch.long, device=x.device)
            if frame_padding is None
            else (~frame_padding).sum(dim=1)
        )
        out_frames = frames // DOWNSAMPLE
        out_valid = torch.div(valid, DOWNSAMPLE, rounding_mode="floor")
        keep = _keep(valid, frames)
        h = (features * keep.unsqueeze(-1)).transpose(1, 2).unsqueeze(1)  # (B, 1, n_mels, F)
        hidden = [F.avg_pool1d(h[:, 0], DOWNSAMPLE).transpose(1, 2)[:, :out_frames]]
        stage_valid = valid
        for block in range(NUM_BLOCKS):
            conv, norm, relu, pool = self.features[4 * block : 4 * block + 4]
            keep = _keep(stage_valid, h.shape[3])
            h = conv(h * keep.view(batch, 1, 1, -1).to(h.dtype))
            h = pool(relu(norm(h, keep)))
            stage_valid = torch.div(stage_valid, 2, rounding_mode="floor")
            tokens = h.permute(0, 3, 2, 1).flatten(2)  # (B, F_i, n_mels_i * channels), mel-major
            step = DOWNSAMPLE // 2 ** (block + 1)
            if step > 1:
                tokens = F.avg_pool1d(tokens.transpose(1, 2), step).transpose(1, 2)
            hidden.append(tokens[:, :out_frames])
        frames_out = self.fc(hidden[-1])
        hidden.append(frames_out)
        out_keep = _keep(out_valid, out_frames)
        hidden = [t * out_keep.unsqueeze(-1).to(t.dtype) for t in hidden]
        pooled = _mean_plus_max(hidden[-1], out_keep)
        out_padding = None if frame_padding is None else ~out_keep
        return EncoderOutput(
            pooled=pooled, last_hidden_state=hidden[-1], hidden_states=tuple(hidden), padding_mask=out_padding
        )


def _mean_plus_max(frames: Tensor, keep: Tensor) -> Tensor:
    """BYOL-A's pooling: max over valid frames + mean over valid frames, ``(B, F, D)`` → ``(B, D)``
    (0 for a clip with no valid frame)."""
    frames = frames.float()
    weight = keep.unsqueeze(-1).to(frames.dtype)
    mean = (frames * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
    peak = frames.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(dim=1)
    peak = torch.where(keep.any(dim=1, keepdim=True), peak, torch.zeros_like(peak))
    return mean + peak


@ENCODERS.register("byol_a_cnn", modality="audio")
def byol_a_cnn(
    info: DataInfo | None = None,
    embed_dim: int = 2048,
    channels: int = 64,
    n_mels: int = 64,
    dropout: float = 0.3,
    hop_length: int = 160,
    n_fft: int = 1024,
    f_min: float = 60.0,
    f_max: float | None = 7800.0,
    norm_stats: Sequence[float] | None = None,
) -> AudioNTT2020:
    """BYOL-A's AudioNTT2020 CNN on 64-mel log-mel; embed_dim 2048 (512: the smaller released size)."""
    sample_rate = float(info.sample_rate) if info is not None and info.sample_rate else 16000.0
    return AudioNTT2020(
        sample_rate=sample_rate,
        n_mels=n_mels,
        embed_dim=embed_dim,
        channels=channels,
        dropout=dropout,
        n_fft=n_fft,
        win_length=n_fft,
        hop_length=hop_length,
        f_min=f_min,
        f_max=f_max,
        norm_stats=norm_stats,
    )
