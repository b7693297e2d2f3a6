"""Batched audio augmentations and the speech_mask / byol_a view policies, against per-sample loops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.augment import audio as AA
from selfsup.augment.base import VIEW_POLICIES
from selfsup.data.base import Batch, DataInfo

INFO = DataInfo(modality="audio", sample_shape=None, dtype="int16", sample_rate=16000.0, classes=())


@dataclass(frozen=True)
class _StandInTransform:
    """The AudioTransform contract: int16 (B, T) -> float32 in [-1, 1) with zeros at padding."""

    sample_rate: float = 16000.0
    modality: str = "audio"

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        assert isinstance(batch.inputs, Tensor)
        wave = batch.inputs.float() / 32768.0
        if batch.padding_mask is not None:
            wave = wave.masked_fill(batch.padding_mask, 0.0)
        return wave, batch.padding_mask

    def to_dict(self) -> dict[str, Any]:
        return {"modality": "audio", "sample_rate": self.sample_rate}


def _transform() -> Any:
    try:
        from selfsup.augment.audio_transform import AudioTransform  # the data helper's, once it exists

        return AudioTransform(sample_rate=16000)
    except (ImportError, TypeError):
        return _StandInTransform()


class _StandInSpeechEncoder(nn.Module):
    """The wav2vec2 geometry: 7 convolutions, 320 samples per frame (fairseq's output length formula)."""

    modality = "audio"
    mask_mode = "replace"
    frame_rate = 50.0

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), strict=True):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp_min(0)


