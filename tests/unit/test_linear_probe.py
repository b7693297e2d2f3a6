"""Linear probe (DINOv2-style grid of jointly trained heads) against scikit-learn on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score

from selfsup.errors import DataError
from selfsup.eval.base import PROBES
from selfsup.eval.linear import LinearProbe, Standardizer, epoch_batches, train_linear_heads
from selfsup.eval.splits import train_val_split


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = torch.tensor(x, dtype=torch.float32)[order], torch.tensor(y)[order]
    return x[:1300], y[:1300], x[1300:], y[1300:]


def _objective(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, wd: float) -> float:
    """mean softmax cross-entropy + wd / 2 ||W||^2, in float64 (sklearn's objective divided by C * N)."""
    logits = x @ weight + bias
    logits -= logits.max(axis=1, keepdims=True)
    nll = np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y]
    return float(nll.mean() + wd / 2 * (weight**2).sum())


def test_registered() -> None:
    assert PROBES.get("linear") is LinearProbe
    assert isinstance(PROBES.create("linear", epochs=3), LinearProbe)


def test_single_head_reaches_logistic_regression_objective(digits) -> None:
    x, y, x_test, y_test = digits
    wd = 1e-2
    probe = LinearProbe(learning_rates=0.2, weight_decays=wd, epochs=200).fit(x, y)
    scaler, weight, bias = probe._head
    xs = scaler(x).double().numpy()
    reference = LogisticRegression(C=1 / (wd * len(y)), max_iter=10_000, tol=1e-10).fit(xs, y.numpy())
    ours = _objective(weight.double().numpy(), bias.double().numpy(), xs, y.numpy(), wd)
    best = _objective(reference.coef_.T, reference.intercept_, xs, y.numpy(), wd)
    assert best <= ours <= best * (1 + 2e-3)  # within 0.2% of the optimum
    ref_acc = 100 * reference.score(scaler(x_test).double().numpy(), y_test.numpy())
    assert abs(probe.evaluate(x_test, y_test)["top1"] - ref_acc) <= 1.0
    assert probe.selected["val_samples"] == 0  # one setting: nothing to select, no split


def test_default_grid_matches_best_logistic_regression_on_the_same_split(digits) -> None:
    x, y, x_test, y_test = digits
    probe = LinearProbe().fit(x, y)
    assert len(probe.grid) == 13 * 4 and probe.selected["refit"]
    train, val = train_val_split(y, 0.1, seed=0)
    assert probe.selected["val_samples"] == val.numel()
    scaler = Standardizer.fit(x[train])
    scores = {}
    for c in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        model = LogisticRegression(C=c, max_iter=5000).fit(scaler(x[train]).numpy(), y[train].numpy())
        scores[c] = model.score(scaler(x[val]).numpy(), y[val].numpy())
    best = max(scores, key=scores.get)
    full = Standardizer.fit(x)
    reference = LogisticRegression(C=best, max_iter=5000).fit(full(x).numpy(), y.numpy())
    ref_acc = 100 * reference.score(full(x_test).numpy(), y_test.numpy())
    metrics = probe.evaluate(x_test, y_test)
    assert abs(metrics["top1"] - ref_acc) <= 2.0
    assert set(metrics) == {"top1", "top5", "balanced_accuracy"}
    assert probe.last_confusion is not None and int(probe.last_confusion.sum()) == len(y_test)
    assert torch.equal(probe.predict(x_test), probe.last_predictions)


def test_joint_training_equals_training_each_head_alone() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(150, 12, generator=g), torch.randint(0, 4, (150,), generator=g)
    lrs, wds = torch.tensor([0.01, 0.1, 0.5, 0.1]), torch.tensor([0.0, 1e-3, 1e-2, 1e-1])
    batches = epoch_batches(150, 32, 5, seed=0)
    kw = {"num_outputs": 4, "batches": batches, "classification": True}
    weight, bias = train_linear_heads(x, y, learning_rates=lrs, weight_decays=wds, **kw)
    for h in range(4):
        w1, b1 = train_linear_heads(x, y, learning_rates=lrs[h : h + 1], weight_decays=wds[h : h + 1], **kw)
        torch.testing.assert_close(weight[:, h], w1[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bias[h], b1[0], rtol=1e-5, atol=1e-6)


def test_one_step_matches_a_hand_computed_sgd_step() -> None:
    # From zero weights, the first step is W = -lr * (X^T (softmax(0) - onehot) / B).
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, -1.0]])
    y = torch.tensor([0, 1, 1])
    weight, bias = train_linear_heads(
        x,
        y,
        num_outputs=2,
        learning_rates=torch.tensor([0.3]),
        weight_decays=torch.tensor([0.5]),
        batches=[torch.arange(3)],
        classification=True,
    )
    grad = (torch.full((3, 2), 0.5) - torch.nn.functional.one_hot(y, 2)) / 3
    torch.testing.assert_close(weight[:, 0], -0.3 * (x.T @ grad))
    torch.testing.assert_close(bias[0], -0.3 * grad.sum(0))


