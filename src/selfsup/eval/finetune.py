"""Fine-tuning evaluation: the encoder of a run (or a random one) fine-tuned on labels, then tested.

``finetune(run_dir, train_spec, test_spec, out=...)`` builds the Config of a fine-tuning run — the
pretrained run's encoder (name and options), image size and input transform; the ``finetune`` method
(linear head, layer-wise learning-rate decay); the labelled subset (``labels_per_class`` or
``label_fraction`` drawn with ``seed``); a validation split for early stopping — and trains it with
the engine's loop (:func:`selfsup.train.loop.pretrain_run`: resume, DDP, precision). The best weights
on the validation split are then evaluated on ``test_spec`` and written to ``OUT/eval/finetune.json``
(``protocol``, ``train``, ``test``, ``metrics`` top1/top5, ``classes``, ``confusion``, ``per_class``).

Defaults (any of them can be overridden with ``overrides``): AdamW, lr 1e-3 without batch scaling,
weight decay 0.05, layer decay 0.75, 10% linear warm-up then cosine to 0 (the shape of MAE's
fine-tuning recipe, with a learning rate for small encoders and few steps), validation every 5% of
the steps with a patience of 5 evaluations. The pretrained run's geometric augmentation options
(``crop_scale``, ``crop_ratio``, ``flip_p``, ``rotation``) are kept: they say which changes the data
tolerates (e.g. no flips for digits). ``run_dir=None`` (or ``pretrained=False``) fine-tunes a
randomly initialised encoder, the baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from selfsup.build import build_encoder, build_method, load_data, load_inputs
from selfsup.config import Config, load_config
from selfsup.errors import ConfigError
from selfsup.io import write_text_atomic
from selfsup.methods import finetune as _finetune  # noqa: F401  (registers the method)
from selfsup.train import checkpoint as ckpt
from selfsup.train.loop import pretrain_run
from selfsup.train.runtime import resolve_device
from selfsup.train.validation import BEST_FILE, classifier_logits

GEOMETRIC_OPTIONS = ("crop_scale", "crop_ratio", "flip_p", "rotation")

DEFAULTS: dict[str, Any] = {
    "method.layer_decay": 0.75,
    "optim.name": "adamw",
    "optim.lr": 1e-3,
    "optim.lr_scaling": "none",
    "optim.weight_decay": 0.05,
    "train.val_fraction": 0.1,
    "train.patience": 5,
    "train.knn_every": 0,
    "train.progress": False,
    "eval.online_probe": False,
}


def finetune_config(
    run_dir: str | Path | None,
    train_spec: str,
    *,
    label_fraction: float | None = None,
    labels_per_class: int | None = None,
    seed: int = 0,
    steps: int = 300,
    batch_size: int = 64,
    pretrained: bool = True,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """The Config of a fine-tuning run (see the module docstring); ``overrides`` apply last."""
    from selfsup.api import make_config

    settings: dict[str, Any] = {
        "data.source": train_spec,
        "method.name": "finetune",
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "train.val_every": max(steps // 20, 1),
        "train.checkpoint_every": max(steps // 5, 1),
        "data.label_fraction": label_fraction,
        "data.labels_per_class": labels_per_class,
        "data.label_seed": seed,
        **DEFAULTS,
    }
    if run_dir is not None:
        source = load_config(Path(run_dir) / "config.yaml")
        settings.update(
            {
                "encoder.name": source.encoder.name,
                "encoder.params": dict(source.encoder.params),
                "data.image_size": source.data.image_size,
                "augment.size": source.augment.size,
                "augment.mean": source.augment.mean,
                "augment.std": source.augment.std,
                "train.init_from": str(run_dir) if pretrained else None,
            }
        )
        kept = {k: v for k, v in source.augment.params.items() if k in GEOMETRIC_OPTIONS}
        if kept:
            settings["augment.params"] = kept
    config = make_config(overrides=settings)
    if overrides:
        config = make_config(config, overrides=overrides)
    return config


def finetune(
    run_dir: str | Path | None,
    train_spec: str,
    test_spec: str,
    *,
    out: str | Path,
    label_fraction: float | None = None,
    labels_per_class: int | None = None,
    seed: int = 0,
    steps: int = 300,
    batch_size: int = 64,
    pretrained: bool = True,
    resume: bool = False,
    overrides: list[str] | dict[str, Any] | None = None,
) -> dict[str, float]:
    """Fine-tune, evaluate the best weights on ``test_spec``, write ``OUT/eval/finetune.json`` and return
    its metrics (top-1 / top-5 in %), as every protocol does."""
    config = finetune_config(
        run_dir,
        train_spec,
        label_fraction=label_fraction,
        labels_per_class=labels_per_class,
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        pretrained=pretrained,
        overrides=overrides,
    )
    result = pretrain_run(config, out, resume=resume)
    out = Path(out)
    metrics, extra = evaluate_classifier(out, test_spec)
    record: dict[str, Any] = {
        "protocol": "finetune",
        "train": train_spec,
        "test": test_spec,
        "metrics": metrics,
        **extra,
        "init": str(run_dir) if run_dir is not None and pretrained else None,
        "label_fraction": label_fraction,
        "labels_per_class": labels_per_class,
        "seed": seed,
        "steps": result.step,
        "best_step": result.summary.get("best_step"),
        "val_top1": result.summary.get("best_val_top1"),
    }
    write_text_atomic(out / "eval" / "finetune.json", json.dumps(record, indent=2) + "\n")
    return metrics


def _classifier_weights(run: Path) -> dict[str, torch.Tensor]:
    """The best weights (``best.safetensors``), else those of the latest checkpoint."""
    if (run / BEST_FILE).exists():
        return load_file(str(run / BEST_FILE))
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    if latest is None:
        raise ConfigError(f"{run} holds no fine-tuned weights (no {BEST_FILE}, no checkpoint)")
    return ckpt.load_checkpoint(latest).model


def evaluate_classifier(run: Path, test_spec: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Top-1 / top-5 (%) of a fine-tuning run's classifier on ``test_spec``, with the confusion matrix
    (rows = true class), the class names and the per-class accuracy."""
    config = load_config(run / "config.yaml")
    info, transform = load_inputs(run)
    method = build_method(config, build_encoder(config, info), info)
    method.load_state_dict(_classifier_weights(run))
    test = load_data(config, test_spec)
    if not test.has_labels:
        raise ConfigError(f"fine-tuning is tested on labels, but {test_spec!r} has none")
    device = resolve_device(config.train.device)
    method.to(device)
    logits = classifier_logits(method, test, transform, batch_size=config.eval.batch_size, device=device)
    keep = test.labels.cpu() >= 0
    logits, labels = logits[keep], test.labels.cpu()[keep]
    num_classes = logits.shape[1]
    metrics = {"top1": 100.0 * float((logits.argmax(1) == labels).double().mean())}
    if num_classes > 5:
        top5 = logits.topk(5, dim=1).indices
        metrics["top5"] = 100.0 * float((top5 == labels[:, None]).any(dim=1).double().mean())
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((labels, logits.argmax(1)), torch.ones_like(labels), accumulate=True)
    totals = confusion.sum(dim=1).clamp_min(1)
    per_class = (100.0 * confusion.diag().double() / totals).tolist()
    classes = list(info.classes) if info.classes else [str(c) for c in range(num_classes)]
    return metrics, {
        "classes": classes,
        "confusion": confusion.tolist(),
        "per_class": {"accuracy": per_class},
    }
