"""Feature extraction on audio: batches sized by duration, results identical to one clip at a time
(padding never reaches a feature), inference mode, the front-end baselines' statistics, and the
feature cache's size estimate (exact for equal-width layers) with its limit."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from selfsup.augment.audio_transform import AudioTransform
from selfsup.data.audio import AudioDataset, audio_info
from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    padding_mask_from_lengths,
    pool_hidden_state,
)
from selfsup.errors import ConfigError
from selfsup.eval.cache import estimate_entry_bytes
from selfsup.eval.features import (
    FrameFeatures,
    FrontendEncoder,
    duration_batches,
    extract_features,
    mean_std_pool,
    sample_lengths,
)

RATE = 16000


def make_audio(lengths: list[int], seed: int = 0) -> AudioDataset:
    g = torch.Generator().manual_seed(seed)
    clips = [(torch.randn(n, generator=g) * 3000).clamp(-32768, 32767).to(torch.int16) for n in lengths]
    offsets = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int64)
    labels = torch.arange(len(lengths)) % 2
    return AudioDataset(torch.cat(clips), offsets, labels, [f"c{i}" for i in range(len(lengths))],
                        info=audio_info(RATE, ["a", "b"]), source=f"synthetic{seed}")  # fmt: skip


class ConvStandIn(Encoder):
    """A strided convolution then per-frame layers: frames depend on valid samples only (a stand-in
    for wav2vec 2.0's feature extractor)."""

    modality = "audio"

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.embed_dim, self.num_layers = width, 2
        self.conv = nn.Conv1d(1, width, kernel_size=400, stride=320)
        self.layers = nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)])
        self.forward_modes: list[bool] = []

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return torch.div(lengths - 400, 320, rounding_mode="floor").clamp_min(-1) + 1

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        self.forward_modes.append(torch.is_inference_mode_enabled())
        hidden = [self.conv(x.unsqueeze(1)).transpose(1, 2)]
        for layer in self.layers:
            hidden.append(torch.tanh(layer(hidden[-1])))
        frame_mask = None
        if padding_mask is not None:
            lengths = (~padding_mask).sum(dim=1)
            frame_mask = padding_mask_from_lengths(self.output_lengths(lengths), hidden[0].shape[1])
        return EncoderOutput(pool_hidden_state(hidden[-1], frame_mask), hidden[-1], tuple(hidden), frame_mask)


def encoders() -> list[Encoder]:
    torch.manual_seed(0)
    found = [ConvStandIn().eval()]
    if "wav2vec2" in ENCODERS.names():
        found.append(ENCODERS.create("wav2vec2", size="tiny", num_layers=2).eval())
    return found


LENGTHS = [2400, 400, 7000, 1000, 4321, 800, 3000]


# ------------------------------------------------------------------------------ batching


