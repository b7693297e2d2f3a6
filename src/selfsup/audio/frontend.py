"""Batched, padding-aware spectral front-ends in torch: log-mel filterbanks and MFCCs (+ deltas).

Both front-ends are ``nn.Module`` s with the same interface::

    features, frame_padding = frontend(waveform (B, T) float, padding_mask (B, T) bool | None)
    # features (B, F, C), frame_padding (B, F) bool (True at padded frames) or None
    frontend.output_lengths(lengths (B,) samples) -> (B,) valid frames
    frontend.frame_rate  # frames per second = sample_rate / hop_length

**Padding never leaks.** Samples at padding are zeroed first; with ``center=True`` each clip is
padded on both sides by ``n_fft // 2`` *as if it were alone* (zeros for ``pad_mode="constant"``,
a per-sample reflection about its own last valid sample for ``"reflect"``), so every valid frame of a
padded batch equals the frame computed from the unpadded clip; frames at index ``>= output_lengths``
are set to 0 and marked True in the returned mask. Deltas replicate each clip's own last valid frame.

**Definitions** (checked against librosa in ``tests/unit/test_audio_frontend.py``):

* power spectrogram ``|STFT|²`` with a periodic Hann window of ``win_length`` zero-padded (centred)
  to ``n_fft`` — ``librosa.stft(window="hann")`` / ``torch.stft``; ``center=True`` pads ``n_fft // 2``
  on both sides (``pad_mode="constant"`` is librosa ≥ 0.10's default, ``"reflect"`` torchaudio's).
  Valid frames: ``1 + (L + 2 * (n_fft // 2) - n_fft) // hop`` centred, ``1 + (L - n_fft) // hop``
  otherwise (0 when the clip is shorter than one window).
* mel filterbank ``librosa.filters.mel(htk=..., norm=...)`` (identical to torchaudio's
  ``melscale_fbanks``): triangles between ``n_mels + 2`` points equally spaced on the mel scale.
  Default ``mel_scale="htk"`` (``2595 log10(1 + f / 700)``) with ``mel_norm=None``: torchaudio's
  ``MelSpectrogram`` defaults, which BYOL-A's and most PyTorch speech code's features use;
  ``mel_scale="slaney", mel_norm="slaney"`` gives librosa's defaults (area-normalized triangles).
* log-mel: ``log(mel + log_offset)`` (natural log, ``log_offset=1e-6`` by default: a floor about
  -13.8, far below speech energy; BYOL-A adds float32's eps instead).
* MFCC: librosa's ``feature.mfcc``: ``10 log10(max(mel, amin))`` (dB, ``amin=1e-10``, no ``top_db``
  clipping — librosa's ``top_db=80`` depends on each clip's maximum, so it would make a padded clip
  differ from the batch), then an orthonormal DCT-II keeping ``n_mfcc`` coefficients, optional
  librosa lifter. Deltas as ``torchaudio.functional.compute_deltas`` (``win_length=5``, replicate
  edges), which is what fairseq's HuBERT ``dump_mfcc_feature.py`` applies twice for its 39-dim
  iteration-0 features (it is also ``librosa.feature.delta(width=5, mode="nearest")``).

Deliberate difference from fairseq's HuBERT features: fairseq uses Kaldi MFCCs
(``torchaudio.compliance.kaldi.mfcc``: Povey window, pre-emphasis 0.97, DC removal, dither, 23 bins,
lifter 22, natural log, ``snip_edges``); ours are librosa's (Hann window, no pre-emphasis, dB). The
defaults of :class:`MFCC` follow Kaldi's filterbank geometry (23 HTK mel bins from 20 Hz). For
k-means targets only the geometry of the feature space matters, and the frame rate is the encoder's
(``hop_length_for(16000, 50) == 320``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")
PAD_MODES = ("constant", "reflect")

# Slaney's Auditory Toolbox mel scale (librosa ``hz_to_mel(htk=False)``): linear below 1 kHz, log above.
_SLANEY_F_SP = 200.0 / 3
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


# ----------------------------------------------------------------------------- pure functions


def hz_to_mel(freqs: Tensor, mel_scale: str = "htk") -> Tensor:
    """Frequencies in Hz → mels on the HTK or Slaney scale (librosa's ``hz_to_mel``)."""
    if mel_scale == "htk":
        return 2595.0 * torch.log10(1.0 + freqs / 700.0)
    linear = freqs / _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_MEL + torch.log(freqs.clamp_min(_SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / (
        _SLANEY_LOGSTEP
    )
    return torch.where(freqs >= _SLANEY_MIN_LOG_HZ, log, linear)


def mel_to_hz(mels: Tensor, mel_scale: str = "htk") -> Tensor:
    """Mels → Hz, the inverse of :func:`hz_to_mel`."""
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    linear = _SLANEY_F_SP * mels
    log = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL))
    return torch.where(mels >= _SLANEY_MIN_LOG_MEL, log, linear)


def mel_filterbank(
    sample_rate: float,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    *,
    mel_scale: str = "htk",
    norm: str | None = None,
) -> Tensor:
    """``(n_mels, n_fft // 2 + 1)`` float64 triangular filters: ``librosa.filters.mel(sr, n_fft, n_mels=,
    fmin=, fmax=, htk=mel_scale == "htk", norm=norm)``. ``norm="slaney"`` divides each triangle by its
    width in Hz (constant energy per band)."""
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale must be one of {', '.join(MEL_SCALES)}, got {mel_scale!r}")
    if norm not in MEL_NORMS:
        raise ValueError(f"mel norm must be None or 'slaney', got {norm!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2:g}, "
            f"got f_min={f_min}, f_max={f_max}"
        )
    fft_freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64), mel_scale)
    mel_f = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), mel_scale)
    fdiff = mel_f.diff()
    ramps = mel_f.unsqueeze(1) - fft_freqs.unsqueeze(0)  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1].unsqueeze(1)
    upper = ramps[2:] / fdiff[1:].unsqueeze(1)
    weights = torch.minimum(lower, upper).clamp_min(0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (mel_f[2:] - mel_f[:-2])).unsqueeze(1)
    return weights


