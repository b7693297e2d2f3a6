"""Weighted-layer probe (SUPERB / S3PRL featurizer) against references: a planted informative layer
recovered, scikit-learn's LogisticRegression for one layer, per-sample loops for frame pooling, the
pooled path for frames, numpy for the statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from selfsup.errors import ConfigError, DataError
from selfsup.eval import PROBES
from selfsup.eval.features import FrameFeatures
from selfsup.eval.layer import (
    WeightedLayerProbe,
    _layer_statistics,
    _LayerProbe,
    _Rows,
    frame_rows,
    mean_pool_frames,
    plot_layer_weights,
    weighted_layer_sum,
)
from selfsup.eval.splits import train_val_split


def planted(
    n: int, layers: int, dim: int, classes: int, informative: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """(n, L, D) features where only layer ``informative`` holds class means; the rest is noise.
    The class means come from a fixed seed, so train and test sets share them."""
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 0.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, layers, dim, generator=g)
    x[:, informative] += means[y]
    return x, y


def oracle_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Logistic regression on standardised features (the informative layer alone): the best a linear
    head can do, computed independently of the probe."""
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x), train_y)
    return 100.0 * model.score(scaler.transform(test_x), test_y)


def random_frames(n: int, layers: int, dim: int, seed: int, low: int = 1, high: int = 12) -> FrameFeatures:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=g)
    return FrameFeatures(values=torch.randn(int(lengths.sum()), layers, dim, generator=g), lengths=lengths)


# --- (1) planted informative layer ------------------------------------------------------------


@pytest.mark.parametrize("informative", [1, 4])
def test_planted_layer_gets_the_weight_and_the_accuracy(informative: int) -> None:
    x, y = planted(1200, 6, 16, 4, informative, seed=0)
    xt, yt = planted(600, 6, 16, 4, informative, seed=1)
    probe = WeightedLayerProbe(min_steps=0, seed=0).fit(x, y)
    weights = probe.layer_weights
    assert weights.shape == (6,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert int(weights.argmax()) == informative and float(weights[informative]) > 0.5
    top1 = probe.evaluate(xt, yt)["top1"]
    oracle = oracle_accuracy(x[:, informative].numpy(), y.numpy(), xt[:, informative].numpy(), yt.numpy())
    assert oracle > 60  # the planted signal is real (chance is 25 %)
    assert top1 >= oracle - 4.0


def test_mlp_head_also_finds_the_planted_layer() -> None:
    x, y = planted(1200, 5, 16, 4, 2, seed=0)
    xt, yt = planted(600, 5, 16, 4, 2, seed=1)
    probe = WeightedLayerProbe(head="mlp", hidden_dim=32, min_steps=0).fit(x, y)
    assert int(probe.layer_weights.argmax()) == 2 and float(probe.layer_weights[2]) > 0.5
    oracle = oracle_accuracy(x[:, 2].numpy(), y.numpy(), xt[:, 2].numpy(), yt.numpy())
    # A 32-unit MLP on 1,200 samples overfits the noise layers a little: a looser bound than linear's.
    assert probe.evaluate(xt, yt)["top1"] >= oracle - 10.0


# --- (2) one layer = a linear classifier -------------------------------------------------------


def test_one_layer_matches_logistic_regression_on_digits() -> None:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1200], order[1200:]
    features = torch.tensor(x, dtype=torch.float32)
    labels = torch.tensor(y)
    # Trained on the same samples as the reference (no validation split); one hidden state.
    settings = {"lr": 1e-2, "batch_size": 64, "val_fraction": 0.0, "min_steps": 1000}
    probe = WeightedLayerProbe(**settings)
    probe.fit(features[train].unsqueeze(1), labels[train])
    ours = probe.evaluate(features[test].unsqueeze(1), labels[test])
    reference = oracle_accuracy(x[train], y[train], x[test], y[test])
    assert reference > 94
    assert abs(ours["top1"] - reference) <= 2.0
    assert set(ours) == {"top1", "top5"} and ours["top5"] >= ours["top1"]
    assert probe.layer_weights.tolist() == [1.0]
    # (N, D) is read as one layer: the same probe (checked on a short run).
    short = {"epochs": 2, "min_steps": 0}
    one = WeightedLayerProbe(**short).fit(features[train].unsqueeze(1), labels[train])
    flat = WeightedLayerProbe(**short).fit(features[train], labels[train])
    assert torch.equal(one.predict(features[test].unsqueeze(1)), flat.predict(features[test]))


# --- the model's maths ----------------------------------------------------------------------


