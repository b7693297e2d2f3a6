"""Log-mel and MFCC front-ends against librosa (the reference; a test dependency only), and padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.audio.frontend import (
    MFCC,
    LogMelFrontend,
    compute_deltas,
    dct_matrix,
    hop_length_for,
    mel_filterbank,
    num_frames,
)

librosa = pytest.importorskip("librosa")


def _clips(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(max(lengths)) / 16000
    out = []
    for i, n in enumerate(lengths):
        # A chirp-ish tone plus noise: energy in every band, nothing at the log floor.
        tone = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t[:n] * (1 + t[:n]))
        out.append((tone + 0.05 * rng.standard_normal(n)).astype(np.float64))
    return out


def _batch(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(c) for c in clips)
    wave = torch.zeros(len(clips), longest, dtype=torch.float64)
    pad = torch.ones(len(clips), longest, dtype=torch.bool)
    for i, c in enumerate(clips):
        wave[i, : len(c)] = torch.from_numpy(c)
        pad[i, : len(c)] = False
    return wave, pad


@pytest.mark.parametrize("htk,norm", [(True, None), (False, "slaney")])
def test_mel_filterbank_matches_librosa(htk: bool, norm: str | None) -> None:
    ours = mel_filterbank(16000, 400, 80, 20.0, 7600.0, mel_scale="htk" if htk else "slaney", norm=norm)
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, fmin=20.0, fmax=7600.0, htk=htk, norm=norm)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-9)


def test_dct_matches_scipy() -> None:
    from scipy.fft import dct

    x = np.random.default_rng(0).standard_normal((23, 7))
    ref = dct(x, type=2, norm="ortho", axis=0)[:13]
    np.testing.assert_allclose(dct_matrix(13, 23).numpy() @ x, ref, atol=1e-12)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("htk,norm", [(True, None), (False, "slaney")])
def test_log_mel_matches_librosa_per_clip_in_a_padded_batch(
    pad_mode: str, htk: bool, norm: str | None
) -> None:
    lengths = [16000, 9000, 4321]
    clips = _clips(lengths)
    wave, pad = _batch(clips)
    front = LogMelFrontend(
        16000, n_fft=512, win_length=400, hop_length=160, n_mels=64, f_min=60.0, f_max=7800.0,
        mel_scale="htk" if htk else "slaney", mel_norm=norm, pad_mode=pad_mode,
    )  # fmt: skip
    feats, frame_pad = front(wave, pad)
    valid = front.output_lengths(torch.tensor(lengths))
    assert feats.shape == (3, 1 + 16000 // 160, 64) and frame_pad is not None
    for i, clip in enumerate(clips):
        ref = librosa.feature.melspectrogram(
            y=clip, sr=16000, n_fft=512, win_length=400, hop_length=160, window="hann", center=True,
            pad_mode=pad_mode, power=2.0, n_mels=64, fmin=60.0, fmax=7800.0, htk=htk, norm=norm,
        )  # fmt: skip
        ref = np.log(ref + 1e-6).T
        n = int(valid[i])
        assert n == ref.shape[0]
        np.testing.assert_allclose(feats[i, :n].numpy(), ref, rtol=1e-5, atol=1e-5)
        assert not frame_pad[i, :n].any() and frame_pad[i, n:].all()
        assert (feats[i, n:] == 0).all()


def test_padding_does_not_change_valid_frames_and_none_mask_means_unpadded() -> None:
    clips = _clips([8000, 3000], seed=1)
    wave, pad = _batch(clips)
    front = LogMelFrontend(pad_mode="reflect").double()
    feats, _ = front(wave.clone().masked_fill(pad, 0.7), pad)  # garbage in the padding must not leak
    alone, mask = front(torch.from_numpy(clips[1]).unsqueeze(0))
    assert mask is None
    n = alone.shape[1]
    torch.testing.assert_close(feats[1, :n], alone[0], rtol=0, atol=1e-9)


def test_center_false_frame_count_and_values() -> None:
    clip = _clips([5000])[0]
    front = LogMelFrontend(center=False, n_mels=40)
    feats, _ = front(torch.from_numpy(clip).unsqueeze(0))
    ref = librosa.feature.melspectrogram(
        y=clip, sr=16000, n_fft=400, hop_length=160, center=False, n_mels=40, htk=True, norm=None
    )
    assert feats.shape[1] == ref.shape[1] == 1 + (5000 - 400) // 160
    np.testing.assert_allclose(feats[0].numpy(), np.log(ref + 1e-6).T, rtol=1e-4, atol=1e-4)
    assert num_frames(torch.tensor([399, 400]), 400, 160, center=False).tolist() == [0, 1]


def test_mfcc_with_deltas_matches_librosa() -> None:
    lengths = [12000, 7000]
    clips = _clips(lengths, seed=2)
    wave, pad = _batch(clips)
    front = MFCC(16000, n_mfcc=13, hop_length=320, n_mels=23, f_min=20.0, lifter=22)
    feats, frame_pad = front(wave.float(), pad)
    assert feats.shape[-1] == front.output_dim == 39 and front.frame_rate == 50.0
    valid = front.output_lengths(torch.tensor(lengths))
    for i, clip in enumerate(clips):
        mel = librosa.feature.melspectrogram(
            y=clip, sr=16000, n_fft=400, hop_length=320, n_mels=23, fmin=20.0, htk=True, norm=None
        )
        db = librosa.power_to_db(mel, amin=1e-10, top_db=None)
        ref = librosa.feature.mfcc(S=db, n_mfcc=13, dct_type=2, norm="ortho", lifter=22)
        d1 = librosa.feature.delta(ref, width=5, order=1, mode="nearest")
        d2 = librosa.feature.delta(d1, width=5, order=1, mode="nearest")
        full = np.concatenate([ref, d1, d2]).T
        n = int(valid[i])
        assert n == full.shape[0]
        np.testing.assert_allclose(feats[i, :n].numpy(), full, rtol=1e-3, atol=2e-3)
        assert (feats[i, n:] == 0).all() and frame_pad is not None and frame_pad[i, n:].all()


def test_compute_deltas_regression_formula_per_clip() -> None:
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    lengths = torch.tensor([9, 6])
    d = compute_deltas(x, lengths, win_length=5)
    for b, n in enumerate(lengths.tolist()):
        c = x[b, :n]
        padded = torch.cat([c[:1].expand(2, -1), c, c[-1:].expand(2, -1)])
        ref = sum(k * (padded[2 + k : 2 + k + n] - padded[2 - k : 2 - k + n]) for k in (1, 2)) / 10
        torch.testing.assert_close(d[b, :n], ref)
    with pytest.raises(ValueError):
        compute_deltas(x, win_length=4)


def test_hop_length_for() -> None:
    assert hop_length_for(16000, 50) == 320
    assert hop_length_for(16000, 100) == 160
    with pytest.raises(ValueError):
        hop_length_for(16000, 48)


def test_frontend_under_autocast_and_short_clips() -> None:
    front = LogMelFrontend(n_mels=16)
    wave = torch.randn(2, 100) * 0.1
    pad = torch.zeros(2, 100, dtype=torch.bool)
    pad[1, 10:] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, mask = front(wave, pad)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert front.output_lengths(torch.tensor([100, 10])).tolist() == [1, 1]
    assert mask is not None and mask.shape == (2, 1)
