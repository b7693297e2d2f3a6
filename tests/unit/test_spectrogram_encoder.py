"""The spectrogram-patch Transformer ``audio_spt``: token geometry, patches against a brute-force loop,
sine-cosine positions against the formula, padding invariance (pad a batch, compare), the log-mel input
path, masking, hidden states and layer ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.encoders import ENCODERS
from selfsup.encoders.spectrogram import SpectrogramTransformer, audio_spt, sinusoidal_positions

SMALL = {"embed_dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64, "n_mels": 32}


def small(**kw: object) -> SpectrogramTransformer:
    torch.manual_seed(0)
    encoder = audio_spt(**{**SMALL, **kw})
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return encoder.eval()


def test_registered_geometry() -> None:
    assert ENCODERS.metadata("audio_spt")["modality"] == "audio"
    encoder = small()
    assert encoder.mask_mode == "replace" and encoder.frame_rate == 25.0  # 100 frames/s / 4
    assert small(patch_freq=8).frame_rate == 100.0  # 4 bands per 40 ms time patch
    # 1 s at 16 kHz: 1 + 16000 // 160 = 101 centred frames -> ceil(101 / 4) = 26 time patches.
    lengths = torch.tensor([16000, 400, 8000])
    assert encoder.output_lengths(lengths).tolist() == [26, 1, 13]
    assert small(patch_freq=8).output_lengths(lengths).tolist() == [104, 4, 52]
    with torch.no_grad():
        out = encoder(torch.randn(2, 16000))
    assert out.last_hidden_state.shape == (2, 26, 32)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    assert out.pooled.shape == (2, 32) and out.padding_mask is None


def test_patchify_equals_a_loop() -> None:
    encoder = small(patch_freq=8, patch_time=3)
    features = torch.randn(2, 10, 32)
    patches = encoder.patchify(features)
    padded = torch.cat([features, torch.zeros(2, 2, 32)], dim=1)  # 10 frames -> 4 patches of 3
    assert patches.shape == (2, 4 * 4, 8 * 3)
    for b in range(2):
        for t in range(4):
            for f in range(4):
                block = padded[b, 3 * t : 3 * t + 3, 8 * f : 8 * f + 8]  # (time, freq)
                torch.testing.assert_close(patches[b, 4 * t + f], block.T.reshape(-1))


def test_sinusoidal_positions_formula() -> None:
    pos = sinusoidal_positions(torch.arange(7), 10).numpy()
    for p in range(7):
        for i in range(5):
            angle = p / 10000 ** (i / 5)
            assert math.isclose(pos[p, i], math.sin(angle), abs_tol=1e-6)
            assert math.isclose(pos[p, 5 + i], math.cos(angle), abs_tol=1e-6)
    assert np.all(sinusoidal_positions(torch.arange(3), 9).numpy()[:, -1] == 0)


@pytest.mark.parametrize("patch_freq", [None, 8])
def test_padding_never_changes_valid_tokens_or_pooled_output(patch_freq: int | None) -> None:
    encoder = small(patch_freq=patch_freq)
    lengths = [8000, 3000, 5555]
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(3, 8000, generator=g)
    padding = torch.arange(8000).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    with torch.no_grad():
        out = encoder(batch, padding_mask=padding)
        tokens = encoder.output_lengths(torch.tensor(lengths))
        assert out.padding_mask is not None
        assert (~out.padding_mask).sum(1).tolist() == tokens.tolist()
        for b, n in enumerate(lengths):
            alone = encoder(batch[b : b + 1, :n])
            assert alone.last_hidden_state.shape[1] == int(tokens[b])
            for h_batch, h_alone in zip(out.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(h_batch[b, : int(tokens[b])], h_alone[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(out.pooled[b], alone.pooled[0], atol=2e-5, rtol=1e-4)
        # Without the mask the padding is attended to and pooled: the test above can fail.
        unmasked = encoder(batch.masked_fill(padding, 0.0))
    assert not torch.allclose(unmasked.pooled[1], out.pooled[1], atol=1e-3)


def test_log_mel_input_equals_the_waveform_path() -> None:
    encoder = small()
    x = torch.randn(2, 6000)
    padding = torch.zeros(2, 6000, dtype=torch.bool)
    padding[1, 4000:] = True
    with torch.no_grad():
        features, frame_padding = encoder.log_mel(x, padding)
        direct = encoder(x, padding_mask=padding)
        via_mel = encoder(features, padding_mask=frame_padding)
    # the waveform path standardizes each clip over its valid frames
    valid = features[1][~frame_padding[1]]
    assert abs(float(valid.mean())) < 1e-5 and abs(float(valid.std(unbiased=False)) - 1) < 1e-3
    torch.testing.assert_close(direct.pooled, via_mel.pooled)
    with pytest.raises(ValueError, match="log-mel"):
        encoder(torch.randn(2, 10, 40))


def test_mask_replaces_tokens_with_the_mask_token() -> None:
    encoder = small(patch_freq=16)  # 2 bands: the band embedding is added to mask tokens too
    x = torch.randn(2, 4000)
    with torch.no_grad():
        plain = encoder(x)
        n = plain.last_hidden_state.shape[1]
        mask = torch.zeros(2, n, dtype=torch.bool)
        mask[0, 3:9] = True
        masked = encoder(x, mask=mask)
    pos = sinusoidal_positions(torch.arange(n) // 2, 32) + encoder.pos_embed_band.detach().repeat(n // 2, 1)
    expected = encoder.mask_token.detach() + pos
    torch.testing.assert_close(masked.hidden_states[0][0, 3:9], expected[3:9])
    torch.testing.assert_close(masked.hidden_states[0][~mask], plain.hidden_states[0][~mask])
    assert not torch.allclose(masked.pooled[0], plain.pooled[0])
    torch.testing.assert_close(masked.pooled[1], plain.pooled[1])
    with pytest.raises(ValueError, match="mask must be"):
        encoder(x, mask=torch.zeros(2, n + 1, dtype=torch.bool))


def test_layer_ids_and_options() -> None:
    encoder = small(patch_freq=8)
    ids = {name: encoder.layer_id(name) for name, _ in encoder.named_parameters()}
    assert ids["patch_embed.weight"] == 0 and ids["pos_embed_band"] == 0 and ids["mask_token"] == 0
    assert ids["blocks.1.fc2.weight"] == 2 and ids["norm.weight"] == 2
    with pytest.raises(ValueError, match="must divide"):
        audio_spt(n_mels=80, patch_freq=16 * 3)
    with pytest.raises(ValueError, match="Did you mean 'tiny'"):
        audio_spt(size="tinny")
    d, ffn = 384, 1536
    count = sum(
        p.numel() for p in audio_spt(size="small", n_mels=128, patch_freq=16, patch_time=16).parameters()
    )
    # 12 pre-LN blocks (ViT-S widths) + a 256 -> 384 patch embedding + 8 band embeddings + mask token + norm
    block = 4 * (d * d + d) + 2 * d * ffn + ffn + d + 4 * d
    assert count == 12 * block + 257 * d + 9 * d + 2 * d
