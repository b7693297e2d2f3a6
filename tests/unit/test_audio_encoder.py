"""The ``wav2vec2`` encoder: sizes (parameter counts summed from the paper's layer list), frame geometry,
padding invariance (pad a batch, compare), masking, the two halves the speech methods use, dropout,
layer ids and the gradient multiplier. Equality with transformers' Wav2Vec2Model / HubertModel is in
``test_hf_speech.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from selfsup.encoders import ENCODERS
from selfsup.encoders.audio import (
    CONV_KERNELS,
    CONV_STRIDES,
    Wav2Vec2Encoder,
    conv_output_lengths,
    masked_group_norm,
    wav2vec2,
)

# Small enough for a few ms per forward on one CPU core; pos-conv kernel even (SamePad drops a frame).
SMALL = {
    "embed_dim": 32,
    "num_heads": 4,
    "ffn_dim": 64,
    "conv_dim": 16,
    "num_layers": 3,
    "pos_conv_kernel": 8,
    "pos_conv_groups": 4,
}
VARIANTS = [("group", False), ("layer", True), ("group", True), ("layer", False)]


def small(conv_norm: str = "group", layer_norm_first: bool = False, **kw: object) -> Wav2Vec2Encoder:
    torch.manual_seed(0)
    encoder = wav2vec2(conv_norm=conv_norm, layer_norm_first=layer_norm_first, **{**SMALL, **kw})
    # Non-trivial norm affine parameters, so that a misplaced norm would show.
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return encoder.eval()


def _expected_params(d: int, layers: int, ffn: int, conv: int, kernel: int = 128, groups: int = 16) -> int:
    """Parameter count summed from the architecture (Baevski et al. 2020 section 4.2; fairseq layer list)."""
    n = 1 * conv * 10  # first convolution, no bias
    n += sum(conv * conv * k for k in CONV_KERNELS[1:])  # six more, no bias
    n += 2 * conv  # GroupNorm of the first layer
    n += 2 * conv + conv * d + d  # feature LayerNorm + projection
    n += d  # mask embedding
    n += d * (d // groups) * kernel + kernel + d  # weight-normed positional conv: v, g, bias
    n += 2 * d  # encoder LayerNorm
    n += layers * (4 * (d * d + d) + 2 * d + d * ffn + ffn + ffn * d + d + 2 * d)
    return n


@pytest.mark.parametrize(
    ("size", "dims"),
    [("tiny", (256, 4, 1024, 256)), ("small", (512, 8, 2048, 512)), ("base", (768, 12, 3072, 512))],
)
def test_sizes_and_parameter_counts(size: str, dims: tuple[int, int, int, int]) -> None:
    encoder = wav2vec2(size=size)
    count = sum(p.numel() for p in encoder.parameters())
    assert count == _expected_params(*dims)
    assert (encoder.embed_dim, encoder.num_layers, encoder.conv_dim) == (dims[0], dims[1], dims[3])
    if size == "base":
        # wav2vec 2.0 Base: "95M parameters" (Baevski et al. 2020); transformers' Wav2Vec2Model: 94.4M.
        assert 94.3e6 < count < 95.0e6


def test_registered_with_the_contract_attributes() -> None:
    assert ENCODERS.metadata("wav2vec2")["modality"] == "audio"
    encoder = ENCODERS.create("wav2vec2", **SMALL)
    assert encoder.modality == "audio" and encoder.mask_mode == "replace"
    assert encoder.frame_rate == 50.0  # 16 kHz / 320
    assert wav2vec2(sample_rate=8000, **SMALL).frame_rate == 25.0
    assert encoder.mask_embedding.shape == (32,)


def test_output_lengths_follow_the_conv_stack() -> None:
    # floor((L - k) / s) + 1 per layer: 400 samples = 1 frame (the receptive field), then one per 320.
    lengths = torch.tensor([400, 719, 720, 16000, 32000, 1000])
    expected = torch.tensor([1, 1, 2, 49, 99, 2])
    encoder = small()
    torch.testing.assert_close(encoder.output_lengths(lengths), expected)
    for n, frames in zip(lengths.tolist(), expected.tolist(), strict=True):
        out = encoder(torch.randn(1, n))
        assert out.last_hidden_state.shape == (1, frames, 32)


def _reference_lengths(n: int) -> int:
    """Brute force: run the size of each convolution by hand."""
    for k, s in zip(CONV_KERNELS, CONV_STRIDES, strict=True):
        n = (n - k) // s + 1
    return n


def test_output_lengths_brute_force() -> None:
    lengths = torch.arange(400, 3000, 37)
    got = conv_output_lengths(lengths, CONV_KERNELS, CONV_STRIDES)
    assert got.tolist() == [_reference_lengths(int(n)) for n in lengths]


def test_masked_group_norm_equals_group_norm_on_the_valid_part() -> None:
    norm = torch.nn.GroupNorm(6, 6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 6, 20)
    lengths = torch.tensor([20, 11, 4])
    y = masked_group_norm(x, lengths, norm)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[b, :, :n], norm(x[b : b + 1, :, :n])[0])


@pytest.mark.parametrize(("conv_norm", "layer_norm_first"), VARIANTS)
def test_padding_never_changes_valid_frames_or_pooled_output(conv_norm: str, layer_norm_first: bool) -> None:
    encoder = small(conv_norm, layer_norm_first)
    g = torch.Generator().manual_seed(1)
    lengths = [5000, 2400, 3333]
    total = max(lengths)
    # Noise, not zeros, in the padding: nothing of it may reach a valid frame.
    batch = torch.randn(len(lengths), total, generator=g)
    padding = torch.arange(total).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    with torch.no_grad():
        out = encoder(batch, padding_mask=padding)
        frames = encoder.output_lengths(torch.tensor(lengths))
        assert out.padding_mask is not None
        assert (~out.padding_mask).sum(1).tolist() == frames.tolist()
        for b, n in enumerate(lengths):
            alone = encoder(batch[b : b + 1, :n])
            f = int(frames[b])
            assert alone.last_hidden_state.shape[1] == f
            for h_batch, h_alone in zip(out.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(h_batch[b, :f], h_alone[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(out.pooled[b], alone.pooled[0], atol=2e-5, rtol=1e-4)


def test_without_padding_mask_padding_would_change_the_output() -> None:
    """The padding test can fail: the same padded batch without its mask gives other outputs."""
    encoder = small()
    x = torch.randn(1, 4000)
    padded = torch.cat([x, torch.zeros(1, 2000)], dim=1)
    with torch.no_grad():
        alone = encoder(x).pooled
        unmasked = encoder(padded).last_hidden_state[:, : encoder.output_lengths(torch.tensor([4000]))[0]]
    assert not torch.allclose(unmasked.mean(1), alone, atol=1e-3)


def test_hidden_states_and_pooling() -> None:
    for layer_norm_first in (False, True):
        encoder = small(layer_norm_first=layer_norm_first)
        inputs: list[Tensor] = []
        outputs: list[Tensor] = []
        hooks = [
            b.register_forward_pre_hook(lambda m, a, store=inputs: store.append(a[0])) for b in encoder.blocks
        ]
        hooks += [
            b.register_forward_hook(lambda m, a, o, store=outputs: store.append(o[0])) for b in encoder.blocks
        ]
        with torch.no_grad():
            out = encoder(torch.randn(2, 3000))
        for h in hooks:
            h.remove()
        assert len(out.hidden_states) == encoder.num_layers + 1
        assert out.hidden_states[-1] is out.last_hidden_state
        assert out.padding_mask is None
        torch.testing.assert_close(out.pooled, out.last_hidden_state.mean(1))
        # Entry i is block i's input, the last one the last block's output (pre-LN: after the final norm).
        for i in range(encoder.num_layers):
            torch.testing.assert_close(out.hidden_states[i], inputs[i], rtol=0, atol=0)
        with torch.no_grad():
            last = encoder.encoder_norm(outputs[-1]) if layer_norm_first else outputs[-1]
        torch.testing.assert_close(out.last_hidden_state, last, rtol=0, atol=0)


def test_local_features_and_contextualize_compose_to_forward() -> None:
    encoder = small()
    x = torch.randn(2, 4000)
    pad = torch.zeros(2, 4000, dtype=torch.bool)
    pad[1, 3000:] = True
    with torch.no_grad():
        local = encoder.local_features(x, pad)
        assert local.features.shape == (2, 12, 16) and local.projected.shape == (2, 12, 32)
        assert local.padding_mask is not None and local.padding_mask[1].sum() == 12 - 9
        # features: LayerNorm output over conv_dim (the quantizer input), projected = projection of it.
        torch.testing.assert_close(local.projected, encoder.projection(local.features))
        ctx = encoder.contextualize(local.projected, padding_mask=local.padding_mask)
        out = encoder(x, padding_mask=pad)
    torch.testing.assert_close(ctx.output.pooled, out.pooled)
    assert len(ctx.ffn_outputs) == encoder.num_layers


def test_ffn_outputs_are_the_fc2_outputs_before_the_residual() -> None:
    encoder = small()
    captured: list[Tensor] = []
    hooks = [b.fc2.register_forward_hook(lambda m, i, o: captured.append(o)) for b in encoder.blocks]
    with torch.no_grad():
        local = encoder.local_features(torch.randn(2, 3000))
        ctx = encoder.contextualize(local.projected)
    for h in hooks:
        h.remove()
    for got, ref in zip(ctx.ffn_outputs, captured, strict=True):
        torch.testing.assert_close(got, ref)
    # Post-LN block: output = ffn_norm(x_mid + ffn_output), x_mid = the attention half's output.
    block = encoder.blocks[0]
    x0 = ctx.output.hidden_states[0]
    with torch.no_grad():
        mid = block.attention_norm(x0 + block.attention(x0, None))
        torch.testing.assert_close(block.ffn_norm(mid + ctx.ffn_outputs[0]), ctx.output.hidden_states[1])


def test_mask_replaces_frames_with_the_mask_embedding() -> None:
    encoder = small()
    with torch.no_grad():
        encoder.mask_embedding.normal_()
        local = encoder.local_features(torch.randn(2, 4000))
        mask = torch.zeros(2, 12, dtype=torch.bool)
        mask[0, 2:6] = True
        mask[1, 7] = True
        masked = encoder.contextualize(local.projected, mask=mask).output
        by_hand = local.projected.clone()
        by_hand[mask] = encoder.mask_embedding
        reference = encoder.contextualize(by_hand).output
        plain = encoder.contextualize(local.projected).output
    for a, b in zip(masked.hidden_states, reference.hidden_states, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(masked.pooled, plain.pooled)
    with pytest.raises(ValueError, match="mask must be"):
        encoder(torch.randn(2, 4000), mask=torch.zeros(2, 5, dtype=torch.bool))


def test_dropout_only_in_training() -> None:
    encoder = small()
    x = torch.randn(2, 3000)
    with torch.no_grad():
        a, b = encoder(x).pooled, encoder(x).pooled
        encoder.train()
        c = encoder(x).pooled
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_layer_ids_follow_hidden_states() -> None:
    for layer_norm_first in (False, True):
        encoder = small(layer_norm_first=layer_norm_first)
        ids = {name: encoder.layer_id(name) for name, _ in encoder.named_parameters()}
        assert ids["conv_layers.0.conv.weight"] == 0 and ids["pos_conv.weight_v"] == 0
        assert ids["mask_embedding"] == 0 and ids["projection.weight"] == 0
        assert ids["blocks.0.fc1.weight"] == 1 and ids["blocks.2.ffn_norm.bias"] == 3
        assert ids["encoder_norm.weight"] == (3 if layer_norm_first else 0)
        assert set(ids.values()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="no parameter"):
        encoder.layer_id("head.weight")


def test_feature_grad_mult_scales_the_conv_gradient_only() -> None:
    x = torch.randn(2, 3000)
    grads = {}
    for mult in (1.0, 0.1):
        encoder = small(feature_grad_mult=mult)
        encoder(x).pooled.square().sum().backward()
        grads[mult] = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    torch.testing.assert_close(
        grads[0.1]["conv_layers.3.conv.weight"], 0.1 * grads[1.0]["conv_layers.3.conv.weight"]
    )
    torch.testing.assert_close(grads[0.1]["blocks.1.fc1.weight"], grads[1.0]["blocks.1.fc1.weight"])


def test_bf16_autocast_with_padding_is_finite() -> None:
    encoder = small().train()
    x = torch.randn(2, 3000)
    pad = torch.zeros(2, 3000, dtype=torch.bool)
    pad[1, 2000:] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(x, padding_mask=pad)
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
    assert out.pooled.dtype == torch.float32


def test_bad_inputs_and_options_raise_clear_errors() -> None:
    encoder = small()
    with pytest.raises(ValueError, match="at least 400 samples"):
        encoder(torch.randn(1, 399))
    with pytest.raises(TypeError, match="float waveform"):
        encoder(torch.zeros(1, 1000, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        encoder(torch.randn(1, 1, 1000))
    with pytest.raises(ValueError, match="Did you mean 'tiny'"):
        wav2vec2(size="tiyn")
    with pytest.raises(ValueError, match="conv_norm"):
        wav2vec2(conv_norm="batch")
    with pytest.raises(ValueError, match="divisible"):
        wav2vec2(embed_dim=30, num_heads=4)
    from selfsup.data.base import DataInfo

    info = DataInfo(modality="audio", sample_shape=None, dtype="int16", sample_rate=8000.0)
    assert wav2vec2(info=info, **SMALL).frame_rate == 25.0
    with pytest.raises(ValueError, match="sample_rate=16000"):
        wav2vec2(info=info, sample_rate=16000, **SMALL)
