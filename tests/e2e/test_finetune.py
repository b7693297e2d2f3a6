"""Fine-tuning through the engine's loop: digits with 10 labels per class well above chance, early
stopping that stops by its rule and restores the best weights, layer-wise learning rates checked by
hand, resume 3 + 3 == 6 bit for bit, and encoder weights taken from a pretrained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfsup.api import make_config
from selfsup.build import build_encoder, build_method
from selfsup.data import load_dataset
from selfsup.errors import ConfigError
from selfsup.eval.finetune import finetune, finetune_config
from selfsup.eval.splits import stratified_draw, train_val_split
from selfsup.train import checkpoint as ckpt
from selfsup.train.loop import pretrain_run
from selfsup.train.monitor import read_metrics
from selfsup.train.validation import classifier_logits, top1_and_loss

PRETRAIN = [
    "data.source=digits:train",
    "data.image_size=16",
    "encoder=small_cnn",
    "encoder.width=8",
    "augment.params={flip_p: 0.0, blur_p: 0.0}",
    "train.progress=false",
    "train.device=cpu",
]
FAST = ["train.device=cpu", "optim.lr=0.003", "augment.params={crop_scale: [0.6, 1.0]}"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0-step run: the architecture, image size and transform of a pretrained run (random weights)."""
    out = tmp_path_factory.mktemp("source") / "run"
    pretrain_run(make_config(method="simclr", steps=0, overrides=PRETRAIN), out)
    return out


def test_ten_labels_per_class_is_well_above_chance_and_writes_the_eval_file(
    source: Path, tmp_path: Path
) -> None:
    metrics = finetune(
        source,
        "digits:train",
        "digits:test",
        out=tmp_path / "ft",
        labels_per_class=10,
        steps=80,
        batch_size=30,
        overrides=FAST,
    )
    assert metrics["top1"] > 40.0  # chance: 10% (measured: about 55%)
    saved = json.loads((tmp_path / "ft" / "eval" / "finetune.json").read_text())
    assert saved["protocol"] == "finetune" and saved["train"] == "digits:train"
    assert saved["test"] == "digits:test" and set(saved["metrics"]) == {"top1", "top5"}
    confusion = torch.tensor(saved["confusion"])
    test = load_dataset("digits:test", image_size=16)
    assert confusion.shape == (10, 10) and int(confusion.sum()) == len(test)
    assert torch.equal(confusion.sum(dim=1), torch.bincount(test.labels, minlength=10))
    assert float(confusion.diag().sum()) / len(test) * 100 == pytest.approx(saved["metrics"]["top1"])
    # The training data is the stratified draw minus its validation split: 9 + 1 per class.
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["samples"] == 90 and summary["method"] == "finetune"


def test_early_stopping_stops_by_its_rule_and_restores_the_best(source: Path, tmp_path: Path) -> None:
    config = finetune_config(
        source,
        "digits:train",
        labels_per_class=10,
        steps=60,
        batch_size=30,
        overrides=[*FAST, "optim.lr=0.02", "train.val_every=3", "train.patience=2", "train.val_fraction=0.2"],
    )
    result = pretrain_run(config, tmp_path / "ft")
    rows = read_metrics(tmp_path / "ft", kind="val")
    # The rule, replayed on the logged evaluations: best = higher top-1, or equal with lower loss.
    best, bad, stop = rows[0], 0, None
    for row in rows[1:]:
        if (row["val_top1"], -row["val_loss"]) > (best["val_top1"], -best["val_loss"]):
            best, bad = row, 0
        else:
            bad += 1
            if bad == 2:
                stop = row["step"]
                break
    assert stop is not None and stop < 60, "the test needs a run that stops early"
    assert rows[-1]["step"] == stop and result.step == stop and result.finished
    assert result.summary["stopped_early_at"] == stop and result.summary["best_step"] == best["step"]
    # Restored: encoder.safetensors is the best weights, which give the logged validation numbers again.
    best_weights = load_file(str(tmp_path / "ft" / "best.safetensors"))
    encoder = load_file(str(tmp_path / "ft" / "encoder.safetensors"))
    assert all(torch.equal(encoder[k], best_weights[f"encoder.{k}"]) for k in encoder)
    data = load_dataset("digits:train", image_size=16)
    labelled = data.subset(stratified_draw(data.labels, per_class=10, seed=0))
    val = labelled.subset(train_val_split(labelled.labels, 0.2, seed=0)[1])
    from selfsup.api import load

    model = load(tmp_path / "ft")
    method = build_method(
        config_of(tmp_path / "ft"), build_encoder(config_of(tmp_path / "ft"), data.info), data.info
    )
    method.load_state_dict(best_weights)
    logits = classifier_logits(method, val, model.transform, batch_size=256, device=torch.device("cpu"))
    assert top1_and_loss(logits, val.labels) == (best["val_top1"], pytest.approx(best["val_loss"], rel=1e-6))