def test_selection_never_sees_the_test_set(digits) -> None:
    x, y, x_test, y_test = digits
    probe = LinearProbe(learning_rates=(0.01, 0.1), weight_decays=(0.0, 1e-2), epochs=10)
    probe.fit(x, y)
    selected, grid = dict(probe.selected), [dict(e) for e in probe.grid]
    head = [t.clone() for t in (probe._head[1], probe._head[2])]
    shuffled = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(5))]
    probe.evaluate(x_test, shuffled)
    assert probe.selected == selected and probe.grid == grid
    assert torch.equal(probe._head[1], head[0]) and torch.equal(probe._head[2], head[1])
    again = LinearProbe(learning_rates=(0.01, 0.1), weight_decays=(0.0, 1e-2), epochs=10).fit(x, y)
    assert again.grid == grid and torch.equal(again._head[1], head[0])  # seeded: the same every run


def test_planted_informative_feature_set_is_selected() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (300,), generator=g)
    signal = torch.randn(300, 8, generator=g) + 3.0 * torch.nn.functional.one_hot(y, 8).float()
    sets = {"noise": torch.randn(300, 16, generator=g), "signal": signal}
    probe = LinearProbe(learning_rates=(0.01, 0.1), weight_decays=(0.0,), epochs=20).fit(sets, y)
    assert probe.selected["features"] == "signal"
    assert {e["features"] for e in probe.grid} == {"noise", "signal"} and len(probe.grid) == 4
    assert probe.evaluate(sets, y)["top1"] > 95.0
    assert probe.evaluate({"signal": signal}, y)["top1"] > 95.0  # only the selected set is needed
    with pytest.raises(ValueError, match="missing"):
        probe.evaluate({"noise": sets["noise"]}, y)
    with pytest.raises(ValueError, match="several feature sets"):
        probe.evaluate(signal, y)


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_matches_ridge(outputs: int) -> None:
    g = torch.Generator().manual_seed(outputs)
    x = torch.randn(400, 10, generator=g) * torch.linspace(0.5, 5.0, 10)
    target = x @ torch.randn(10, outputs, generator=g) + 0.5 * torch.randn(400, outputs, generator=g) + 7.0
    target = target.squeeze(1) if outputs == 1 else target
    x_test, x = x[300:], x[:300]
    t_test, target = target[300:], target[:300]
    wd = 1e-2
    probe = LinearProbe(learning_rates=0.1, weight_decays=wd, epochs=100).fit(x, target)
    assert probe.predict(x_test).shape == t_test.shape
    scaler = Standardizer.fit(x)
    # wd on standardized targets = Ridge(alpha = wd * N) per output on the original targets.
    ridge = Ridge(alpha=wd * len(x)).fit(scaler(x).numpy(), target.numpy())
    expected = r2_score(t_test.numpy(), ridge.predict(scaler(x_test).numpy()))
    metrics = probe.evaluate(x_test, t_test)
    assert metrics["r2"] == pytest.approx(expected, abs=5e-3)
    grid = LinearProbe(learning_rates=(0.01, 0.1), weight_decays=(0.0, 1e-2), epochs=30).fit(x, target)
    assert "val_r2" in grid.selected and grid.evaluate(x_test, t_test)["r2"] > expected - 0.02


def test_unlabelled_samples_are_ignored() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    extra = torch.randn(30, 6, generator=g) * 100.0  # would move the standardization if used
    options = {"learning_rates": (0.05, 0.5), "weight_decays": (0.0,), "epochs": 5}
    a = LinearProbe(**options).fit(x, y)
    b = LinearProbe(**options).fit(torch.cat([x, extra]), torch.cat([y, torch.full((30,), -1)]))
    assert a.grid == b.grid
    torch.testing.assert_close(a.scores(x), b.scores(x))
    with_unknown = torch.cat([y[:10], torch.full((5,), -1)])
    assert a.evaluate(torch.cat([x[:10], extra[:5]]), with_unknown) == a.evaluate(x[:10], y[:10])


def test_diverged_heads_are_never_selected() -> None:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(200, 5, generator=g), torch.randint(0, 2, (200,), generator=g)
    # lr * wd = 100: each step multiplies the weights by about -99, so that head overflows to inf/NaN.
    probe = LinearProbe(learning_rates=(100.0, 0.1), weight_decays=(1.0,), epochs=40).fit(x, y)
    assert probe.grid[0]["val_top1"] is None and probe.selected["lr"] == 0.1
    assert probe.grid[1]["val_top1"] is not None
    with pytest.raises(DataError, match="diverged"):
        LinearProbe(learning_rates=(100.0, 200.0), weight_decays=(1.0,), epochs=40).fit(x, y)


def test_errors_are_clear() -> None:
    x, y = torch.randn(40, 4), torch.arange(40) % 2
    probe = LinearProbe(epochs=2)
    with pytest.raises(ValueError, match="labels must be"):
        probe.fit(x, y[:10])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        probe.fit(torch.randn(40), y)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        probe.fit(bad, y)
    with pytest.raises(DataError, match="at least 2 classes"):
        probe.fit(x, torch.zeros(40, dtype=torch.long))
    with pytest.raises(DataError, match="validation split"):
        probe.fit(x[:2], torch.tensor([0, 1]))  # one sample per class: nothing to validate on
    with pytest.raises(RuntimeError, match="before fit"):
        probe.evaluate(x, y)
    probe.fit(x, y)
    with pytest.raises(ValueError, match="width"):
        probe.evaluate(torch.randn(5, 3), y[:5])
    with pytest.raises(ValueError, match="task must be"):
        LinearProbe(task="ranking")
