"""extract_features: equal to a direct forward pass, independent of batch size, per-layer, stacked and
per-frame outputs, padding excluded, and the on-disk cache keyed by what determines the features."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_data import tiny_vectors
from torch import Tensor, nn

from selfsup.augment import ImageTransform, VectorTransform
from selfsup.data.base import Batch, DataInfo, Dataset, InMemoryDataset
from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    padding_mask_from_lengths,
    pool_hidden_state,
)
from selfsup.eval import extract_features
from selfsup.eval.features import FrameFeatures, raw_input_features

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def make_encoder() -> Encoder:
    torch.manual_seed(0)
    encoder = ENCODERS.create("small_cnn", width=4)
    # Non-trivial running statistics, so that eval mode gives different features from train mode.
    with torch.no_grad():
        encoder.train()
        encoder(torch.randn(16, 3, 16, 16) * 2 + 1)
    return encoder


def make_images(n: int, size: int = 16, seed: int = 0) -> InMemoryDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    info = DataInfo(modality="image", sample_shape=(3, size, size), dtype="uint8")
    return InMemoryDataset(images, torch.full((n,), -1), [str(i) for i in range(n)], info=info, source="test")


def transform(size: int = 16) -> ImageTransform:
    return ImageTransform(size=size, mean=MEAN, std=STD)


def direct(encoder: Encoder, data: InMemoryDataset, size: int) -> tuple[Tensor, ...]:
    """The definition: one eval-mode forward pass over the whole set."""
    encoder.eval()
    x, _ = transform(size)(data.batch(torch.arange(len(data))))
    with torch.no_grad():
        out = encoder(x)
    return (out.pooled, *(h.mean(dim=(2, 3)) for h in out.hidden_states))


@pytest.mark.parametrize("batch_size", [1, 3, 10, 256])
def test_matches_direct_forward_for_any_batch_size(batch_size: int) -> None:
    encoder, data = make_encoder(), make_images(10)
    feats = extract_features(encoder, data, transform(), batch_size=batch_size)
    assert (
        isinstance(feats, Tensor) and feats.dtype == torch.float32 and feats.shape == (10, encoder.embed_dim)
    )
    torch.testing.assert_close(feats, direct(encoder, data, 16)[0], rtol=1e-5, atol=1e-6)


def test_resizes_to_the_transform_size() -> None:
    encoder, data = make_encoder(), make_images(5, size=20)
    feats = extract_features(encoder, data, transform(16), batch_size=2)
    torch.testing.assert_close(feats, direct(encoder, data, 16)[0], rtol=1e-5, atol=1e-6)
    # Resizing changes the result: the transform's size is really used.
    assert not torch.allclose(feats, extract_features(encoder, data, transform(20)))


def test_layers() -> None:
    encoder, data = make_encoder(), make_images(7)
    layers = extract_features(encoder, data, transform(), batch_size=3, layers=[0, 2, -1])
    assert isinstance(layers, dict) and list(layers) == [0, 2, -1]
    ref = direct(encoder, data, 16)
    assert layers[0].shape == (7, 4) and layers[2].shape == (7, 8) and layers[-1].shape == (7, 16)
    torch.testing.assert_close(layers[0], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layers[2], ref[3], rtol=1e-5, atol=1e-6)
    # The last hidden state pooled is the pooled output.
    torch.testing.assert_close(layers[-1], ref[0], rtol=1e-5, atol=1e-6)


def test_stacked_layers_for_weighted_layer_probes() -> None:
    data = tiny_vectors(n=9, width=6)
    torch.manual_seed(0)
    encoder = ENCODERS.create("mlp", in_features=6, hidden_dim=5, num_layers=3).eval()
    standardize = VectorTransform.fit(data)
    stacked = extract_features(encoder, data, standardize, layers=[1, 2, 3], stack=True, batch_size=4)
    assert isinstance(stacked, Tensor) and stacked.shape == (9, 3, 5)
    with torch.no_grad():
        out = encoder(standardize(data.batch(torch.arange(9)))[0])
    for i, layer in enumerate([1, 2, 3]):
        torch.testing.assert_close(stacked[:, i], out.hidden_states[layer])
    with pytest.raises(ValueError, match="widths differ"):
        extract_features(encoder, data, standardize, layers=[0, 1], stack=True)


def test_empty_set() -> None:
    encoder = make_encoder()
    feats = extract_features(encoder, make_images(0), transform())
    assert feats.shape == (0, encoder.embed_dim) and feats.dtype == torch.float32


def test_training_flags_and_statistics_are_preserved() -> None:
    encoder = make_encoder().train()
    encoder.stages[0].eval()  # a frozen submodule must stay frozen
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    extract_features(encoder, make_images(6), transform(), batch_size=4)
    assert encoder.training and encoder.stem.training
    assert not encoder.stages[0].training and not any(m.training for m in encoder.stages[0].modules())
    # Eval mode was used: BatchNorm running statistics did not move.
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    encoder.eval()
    extract_features(encoder, make_images(2), transform())
    assert not any(m.training for m in encoder.modules())


def test_bf16_autocast() -> None:
    encoder, data = make_encoder(), make_images(4)
    feats = extract_features(encoder, data, transform(), amp_dtype=torch.bfloat16)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # bf16 keeps ~3 significant digits; the features stay close to the fp32 ones.
    torch.testing.assert_close(feats, direct(encoder, data, 16)[0], rtol=0.05, atol=0.05)


def test_bad_arguments() -> None:
    encoder, data = make_encoder(), make_images(2)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(encoder, data, transform(), batch_size=0)
    with pytest.raises(ValueError, match="4 hidden states"):
        extract_features(encoder, data, transform(), layers=[4])
    with pytest.raises(ValueError, match="non-empty"):
        extract_features(encoder, data, transform(), layers=[])
    with pytest.raises(ValueError, match=r"encoder\.to"):
        extract_features(encoder, data, transform(), device="meta")
    with pytest.raises(ValueError, match="pooling"):
        extract_features(encoder, data, transform(), pooling="median")
    with pytest.raises(ValueError, match="stack=True needs layers"):
        extract_features(encoder, data, transform(), stack=True)


# ------------------------------------------------------------------- variable length, per frame


class Ragged(Dataset):
    """Variable-length sequences of D-dim frames, padded per batch (a stand-in for audio/text)."""

    def __init__(self, lengths: list[int], width: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.sequences = [torch.randn(n, width, generator=g) for n in lengths]
        self.info = DataInfo(modality="sequence", sample_shape=None, dtype="float32")
        self.labels = torch.full((len(lengths),), -1)
        self.ids = [str(i) for i in range(len(lengths))]
        self.source, self.skipped = "ragged", []

    def batch(self, indices: Tensor) -> Batch:
        chosen = [self.sequences[i] for i in indices.tolist()]
        lengths = torch.tensor([len(s) for s in chosen])
        # Padding filled with large values: any leak into a pooled feature shows.
        padded = torch.full((len(chosen), int(lengths.max()), chosen[0].shape[1]), 1e3)
        for row, seq in enumerate(chosen):
            padded[row, : len(seq)] = seq
        return Batch(
            padded,
            self.labels[indices],
            indices,
            lengths,
            padding_mask_from_lengths(lengths, padded.shape[1]),
        )

    def _fingerprint(self) -> str:
        return "ragged"


class Identity:
    modality = "sequence"

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        return batch.inputs, batch.padding_mask  # type: ignore[return-value]

    def to_dict(self) -> dict[str, str]:
        return {"modality": "sequence"}


class TokenEncoder(Encoder):
    """Per-frame Linear layers (no mixing across frames), hidden states (B, T, D)."""

    modality = "sequence"

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim, self.num_layers = 4, 2
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 4)

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        h1 = torch.tanh(self.first(x))
        h2 = torch.tanh(self.second(h1))
        return EncoderOutput(pool_hidden_state(h2, padding_mask), h2, (x, h1, h2), padding_mask)


def test_padding_never_reaches_pooled_or_frame_features() -> None:
    torch.manual_seed(0)
    data, encoder = Ragged([2, 5, 1, 4]), TokenEncoder()
    pooled = extract_features(encoder, data, Identity(), batch_size=3)
    frames = extract_features(encoder, data, Identity(), pooling="none", batch_size=3)
    assert isinstance(frames, FrameFeatures)
    assert frames.lengths.tolist() == [2, 5, 1, 4] and frames.values.shape == (12, 4)
    with torch.no_grad():
        for i, seq in enumerate(data.sequences):
            alone = encoder(seq[None]).last_hidden_state[0]  # no padding at all
            torch.testing.assert_close(frames.sample(i), alone)
            torch.testing.assert_close(pooled[i], alone.mean(dim=0))
    layers = extract_features(encoder, data, Identity(), pooling="none", layers=[0, 2], stack=False)
    assert isinstance(layers, FrameFeatures) and layers.values[0].shape == (12, 3)
    torch.testing.assert_close(layers.values[0], torch.cat(data.sequences))


# ------------------------------------------------------------------------------------ cache


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_cache_hit_returns_the_same_features_without_running_the_encoder(tmp_path: Path) -> None:
    encoder, data = make_encoder(), make_images(6)
    first = extract_features(encoder, data, transform(), cache_dir=tmp_path, batch_size=4)
    entries = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    calls = []
    handle = encoder.register_forward_hook(lambda *a: calls.append(1))
    again = extract_features(encoder, data, transform(), cache_dir=tmp_path, batch_size=2)
    handle.remove()
    assert not calls and torch.equal(first, again)
    torch.testing.assert_close(first, direct(encoder, data, 16)[0], rtol=1e-5, atol=1e-6)


def test_cache_key_changes_with_weights_data_layers_and_transform(tmp_path: Path) -> None:
    encoder, data = make_encoder(), make_images(6)
    extract_features(encoder, data, transform(), cache_dir=tmp_path)

    def entries() -> int:
        return len([p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")])

    extract_features(encoder, data, transform(), cache_dir=tmp_path)
    assert entries() == 1
    extract_features(encoder, make_images(6, seed=1), transform(), cache_dir=tmp_path)  # other data
    assert entries() == 2
    extract_features(encoder, data, transform(), cache_dir=tmp_path, layers=[1])  # other layers
    assert entries() == 3
    extract_features(encoder, data, ImageTransform(16, MEAN, (0.3, 0.3, 0.3)), cache_dir=tmp_path)
    assert entries() == 4
    with torch.no_grad():
        encoder.stem[0].weight.add_(0.01)  # other weights: a stale entry is never served
    changed = extract_features(encoder, data, transform(), cache_dir=tmp_path)
    assert entries() == 5
    torch.testing.assert_close(changed, direct(encoder, data, 16)[0], rtol=1e-5, atol=1e-6)


def test_cache_follows_the_data_files(tmp_path: Path) -> None:
    import numpy as np

    from selfsup.data import load_dataset

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    torch.manual_seed(0)
    encoder = ENCODERS.create("mlp", in_features=4, hidden_dim=3, num_layers=1).eval()
    data = load_dataset(str(path))
    standardize = VectorTransform.fit(data)
    cache = tmp_path / "cache"
    before = extract_features(encoder, data, standardize, cache_dir=cache)
    np.save(path, np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32))
    os.utime(path, ns=(1, 2))  # a new mtime even on coarse file-system clocks
    after = extract_features(encoder, load_dataset(str(path)), standardize, cache_dir=cache)
    assert not torch.allclose(before, after)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def test_an_interrupted_extraction_leaves_no_entry(tmp_path: Path) -> None:
    encoder, data = make_encoder(), make_images(6)

    def boom(*args: object) -> None:
        raise KeyboardInterrupt

    handle = encoder.register_forward_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        extract_features(encoder, data, transform(), cache_dir=tmp_path)
    handle.remove()
    assert list(tmp_path.iterdir()) == []


def test_cached_per_frame_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data, encoder = Ragged([3, 1, 4]), TokenEncoder()
    fresh = extract_features(encoder, data, Identity(), pooling="none", batch_size=2)
    first = extract_features(encoder, data, Identity(), pooling="none", batch_size=2, cache_dir=tmp_path)
    again = extract_features(encoder, data, Identity(), pooling="none", batch_size=2, cache_dir=tmp_path)
    for result in (first, again):
        assert isinstance(result, FrameFeatures)
        torch.testing.assert_close(result.values, fresh.values)
        assert torch.equal(result.lengths, fresh.lengths)


def test_raw_input_features_are_the_transformed_inputs() -> None:
    data = make_images(3)
    raw = raw_input_features(data, transform(), batch_size=2)
    x, _ = transform()(data.batch(torch.arange(3)))
    torch.testing.assert_close(raw, x.flatten(1))


def test_max_pooling_is_the_global_max_of_each_hidden_state() -> None:
    encoder, data = make_encoder(), make_images(7)
    encoder.eval()
    x, _ = transform(16)(data.batch(torch.arange(len(data))))
    with torch.no_grad():
        out = encoder(x)
    layers = list(range(encoder.num_layers + 1))
    got = extract_features(encoder, data, transform(16), layers=layers, pooling="max", batch_size=3)
    assert isinstance(got, dict)
    for layer in layers:
        torch.testing.assert_close(got[layer], out.hidden_states[layer].amax(dim=(2, 3)))
    pooled = extract_features(encoder, data, transform(16), pooling="max", batch_size=4)
    torch.testing.assert_close(pooled, out.last_hidden_state.amax(dim=(2, 3)))


def test_max_pooling_ignores_padded_tokens() -> None:
    from selfsup.eval.features import max_pool_hidden_state

    hidden = torch.tensor([[[1.0, -5.0], [9.0, 9.0], [2.0, 0.0]]])  # (1, 3, 2)
    mask = torch.tensor([[False, True, False]])  # the 9s are padding
    assert max_pool_hidden_state(hidden, mask).tolist() == [[2.0, 0.0]]
    assert max_pool_hidden_state(hidden).tolist() == [[9.0, 9.0]]


def test_vit_layer_features_average_the_patch_tokens_only() -> None:
    """A ViT's class and register tokens are not part of a layer's mean; the pooled output stays the cls."""
    torch.manual_seed(0)
    encoder = ENCODERS.create("vit_tiny", embed_dim=16, depth=2, num_heads=2, patch_size=4, num_registers=2)
    data = make_images(5)
    layers = extract_features(encoder, data, transform(), batch_size=2, layers=[1, -1])
    pooled = extract_features(encoder, data, transform(), batch_size=2)
    encoder.eval()
    x, _ = transform()(data.batch(torch.arange(5)))
    with torch.no_grad():
        out = encoder(x)
    prefix = encoder.num_prefix_tokens
    assert prefix == 3
    torch.testing.assert_close(layers[1], out.hidden_states[1][:, prefix:].mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layers[-1], out.last_hidden_state[:, prefix:].mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, out.pooled, rtol=1e-5, atol=1e-6)