def reference_batches(lengths: list[int], budget: int | None, size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            longest = max(lengths[j] for j in batch)
            if len(batch) < size and (budget is None or (len(batch) + 1) * longest <= budget):
                batch.append(i)
                continue
        batches.append([i])
    return batches


@pytest.mark.parametrize(("budget", "size"), [(10_000, 64), (3000, 4), (None, 3), (1, 64)])
def test_duration_batches_match_a_greedy_loop(budget: int | None, size: int) -> None:
    lengths = torch.randint(1, 3000, (57,), generator=torch.Generator().manual_seed(0))
    lengths[5] = lengths[9]  # a tie: index order
    batches = duration_batches(lengths, max_batch_length=budget, max_batch_size=size)
    assert [b.tolist() for b in batches] == reference_batches(lengths.tolist(), budget, size)
    assert sorted(torch.cat(batches).tolist()) == list(range(57))
    for batch in batches:
        padded = len(batch) * int(lengths[batch].max())
        assert len(batch) <= size and (budget is None or padded <= budget or len(batch) == 1)


def test_sample_lengths_of_audio_sets_and_subsets() -> None:
    data = make_audio(LENGTHS)
    assert sample_lengths(data).tolist() == LENGTHS
    assert sample_lengths(data.subset(torch.tensor([4, 1]))).tolist() == [4321, 400]


# ------------------------------------------------------------------------------ pad invariance


@pytest.mark.parametrize("index", [0, 1])
def test_features_are_those_of_each_clip_alone(index: int) -> None:
    candidates = encoders()
    if index >= len(candidates):
        pytest.skip("the wav2vec2 encoder is not registered")
    encoder, data, transform = candidates[index], make_audio(LENGTHS), AudioTransform(RATE, normalize=True)
    layers = list(range(encoder.num_layers + 1))
    # One batch of every clip (the most padding), duration batches, and one clip at a time.
    one_batch = {"max_batch_seconds": None, "batch_size": 64}
    alone = {"batch_size": 1}
    for pooling in ("mean", "max"):
        results = [extract_features(encoder, data, transform, layers=layers, pooling=pooling, **o)
                   for o in (one_batch, {"max_batch_seconds": 0.5}, alone)]  # fmt: skip
        for layer in layers:
            torch.testing.assert_close(results[0][layer], results[2][layer], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(results[1][layer], results[2][layer], rtol=1e-4, atol=1e-5)
    frames = extract_features(encoder, data, transform, layers=layers, pooling="none", **one_batch)
    assert isinstance(frames, FrameFeatures)
    assert frames.lengths.tolist() == encoder.output_lengths(torch.tensor(LENGTHS)).tolist()
    pooled = extract_features(encoder, data, transform, **one_batch)
    with torch.no_grad():
        for i in range(len(data)):
            clip = data.batch(torch.tensor([i]))
            out = encoder(transform(clip)[0])  # no padding at all
            sample = frames.sample(i)
            assert isinstance(sample, dict)
            for layer in layers:
                torch.testing.assert_close(sample[layer], out.hidden_states[layer][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(pooled[i], out.pooled[0], rtol=1e-4, atol=1e-5)


def test_inference_mode_and_ordinary_results() -> None:
    torch.manual_seed(0)
    encoder, data = ConvStandIn(), make_audio(LENGTHS)
    pooled = extract_features(encoder, data, AudioTransform(RATE), max_batch_seconds=0.4)
    assert encoder.forward_modes and all(encoder.forward_modes)
    assert not pooled.is_inference()
    frames = extract_features(encoder, data, AudioTransform(RATE), pooling="none", max_batch_seconds=0.4)
    assert not frames.values.is_inference()
    weight = torch.zeros(6, requires_grad=True)  # a probe can train on them
    (pooled @ weight).sum().backward()


def test_an_encoder_that_drops_the_padding_mask_is_refused() -> None:
    class Careless(ConvStandIn):
        def forward(self, x: Tensor, **kwargs: object) -> EncoderOutput:
            out = super().forward(x, padding_mask=None)
            return EncoderOutput(out.pooled, out.last_hidden_state, out.hidden_states, None)

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="no padding mask"):
        extract_features(Careless(), make_audio(LENGTHS), AudioTransform(RATE), max_batch_seconds=None)
    # Clips of one length have no padding: nothing to refuse.
    extract_features(Careless(), make_audio([1000, 1000, 1000]), AudioTransform(RATE), max_batch_seconds=None)


# ------------------------------------------------------------------------------ front-end statistics


def test_mean_std_pool_against_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g) * 10 + 100
    lengths = torch.tensor([5, 1, 3])
    pooled = mean_std_pool(hidden, padding_mask_from_lengths(lengths, 5))
    for i, n in enumerate(lengths.tolist()):
        frames = hidden[i, :n].double().numpy()
        np.testing.assert_allclose(
            pooled[i].numpy(), np.concatenate([frames.mean(0), frames.std(0)]), rtol=1e-6
        )
    assert pooled.shape == (3, 8) and torch.equal(pooled[1, 4:], torch.zeros(4))


def test_frontend_encoder_gives_the_statistics_of_each_clip_alone() -> None:
    from selfsup.audio.frontend import LogMelFrontend

    frontend = LogMelFrontend(sample_rate=RATE, n_mels=16)
    encoder, data = FrontendEncoder(frontend), make_audio(LENGTHS)
    assert encoder.embed_dim == 32 and encoder.num_layers == 0
    features = extract_features(encoder, data, AudioTransform(RATE), max_batch_seconds=None)
    for i in range(len(data)):
        wave, _ = AudioTransform(RATE)(data.batch(torch.tensor([i])))
        logmel = frontend(wave)[0][0].double().numpy()  # (F, 16), the clip alone
        expected = np.concatenate([logmel.mean(0), logmel.std(0)])
        np.testing.assert_allclose(features[i].numpy(), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ cache size


def entry_bytes(cache: Path) -> int:
    entries = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1
    return sum(p.stat().st_size for p in entries[0].glob("*.bin"))


def test_estimate_formula() -> None:
    assert estimate_entry_bytes(10, 3, 8) == 10 * 3 * 8 * 4
    assert estimate_entry_bytes(10, 3, 8, frames=100) == 100 * 3 * 8 * 4 + 10 * 8
    with pytest.raises(ValueError):
        estimate_entry_bytes(-1, 1, 1)


@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_the_estimate_is_logged_and_exact_for_equal_widths(
    pooling: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    encoder, data = ConvStandIn(), make_audio(LENGTHS)
    with caplog.at_level(logging.INFO, logger="selfsup.eval.cache"):
        fresh = extract_features(encoder, data, AudioTransform(RATE), layers=[0, 1, 2], pooling=pooling)
        cached = extract_features(encoder, data, AudioTransform(RATE), layers=[0, 1, 2], pooling=pooling,
                                  cache_dir=tmp_path, max_batch_seconds=0.3)  # fmt: skip
    frames = int(encoder.output_lengths(torch.tensor(LENGTHS)).sum()) if pooling == "none" else None
    expected = estimate_entry_bytes(len(LENGTHS), 3, 6, frames)
    assert entry_bytes(tmp_path) == expected
    assert any(
        "feature cache" in r.getMessage() and "3 layer(s) x 6 values" in r.getMessage()
        for r in caplog.records
    )
    for layer in (0, 1, 2):
        a = fresh.values[layer] if pooling == "none" else fresh[layer]
        b = cached.values[layer] if pooling == "none" else cached[layer]
        torch.testing.assert_close(a, b)


def test_an_entry_above_the_limit_is_refused_before_anything_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder, data = ConvStandIn(), make_audio(LENGTHS)
    limit = (estimate_entry_bytes(7, 3, 6) - 1) / 2**30
    with pytest.raises(ConfigError, match="more than the limit") as error:
        extract_features(encoder, data, AudioTransform(RATE), layers=[0, 1, 2], cache_dir=tmp_path,
                         cache_limit_gb=limit)  # fmt: skip
    assert "cache_limit_gb=" in str(error.value) and not encoder.forward_modes
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    extract_features(encoder, data, AudioTransform(RATE), layers=[0, 1, 2], cache_dir=tmp_path,
                     cache_limit_gb=limit * 1.01)  # fmt: skip
    assert entry_bytes(tmp_path) == estimate_entry_bytes(7, 3, 6)


def test_per_frame_maps_are_checked_after_the_first_batch(tmp_path: Path) -> None:
    # Convolutional maps: the frames per sample are known once the first batch is through.
    torch.manual_seed(0)
    from selfsup.augment import ImageTransform
    from selfsup.data.base import DataInfo, InMemoryDataset

    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    data = InMemoryDataset(images, torch.zeros(6, dtype=torch.long), [str(i) for i in range(6)],
                           info=DataInfo("image", (3, 16, 16), "uint8"), source="img")  # fmt: skip
    encoder = ENCODERS.create("small_cnn", width=4).eval()
    with pytest.raises(ConfigError, match="frames of 6 samples"):
        extract_features(encoder, data, ImageTransform(16, (0.5,) * 3, (0.2,) * 3), pooling="none",
                         layers=[1], cache_dir=tmp_path, batch_size=2, cache_limit_gb=1e-9)  # fmt: skip
