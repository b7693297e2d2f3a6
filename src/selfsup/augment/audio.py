"""Batched, on-device audio augmentations with per-sample parameters, and the audio view policies.

Waveform ops take float ``(B, T)`` clips with zeros at padding and their valid ``lengths`` ``(B,)``;
spectrogram ops take ``(B, F, C)`` frame features (time first, as the front-ends return them) and their
valid frames. Every op is a pure function of its per-sample parameters (tensors of length ``B``) and
keeps padding at zero; the ``sample_*`` helpers draw those parameters from a ``torch.Generator`` on
its device (one draw for the whole batch), so the same seed gives the same views and one call is a
handful of kernels, not ``B``.

Waveform: :func:`random_crop` (per-sample offsets), :func:`apply_gain` (dB), :func:`add_noise`
(white Gaussian noise at an SNR), :func:`mix_clips` (with another clip of the batch at a ratio).
Spectrogram: :func:`time_mask` / :func:`freq_mask` (SpecAugment, Park et al. 2019),
:func:`random_resize_crop`, :func:`linear_fader` and :func:`log_mixup_exp` (BYOL-A, Niizumi et al.
2021, 2023; the authors' ``byol_a2/augmentations.py``).

Policies (registered in :data:`~selfsup.augment.base.VIEW_POLICIES`, modality ``"audio"``):
``speech_mask`` (one cropped waveform view + a span mask in the encoder's frames: wav2vec 2.0,
HuBERT, data2vec) and ``byol_a`` (two augmented log-mel views for BYOL on general audio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.augment.base import VIEW_POLICIES, InputTransform
from selfsup.augment.masking import span_mask
from selfsup.data.base import Batch, DataInfo
from selfsup.views import Views

if TYPE_CHECKING:
    from selfsup.encoders.base import Encoder

# fairseq's wav2vec 2.0 / HuBERT pretraining crop: max_sample_size 250,000 samples at 16 kHz.
DEFAULT_MAX_SECONDS = 15.625
# BYOL-A's segment length (config ``unit_sec``): 0.95 s, 96 frames at a 10 ms hop.
BYOL_A_UNIT_SECONDS = 0.95
_EPS32 = float(torch.finfo(torch.float32).eps)


# ----------------------------------------------------------------------------- helpers


def valid_mask(lengths: Tensor, total: int) -> Tensor:
    """``(B,)`` lengths → ``(B, total)`` bool, True at valid (unpadded) positions."""
    return torch.arange(total, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator, device=generator.device)


def sample_partners(batch: int, generator: torch.Generator) -> Tensor:
    """``(B,)`` int64: for each sample another sample of the batch, uniformly (itself when ``B == 1``)."""
    if batch == 1:
        return torch.zeros(1, dtype=torch.long, device=generator.device)
    shift = torch.randint(1, batch, (batch,), generator=generator, device=generator.device)
    return (torch.arange(batch, device=generator.device) + shift) % batch


# ----------------------------------------------------------------------------- waveform ops


def sample_crop_starts(lengths: Tensor, max_length: int, generator: torch.Generator) -> Tensor:
    """``(B,)`` offsets: uniform in ``[0, L - max_length]`` (inclusive, fairseq's ``crop_to_max_size``)
    for clips longer than ``max_length``, else 0."""
    excess = (lengths.to(generator.device) - max_length).clamp_min(0)
    u = torch.rand(lengths.shape[0], generator=generator, device=generator.device, dtype=torch.float64)
    return torch.floor(u * (excess + 1).double()).long().minimum(excess)


def random_crop(
    waveform: Tensor, lengths: Tensor, max_length: int, starts: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Crop each clip to at most ``max_length`` samples from its own ``starts`` offset.

    ``(B, T)`` → ``(waveform (B, T'), lengths (B,), padding_mask (B, T'))`` with
    ``T' = min(T, max_length)`` and new lengths ``min(L, max_length)``; padding stays zero.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    width = min(waveform.shape[1], max_length)
    starts = starts.to(waveform.device)
    new_lengths = lengths.to(waveform.device).clamp_max(max_length)
    index = (starts.unsqueeze(1) + torch.arange(width, device=waveform.device).unsqueeze(0)).clamp_max(
        waveform.shape[1] - 1
    )
    keep = valid_mask(new_lengths, width)
    out = waveform.gather(1, index) * keep
    return out, new_lengths, ~keep


def apply_gain(waveform: Tensor, gain_db: Tensor) -> Tensor:
    """``(B, T)`` * ``10 ** (gain_db / 20)`` per sample (zeros at padding stay zero)."""
    return waveform * torch.pow(10.0, gain_db.to(waveform.device, waveform.dtype) / 20.0).unsqueeze(1)


def add_noise(waveform: Tensor, lengths: Tensor, snr_db: Tensor, noise: Tensor) -> Tensor:
    """Add white noise at ``snr_db`` per sample: ``x + sigma * noise`` on valid samples, with
    ``sigma² = mean(x²) / 10 ** (snr_db / 10)`` over each clip's valid samples and ``noise`` ``(B, T)``
    standard normal (drawn by the caller). Padding stays zero."""
    keep = valid_mask(lengths.to(waveform.device), waveform.shape[1]).to(waveform.dtype)
    power = (waveform.square() * keep).sum(1) / keep.sum(1).clamp_min(1.0)
    sigma = torch.sqrt(power / torch.pow(10.0, snr_db.to(waveform.device, waveform.dtype) / 10.0))
    return waveform + sigma.unsqueeze(1) * noise.to(waveform.device, waveform.dtype) * keep


def mix_clips(waveform: Tensor, lengths: Tensor, partners: Tensor, ratio: Tensor) -> Tensor:
    """``(1 - r) x_b + r x_{partner(b)}`` on the valid samples of ``b`` (the partner is zero past its own
    end); ``ratio`` ``(B,)`` in [0, 1]. Padding stays zero."""
    partners = partners.to(waveform.device)
    r = ratio.to(waveform.device, waveform.dtype).unsqueeze(1)
    keep = valid_mask(lengths.to(waveform.device), waveform.shape[1]).to(waveform.dtype)
    return ((1 - r) * waveform + r * waveform[partners]) * keep


# ----------------------------------------------------------------------------- spectrogram ops


def sample_spans(
    lengths: Tensor, max_width: int, num_masks: int, generator: torch.Generator, max_fraction: float = 1.0
) -> tuple[Tensor, Tensor]:
    """SpecAugment spans per sample: widths uniform in ``{0, ..., min(max_width, floor(max_fraction L))}``
    and starts uniform in ``{0, ..., L - width}``; ``(B, num_masks)`` starts and widths."""
    device = generator.device
    lengths = lengths.to(device)
    cap = torch.minimum(torch.full_like(lengths, max_width), torch.floor(max_fraction * lengths).long())
    shape = (lengths.shape[0], num_masks)
    u_w = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    widths = torch.floor(u_w * (cap.unsqueeze(1) + 1).double()).long().minimum(cap.unsqueeze(1))
    room = (lengths.unsqueeze(1) - widths).clamp_min(0)
    u_s = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    starts = torch.floor(u_s * (room + 1).double()).long().minimum(room)
    return starts, widths


def spans_to_mask(starts: Tensor, widths: Tensor, total: int) -> Tensor:
    """``(B, K)`` starts and widths → ``(B, total)`` bool, True inside any span."""
    positions = torch.arange(total, device=starts.device).view(1, 1, -1)
    inside = (positions >= starts.unsqueeze(-1)) & (positions < (starts + widths).unsqueeze(-1))
    return inside.any(dim=1)


def time_mask(features: Tensor, mask: Tensor, value: float = 0.0) -> Tensor:
    """``(B, F, C)`` with frames where ``mask`` ``(B, F)`` is True set to ``value`` (SpecAugment)."""
    return features.masked_fill(mask.to(features.device).unsqueeze(-1), value)


def freq_mask(features: Tensor, mask: Tensor, value: float = 0.0) -> Tensor:
    """``(B, F, C)`` with channels where ``mask`` ``(B, C)`` is True set to ``value`` (SpecAugment)."""
    return features.masked_fill(mask.to(features.device).unsqueeze(1), value)


@dataclass(frozen=True)
class ResizeCropParams:
    """Per-sample crop boxes of :func:`random_resize_crop`, in canvas pixels: ``top``/``height`` on the
    frequency axis, ``left``/``width`` on the time axis, all ``(B,)`` int64."""

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor


def sample_resize_crop(
    lengths: Tensor,
    channels: int,
    generator: torch.Generator,
    virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
    freq_scale: tuple[float, float] = (0.6, 1.5),
    time_scale: tuple[float, float] = (0.6, 1.5),
) -> ResizeCropParams:
    """BYOL-A's ``RandomResizeCrop.get_params`` per sample: canvas ``(int(C vf), int(L vt))``; crop sides
    ``clip(int(U(scale) * size), 1, canvas)``; offsets uniform over the integer positions."""
    device = generator.device
    lengths = lengths.to(device)
    batch = lengths.shape[0]
    canvas_h = torch.full_like(lengths, int(channels * virtual_crop_scale[0]))
    canvas_w = torch.floor(lengths.double() * virtual_crop_scale[1]).long()

    def side(size: Tensor, canvas: Tensor, scale: tuple[float, float]) -> Tensor:
        u = _uniform(batch, *scale, generator).double()
        return torch.floor(u * size.double()).long().clamp_min(1).minimum(canvas.clamp_min(1))

    h = side(torch.full_like(lengths, channels), canvas_h, freq_scale)
    w = side(lengths, canvas_w, time_scale)

    def offset(canvas: Tensor, sz: Tensor) -> Tensor:
        room = (canvas - sz).clamp_min(0)
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        return torch.floor(u * (room + 1).double()).long().minimum(room)

    top = offset(canvas_h, h)
    left = offset(canvas_w, w)
    return ResizeCropParams(top=top, left=left, height=h, width=w)


def random_resize_crop(
    features: Tensor,
    lengths: Tensor,
    params: ResizeCropParams,
    virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
    mode: str = "bicubic",
) -> Tensor:
    """BYOL-A's random resize crop, batched with per-sample lengths: ``(B, F, C)`` → ``(B, F, C)``.

    Each clip's ``(C, L)`` log-mel is centred on a zero canvas ``(int(C vf), int(L vt))``, the box of
    ``params`` is cut and resized back to ``(C, L)`` (``align_corners=True``); frames past ``L`` stay 0.
    One ``grid_sample`` for the batch. With ``mode="bilinear"`` it equals the authors' crop +
    ``F.interpolate`` exactly; with ``"bicubic"`` (theirs) the kernel near the box edges reads the
    canvas beyond the box where ``F.interpolate`` of the cut-out box replicates its edge (a deliberate
    difference: it is the same resampling of the canvas without the edge artefact).
    """
    _, frames, channels = features.shape
    device, dtype = features.device, features.dtype
    lengths = lengths.to(device)
    keep = valid_mask(lengths, frames)
    image = features.masked_fill(~keep.unsqueeze(-1), 0.0).transpose(1, 2).unsqueeze(1)  # (B, 1, C, F)
    top, left = params.top.to(device), params.left.to(device)
    h, w = params.height.to(device), params.width.to(device)
    canvas_h = int(channels * virtual_crop_scale[0])
    canvas_w = torch.floor(lengths.double() * virtual_crop_scale[1]).long()
    y0 = (canvas_h - channels) // 2
    x0 = torch.div(canvas_w - lengths, 2, rounding_mode="floor")
    # Output pixel (u, v) → box pixel (u (h-1)/(C-1), v (w-1)/(L-1)) → input pixel (minus the centring).
    u = torch.arange(channels, device=device, dtype=torch.float64)
    v = torch.arange(frames, device=device, dtype=torch.float64)
    fy = (h - 1).double() / max(channels - 1, 1)
    fx = (w - 1).double() / (lengths - 1).clamp_min(1).double()
    ys = top.double().unsqueeze(1) + u.unsqueeze(0) * fy.unsqueeze(1) - y0  # (B, C)
    xs = (left - x0).double().unsqueeze(1) + v.unsqueeze(0) * fx.unsqueeze(1)  # (B, F)
    # grid_sample's align_corners=True normalisation of input pixel coordinates.
    gy = 2 * ys / max(channels - 1, 1) - 1
    gx = 2 * xs / max(frames - 1, 1) - 1
    grid = torch.stack(
        [gx.unsqueeze(1).expand(-1, channels, -1), gy.unsqueeze(2).expand(-1, -1, frames)], dim=-1
    ).to(dtype)
    out = F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.squeeze(1).transpose(1, 2).masked_fill(~keep.unsqueeze(-1), 0.0)


def linear_fader(features: Tensor, lengths: Tensor, head: Tensor, tail: Tensor) -> Tensor:
    """BYOL-A v2's random linear fader: add ``linspace(head, tail, L)`` over each clip's valid frames
    (a gain ramp in the log domain) to every channel; ``head``/``tail`` ``(B,)``. Padding stays 0."""
    device, dtype = features.device, features.dtype
    lengths = lengths.to(device)
    t = torch.arange(features.shape[1], device=device, dtype=dtype).unsqueeze(0)
    fraction = t / (lengths - 1).clamp_min(1).to(dtype).unsqueeze(1)
    head, tail = head.to(device, dtype).unsqueeze(1), tail.to(device, dtype).unsqueeze(1)
    slope = (head + (tail - head) * fraction) * valid_mask(lengths, features.shape[1]).to(dtype)
    return features + slope.unsqueeze(-1)


def log_mixup_exp(
    features: Tensor, lengths: Tensor, partners: Tensor, alpha: Tensor, eps: float = _EPS32
) -> Tensor:
    """BYOL-A's log-mixup-exp with another clip of the batch:
    ``log((1 - a) exp(x_b) + a exp(x_partner) + eps)``, ``alpha`` ``(B,)``. Where the partner has no
    frame (past its end) the clip is kept as it is (``a = 0`` there); padding stays 0."""
    device, dtype = features.device, features.dtype
    lengths, partners = lengths.to(device), partners.to(device)
    frames = features.shape[1]
    keep = valid_mask(lengths, frames)
    partner_valid = keep[partners] & keep
    a = alpha.to(device, dtype).view(-1, 1, 1) * partner_valid.unsqueeze(-1).to(dtype)
    mixed = torch.log((1 - a) * features.exp() + a * features[partners].exp() + eps)
    # Where a = 0 the log adds eps to exp(x): keep x itself there, bit for bit.
    mixed = torch.where(partner_valid.unsqueeze(-1), mixed, features)
    return mixed.masked_fill(~keep.unsqueeze(-1), 0.0)


def masked_standardize(
    features: Tensor, lengths: Tensor, per_sample: bool = True, eps: float = 1e-5
) -> Tensor:
    """Zero mean, unit variance over the valid frames (all channels): per sample (``(B,)`` statistics) or
    over the whole batch (BYOL-A v2's ``NormalizeBatch``). Padding stays 0."""
    keep = valid_mask(lengths.to(features.device), features.shape[1]).unsqueeze(-1).to(features.dtype)
    dims = (1, 2) if per_sample else (0, 1, 2)
    count = (keep.sum(dim=dims, keepdim=True) * features.shape[2]).clamp_min(1.0)
    mean = (features * keep).sum(dim=dims, keepdim=True) / count
    var = ((features - mean).square() * keep).sum(dim=dims, keepdim=True) / count
    return (features - mean) / torch.sqrt(var + eps) * keep


# ----------------------------------------------------------------------------- option checks


def _pair(policy: str, name: str, value: Any, low: float | None = None) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
    ):
        raise ValueError(f"{policy}: {name} must be a list of two numbers [min, max], got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi or (low is not None and lo < low):
        bound = "" if low is None else f" and min >= {low:g}"
        raise ValueError(f"{policy}: {name} must be [min, max] with min <= max{bound}, got {value!r}")
    return lo, hi


def _optional_pair(policy: str, name: str, value: Any) -> tuple[float, float] | None:
    return None if value is None else _pair(policy, name, value)


def _positive(policy: str, name: str, value: Any, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "integer" if integer else "number"
        raise ValueError(f"{policy}: {name} must be a positive {kind}, got {value!r}")
    return float(value)


def _probability(policy: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{policy}: {name} is a probability and must be in [0, 1], got {value!r}")
    return float(value)


def _audio_inputs(policy: str, info: DataInfo, transform: InputTransform) -> float:
    """Check the data is audio; returns its sample rate."""
    if info.modality != "audio" or getattr(transform, "modality", None) != "audio":
        raise ValueError(f"the {policy} view policy is for audio, but the data holds {info.modality} samples")
    rate = getattr(transform, "sample_rate", None) or info.sample_rate
    if not rate:
        raise ValueError(f"{policy}: the audio data declares no sample_rate")
    return float(rate)


def _waveforms(transform: InputTransform, batch: Batch) -> tuple[Tensor, Tensor]:
    """The transform's float waveform and each clip's valid length."""
    waveform, padding = transform(batch)
    if batch.lengths is not None:
        lengths = batch.lengths.to(waveform.device)
    elif padding is not None:
        lengths = (~padding).sum(dim=1)
    else:
        lengths = torch.full(
            (waveform.shape[0],), waveform.shape[1], dtype=torch.long, device=waveform.device
        )
    return waveform, lengths


# ----------------------------------------------------------------------------- speech_mask


@dataclass(frozen=True)
class SpeechMaskPolicy:
    """One waveform view for masked prediction: crop → (optional gain, noise) → span mask.

    ``policy(batch, generator) -> Views(inputs=[waveform (B, T')], num_global=1, padding_masks=[(B, T')
    | None], masks=[(B, F) frame mask], crop_starts=[(B,) sample offsets])``. Clips longer than
    ``max_samples`` are cropped at a uniform offset (fairseq's ``crop_to_max_size``); the mask is
    :func:`~selfsup.augment.masking.span_mask` over ``encoder.output_lengths`` of the cropped lengths,
    in the encoder's frames (``F = output_lengths(T')``). Padding is never masked.
    """

    transform: InputTransform
    encoder: Encoder
    max_samples: int
    mask_prob: float
    mask_length: int
    min_masks: int
    require_same_masks: bool
    gain_db: tuple[float, float] | None
    noise_snr_db: tuple[float, float] | None

    @property
    def crop_samples(self) -> int:
        """The longest view in samples: duration batches are budgeted on ``min(length, this)``."""
        return self.max_samples

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        waveform, lengths = _waveforms(self.transform, batch)
        starts = sample_crop_starts(lengths, self.max_samples, generator).to(waveform.device)
        waveform, lengths, padding = random_crop(waveform, lengths, self.max_samples, starts)
        size = waveform.shape[0]
        if self.gain_db is not None:
            waveform = apply_gain(waveform, _uniform(size, *self.gain_db, generator))
        if self.noise_snr_db is not None:
            snr = _uniform(size, *self.noise_snr_db, generator)
            noise = torch.randn(waveform.shape, generator=generator, device=generator.device)
            waveform = add_noise(waveform, lengths, snr, noise)
        frames = self.encoder.output_lengths(lengths)
        total = int(self.encoder.output_lengths(torch.tensor([waveform.shape[1]], device=lengths.device))[0])
        mask = span_mask(
            frames,
            total,
            mask_prob=self.mask_prob,
            mask_length=self.mask_length,
            generator=generator,
            min_masks=self.min_masks,
            require_same_masks=self.require_same_masks,
        )
        return Views(
            inputs=[waveform],
            num_global=1,
            padding_masks=[padding if bool(padding.any()) else None],
            masks=[mask],
            crop_starts=[starts],
            labels=batch.labels,
            indices=batch.indices,
        )


@VIEW_POLICIES.register("speech_mask", modality="audio")
def speech_mask(
    info: DataInfo,
    transform: InputTransform,
    encoder: Encoder,
    mask_prob: float = 0.65,
    mask_length: int = 10,
    min_masks: int = 2,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    require_same_masks: bool = False,
    gain_db: Sequence[float] | None = None,
    noise_snr_db: Sequence[float] | None = None,
) -> SpeechMaskPolicy:
    """Speech masked prediction (wav2vec 2.0 / HuBERT / data2vec): crop to max_seconds, span mask.

    Defaults are fairseq's Base pretraining: mask_prob 0.65, mask_length 10 (about 49% of frames
    masked), min_masks 2, max_sample_size 250,000 samples (15.625 s at 16 kHz). ``gain_db`` /
    ``noise_snr_db`` (``[min, max]``, off by default as in fairseq) add a random gain and white noise at
    a random SNR per clip. ``require_same_masks`` cuts every row to the batch's smallest masked count
    (fairseq's default; off here: our losses index masked frames with the mask).
    """
    name = "speech_mask"
    rate = _audio_inputs(name, info, transform)
    if not hasattr(encoder, "output_lengths") or getattr(encoder, "modality", None) != "audio":
        raise ValueError(f"{name}: needs an audio encoder that declares output_lengths")
    # No mask_mode check: the mask is the method's to use (an encoder that cannot apply one raises when
    # given it), and a method may mask the frames of any encoder that declares output_lengths.
    _probability(name, "mask_prob", mask_prob)
    _positive(name, "mask_length", mask_length, integer=True)
    if isinstance(min_masks, bool) or not isinstance(min_masks, int) or min_masks < 0:
        raise ValueError(f"{name}: min_masks must be an integer >= 0, got {min_masks!r}")
    max_samples = max(1, round(_positive(name, "max_seconds", max_seconds) * rate))
    return SpeechMaskPolicy(
        transform=transform,
        encoder=encoder,
        max_samples=max_samples,
        mask_prob=float(mask_prob),
        mask_length=int(mask_length),
        min_masks=int(min_masks),
        require_same_masks=bool(require_same_masks),
        gain_db=_optional_pair(name, "gain_db", gain_db),
        noise_snr_db=_optional_pair(name, "noise_snr_db", noise_snr_db),
    )


# ----------------------------------------------------------------------------- byol_a


@dataclass(frozen=True)
class BYOLAPolicy:
    """Two BYOL-A views of log-mel spectrograms ``(B, F, n_mels)`` with their frame padding masks.

    Per batch: the transform's waveform → random crop to ``unit_samples`` (per-sample offsets) → the
    encoder's front-end (``encoder.frontend``) → the encoder's normalization
    (``encoder.normalize_features`` when it has one, else per-clip standardization) — exactly what the
    encoder does to a waveform at evaluation. Then per view, each draw per sample: log-mixup-exp with
    another clip of the batch (``alpha = mixup_ratio * U[0, 1)``) → random resize crop → random linear
    fader (``gain * U(-1, 1)`` at both ends) → standardization over the batch of both views
    (``post_norm``, BYOL-A v2's ``NormalizeBatch``). Frontend encoders take these views directly.
    """

    transform: InputTransform
    encoder: Encoder
    unit_samples: int
    mixup_ratio: float
    virtual_crop_scale: tuple[float, float]
    freq_scale: tuple[float, float]
    time_scale: tuple[float, float]
    fader_gain: float
    post_norm: bool
    interpolation: str

    def log_mel(self, waveform: Tensor, padding: Tensor | None) -> tuple[Tensor, Tensor]:
        """The encoder's normalized log-mel ``(B, F, n_mels)`` and valid frames ``(B,)``."""
        frontend = self.encoder.frontend  # type: ignore[attr-defined]
        features, frame_padding = frontend(waveform, padding)
        if frame_padding is None:
            frames = torch.full((features.shape[0],), features.shape[1], device=features.device)
        else:
            frames = (~frame_padding).sum(dim=1)
        normalize = getattr(self.encoder, "normalize_features", None)
        if normalize is not None:
            features = normalize(features, frame_padding)
        else:
            features = masked_standardize(features, frames)
        return features, frames

    def _view(self, x: Tensor, frames: Tensor, generator: torch.Generator) -> Tensor:
        size = x.shape[0]
        if self.mixup_ratio > 0 and size > 1:
            alpha = self.mixup_ratio * torch.rand(size, generator=generator, device=generator.device)
            x = log_mixup_exp(x, frames, sample_partners(size, generator), alpha)
        params = sample_resize_crop(
            frames, x.shape[2], generator, self.virtual_crop_scale, self.freq_scale, self.time_scale
        )
        x = random_resize_crop(x, frames, params, self.virtual_crop_scale, self.interpolation)
        if self.fader_gain > 0:
            head = _uniform(size, -self.fader_gain, self.fader_gain, generator)
            tail = _uniform(size, -self.fader_gain, self.fader_gain, generator)
            x = linear_fader(x, frames, head, tail)
        return x

    @property
    def crop_samples(self) -> int:
        """The longest view in samples: duration batches are budgeted on ``min(length, this)``."""
        return self.unit_samples

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        waveform, lengths = _waveforms(self.transform, batch)
        starts = sample_crop_starts(lengths, self.unit_samples, generator).to(waveform.device)
        waveform, lengths, padding = random_crop(waveform, lengths, self.unit_samples, starts)
        x, frames = self.log_mel(waveform, padding)
        views = [self._view(x, frames, generator) for _ in range(2)]
        if self.post_norm:
            both = masked_standardize(torch.cat(views), torch.cat([frames, frames]), per_sample=False)
            views = list(both.chunk(2))
        frame_padding = ~valid_mask(frames, x.shape[1])
        return Views(
            inputs=views,
            num_global=2,
            padding_masks=[frame_padding, frame_padding],
            labels=batch.labels,
            indices=batch.indices,
        )


@VIEW_POLICIES.register("byol_a", modality="audio", needs=("frontend",))
def byol_a(
    info: DataInfo,
    transform: InputTransform,
    encoder: Encoder,
    unit_seconds: float = BYOL_A_UNIT_SECONDS,
    mixup_ratio: float = 0.2,
    virtual_crop_scale: Sequence[float] = (1.0, 1.5),
    freq_scale: Sequence[float] = (0.6, 1.5),
    time_scale: Sequence[float] = (0.6, 1.5),
    fader_gain: float = 1.0,
    post_norm: bool = True,
    interpolation: str = "bicubic",
) -> BYOLAPolicy:
    """BYOL-A views (Niizumi et al. 2021/2023): log-mel, mixup, random resize crop, linear fader.

    Defaults are BYOL-A v2's (``v2/train_v2.py``, ``config_v2.yaml``): 0.95 s segments, log-mixup-exp
    ratio 0.2 (v1: 0.4), RandomResizeCrop virtual scale (1.0, 1.5), frequency and time scale
    (0.6, 1.5), bicubic; RandomLinearFader gain 1.0 (v2 only; 0 turns it off); batch post-normalization.
    Needs a frontend encoder (``encoder.frontend``, e.g. ``byol_a_cnn``). Differences from the authors'
    code: mixup partners are other clips of the same batch, not a FIFO memory bank of past inputs;
    clips shorter than the segment keep their length with a padding mask (the authors zero-pad the
    waveform); the log-mel normalization is the encoder's (per clip by default, not dataset statistics).
    """
    name = "byol_a"
    rate = _audio_inputs(name, info, transform)
    if getattr(encoder, "frontend", None) is None:
        raise ValueError(
            f"{name}: needs an encoder with a log-mel front-end (an 'encoder.frontend', e.g. byol_a_cnn); "
            f"{type(encoder).__name__} has none"
        )
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"{name}: interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    vcs = _pair(name, "virtual_crop_scale", virtual_crop_scale, low=1.0)
    fs = _pair(name, "freq_scale", freq_scale, low=0.0)
    ts = _pair(name, "time_scale", time_scale, low=0.0)
    if fs[0] <= 0 or ts[0] <= 0:
        raise ValueError(f"{name}: freq_scale and time_scale must be > 0, got {freq_scale!r}, {time_scale!r}")
    if isinstance(fader_gain, bool) or not isinstance(fader_gain, (int, float)) or fader_gain < 0:
        raise ValueError(f"{name}: fader_gain must be a number >= 0, got {fader_gain!r}")
    return BYOLAPolicy(
        transform=transform,
        encoder=encoder,
        unit_samples=max(1, round(_positive(name, "unit_seconds", unit_seconds) * rate)),
        mixup_ratio=_probability(name, "mixup_ratio", mixup_ratio),
        virtual_crop_scale=vcs,
        freq_scale=fs,
        time_scale=ts,
        fader_gain=float(fader_gain),
        post_norm=bool(post_norm),
        interpolation=interpolation,
    )


__all__ = [
    "BYOLAPolicy",
    "ResizeCropParams",
    "SpeechMaskPolicy",
    "add_noise",
    "apply_gain",
    "byol_a",
    "freq_mask",
    "linear_fader",
    "log_mixup_exp",
    "masked_standardize",
    "mix_clips",
    "random_crop",
    "random_resize_crop",
    "sample_crop_starts",
    "sample_partners",
    "sample_resize_crop",
    "sample_spans",
    "spans_to_mask",
    "speech_mask",
    "time_mask",
    "valid_mask",
]