def config_of(run: Path):
    from selfsup.config import load_config

    return load_config(run / "config.yaml")


def test_layer_decay_learning_rates_by_hand(source: Path, tmp_path: Path) -> None:
    config = finetune_config(
        source,
        "digits:train",
        labels_per_class=5,
        steps=2,
        batch_size=30,
        overrides=[
            "train.device=cpu",
            "method.layer_decay=0.5",
            "optim.warmup_steps=0",
            "optim.final_lr=0.001",
            "train.val_fraction=null",
        ],
    )
    pretrain_run(config, tmp_path / "ft")
    groups = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ft" / "checkpoints")).optimizer_state
    assert groups is not None
    lrs = {g["name"]: g["lr"] for g in groups["param_groups"]}
    # small_cnn: stem 0, stages 1..3, head 4 = num_layers + 1; scale = 0.5 ** (4 - layer).
    head = lrs["layer_4_decay"]
    expected = {0: 0.0625, 1: 0.125, 2: 0.25, 3: 0.5, 4: 1.0}
    for name, lr in lrs.items():
        assert lr == pytest.approx(head * expected[int(name.split("_")[1])], rel=1e-12), name
    assert head == pytest.approx(0.001)  # constant schedule: lr = final_lr = base lr
    assert sorted(lrs) == sorted(
        [
            f"layer_{i}_{k}"
            for i in range(5)
            for k in ("decay", "no_decay")
            if not (i == 4 and k == "no_decay")
        ]
        + ["layer_4_no_decay"]
    )


def test_resume_three_plus_three_equals_six(source: Path, tmp_path: Path) -> None:
    options = dict(labels_per_class=10, steps=6, batch_size=30)
    extra = [*FAST, "train.val_every=2", "train.patience=5", "train.checkpoint_every=1"]
    straight = pretrain_run(
        finetune_config(source, "digits:train", overrides=extra, **options), tmp_path / "a"
    )
    pretrain_run(
        finetune_config(source, "digits:train", overrides=[*extra, "train.stop_after=3"], **options),
        tmp_path / "b",
    )
    resumed = pretrain_run(
        finetune_config(source, "digits:train", overrides=extra, **options), tmp_path / "b", resume=True
    )
    for name in ("encoder.safetensors", "best.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert straight.summary["best_step"] == resumed.summary["best_step"]
    assert read_metrics(tmp_path / "a", kind="val") == read_metrics(tmp_path / "b", kind="val")


def test_init_from_loads_the_pretrained_encoder_and_checks_it(source: Path, tmp_path: Path) -> None:
    config = finetune_config(
        source, "digits:train", labels_per_class=5, steps=0, overrides=["train.device=cpu"]
    )
    pretrain_run(config, tmp_path / "ft")
    a = load_file(str(source / "encoder.safetensors"))
    b = load_file(str(tmp_path / "ft" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    random = finetune_config(
        source,
        "digits:train",
        labels_per_class=5,
        steps=0,
        pretrained=False,
        overrides=["train.device=cpu", "train.seed=3"],
    )
    pretrain_run(random, tmp_path / "random")
    c = load_file(str(tmp_path / "random" / "encoder.safetensors"))
    assert not torch.equal(a["stem.0.weight"], c["stem.0.weight"])
    wrong = finetune_config(
        source, "digits:train", labels_per_class=5, steps=0, overrides=["train.device=cpu", "encoder.width=4"]
    )
    with pytest.raises(ConfigError, match="same encoder"):
        pretrain_run(wrong, tmp_path / "wrong")