def test_fused_forward_equals_weighted_sum_of_standardised_layers() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, 8, generator=g) * torch.rand(4, 8, generator=g) * 10 + 3
    mean, inv_std = _layer_statistics(_Rows(x, torch.zeros(50, dtype=torch.long), None), torch.arange(50), 7)
    # numpy reference (population std, as a standardiser fitted on the training set)
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(1 / inv_std.numpy(), x.numpy().std(axis=0), rtol=1e-5)
    model = _LayerProbe(mean, inv_std, 3, "linear", 16)
    with torch.no_grad():
        model.layer_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    reference = torch.einsum(
        "bld,l->bd", (x - mean) * inv_std, torch.softmax(torch.tensor([0.5, -1.0, 2.0, 0.0]), 0)
    )
    torch.testing.assert_close(model.mix(x), reference, atol=1e-5, rtol=1e-5)
    # The linear head's folded GEMM is the same function as the head applied to the mixture.
    torch.testing.assert_close(model(x), model.head(reference), atol=1e-5, rtol=1e-5)
    mlp = _LayerProbe(mean, inv_std, 3, "mlp", 16)
    torch.testing.assert_close(mlp(x), mlp.head(weighted_layer_sum((x - mean) * inv_std, mlp.layer_logits)))
    torch.testing.assert_close(weighted_layer_sum((x - mean) * inv_std, model.layer_logits), reference)
    # A zero-initialised weight vector is the plain mean of the layers (S3PRL's starting point).
    torch.testing.assert_close(weighted_layer_sum(x, torch.zeros(4)), x.mean(dim=1), atol=1e-6, rtol=1e-6)


# --- (3) frames ---------------------------------------------------------------------------


def test_mean_pool_frames_equals_a_per_sample_loop() -> None:
    frames = random_frames(40, 3, 5, seed=2, low=0, high=9)  # some samples have no frames
    pooled = mean_pool_frames(frames.values, frames.lengths, chunk=7)
    for i in range(40):
        sample = frames.sample(i)
        expected = sample.mean(dim=0) if sample.shape[0] else torch.zeros(3, 5)
        torch.testing.assert_close(pooled[i], expected, atol=1e-6, rtol=1e-6)
    # Frames that carry their sample's id pool to exactly that id: nothing leaks between samples.
    owner = torch.repeat_interleave(torch.arange(40), frames.lengths).float()
    ids = mean_pool_frames(owner.view(-1, 1, 1).expand(-1, 2, 3), frames.lengths, chunk=5)
    has = frames.lengths > 0
    assert torch.equal(ids[has, 0, 0], torch.arange(40)[has].float())


def test_frame_rows_lists_each_sample_frames_in_order() -> None:
    frames = random_frames(20, 1, 1, seed=3, low=0, high=6)
    samples = torch.tensor([7, 2, 19, 2, 0])
    expected = torch.cat([torch.arange(frames.offsets[s], frames.offsets[s + 1]) for s in samples.tolist()])
    assert torch.equal(frame_rows(frames.offsets, frames.lengths, samples), expected)


def test_frame_level_recovers_a_planted_layer() -> None:
    means = torch.randn(5, 12, generator=torch.Generator().manual_seed(9)) * 0.6

    def make(n: int, seed: int) -> tuple[FrameFeatures, torch.Tensor]:
        frames = random_frames(n, 5, 12, seed=seed, low=3, high=15)
        labels = torch.randint(0, 5, (frames.values.shape[0],), generator=torch.Generator().manual_seed(seed))
        frames.values[:, 3] += means[labels]
        labels[::10] = -1  # unknown frames are ignored
        return frames, labels

    train, train_y = make(200, 0)
    test, test_y = make(100, 1)
    probe = WeightedLayerProbe(batch_size=32, min_steps=400).fit(train, train_y)
    assert probe.fitted_level == "frame"
    assert int(probe.layer_weights.argmax()) == 3 and float(probe.layer_weights[3]) > 0.5
    keep, keep_t = train_y != -1, test_y != -1
    oracle = oracle_accuracy(
        train.values[keep, 3].numpy(),
        train_y[keep].numpy(),
        test.values[keep_t, 3].numpy(),
        test_y[keep_t].numpy(),
    )
    top1 = probe.evaluate(test, test_y)["top1"]
    assert oracle > 50 and top1 >= oracle - 4.0
    predicted = probe.predict(test)
    assert predicted.shape == test_y.shape
    assert 100.0 * float((predicted[keep_t] == test_y[keep_t]).float().mean()) == pytest.approx(top1)