def _batch(lengths: list[int], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    wave = torch.randint(-8000, 8000, (len(lengths), longest), generator=g, dtype=torch.int16)
    pad = torch.arange(longest).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    wave = wave.masked_fill(pad, 0)
    n = len(lengths)
    return Batch(
        inputs=wave,
        labels=torch.zeros(n, dtype=torch.long),
        indices=torch.arange(n),
        lengths=torch.tensor(lengths),
        padding_mask=pad,
    )


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- waveform ops


def test_random_crop_per_sample_offsets_match_slices() -> None:
    wave = torch.randn(3, 100)
    lengths = torch.tensor([100, 60, 30])
    wave[1, 60:] = 0
    wave[2, 30:] = 0
    starts = torch.tensor([25, 10, 0])
    out, new_lengths, pad = AA.random_crop(wave, lengths, 40, starts)
    assert out.shape == (3, 40) and new_lengths.tolist() == [40, 40, 30]
    torch.testing.assert_close(out[0], wave[0, 25:65])
    torch.testing.assert_close(out[1], wave[1, 10:50])
    torch.testing.assert_close(out[2, :30], wave[2, :30])
    assert (out[2, 30:] == 0).all() and pad[2, 30:].all() and not pad[:2].any()


def test_crop_starts_are_uniform_over_the_inclusive_range() -> None:
    starts = AA.sample_crop_starts(torch.full((4000,), 13), 10, _gen())
    counts = torch.bincount(starts, minlength=4)
    assert starts.min() == 0 and starts.max() == 3 and counts.min() > 850  # 1000 expected each
    assert (AA.sample_crop_starts(torch.tensor([5, 10]), 10, _gen()) == 0).all()


def test_gain_noise_and_mixing() -> None:
    wave = torch.randn(2, 20000, dtype=torch.float64) * 0.1
    lengths = torch.tensor([20000, 12000])
    wave[1, 12000:] = 0
    gained = AA.apply_gain(wave, torch.tensor([6.0, -20.0]))
    torch.testing.assert_close(gained[0], wave[0] * 10 ** (6 / 20))
    torch.testing.assert_close(gained[1], wave[1] * 0.1)
    noise = torch.randn(2, 20000, generator=_gen(1), dtype=torch.float64)
    noisy = AA.add_noise(wave, lengths, torch.tensor([10.0, 0.0]), noise)
    assert (noisy[1, 12000:] == 0).all()
    for i, n in enumerate(lengths.tolist()):
        snr = 10 * torch.log10(wave[i, :n].square().mean() / (noisy[i, :n] - wave[i, :n]).square().mean())
        assert abs(float(snr) - [10.0, 0.0][i]) < 0.2
    mixed = AA.mix_clips(wave, lengths, torch.tensor([1, 0]), torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(mixed[0], 0.75 * wave[0] + 0.25 * wave[1])
    torch.testing.assert_close(mixed[1, :12000], 0.5 * wave[1, :12000] + 0.5 * wave[0, :12000])
    assert (mixed[1, 12000:] == 0).all()
    partners = AA.sample_partners(50, _gen())
    assert (partners != torch.arange(50)).all()


# ----------------------------------------------------------------------------- spectrogram ops


def test_time_and_frequency_masks_stay_in_range_with_specaugment_statistics() -> None:
    lengths = torch.tensor([100, 40] * 2000)
    starts, widths = AA.sample_spans(lengths, 20, 2, _gen(2))
    assert widths.min() == 0 and widths.max() == 20
    assert abs(widths.double().mean().item() - 10.0) < 0.3  # uniform on {0..20}: mean 10
    assert ((starts + widths) <= lengths.unsqueeze(1)).all()
    mask = AA.spans_to_mask(starts, widths, 100)
    assert not (mask & ~AA.valid_mask(lengths, 100)).any()  # never on padding
    ref = torch.zeros(4, 100, dtype=torch.bool)
    for b in range(4):
        for s, w in zip(starts[b].tolist(), widths[b].tolist(), strict=True):
            ref[b, s : s + w] = True
    assert torch.equal(mask[:4], ref)
    x = torch.randn(4, 100, 8)
    out = AA.time_mask(x, mask[:4])
    assert torch.equal(out[mask[:4]], torch.zeros_like(out[mask[:4]])) and torch.equal(
        out[~mask[:4]], x[~mask[:4]]
    )
    fmask = torch.zeros(4, 8, dtype=torch.bool)
    fmask[:, 2:5] = True
    out = AA.freq_mask(x, fmask)
    assert (out[:, :, 2:5] == 0).all() and torch.equal(out[:, :, 5:], x[:, :, 5:])
    capped = AA.sample_spans(torch.tensor([10] * 100), 20, 1, _gen(), max_fraction=0.2)[1]
    assert capped.max() <= 2


def _reference_resize_crop(x: Tensor, length: int, p: tuple[int, int, int, int], mode: str) -> Tensor:
    """The authors' RandomResizeCrop.forward for one (C, L) clip with given (i, j, h, w)."""
    lms = x[:length].T.unsqueeze(0)  # (1, C, L)
    channels = lms.shape[1]
    canvas = torch.zeros(1, int(channels * 1.0), int(length * 1.5), dtype=x.dtype)
    y0, x0 = (canvas.shape[1] - channels) // 2, (canvas.shape[2] - length) // 2
    canvas[:, y0 : y0 + channels, x0 : x0 + length] = lms
    i, j, h, w = p
    crop = canvas[:, i : i + h, j : j + w]
    out = F.interpolate(crop.unsqueeze(0), size=(channels, length), mode=mode, align_corners=True)
    return out[0, 0].T


def test_random_resize_crop_matches_the_authors_crop_bilinear_exactly_bicubic_inside() -> None:
    lengths = torch.tensor([48, 31, 40])
    x = torch.randn(3, 48, 16, dtype=torch.float64)
    x = x * AA.valid_mask(lengths, 48).unsqueeze(-1)
    params = AA.sample_resize_crop(lengths, 16, _gen(3))
    for b, n in enumerate(lengths.tolist()):
        h, w = int(params.height[b]), int(params.width[b])
        assert 1 <= h <= 16 and 1 <= w <= int(n * 1.5)
        assert 0 <= int(params.top[b]) <= 16 - h and 0 <= int(params.left[b]) <= int(n * 1.5) - w
    out = AA.random_resize_crop(x, lengths, params, mode="bilinear")
    for b, n in enumerate(lengths.tolist()):
        p = (int(params.top[b]), int(params.left[b]), int(params.height[b]), int(params.width[b]))
        torch.testing.assert_close(out[b, :n], _reference_resize_crop(x[b], n, p, "bilinear"))
        assert (out[b, n:] == 0).all()
    # Identity box (the input's own place on the canvas): the output is the input, any mode.
    x0 = torch.div(torch.floor(lengths * 1.5).long() - lengths, 2, rounding_mode="floor")
    same = AA.ResizeCropParams(torch.zeros(3, dtype=torch.long), x0, torch.full((3,), 16), lengths)
    torch.testing.assert_close(AA.random_resize_crop(x, lengths, same, mode="bicubic"), x)
    # Bicubic: equal to the authors' wherever the 4x4 kernel stays inside the box (a smooth ramp input
    # checks the interior; at the box edges F.interpolate replicates the edge and we read the canvas).
    ramp = torch.arange(48, dtype=torch.float64).view(1, 48, 1).expand(1, 48, 16).clone() / 10
    one = torch.tensor([48])
    box = AA.ResizeCropParams(torch.tensor([0]), torch.tensor([30]), torch.tensor([16]), torch.tensor([30]))
    ours = AA.random_resize_crop(ramp, one, box, mode="bicubic")[0]
    ref = _reference_resize_crop(ramp[0], 48, (0, 30, 16, 30), "bicubic")
    torch.testing.assert_close(ours[4:-4, 2:-2], ref[4:-4, 2:-2], atol=1e-9, rtol=0)


def test_linear_fader_and_log_mixup_exp() -> None:
    lengths = torch.tensor([10, 4])
    x = torch.randn(2, 10, 3, dtype=torch.float64) * AA.valid_mask(lengths, 10).unsqueeze(-1)
    faded = AA.linear_fader(x, lengths, torch.tensor([0.5, -1.0]), torch.tensor([-0.5, 1.0]))
    torch.testing.assert_close(faded[0], x[0] + torch.linspace(0.5, -0.5, 10, dtype=x.dtype).unsqueeze(-1))
    torch.testing.assert_close(faded[1, :4], x[1, :4] + torch.linspace(-1, 1, 4, dtype=x.dtype).unsqueeze(-1))
    assert (faded[1, 4:] == 0).all()
    eps = float(torch.finfo(torch.float32).eps)
    mixed = AA.log_mixup_exp(x, lengths, torch.tensor([1, 0]), torch.tensor([0.3, 0.1]))
    ref0 = torch.log(0.7 * x[0, :4].exp() + 0.3 * x[1, :4].exp() + eps)
    torch.testing.assert_close(mixed[0, :4], ref0)
    torch.testing.assert_close(mixed[0, 4:], x[0, 4:])  # the partner has no frames there
    torch.testing.assert_close(mixed[1, :4], torch.log(0.9 * x[1, :4].exp() + 0.1 * x[0, :4].exp() + eps))
    assert (mixed[1, 4:] == 0).all()


def test_masked_standardize() -> None:
    lengths = torch.tensor([50, 20])
    x = torch.randn(2, 50, 4, dtype=torch.float64) * 3 + 2
    x = x * AA.valid_mask(lengths, 50).unsqueeze(-1)
    out = AA.masked_standardize(x, lengths, eps=0.0)
    for b, n in enumerate(lengths.tolist()):
        assert abs(out[b, :n].mean().item()) < 1e-9 and abs(out[b, :n].std(correction=0).item() - 1) < 1e-9
    assert (out[1, 20:] == 0).all()


# ----------------------------------------------------------------------------- policies


def test_speech_mask_policy_crops_masks_in_encoder_frames_and_is_deterministic() -> None:
    encoder = _StandInSpeechEncoder()
    policy = VIEW_POLICIES.create(
        "speech_mask", info=INFO, transform=_transform(), encoder=encoder, max_seconds=1.0
    )
    assert policy.crop_samples == 16000  # what duration batches are budgeted on
    batch = _batch([40000, 16000, 9000])
    views = policy(batch, _gen(5))
    wave, pad, mask, starts = views.inputs[0], views.padding_mask(0), views.mask(0), views.crop_start(0)
    assert views.num_global == 1 and wave.shape == (3, 16000) and wave.dtype == torch.float32
    assert pad is not None and pad[2, 9000:].all() and not pad[:2].any()
    assert starts is not None and 0 <= int(starts[0]) <= 24000 and starts[1:].tolist() == [0, 0]
    source, _ = _transform()(batch)
    torch.testing.assert_close(wave[0], source[0, int(starts[0]) : int(starts[0]) + 16000])
    frames = encoder.output_lengths(torch.tensor([16000, 16000, 9000]))
    assert mask is not None and mask.shape == (3, int(frames[0]))
    assert not mask[2, int(frames[2]) :].any()
    again = policy(batch, _gen(5))
    assert torch.equal(again.inputs[0], wave) and torch.equal(again.mask(0), mask)
    assert not torch.equal(policy(batch, _gen(6)).mask(0), mask)


def test_speech_mask_masked_fraction_in_encoder_frames() -> None:
    policy = VIEW_POLICIES.create(
        "speech_mask", info=INFO, transform=_transform(), encoder=_StandInSpeechEncoder()
    )
    mask = policy(_batch([160000] * 8), _gen(7)).mask(0)
    assert mask is not None and abs(mask.float().mean().item() - 0.49) < 0.03  # 499 frames per clip


def test_speech_mask_options_are_checked() -> None:
    with pytest.raises(ValueError, match="mask_prob"):
        VIEW_POLICIES.create(
            "speech_mask", info=INFO, transform=_transform(), encoder=_StandInSpeechEncoder(), mask_prob=2
        )
    with pytest.raises(ValueError, match="output_lengths"):
        VIEW_POLICIES.create("speech_mask", info=INFO, transform=_transform(), encoder=nn.Identity())
    vector = DataInfo(modality="vector", sample_shape=(3,), dtype="float32")
    with pytest.raises(ValueError, match="for audio"):
        VIEW_POLICIES.create(
            "speech_mask", info=vector, transform=_transform(), encoder=_StandInSpeechEncoder()
        )


def test_speech_mask_gain_and_noise_keep_padding_zero() -> None:
    policy = VIEW_POLICIES.create(
        "speech_mask", info=INFO, transform=_transform(), encoder=_StandInSpeechEncoder(),
        gain_db=[-6, 6], noise_snr_db=[5, 20],
    )  # fmt: skip
    views = policy(_batch([8000, 3000]), _gen(8))
    assert (views.inputs[0][1, 3000:] == 0).all()


def test_byol_a_policy_views_are_log_mel_with_frame_padding() -> None:
    from selfsup.encoders.audio_cnn import byol_a_cnn

    encoder = byol_a_cnn(INFO, embed_dim=32, channels=4)
    policy = VIEW_POLICIES.create("byol_a", info=INFO, transform=_transform(), encoder=encoder)
    assert policy.crop_samples == 15200
    batch = _batch([20000, 15200, 8000])
    views = policy(batch, _gen(9))
    assert views.num_global == 2 and len(views.inputs) == 2
    frames = encoder.frontend.output_lengths(torch.tensor([15200, 15200, 8000]))  # 0.95 s = 15,200 samples
    for i in range(2):
        v, pad = views.inputs[i], views.padding_mask(i)
        assert v.shape == (3, int(frames[0]), 64) and pad is not None
        assert pad[2, int(frames[2]) :].all() and not pad[:2].any() and (v[2, int(frames[2]) :] == 0).all()
        assert torch.isfinite(v).all()
    both = torch.cat(views.inputs)[~torch.cat([views.padding_mask(0), views.padding_mask(1)])]
    assert abs(both.mean().item()) < 1e-4 and abs(both.std(correction=0).item() - 1) < 1e-3  # post-norm
    assert not torch.equal(views.inputs[0], views.inputs[1])
    again = policy(batch, _gen(9))
    assert all(torch.equal(a, b) for a, b in zip(again.inputs, views.inputs, strict=True))
    # Without augmentation the views are exactly what the encoder makes of the cropped waveform.
    plain = VIEW_POLICIES.create(
        "byol_a", info=INFO, transform=_transform(), encoder=encoder, mixup_ratio=0.0,
        virtual_crop_scale=[1.0, 1.0], freq_scale=[1.0, 1.0], time_scale=[1.0, 1.0], fader_gain=0.0,
        post_norm=False,
    )  # fmt: skip
    short = _batch([8000, 6000])
    view = plain(short, _gen()).inputs[0]
    wave, pad = _transform()(short)
    ref = encoder.normalize_features(*encoder.frontend(wave, pad))
    torch.testing.assert_close(view, ref, atol=1e-4, rtol=1e-4)


def test_byol_a_needs_a_frontend_encoder() -> None:
    with pytest.raises(ValueError, match="front-end"):
        VIEW_POLICIES.create("byol_a", info=INFO, transform=_transform(), encoder=_StandInSpeechEncoder())
