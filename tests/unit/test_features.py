"""extract_features: equal to a direct forward pass, independent of batch size, per-layer outputs."""

from __future__ import annotations

import pytest
import torch

from selfsup.augment.base import to_normalized_float
from selfsup.encoders.base import ENCODERS, Encoder
from selfsup.eval import extract_features

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


def make_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def direct(encoder: Encoder, images: torch.Tensor, size: int | None) -> tuple[torch.Tensor, ...]:
    """The definition: one eval-mode forward pass over the whole set."""
    encoder.eval()
    with torch.no_grad():
        out = encoder(to_normalized_float(images, MEAN, STD, size))
    return (out.pooled, *(h.mean(dim=(2, 3)) for h in out.hidden_states))


@pytest.mark.parametrize("batch_size", [1, 3, 10, 256])
def test_matches_direct_forward_for_any_batch_size(batch_size: int) -> None:
    encoder = make_encoder()
    images = make_images(10)
    feats = extract_features(encoder, images, size=None, mean=MEAN, std=STD, batch_size=batch_size)
    assert feats.dtype == torch.float32 and feats.shape == (10, encoder.embed_dim)
    torch.testing.assert_close(feats, direct(encoder, images, None)[0], rtol=1e-5, atol=1e-6)


def test_resizes_to_size() -> None:
    encoder = make_encoder()
    images = make_images(5, size=20)
    feats = extract_features(encoder, images, size=16, mean=MEAN, std=STD, batch_size=2)
    torch.testing.assert_close(feats, direct(encoder, images, 16)[0], rtol=1e-5, atol=1e-6)
    # Resizing changes the result: the size argument is really used.
    unresized = extract_features(encoder, images, size=None, mean=MEAN, std=STD)
    assert not torch.allclose(feats, unresized)


def test_layers() -> None:
    encoder = make_encoder()
    images = make_images(7)
    layers = extract_features(encoder, images, size=None, mean=MEAN, std=STD, batch_size=3, layers=[0, 2, -1])
    assert list(layers) == [0, 2, -1]
    ref = direct(encoder, images, None)
    assert layers[0].shape == (7, 4) and layers[2].shape == (7, 8) and layers[-1].shape == (7, 16)
    torch.testing.assert_close(layers[0], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layers[2], ref[3], rtol=1e-5, atol=1e-6)
    # The last hidden state pooled is the pooled output.
    torch.testing.assert_close(layers[-1], ref[0], rtol=1e-5, atol=1e-6)


def test_empty_set() -> None:
    encoder = make_encoder()
    empty = torch.zeros(0, 3, 16, 16, dtype=torch.uint8)
    feats = extract_features(encoder, empty, size=None, mean=MEAN, std=STD)
    assert feats.shape == (0, encoder.embed_dim) and feats.dtype == torch.float32
    layers = extract_features(encoder, empty, size=None, mean=MEAN, std=STD, layers=[1, 3])
    assert layers[1].shape == (0, 4) and layers[3].shape == (0, 16)


def test_training_flags_and_statistics_are_preserved() -> None:
    encoder = make_encoder().train()
    encoder.stages[0].eval()  # a frozen submodule must stay frozen
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    extract_features(encoder, make_images(6), size=None, mean=MEAN, std=STD, batch_size=4)
    assert encoder.training and encoder.stem.training
    assert not encoder.stages[0].training and not any(m.training for m in encoder.stages[0].modules())
    # Eval mode was used: BatchNorm running statistics did not move.
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key

    encoder.eval()
    extract_features(encoder, make_images(2), size=None, mean=MEAN, std=STD)
    assert not any(m.training for m in encoder.modules())


def test_bf16_autocast() -> None:
    encoder = make_encoder()
    images = make_images(4)
    feats = extract_features(encoder, images, size=None, mean=MEAN, std=STD, amp_dtype=torch.bfloat16)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # bf16 keeps ~3 significant digits; the features stay close to the fp32 ones.
    torch.testing.assert_close(feats, direct(encoder, images, None)[0], rtol=0.05, atol=0.05)


def test_bad_input() -> None:
    encoder = make_encoder()
    with pytest.raises(ValueError, match="uint8"):
        extract_features(encoder, torch.rand(2, 3, 16, 16), size=None, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="one value per channel"):
        extract_features(encoder, make_images(2), size=None, mean=(0.5,), std=STD)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        extract_features(encoder, make_images(2), size=0, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(encoder, make_images(2), size=None, mean=MEAN, std=STD, batch_size=0)
    with pytest.raises(ValueError, match="4 hidden states"):
        extract_features(encoder, make_images(2), size=None, mean=MEAN, std=STD, layers=[4])
    with pytest.raises(ValueError, match="non-empty"):
        extract_features(encoder, make_images(2), size=None, mean=MEAN, std=STD, layers=[])
    with pytest.raises(ValueError, match=r"encoder\.to"):
        extract_features(encoder, make_images(2), size=None, mean=MEAN, std=STD, device="meta")
