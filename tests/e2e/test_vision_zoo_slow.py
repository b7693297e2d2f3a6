"""Every image method, trained briefly on real CIFAR-10 images from its recipe at CPU scale, beats its own
randomly initialised encoder (`make test-slow`).

Each method runs its CIFAR-10 recipe (:func:`selfsup.benchmark.cpu_recipe` with ``short_run=True``: the
recipe's loss, heads, views and optimizer on a 6-layer ConvNet, or a 6-block ViT-Tiny/4, with the short-run
settings of :data:`selfsup.benchmark.SHORT_RUNS`, chosen on a validation split of CIFAR-10 train) on
``TRAIN`` training images, then is scored on ``TEST`` test images against the same encoder at the same seed
before any step: by kNN, or by the linear probe for the masked-modelling methods (whose kNN accuracy is
known to be weak: MAE's paper, sec. 4.3). bench/RESULTS.md has the same comparison at a 3-minute budget
per method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup.api import load
from selfsup.benchmark import VISION_RECIPES, cpu_recipe, encoder_label, short_run_settings
from selfsup.eval.protocols import evaluate_knn, evaluate_linear
from selfsup.train.loop import pretrain_run

TRAIN, TEST = 10000, 10000
MASKED_MODELLING = ("mae", "ijepa", "data2vec")
# One point over random features on all 10,000 test images: twice the binomial standard error of either
# score (0.5 points at 40 %); the pretrained run starts from those very weights (same seed).
MARGIN = 1.0
OPTIONS = [
    f"data.max_samples={TRAIN}",
    "train.progress=false",
    "train.knn_every=0",
    "train.precision=fp32",
    "train.device=cpu",
]


def _score(run: Path, data_dir: Path, method: str) -> float:
    model = load(run)
    train = model.load_data(str(data_dir / "train-000.tar"))
    train = train.subset(torch.arange(min(TRAIN, len(train))))
    test = model.load_data(str(data_dir / "test-000.tar"))
    test = test.subset(torch.arange(min(TEST, len(test))))
    if method in MASKED_MODELLING:
        return float(evaluate_linear(run, train, test)["top1"])
    return float(evaluate_knn(run, train, test, k=(20,))["knn_top1@20"])


_RANDOM_INIT: dict[tuple[str, str], float] = {}


def _random_init_score(method: str, data_dir: Path, out: Path) -> float:
    """The score of the method's encoder at its initial weights (shared by methods whose encoder has the same
    options: the ViT recipes keep different class-token, pooling, position and LayerScale options)."""
    config = cpu_recipe(
        method, data=str(data_dir / "train-000.tar"), steps=0, overrides=OPTIONS, short_run=True
    )
    key = (encoder_label(config), "linear" if method in MASKED_MODELLING else "knn")
    if key not in _RANDOM_INIT:
        pretrain_run(config, out)
        _RANDOM_INIT[key] = _score(out, data_dir, method)
    return _RANDOM_INIT[key]


# Methods that did not beat their random encoder on the validation split with any setting tried
# (bench/RESULTS.md, "Short-run settings for the image recipes": validation score vs the encoder at init).
# Strict: a method that starts passing fails here, so that this list only ever shrinks.
NOT_YET = {
    "data2vec": "linear 40.6 vs 40.9 on test, no LayerScale (validation 39.6 / 37.7); with it 29.0 / 28.8",
}


def _case(method: str) -> object:
    if method in NOT_YET:
        reason = f"does not yet beat random init at CPU scale: {NOT_YET[method]}"
        return pytest.param(method, marks=pytest.mark.xfail(strict=True, reason=reason))
    return method


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 560 steps plus two 10,000-image scorings: about 6 minutes alone, more if shared
@pytest.mark.parametrize("method", [_case(m) for m in VISION_RECIPES])
def test_a_short_cpu_run_beats_the_random_encoder(method: str, cifar10_dir: Path, tmp_path: Path) -> None:
    baseline = _random_init_score(method, cifar10_dir, tmp_path / "random-init")
    steps = short_run_settings(method).steps
    train = str(cifar10_dir / "train-000.tar")
    config = cpu_recipe(method, data=train, steps=steps, overrides=OPTIONS, short_run=True)
    result = pretrain_run(config, tmp_path / "run")
    assert result.finished
    score = _score(tmp_path / "run", cifar10_dir, method)
    print(f"{method}: {score:.2f} vs random init {baseline:.2f}")  # shown by `pytest -rA`
    assert score > baseline + MARGIN, f"{method}: {score:.1f} vs random init {baseline:.1f}"
