"""byol_a_cnn against BYOL-A's AudioNTT2020 (rebuilt here from the authors' models.py), padding, BYOL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from selfsup.augment.base import VIEW_POLICIES
from selfsup.config import default_view_policy
from selfsup.data.base import Batch, DataInfo
from selfsup.encoders.audio_cnn import AudioNTT2020, MaskedBatchNorm2d, byol_a_cnn
from selfsup.encoders.base import ENCODERS
from selfsup.methods.base import METHODS, StepInfo

INFO = DataInfo(modality="audio", sample_shape=None, dtype="int16", sample_rate=16000.0, classes=())


class _ReferenceNTT2020(nn.Module):
    """The authors' AudioNTT2020 layer for layer: (B, 1, n_mels, T) → max_t + mean_t of the FC frames."""

    def __init__(self, n_mels: int, d: int, c: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(3):
            blocks += [
                nn.Conv2d(1 if i == 0 else c, c, 3, 1, 1),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.MaxPool2d(2, 2),
            ]
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Sequential(
            nn.Linear(c * (n_mels // 8), d), nn.ReLU(), nn.Dropout(0.3), nn.Linear(d, d), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).permute(0, 3, 2, 1)
        b, t, d, c = x.shape
        x = self.fc(x.reshape(b, t, c * d))
        return x.max(dim=1).values + x.mean(dim=1)


def _small(**kw: Any) -> AudioNTT2020:
    torch.manual_seed(0)
    return byol_a_cnn(INFO, embed_dim=32, channels=8, **kw)


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, MaskedBatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)


def test_matches_the_authors_network_and_loads_its_state_dict() -> None:
    ours = _small().eval()
    _randomize_bn(ours)
    ref = _ReferenceNTT2020(64, 32, 8).eval()
    ref.load_state_dict(ours.state_dict())  # same keys: features.0 ... fc.3
    x = torch.randn(3, 97, 64)
    torch.testing.assert_close(ours(x).pooled, ref(x.transpose(1, 2).unsqueeze(1)), rtol=1e-5, atol=1e-5)
    assert ENCODERS.metadata("byol_a_cnn")["modality"] == "audio"
    default = byol_a_cnn(INFO)
    assert default.embed_dim == 2048 and default.num_layers == 4 and default.frame_rate == 12.5


def test_geometry_hidden_states_and_waveform_path() -> None:
    model = _small().eval()
    wave = torch.randn(2, 16000) * 0.1
    pad = torch.zeros(2, 16000, dtype=torch.bool)
    pad[1, 9000:] = True
    wave[1, 9000:] = 0
    out = model(wave, padding_mask=pad)
    frames = model.output_lengths(torch.tensor([16000, 9000]))
    assert frames.tolist() == [(1 + 16000 // 160) // 8, (1 + 9000 // 160) // 8]
    assert len(out.hidden_states) == model.num_layers + 1
    widths = [64, 8 * 32, 8 * 16, 8 * 8, 32]
    for h, width in zip(out.hidden_states, widths, strict=True):
        assert h.shape == (2, int(frames[0]), width)
        assert (h[1, int(frames[1]) :] == 0).all()
    assert out.padding_mask is not None and out.padding_mask[1].sum() == frames[0] - frames[1]
    feats, fpad = model.frontend(wave, pad)
    direct = model(model.normalize_features(feats, fpad), padding_mask=fpad)
    torch.testing.assert_close(direct.pooled, out.pooled)
    assert model(wave).padding_mask is None
    with pytest.raises(ValueError):
        model(torch.randn(2, 10, 40))
    assert model.layer_id("features.5.weight") == 2 and model.layer_id("fc.3.bias") == 4


@pytest.mark.parametrize("train", [False, True])
def test_padding_never_reaches_pooled_or_frames(train: bool) -> None:
    model = _small(dropout=0.0)
    _randomize_bn(model)
    model.train(train)
    lengths = torch.tensor([101, 77, 50])
    x = torch.randn(3, 101, 64)
    pad = torch.arange(101).unsqueeze(0) >= lengths.unsqueeze(1)
    extra = 37  # pad the whole batch further, with garbage where it is padded
    x_more = torch.cat([x, torch.randn(3, extra, 64)], dim=1)
    x_more[:, :101][pad] = 5.0
    pad_more = torch.cat([pad, torch.ones(3, extra, dtype=torch.bool)], dim=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = model(x, padding_mask=pad)
    model.load_state_dict(state)
    b = model(x_more, padding_mask=pad_more)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=1e-5, atol=1e-5)
    n = a.last_hidden_state.shape[1]
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state[:, :n], rtol=1e-5, atol=1e-5)
    if not train:  # eval: a clip alone equals the clip in the batch
        alone = model(x[2:3, :50])
        torch.testing.assert_close(alone.pooled[0], a.pooled[2], rtol=1e-5, atol=1e-5)


def test_masked_batchnorm_equals_batchnorm_on_the_valid_frames() -> None:
    torch.manual_seed(1)
    ours, ref = MaskedBatchNorm2d(4), nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 9) * 2 + 1
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    keep = torch.arange(9).unsqueeze(0) < torch.tensor([9, 4, 6]).unsqueeze(1)
    ours2, ref2 = MaskedBatchNorm2d(4), nn.BatchNorm2d(4)
    y = ours2(x, keep)
    # Reference: BatchNorm over the valid columns laid side by side, (1, C, H, sum of valid frames).
    valid = torch.cat([x[b, :, :, : int(keep[b].sum())] for b in range(3)], dim=-1).unsqueeze(0)
    z = ref2(valid)
    torch.testing.assert_close(torch.cat([y[b, :, :, : int(keep[b].sum())] for b in range(3)], -1), z[0])
    torch.testing.assert_close(ours2.running_mean, ref2.running_mean)
    torch.testing.assert_close(ours2.running_var, ref2.running_var)


def _masked_batchnorm_by_autograd(
    x: Tensor, keep: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> Tensor:
    """The masked batch norm written as plain autograd ops: the reference for the fused backward."""
    w = keep.to(x.dtype).view(x.shape[0], 1, 1, x.shape[3])
    count = w.sum() * x.shape[2]
    mean = (x * w).sum(dim=(0, 2, 3)) / count
    var = ((x - mean.view(1, -1, 1, 1)).square() * w).sum(dim=(0, 2, 3)) / count
    scale = (weight * torch.rsqrt(var + eps)).view(1, -1, 1, 1)
    return (x - mean.view(1, -1, 1, 1)) * scale + bias.view(1, -1, 1, 1)


def test_masked_batchnorm_gradients_equal_autograd_of_its_definition() -> None:
    torch.manual_seed(2)
    bn = MaskedBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    # A large common offset: the variance must not cancel catastrophically.
    x = (torch.randn(4, 3, 5, 7, dtype=torch.float64) * 2 + 1000).float().requires_grad_()
    keep = torch.arange(7).unsqueeze(0) < torch.tensor([7, 3, 5, 1]).unsqueeze(1)
    upstream = torch.randn(4, 3, 5, 7)  # padded positions get a gradient too
    (bn(x, keep) * upstream).sum().backward()
    x_ref = x.detach().double().requires_grad_()
    weight, bias = (p.detach().double().requires_grad_() for p in (bn.weight, bn.bias))
    y_ref = _masked_batchnorm_by_autograd(x_ref, keep, weight, bias, bn.eps)
    (y_ref * upstream.double()).sum().backward()
    torch.testing.assert_close(bn(x, keep).double(), y_ref, rtol=1e-4, atol=1e-4)
    # fp32 inputs near 1000 carry ~6e-5 absolute error: the tolerance the fp64 reference allows.
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.weight.grad.double(), weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.bias.grad.double(), bias.grad, rtol=1e-5, atol=1e-5)


@dataclass(frozen=True)
class _StandInTransform:
    sample_rate: float = 16000.0
    modality: str = "audio"

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        assert isinstance(batch.inputs, Tensor)
        wave = batch.inputs.float() / 32768.0
        return wave.masked_fill(
            batch.padding_mask, 0.0
        ) if batch.padding_mask is not None else wave, batch.padding_mask

    def to_dict(self) -> dict[str, Any]:
        return {"modality": "audio", "sample_rate": self.sample_rate}


def _transform() -> Any:
    try:
        from selfsup.augment.audio_transform import AudioTransform

        return AudioTransform(sample_rate=16000)
    except (ImportError, TypeError):
        return _StandInTransform()


def test_byol_builds_on_byol_a_cnn_with_the_byol_a_policy_and_gives_a_finite_loss() -> None:
    assert default_view_policy("byol", "audio") == "byol_a"
    encoder = _small()
    method = METHODS.create("byol", encoder=encoder, hidden_dim=32, projection_dim=16)
    policy = VIEW_POLICIES.create("byol_a", info=INFO, transform=_transform(), encoder=encoder)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16000, 12000, 9000, 15200])
    wave = torch.randint(-6000, 6000, (4, 16000), generator=g, dtype=torch.int16)
    pad = torch.arange(16000).unsqueeze(0) >= lengths.unsqueeze(1)
    batch = Batch(
        inputs=wave.masked_fill(pad, 0),
        labels=torch.zeros(4, dtype=torch.long),
        indices=torch.arange(4),
        lengths=lengths,
        padding_mask=pad,
    )
    views = policy(batch, g)
    out = method(views, StepInfo(0, 10))
    assert torch.isfinite(out.loss) and out.features is not None and out.features.shape == (4, 32)
    out.loss.backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    method.on_optimizer_step(StepInfo(0, 10))
