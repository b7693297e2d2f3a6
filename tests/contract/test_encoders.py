"""Contract tests run on every registered encoder, plus the image encoders' own structure.

Parametrized over ``ENCODERS.names()`` so that an encoder is covered the moment it is
registered. Inputs come from the tiny data set of the encoder's modality (tests/tiny_data.py)
through that modality's input transform, as in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tiny_data import SMALL_ENCODER, TINY_DATA, modality_of
from torch import Tensor, nn

from selfsup.build import build_encoder, fit_transform
from selfsup.config import Config
from selfsup.encoders.base import ENCODERS, MASK_MODES, Encoder
from selfsup.encoders.image import BasicBlock, Bottleneck
from selfsup.modalities import MODALITIES


def build(name: str) -> Encoder:
    torch.manual_seed(0)
    data = TINY_DATA[modality_of(name)]()
    config = Config()
    config.encoder.name, config.encoder.params = name, dict(SMALL_ENCODER.get(name, {}))
    return build_encoder(config, data.info)


def make_input(encoder: Encoder, batch: int, seed: int = 0) -> Tensor:
    if encoder.modality not in TINY_DATA:
        pytest.fail(f"no tiny data set for modality {encoder.modality!r}: add one to tests/tiny_data.py")
    data = TINY_DATA[encoder.modality](n=max(batch, 8), seed=seed)
    x, _ = fit_transform(Config(), data)(data.batch(torch.arange(batch)))
    return x


# Encoders that wrap a checkpoint directory (hf_speech) need one to exist: their own tests save a tiny
# random model and run these checks on it (tests/unit/test_hf_speech.py).
NAMES = [n for n in ENCODERS.names() if not ENCODERS.metadata(n).get("requires_checkpoint")]


def test_image_encoders_are_registered() -> None:
    assert {"resnet18", "resnet18_narrow", "resnet50", "small_cnn"} <= set(NAMES)


def test_every_modality_has_a_tiny_data_set_and_a_registered_default_encoder() -> None:
    assert set(MODALITIES) <= set(TINY_DATA), "add a tiny data set for the new modality to tests/tiny_data.py"
    for name, modality in MODALITIES.items():
        assert modality_of(modality.default_encoder) == name


@pytest.mark.parametrize("name", NAMES)
def test_declared_attributes(name: str) -> None:
    encoder = build(name)
    assert isinstance(encoder, Encoder)
    assert encoder.modality == modality_of(name) and encoder.modality in MODALITIES
    assert isinstance(encoder.embed_dim, int) and encoder.embed_dim > 0
    assert isinstance(encoder.num_layers, int) and encoder.num_layers > 0
    assert encoder.mask_mode in MASK_MODES
    assert encoder.token_grid is None or all(isinstance(n, int) and n > 0 for n in encoder.token_grid)
    assert encoder.frame_rate is None or encoder.frame_rate > 0
    lengths = torch.tensor([3, 7])
    assert encoder.output_lengths(lengths).shape == (2,)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name: str) -> None:
    encoder = build(name).eval()
    x = make_input(encoder, 2)
    out = encoder(x)
    assert out.pooled.shape == (2, encoder.embed_dim)
    assert len(out.hidden_states) == encoder.num_layers + 1
    assert out.hidden_states[-1] is out.last_hidden_state
    assert all(h.shape[0] == 2 for h in out.hidden_states)
    assert torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    encoder = build(name).train()
    x = make_input(encoder, 4)
    mask = None
    if encoder.mask_mode != "none":  # the mask embedding is trained only where tokens are masked
        # The mask covers the patch tokens, not the class / register tokens in front of them.
        tokens = encoder(x).last_hidden_state.shape[1] - getattr(encoder, "num_prefix_tokens", 0)
        mask = torch.rand(4, tokens, generator=torch.Generator().manual_seed(2)) < 0.5
    out = encoder(x, mask=mask)
    # A random projection, not a plain sum: the sum of a train-mode BatchNorm output over the
    # batch does not depend on its input, which would hide missing gradients.
    direction = torch.randn(out.pooled.shape, generator=torch.Generator().manual_seed(1))
    (out.pooled * direction).sum().backward()
    for pname, p in encoder.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_are_batch_independent(name: str) -> None:
    encoder = build(name)
    # Move the BatchNorm running statistics away from (0, 1) so that eval mode is really tested.
    with torch.no_grad():
        encoder.train()
        encoder(make_input(encoder, 8, seed=3))
    encoder.eval()
    x = make_input(encoder, 5)
    with torch.no_grad():
        alone = encoder(x[:1]).pooled
        batched = encoder(x).pooled
    torch.testing.assert_close(alone[0], batched[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last(name: str) -> None:
    encoder = build(name).eval()
    x = make_input(encoder, 2)
    if x.ndim != 4:
        pytest.skip("channels_last applies to 4-D inputs only")
    with torch.no_grad():
        ref = encoder(x).pooled
        encoder = encoder.to(memory_format=torch.channels_last)
        out = encoder(x.contiguous(memory_format=torch.channels_last))
    # fp32 summation order differs between the two layouts, accumulating over ~50 layers.
    torch.testing.assert_close(out.pooled, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast(name: str) -> None:
    encoder = build(name).train()
    x = make_input(encoder, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(x)
    assert out.pooled.shape == (2, encoder.embed_dim)
    assert all(torch.isfinite(h).all() for h in (out.pooled, *out.hidden_states))


@pytest.mark.parametrize("name", NAMES)
def test_encoders_without_mask_mode_reject_masks(name: str) -> None:
    encoder = build(name).eval()
    if encoder.mask_mode != "none":
        pytest.skip("token encoders can mask; their masking is tested with them")
    x = make_input(encoder, 2)
    with pytest.raises(ValueError, match="mask"):
        encoder(x, mask=torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_raises_clear_error(name: str) -> None:
    encoder = build(name).eval()
    if encoder.modality != "image":
        pytest.skip("image-specific input checks")
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        encoder(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expected images"):
        encoder(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        encoder(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# --- image encoders: structure -------------------------------------------------------------


def _bn(c: int) -> int:
    return 2 * c  # gamma and beta


def _basic(in_ch: int, planes: int, stride: int) -> int:
    n = 9 * in_ch * planes + _bn(planes) + 9 * planes * planes + _bn(planes)
    if stride != 1 or in_ch != planes:
        n += in_ch * planes + _bn(planes)
    return n


def _bottleneck(in_ch: int, planes: int, stride: int) -> int:
    out = 4 * planes
    n = in_ch * planes + _bn(planes) + 9 * planes * planes + _bn(planes) + planes * out + _bn(out)
    if stride != 1 or in_ch != out:
        n += in_ch * out + _bn(out)
    return n


def _resnet_count(
    block: Callable[[int, int, int], int], expansion: int, blocks: list[int], width: int
) -> int:
    """Parameter count of a ResNet trunk summed layer by layer from He et al. 2016, table 1."""
    n = 3 * width * 49 + _bn(width)  # 7x7 stem
    in_ch = width
    for i, count in enumerate(blocks):
        planes = width * 2**i
        for j in range(count):
            n += block(in_ch, planes, 2 if (i > 0 and j == 0) else 1)
            in_ch = planes * expansion
    return n


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet18_parameter_count() -> None:
    model = ENCODERS.create("resnet18")
    expected = _resnet_count(_basic, 1, [2, 2, 2, 2], 64)
    # torchvision's resnet18 has 11,689,512 parameters, of which the fc layer is 512 * 1000 + 1000.
    assert expected == 11_689_512 - (512 * 1000 + 1000) == 11_176_512
    assert _num_params(model) == expected
    assert model.embed_dim == 512


def test_resnet50_parameter_count() -> None:
    model = ENCODERS.create("resnet50")
    expected = _resnet_count(_bottleneck, 4, [3, 4, 6, 3], 64)
    # torchvision's resnet50 has 25,557,032 parameters, of which the fc layer is 2048 * 1000 + 1000.
    assert expected == 25_557_032 - (2048 * 1000 + 1000) == 23_508_032
    assert _num_params(model) == expected
    assert model.embed_dim == 2048


def test_narrow_and_width_options() -> None:
    assert ENCODERS.create("resnet18_narrow").embed_dim == 256
    model = ENCODERS.create("resnet18", width=16)
    assert _num_params(model) == _resnet_count(_basic, 1, [2, 2, 2, 2], 16)
    assert ENCODERS.create("small_cnn", width=8).embed_dim == 32


@pytest.mark.parametrize(
    ("stem", "sizes"),
    [("imagenet", [16, 16, 8, 4, 2]), ("cifar", [64, 64, 32, 16, 8])],
)
def test_resnet_hidden_state_shapes(stem: str, sizes: list[int]) -> None:
    model = ENCODERS.create("resnet18", stem=stem, width=8).eval()
    out = model(torch.randn(1, 3, 64, 64))
    channels = [8, 8, 16, 32, 64]
    assert [tuple(h.shape) for h in out.hidden_states] == [(1, c, s, s) for c, s in zip(channels, sizes)]
    torch.testing.assert_close(out.pooled, out.last_hidden_state.mean(dim=(2, 3)))


def test_resnet50_stage_channels() -> None:
    out = ENCODERS.create("resnet50", width=4).eval()(torch.randn(1, 3, 64, 64))
    assert [h.shape[1] for h in out.hidden_states] == [4, 16, 32, 64, 128]


def test_small_cnn_hidden_state_shapes() -> None:
    out = ENCODERS.create("small_cnn", width=4).eval()(torch.randn(2, 3, 16, 16))
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 4, 16, 16),
        (2, 4, 16, 16),
        (2, 8, 8, 8),
        (2, 16, 4, 4),
    ]
    with pytest.raises(ValueError, match="at least 4x4"):
        ENCODERS.create("small_cnn", width=4)(torch.randn(1, 3, 3, 3))


def test_cifar_stem_is_3x3_stride_1_without_maxpool() -> None:
    model = ENCODERS.create("resnet18", stem="cifar")
    convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.stem.modules())


def test_unknown_stem_and_bad_options() -> None:
    with pytest.raises(ValueError, match="Did you mean 'cifar'"):
        ENCODERS.create("resnet18", stem="cifr")
    with pytest.raises(ValueError, match="width must be a positive integer"):
        ENCODERS.create("resnet50", width=0)
    with pytest.raises(TypeError, match="no option 'widht'"):
        ENCODERS.create("small_cnn", widht=8)


def test_padding_mask_is_rejected() -> None:
    model = ENCODERS.create("small_cnn", width=4)
    with pytest.raises(ValueError, match="padding_mask"):
        model(torch.randn(1, 3, 16, 16), padding_mask=torch.zeros(1, 4, dtype=torch.bool))


def test_kaiming_init_and_batchnorm() -> None:
    torch.manual_seed(0)
    model = ENCODERS.create("resnet18")
    conv = model.stages[3][0].conv2  # 512 -> 512, 3x3: 2.4M weights, a tight std estimate
    fan_out = conv.out_channels * 9
    std = conv.weight.std().item()
    assert abs(std - (2.0 / fan_out) ** 0.5) < 0.02 * (2.0 / fan_out) ** 0.5
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual(name: str) -> None:
    model = ENCODERS.create(name, width=8, zero_init_residual=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == (8 if name == "resnet18" else 16)
    for block in blocks:
        assert torch.equal(block.last_bn.weight, torch.zeros_like(block.last_bn.weight))
        assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    # With the residual branch silenced, a block without projection is relu(identity) = identity
    # (its input is already non-negative).
    block = model.stages[0][1]
    x = torch.relu(torch.randn(2, block.conv1.in_channels, 8, 8))
    torch.testing.assert_close(block(x), x)