def dct_matrix(n_out: int, n_in: int) -> Tensor:
    """``(n_out, n_in)`` float64 orthonormal DCT-II (``scipy.fft.dct(type=2, norm="ortho")`` rows)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(1)
    basis = torch.cos(math.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis


def hop_length_for(sample_rate: float, frame_rate: float) -> int:
    """The hop in samples that gives ``frame_rate`` frames per second (e.g. 16 kHz at 50 Hz → 320).

    Raises ValueError when the rate is not a whole number of samples, so that MFCC labels can never
    drift against an encoder's frames.
    """
    hop = sample_rate / frame_rate
    if frame_rate <= 0 or abs(hop - round(hop)) > 1e-9 * max(1.0, hop) or round(hop) < 1:
        raise ValueError(
            f"a frame rate of {frame_rate:g} Hz at {sample_rate:g} Hz is not a whole number of samples "
            f"per frame ({hop:g})"
        )
    return round(hop)


def num_frames(lengths: Tensor, n_fft: int, hop_length: int, center: bool = True) -> Tensor:
    """Valid STFT frames for ``lengths`` valid samples (``(B,)`` int64), as librosa counts them."""
    padded = lengths + 2 * (n_fft // 2) if center else lengths
    return torch.div(padded - n_fft, hop_length, rounding_mode="floor").add(1).clamp_min(0)


def frames_padding_mask(lengths: Tensor, total: int) -> Tensor:
    """``(B,)`` valid frames → ``(B, total)`` bool, True at padded frames."""
    return torch.arange(total, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


def _lengths_from_mask(waveform: Tensor, padding_mask: Tensor | None) -> Tensor:
    if padding_mask is None:
        return torch.full((waveform.shape[0],), waveform.shape[1], dtype=torch.long, device=waveform.device)
    if padding_mask.shape != waveform.shape:
        raise ValueError(
            f"padding_mask {tuple(padding_mask.shape)} must have the waveform's shape {tuple(waveform.shape)}"
        )
    return (~padding_mask).sum(dim=1)


def _center_pad(waveform: Tensor, lengths: Tensor, pad: int, mode: str) -> Tensor:
    """Pad each clip by ``pad`` on both sides as if alone: zeros, or a reflection about its own ends."""
    if mode == "constant":
        return F.pad(waveform, (pad, pad))
    total = waveform.shape[1] + 2 * pad
    positions = torch.arange(-pad, total - pad, device=waveform.device).unsqueeze(0)  # (1, T + 2 pad)
    last = (lengths - 1).clamp_min(0).unsqueeze(1)
    index = positions.abs()
    index = torch.where(index > last, 2 * last - index, index)
    # Clips shorter than ``pad`` would need repeated reflections (numpy does them); clamping keeps the
    # index valid, and librosa agrees on every clip longer than n_fft // 2.
    index = torch.minimum(index.clamp_min(0), last)
    return waveform.gather(1, index.expand(waveform.shape[0], -1))


def power_spectrogram(
    waveform: Tensor,
    lengths: Tensor,
    window: Tensor,
    n_fft: int,
    hop_length: int,
    *,
    center: bool = True,
    pad_mode: str = "constant",
) -> Tensor:
    """``(B, T)`` float waveform (zeros at padding) → ``(B, F, n_fft // 2 + 1)`` power ``|STFT|²``.

    ``F = num_frames(T)``; frames past a clip's own ``num_frames(lengths)`` are not meaningful (the
    callers zero them). ``window`` has ``win_length <= n_fft`` samples and is centred in ``n_fft``.
    """
    x = _center_pad(waveform, lengths, n_fft // 2, pad_mode) if center else waveform
    if x.shape[1] < n_fft:  # too short for one frame: the valid-frame count is 0 anyway
        x = F.pad(x, (0, n_fft - x.shape[1]))
    spec = torch.stft(
        x,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=window.shape[0],
        window=window,
        center=False,
        return_complex=True,
    )
    return spec.abs().square().transpose(1, 2)


def compute_deltas(features: Tensor, lengths: Tensor | None = None, win_length: int = 5) -> Tensor:
    """Regression deltas over time: ``(B, F, C)`` → ``(B, F, C)``.

    ``d_t = sum_{n=1}^{N} n (c_{t+n} - c_{t-n}) / (2 sum_{n=1}^{N} n²)`` with ``N = (win_length - 1) // 2``
    and each clip's first and last *valid* frame replicated at its edges — torchaudio's
    ``compute_deltas`` (``mode="replicate"``) applied per clip, equal to
    ``librosa.feature.delta(width=win_length, mode="nearest")``. Frames past ``lengths`` get deltas of
    the replicated edge (0); callers mask them.
    """
    if win_length < 3 or win_length % 2 == 0:
        raise ValueError(f"delta win_length must be an odd integer >= 3, got {win_length}")
    batch, frames, channels = features.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long, device=features.device)
    half = (win_length - 1) // 2
    last = (lengths - 1).clamp_min(0).view(batch, 1)
    t = torch.arange(frames, device=features.device).unsqueeze(0)
    out = torch.zeros_like(features)
    for n in range(1, half + 1):
        ahead = torch.minimum((t + n).clamp_max(frames - 1), last)
        behind = torch.minimum((t - n).clamp_min(0), last)
        gather = lambda index: features.gather(1, index.unsqueeze(-1).expand(-1, -1, channels))  # noqa: E731
        out = out + n * (gather(ahead) - gather(behind))
    return out / (2 * sum(n * n for n in range(1, half + 1)))


# ----------------------------------------------------------------------------- modules


class _SpectralFrontend(nn.Module):
    """Shared STFT + mel machinery; subclasses turn mel power into features."""

    def __init__(
        self,
        sample_rate: float,
        n_fft: int,
        win_length: int | None,
        hop_length: int,
        n_mels: int,
        f_min: float,
        f_max: float | None,
        mel_scale: str,
        mel_norm: str | None,
        center: bool,
        pad_mode: str,
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        for name, value in (("n_fft", n_fft), ("win_length", win_length), ("hop_length", hop_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must be <= n_fft ({n_fft})")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
        if isinstance(n_mels, bool) or not isinstance(n_mels, int) or n_mels < 1:
            raise ValueError(f"n_mels must be a positive integer, got {n_mels!r}")
        self.sample_rate = float(sample_rate)
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.n_mels, self.f_min, self.f_max = n_mels, float(f_min), f_max
        self.mel_scale, self.mel_norm = mel_scale, mel_norm
        self.center, self.pad_mode = center, pad_mode
        self.frame_rate = self.sample_rate / hop_length
        fbank = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale=mel_scale, norm=mel_norm)
        # Not persistent: derived from the options, so checkpoints hold only learned weights.
        self.register_buffer("mel_fbank", fbank.T.float().contiguous(), persistent=False)  # (n_freqs, n_mels)
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid frames for ``lengths`` valid samples (``(B,)`` int64)."""
        return num_frames(lengths, self.n_fft, self.hop_length, self.center)

    def _mel_power(self, waveform: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """→ (mel power ``(B, F, n_mels)``, valid frames ``(B,)``, frame padding mask ``(B, F)``)."""
        if waveform.ndim != 2:
            raise ValueError(f"expected a (B, T) waveform batch, got shape {tuple(waveform.shape)}")
        if not waveform.is_floating_point():
            raise TypeError(f"expected a float waveform in [-1, 1], got {waveform.dtype}")
        lengths = _lengths_from_mask(waveform, padding_mask)
        # float32 at least, outside autocast: a bf16 STFT loses the quiet bands entirely.
        dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
        x = waveform.to(dtype)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask, 0.0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            power = power_spectrogram(
                x,
                lengths,
                self.window.to(dtype),
                self.n_fft,
                self.hop_length,
                center=self.center,
                pad_mode=self.pad_mode,
            )
            mel = power @ self.mel_fbank.to(dtype)
        valid = self.output_lengths(lengths)
        return mel, valid, frames_padding_mask(valid, mel.shape[1])


class LogMelFrontend(_SpectralFrontend):
    """``(B, T)`` waveform → log-mel ``(B, F, n_mels)``: ``log(mel power + log_offset)``, zeros at padded
    frames. See the module docstring for the exact definitions (``librosa.feature.melspectrogram``
    with ``window="hann"``, ``power=2``, ``htk=mel_scale == "htk"``, ``norm=mel_norm``)."""

    def __init__(
        self,
        sample_rate: float = 16000,
        n_fft: int = 400,
        win_length: int | None = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        *,
        mel_scale: str = "htk",
        mel_norm: str | None = None,
        center: bool = True,
        pad_mode: str = "constant",
        log_offset: float = 1e-6,
    ) -> None:
        super().__init__(
            sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max,
            mel_scale, mel_norm, center, pad_mode,
        )  # fmt: skip
        if not log_offset > 0:
            raise ValueError(f"log_offset must be > 0 (the floor of the log), got {log_offset!r}")
        self.log_offset = float(log_offset)
        self.output_dim = n_mels

    def forward(self, waveform: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        mel, _, frame_padding = self._mel_power(waveform, padding_mask)
        features = torch.log(mel + self.log_offset).masked_fill(frame_padding.unsqueeze(-1), 0.0)
        return features, (frame_padding if padding_mask is not None else None)


class MFCC(_SpectralFrontend):
    """``(B, T)`` waveform → MFCCs ``(B, F, C)``, ``C = n_mfcc`` or ``3 n_mfcc`` with ``deltas`` (the
    coefficients, their deltas, their delta-deltas: HuBERT's 39-dim iteration-0 features); zeros at
    padded frames. ``librosa.feature.mfcc(dct_type=2, norm="ortho", lifter=lifter)`` on
    ``power_to_db(melspectrogram, amin=amin, top_db=None)``; deltas by :func:`compute_deltas`."""

    def __init__(
        self,
        sample_rate: float = 16000,
        n_mfcc: int = 13,
        n_fft: int = 400,
        win_length: int | None = 400,
        hop_length: int = 160,
        n_mels: int = 23,
        f_min: float = 20.0,
        f_max: float | None = None,
        *,
        deltas: bool = True,
        delta_win_length: int = 5,
        lifter: float = 0.0,
        mel_scale: str = "htk",
        mel_norm: str | None = None,
        center: bool = True,
        pad_mode: str = "constant",
        amin: float = 1e-10,
    ) -> None:
        super().__init__(
            sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max,
            mel_scale, mel_norm, center, pad_mode,
        )  # fmt: skip
        if isinstance(n_mfcc, bool) or not isinstance(n_mfcc, int) or not 1 <= n_mfcc <= n_mels:
            raise ValueError(f"n_mfcc must be an integer in [1, n_mels={n_mels}], got {n_mfcc!r}")
        if lifter < 0:
            raise ValueError(f"lifter must be >= 0, got {lifter!r}")
        if not amin > 0:
            raise ValueError(f"amin must be > 0, got {amin!r}")
        compute_deltas(torch.zeros(1, 1, 1), win_length=delta_win_length)  # validates the width
        self.n_mfcc, self.deltas, self.delta_win_length = n_mfcc, bool(deltas), delta_win_length
        self.lifter, self.amin = float(lifter), float(amin)
        self.output_dim = n_mfcc * (3 if deltas else 1)
        dct = dct_matrix(n_mfcc, n_mels)
        if lifter > 0:  # librosa's lifter: 1 + (L / 2) sin(pi (k + 1) / L), k = 0 .. n_mfcc - 1
            k = torch.arange(1, n_mfcc + 1, dtype=torch.float64)
            dct = dct * (1 + (lifter / 2) * torch.sin(math.pi * k / lifter)).unsqueeze(1)
        self.register_buffer("dct", dct.T.float().contiguous(), persistent=False)  # (n_mels, n_mfcc)

    def forward(self, waveform: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        mel, valid, frame_padding = self._mel_power(waveform, padding_mask)
        with torch.autocast(device_type=mel.device.type, enabled=False):
            db = 10.0 * torch.log10(mel.clamp_min(self.amin))
            coefficients = db @ self.dct.to(db.dtype)
            if self.deltas:
                delta = compute_deltas(coefficients, valid, self.delta_win_length)
                delta2 = compute_deltas(delta, valid, self.delta_win_length)
                coefficients = torch.cat([coefficients, delta, delta2], dim=-1)
        features = coefficients.masked_fill(frame_padding.unsqueeze(-1), 0.0)
        return features, (frame_padding if padding_mask is not None else None)
