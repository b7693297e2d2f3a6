"""The training loop: the one place where data, views, method, optimizer and checkpoints meet.

Same code path on one CPU, one GPU and N processes under ``torchrun`` (DDP). Per optimizer step:
``accumulate`` micro-batches, each ``views = policy(images, generator)`` then
``method(views, step)`` under autocast, backward (gradient sync only on the last micro-batch),
optional clipping, the optimizer step with the learning rate of the schedule, then
``method.on_optimizer_step`` once (EMA teachers and the like).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import selfsup
from selfsup import dist
from selfsup.augment import VIEW_POLICIES
from selfsup.config import RUNTIME_KEYS, Config, ConfigError, differences, dump_config, load_config, validate
from selfsup.data import load_images
from selfsup.data.base import ImageDataset
from selfsup.encoders import ENCODERS
from selfsup.io import save_tensors_atomic, write_text_atomic
from selfsup.methods import METHODS, Method
from selfsup.sync_batchnorm import convert_sync_batchnorm
from selfsup.train import checkpoint as ckpt
from selfsup.train.knn_monitor import KNNMonitor
from selfsup.train.monitor import CollapseDetector, MetricsLogger, normalized_embedding_std, progress_bar
from selfsup.train.optim import build_optimizer, set_learning_rate
from selfsup.train.report import write_report
from selfsup.train.runtime import autocast, resolve_device, resolve_precision, seed_everything
from selfsup.train.sampler import StepSampler, view_seed
from selfsup.train.schedules import warmup_cosine


@dataclass
class RunResult:
    run_dir: Path
    step: int
    finished: bool
    summary: dict[str, Any] = field(default_factory=dict)


def build_method(config: Config) -> Method:
    """Encoder + method from the config (weights freshly initialised from the current RNG state)."""
    encoder = ENCODERS.create(config.encoder.name, **config.encoder.params)
    return METHODS.get(config.method.name)(encoder=encoder, **config.method.params)


def crop_size(config: Config, dataset: ImageDataset) -> int:
    return config.augment.size or dataset.image_size[0]


def load_training_data(config: Config, source: str | None = None) -> ImageDataset:
    data = config.data
    return load_images(
        source or data.source,
        image_size=data.image_size,
        max_samples=data.max_samples if source is None else None,
        strict=data.strict,
        cache_dir=data.cache_dir,
    )


def scaled_learning_rate(config: Config) -> float:
    scale = {"linear": config.train.batch_size / 256, "sqrt": math.sqrt(config.train.batch_size), "none": 1.0}
    return config.optim.lr * scale[config.optim.lr_scaling]


def pretrain_run(config: Config, out: str | Path, *, resume: bool = False) -> RunResult:
    """Pretrain as ``config`` says, writing everything to the run directory ``out``."""
    validate(config)
    requested = config.train.device
    device_type = (
        "cuda"
        if requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    initialised_here = dist.init_from_env(device_type)
    try:
        return _pretrain(config, Path(out), resume)
    finally:
        if initialised_here:
            dist.destroy()


def _prepare_run_dir(run_dir: Path, config: Config, resume: bool) -> Path | None:
    """Create the run directory and return the checkpoint to resume from (None: start fresh)."""
    checkpoints = run_dir / "checkpoints"
    latest = ckpt.latest_checkpoint(checkpoints) if checkpoints.exists() else None
    if latest is not None and not resume:
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoint {latest.name}); pass --resume to continue it "
            "or choose another --out"
        )
    saved = run_dir / "config.yaml"
    if latest is not None and saved.exists():
        changed = {k: v for k, v in differences(load_config(saved), config).items() if k not in RUNTIME_KEYS}
        if changed:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"cannot resume {run_dir} with a different configuration ({lines})")
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.mkdir(exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_config(config))
    dist.barrier()
    return latest


def _run_info(config: Config, device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, Any]:
    return {
        "selfsup_version": selfsup.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "seed": config.train.seed,
        "world_size": dist.world_size(),
        "device": str(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _pretrain(config: Config, run_dir: Path, resume: bool) -> RunResult:
    train = config.train
    device = resolve_device(train.device, dist.local_rank())
    amp_dtype = resolve_precision(train.precision, device)
    main = dist.is_main()
    latest = _prepare_run_dir(run_dir, config, resume)

    # Data: decoded once; with a disk cache the main process fills it before the others read it.
    if config.data.cache_dir and not main:
        dist.barrier()
    dataset = load_training_data(config)
    val = load_training_data(config, config.data.val) if config.data.val else None
    if config.data.cache_dir and main:
        dist.barrier()
    images = dataset.images
    if device.type == "cuda" and images.numel() < 4 * 2**30:
        images = images.to(device)  # small data sets live on the GPU: no loader, no host copies

    seed_everything(train.seed)  # identical initial weights on every process
    method = build_method(config)
    if train.sync_bn and dist.is_distributed():
        method = convert_sync_batchnorm(method)
    method.to(device)
    if train.channels_last:
        method.to(memory_format=torch.channels_last)
    size = crop_size(config, dataset)
    policy_name = config.augment.policy or type(method).default_view_policy
    try:
        policy = VIEW_POLICIES.create(
            policy_name, size=size, mean=config.augment.mean, std=config.augment.std, **config.augment.params
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"augment: {error}") from None
    base_lr = scaled_learning_rate(config)
    optim = config.optim
    optimizer = build_optimizer(
        optim.name,
        method,
        lr=base_lr,
        weight_decay=optim.weight_decay,
        momentum=optim.momentum,
        betas=optim.betas,
        eta=optim.eta,
    )
    model: nn.Module = method
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None
        )

    step, history = 0, {}
    if latest is not None:
        loaded = ckpt.load_checkpoint(latest)
        method.load_state_dict(loaded.model)
        optimizer.load_state_dict(loaded.optimizer_state)
        if "rng/cpu" in loaded.extra_tensors:
            torch.set_rng_state(loaded.extra_tensors["rng/cpu"])
        step, history = loaded.step, loaded.state.get("history", {})
        if loaded.state.get("world_size", dist.world_size()) != dist.world_size():
            warnings.warn(
                "resuming with a different number of processes: augmentations will differ", stacklevel=2
            )

    sampler = StepSampler(
        len(dataset),
        train.batch_size,
        seed=train.seed,
        accumulate=train.accumulate,
        world_size=dist.world_size(),
    )
    monitor = (
        KNNMonitor.build(
            dataset,
            val,
            max_samples=config.eval.monitor_samples,
            seed=train.seed,
            size=size,
            mean=config.augment.mean,
            std=config.augment.std,
            k=tuple(config.eval.knn_k),
            temperature=config.eval.knn_temperature,
            batch_size=config.eval.batch_size,
            device=device,
        )
        if main
        else None
    )
    knn_every = train.knn_every if train.knn_every is not None else max(train.steps // 5, 1)
    warmup = optim.warmup_steps if optim.warmup_steps is not None else train.steps // 10
    if warmup > train.steps:  # e.g. a recipe's 10-epoch warm-up with a short --steps
        warnings.warn(
            f"optim.warmup_steps={warmup} exceeds train.steps={train.steps}; using {train.steps}",
            stacklevel=2,
        )
        warmup = train.steps
    logger = MetricsLogger(run_dir, enabled=main)
    if main:
        info = _run_info(config, device, amp_dtype)
        info["resumed_from_step"] = step
        (run_dir / "run.json").write_text(json.dumps(info, indent=2))
        _announce(config, dataset, val, device, amp_dtype, step)
    collapse = CollapseDetector()
    generator = torch.Generator(device=device)
    stop_at = min(train.steps, step + train.stop_after) if train.stop_after else train.steps
    bar = progress_bar(train.steps, step, enabled=train.progress and main)
    window_start, window_steps, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
    run_start = time.perf_counter()
    last_logs: dict[str, float] = {}

    def save(at_step: int) -> None:
        if main:
            extra = {"rng/cpu": torch.get_rng_state()}
            epoch, position = sampler.position(at_step)
            state = {
                "history": history,
                "world_size": dist.world_size(),
                "data_epoch": epoch,
                "data_position": position,
            }
            ckpt.save_checkpoint(
                run_dir / "checkpoints",
                at_step,
                model=method.state_dict(),
                optimizer=optimizer,
                extra_tensors=extra,
                state=state,
                keep=train.keep_checkpoints,
            )
        dist.barrier()

    def run_knn(at_step: int) -> None:
        if monitor is not None:
            results = monitor(method.encoder)
            logger.log(at_step, results, kind="knn")
            history.setdefault("knn", []).append({"step": at_step, **results})
            first = next(iter(results))
            bar.write(f"step {at_step}: kNN {first} = {results[first]:.2f}%")
        dist.barrier()

    model.train()
    while step < stop_at:
        lr = warmup_cosine(step, train.steps, base_lr, warmup_steps=warmup, final=optim.final_lr)
        set_learning_rate(optimizer, lr)
        for micro in range(train.accumulate):
            batch = images[sampler.indices(step, micro, dist.rank()).to(images.device)].to(
                device, non_blocking=True
            )
            generator.manual_seed(view_seed(train.seed, step, micro, dist.rank()))
            views = policy(batch, generator)
            if train.channels_last:
                views.crops = [_channels_last(c) for c in views.crops]
            last_micro = micro == train.accumulate - 1
            no_sync = (
                model.no_sync() if dist.is_distributed() and not last_micro else contextlib.nullcontext()
            )
            with no_sync:
                with autocast(device, amp_dtype):
                    output = model(views, step)
                if not torch.isfinite(output.loss):
                    raise FloatingPointError(
                        f"loss is {output.loss.item()} at step {step}; lower optim.lr or set optim.clip_grad"
                    )
                (output.loss / train.accumulate).backward()
            loss_sum += output.loss.detach()
        grad_norm = (
            nn.utils.clip_grad_norm_(method.parameters(), optim.clip_grad)
            if optim.clip_grad is not None
            else None
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        method.on_optimizer_step(step, train.steps)
        window_steps += 1
        bar.update(1)

        if step % train.log_every == 0 or step == stop_at:
            loss = dist.all_reduce_mean(loss_sum / (window_steps * train.accumulate)).item()
            elapsed = time.perf_counter() - window_start
            throughput = window_steps * train.batch_size / max(elapsed, 1e-9)
            logs: dict[str, Any] = {"loss": loss, "lr": lr, "images_per_s": throughput}
            logs.update({k: _item(v) for k, v in output.logs.items()})
            if grad_norm is not None:
                logs["grad_norm"] = float(grad_norm)
            if output.embeddings is not None:
                logs["embedding_std"] = normalized_embedding_std(output.embeddings)
                if step > warmup:
                    collapse.update(logs["embedding_std"], step)
            logger.log(step, logs)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{throughput:.0f}", lr=f"{lr:.3g}")
            history.setdefault("loss", []).append([step, loss])
            last_logs = logs
            window_start, window_steps, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        evaluated = bool(knn_every and step % knn_every == 0 and step < train.steps)
        if evaluated:
            run_knn(step)
        saved = bool(train.checkpoint_every and step % train.checkpoint_every == 0 and step < stop_at)
        if saved:
            save(step)
        if (evaluated or saved) and window_steps == 0:
            window_start = time.perf_counter()  # throughput counts training steps only
    bar.close()

    finished = step >= train.steps
    # Every process calls run_knn (it holds a barrier).
    if finished:  # the periodic monitor skips the last step, so this is its last run
        run_knn(step)
    save(step)
    summary: dict[str, Any] = {}
    if main:
        summary = _summary(config, dataset, last_logs, history, step, time.perf_counter() - run_start)
        if finished:
            save_tensors_atomic(run_dir / "encoder.safetensors", method.encoder.state_dict())
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        write_report(run_dir, config, summary, history)
        _print_summary(summary, finished)
    logger.close()
    dist.barrier()  # every process returns only once the run directory is complete
    return RunResult(run_dir=run_dir, step=step, finished=finished, summary=summary)


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _item(value: Tensor | float) -> float:
    return value.detach().float().item() if isinstance(value, Tensor) else float(value)


def _announce(
    config: Config,
    dataset: ImageDataset,
    val: ImageDataset | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    step: int,
) -> None:
    h, w = dataset.image_size
    labels = f"{dataset.labeled_fraction:.0%} labeled" if dataset.has_labels else "no labels"
    print(
        f"selfsup pretrain: {config.method.name} / {config.encoder.name} on {config.data.source} "
        f"({len(dataset)} images {h}x{w}, {labels}); {dist.world_size()} process(es) on {device}, "
        f"{'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')}"
        + (f"; resuming at step {step}" if step else ""),
        file=sys.stderr,
    )
    for data in (dataset, val):
        if data is not None and data.skipped:
            print(f"  skipped {len(data.skipped)} unreadable input(s) in {data.source}", file=sys.stderr)


def _summary(
    config: Config,
    dataset: ImageDataset,
    logs: dict[str, Any],
    history: dict[str, Any],
    step: int,
    seconds: float,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "method": config.method.name,
        "encoder": config.encoder.name,
        "data": config.data.source,
        "images": len(dataset),
        "skipped_inputs": len(dataset.skipped),
        "steps": step,
        "final_loss": logs.get("loss"),
        "images_per_s": logs.get("images_per_s"),
        "wall_seconds": round(seconds, 1),
    }
    if history.get("knn"):
        summary.update({k: v for k, v in history["knn"][-1].items() if k != "step"})
    if dataset.skipped:
        summary["skipped_examples"] = [f"{i}: {r}" for i, r in dataset.skipped[:5]]
    return summary


def _print_summary(summary: dict[str, Any], finished: bool) -> None:
    rows = [(k, v) for k, v in summary.items() if k != "skipped_examples" and v is not None]
    width = max(len(k) for k, _ in rows)
    print("\n" + ("pretraining finished" if finished else "pretraining stopped early (resume with --resume)"))
    for key, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