def test_frame_level_validation_split_is_by_sample() -> None:
    frames = random_frames(50, 2, 3, seed=4)
    labels = torch.randint(0, 3, (frames.values.shape[0],), generator=torch.Generator().manual_seed(0))
    probe = WeightedLayerProbe(level="frame", val_fraction=0.2)
    source = _Rows(frames.values, labels, frames.lengths)
    train, val = probe._split(source, source.labelled_samples(), "frame")
    assert val.numel() == 10 and set(train.tolist()).isdisjoint(val.tolist())
    assert set(source.rows(train).tolist()).isdisjoint(source.rows(val).tolist())
    assert source.rows(train).numel() + source.rows(val).numel() == frames.values.shape[0]


# --- (4) utterance level from frames = from pooled features ----------------------------------


@pytest.mark.parametrize("equal_lengths", [True, False])
def test_utterance_level_from_frames_matches_pooled_features(equal_lengths: bool) -> None:
    g = torch.Generator().manual_seed(5)
    n, layers, dim = 300, 4, 8
    lengths = torch.full((n,), 6) if equal_lengths else torch.randint(1, 10, (n,), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    values = torch.randn(int(lengths.sum()), layers, dim, generator=g)
    values[:, 1] += torch.repeat_interleave(labels, lengths).float().unsqueeze(1)  # layer 1 informative
    frames = FrameFeatures(values=values, lengths=lengths)
    if equal_lengths:
        pooled = values.view(n, 6, layers, dim).mean(dim=1)
    else:
        pooled = torch.stack([frames.sample(i).mean(dim=0) for i in range(n)])
    a = WeightedLayerProbe(min_steps=200, seed=1).fit(frames, labels)
    b = WeightedLayerProbe(min_steps=200, seed=1).fit(pooled, labels)
    assert a.fitted_level == b.fitted_level == "utterance"
    torch.testing.assert_close(a.layer_weights, b.layer_weights, atol=1e-4, rtol=1e-4)
    assert torch.equal(a.predict(frames), b.predict(pooled))
    assert a.evaluate(frames, labels) == b.evaluate(pooled, labels)
    assert int(a.layer_weights.argmax()) == 1


# --- (5) determinism, labels, errors, summary, plot ------------------------------------------


def test_same_seed_same_probe_other_seed_other_probe() -> None:
    x, y = planted(400, 3, 8, 3, 0, seed=0)
    first = WeightedLayerProbe(epochs=4, min_steps=0, seed=7).fit(x, y)
    again = WeightedLayerProbe(epochs=4, min_steps=0, seed=7).fit(x, y)
    other = WeightedLayerProbe(epochs=4, min_steps=0, seed=8).fit(x, y)
    assert torch.equal(first.layer_weights, again.layer_weights)
    assert first.to_dict() == again.to_dict()
    assert not torch.equal(first.layer_weights, other.layer_weights)


def test_unknown_labels_are_ignored() -> None:
    x, y = planted(300, 3, 6, 3, 2, seed=0)
    # The same labelled rows, in the same order, with garbage rows labelled -1 between them.
    keep = torch.randperm(340, generator=torch.Generator().manual_seed(0))[:300].sort().values
    mixed_x, mixed_y = torch.randn(340, 3, 6) * 100, torch.full((340,), -1)
    mixed_x[keep], mixed_y[keep] = x, y
    clean = WeightedLayerProbe(epochs=3, min_steps=0, val_fraction=0.0).fit(x, y)
    dirty = WeightedLayerProbe(epochs=3, min_steps=0, val_fraction=0.0).fit(mixed_x, mixed_y)
    assert torch.equal(clean.layer_weights, dirty.layer_weights)
    assert clean.evaluate(x, y) == dirty.evaluate(mixed_x, mixed_y)


def test_validation_picks_the_best_round_and_stops_early() -> None:
    x, y = planted(500, 3, 8, 3, 1, seed=0)
    probe = WeightedLayerProbe(epochs=30, min_steps=0, val_fraction=0.2, patience=2, lr=0.05).fit(x, y)
    history = probe.history
    assert len(history) < 30 and all("val_top1" in row for row in history)
    best = max(history, key=lambda row: (row["val_top1"], -row["val_loss"]))
    assert probe.best_step == best["step"]
    assert history[-3] is best  # stopped after `patience` scorings without improvement
    # The best state is the one kept: re-scoring the validation split reproduces its accuracy.
    _, val = train_val_split(y, 0.2, seed=0)
    assert probe.evaluate(x[val], y[val])["top1"] == pytest.approx(best["val_top1"])
    summary = json.loads(json.dumps(probe.to_dict()))
    assert summary["layer_weights"] == pytest.approx(probe.layer_weights.tolist())
    assert summary["history"] == history and summary["settings"]["patience"] == 2


def test_min_steps_stretches_short_epochs_but_scores_epochs_times() -> None:
    x, y = planted(300, 2, 4, 3, 0, seed=0)  # 270 training samples: 2 steps per epoch of 256
    probe = WeightedLayerProbe(epochs=5, min_steps=50).fit(x, y)
    assert [row["step"] for row in probe.history] == [10, 20, 30, 40, 50]
    assert [row["epoch"] for row in probe.history] == [5.0, 10.0, 15.0, 20.0, 25.0]


def test_top5_only_with_more_than_five_classes() -> None:
    x, y = planted(200, 2, 6, 5, 0, seed=0)
    metrics = WeightedLayerProbe(epochs=2, min_steps=0).fit(x, y).evaluate(x, y)
    assert set(metrics) == {"top1"}


def test_registered_and_created_by_name() -> None:
    probe = PROBES.create("layer", epochs=2, head="mlp")
    assert isinstance(probe, WeightedLayerProbe) and probe.epochs == 2
    with pytest.raises(TypeError, match="Did you mean 'epochs'"):
        PROBES.create("layer", epoch=2)


def test_shape_and_setting_errors_are_clear() -> None:
    x, y = planted(60, 3, 4, 3, 0, seed=0)
    frames = random_frames(10, 3, 4, seed=0)
    with pytest.raises(DataError, match="60 samples"):
        WeightedLayerProbe().fit(x, y[:-1])
    with pytest.raises(DataError, match="sum to"):
        WeightedLayerProbe().fit(
            FrameFeatures(frames.values, frames.lengths + 1), torch.zeros(10, dtype=torch.long)
        )
    with pytest.raises(DataError, match="one per sample .* or one per frame"):
        WeightedLayerProbe().fit(frames, torch.zeros(11, dtype=torch.long))
    with pytest.raises(DataError, match="one label per frame"):
        WeightedLayerProbe(level="frame").fit(frames, torch.zeros(10, dtype=torch.long))
    with pytest.raises(DataError, match="stack=True"):
        WeightedLayerProbe().fit(FrameFeatures({0: frames.values[:, 0]}, frames.lengths), torch.zeros(10))
    with pytest.raises(DataError, match="floating-point"):
        WeightedLayerProbe().fit(torch.zeros(5, 2, 3, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(DataError, match="integer"):
        WeightedLayerProbe().fit(x, y.float())
    with pytest.raises(DataError, match="every label is -1"):
        WeightedLayerProbe().fit(x, torch.full((60,), -1))
    with pytest.raises(DataError, match="NaN"):
        WeightedLayerProbe().fit(torch.full((60, 3, 4), float("nan")), y)
    with pytest.raises(ConfigError, match="level="):  # N == T but not one frame each: ambiguous
        WeightedLayerProbe().fit(
            FrameFeatures(torch.randn(4, 1, 2), torch.tensor([2, 0, 1, 1])), torch.zeros(4).long()
        )
    for bad in (
        {"head": "transformer"},
        {"level": "token"},
        {"epochs": 0},
        {"val_fraction": 1.0},
        {"lr": 0},
        {"min_steps": -1},
    ):
        with pytest.raises(ConfigError):
            WeightedLayerProbe(**bad)
    with pytest.raises(ConfigError, match="validation split"):
        WeightedLayerProbe(val_fraction=0.0, patience=3)
    with pytest.raises(RuntimeError, match="before fit"):
        WeightedLayerProbe().evaluate(x, y)
    probe = WeightedLayerProbe(epochs=1, min_steps=0).fit(x, y)
    with pytest.raises(DataError, match=r"\(L, D\)"):
        probe.evaluate(x[:, :2], y)
    frame_probe = WeightedLayerProbe(epochs=1, min_steps=0, level="frame").fit(
        frames, torch.zeros(frames.values.shape[0]).long()
    )
    with pytest.raises(DataError, match="frame level"):
        frame_probe.evaluate(x, y)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from PIL import Image

    probe = WeightedLayerProbe(epochs=2, min_steps=0, layers=[0, 2, 4]).fit(*planted(100, 3, 4, 3, 1, seed=0))
    path = plot_layer_weights(
        probe.layer_weights, tmp_path / "plots" / "layer_weights.png", layers=probe.layers
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    assert not list(path.parent.glob("*.tmp"))  # written atomically
    assert probe.to_dict()["layers"] == [0, 2, 4]
    with pytest.raises(ValueError):
        plot_layer_weights([0.5, 0.5], tmp_path / "x.png", layers=[1])
