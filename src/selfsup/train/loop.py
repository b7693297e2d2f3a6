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
from tqdm import tqdm

import selfsup
from selfsup import dist
from selfsup.augment import VIEW_POLICIES
from selfsup.augment.base import ViewPolicy
from selfsup.config import RUNTIME_KEYS, Config, ConfigError, differences, dump_config, load_config, validate
from selfsup.data import load_images
from selfsup.data.base import ImageDataset
from selfsup.encoders import ENCODERS
from selfsup.io import save_tensors_atomic, write_text_atomic
from selfsup.methods import METHODS, Method, MethodOutput
from selfsup.sync_batchnorm import convert_sync_batchnorm
from selfsup.train import checkpoint as ckpt
from selfsup.train.knn_monitor import KNNMonitor
from selfsup.train.monitor import (
    CollapseDetector,
    MetricsLogger,
    normalized_embedding_std,
    progress_bar,
    to_scalar,
)
from selfsup.train.optim import build_optimizer, set_learning_rate
from selfsup.train.report import announce, print_summary, summarize, write_report
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


def crop_size(config: Config, image_side: int) -> int:
    """Side of the views and of the evaluation inputs: ``augment.size``, else the decoded image side."""
    return config.augment.size or image_side


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


@dataclass
class Session:
    """Everything built before the first step, shared by the step, logging and checkpointing code."""

    config: Config
    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    dataset: ImageDataset
    images: Tensor
    method: Method
    model: nn.Module  # the method, wrapped in DDP when distributed
    policy: ViewPolicy
    optimizer: torch.optim.Optimizer
    sampler: StepSampler
    monitor: KNNMonitor | None
    logger: MetricsLogger
    base_lr: float
    warmup: int
    knn_every: int
    step: int = 0
    history: dict[str, Any] = field(default_factory=dict)


def _build_session(config: Config, run_dir: Path, resume: bool) -> Session:
    train, optim = config.train, config.optim
    device = resolve_device(train.device, dist.local_rank())
    amp_dtype = resolve_precision(train.precision, device)
    latest = _prepare_run_dir(run_dir, config, resume)

    # Data: decoded once; with a disk cache the main process fills it before the others read it.
    if config.data.cache_dir and not dist.is_main():
        dist.barrier()
    dataset = load_training_data(config)
    val = load_training_data(config, config.data.val) if config.data.val else None
    if config.data.cache_dir and dist.is_main():
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
    size = crop_size(config, dataset.image_size[0])
    try:
        policy = VIEW_POLICIES.create(
            config.augment.policy or type(method).default_view_policy,
            size=size,
            mean=config.augment.mean,
            std=config.augment.std,
            **config.augment.params,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"augment: {error}") from None
    base_lr = scaled_learning_rate(config)
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
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(method, device_ids=device_ids)
    sampler = StepSampler(
        len(dataset),
        train.batch_size,
        seed=train.seed,
        accumulate=train.accumulate,
        world_size=dist.world_size(),
    )
    monitor = None
    if dist.is_main():
        monitor = KNNMonitor.build(
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
    warmup = optim.warmup_steps if optim.warmup_steps is not None else train.steps // 10
    if warmup > train.steps:  # e.g. a recipe's 10-epoch warm-up with a short --steps
        warnings.warn(
            f"optim.warmup_steps={warmup} exceeds train.steps={train.steps}; using {train.steps}",
            stacklevel=2,
        )
        warmup = train.steps
    session = Session(
        config=config,
        run_dir=run_dir,
        device=device,
        amp_dtype=amp_dtype,
        dataset=dataset,
        images=images,
        method=method,
        model=model,
        policy=policy,
        optimizer=optimizer,
        sampler=sampler,
        monitor=monitor,
        logger=MetricsLogger(run_dir, enabled=dist.is_main()),
        base_lr=base_lr,
        warmup=warmup,
        knn_every=train.knn_every if train.knn_every is not None else max(train.steps // 5, 1),
    )
    if latest is not None:
        _restore(session, latest)
    if dist.is_main():
        info = _run_info(config, device, amp_dtype)
        info["resumed_from_step"] = session.step
        (run_dir / "run.json").write_text(json.dumps(info, indent=2))
        announce(config, dataset, val, device, amp_dtype, session.step)
    return session


def _restore(session: Session, checkpoint: Path) -> None:
    loaded = ckpt.load_checkpoint(checkpoint)
    session.method.load_state_dict(loaded.model)
    session.optimizer.load_state_dict(loaded.optimizer_state)
    if "rng/cpu" in loaded.extra_tensors:
        torch.set_rng_state(loaded.extra_tensors["rng/cpu"])
    session.step, session.history = loaded.step, loaded.state.get("history", {})
    if loaded.state.get("world_size", dist.world_size()) != dist.world_size():
        warnings.warn(
            "resuming with a different number of processes: augmentations will differ", stacklevel=2
        )


def _save(session: Session) -> None:
    """Checkpoint the current step (main process), then wait for it on every process."""
    if dist.is_main():
        epoch, position = session.sampler.position(session.step)
        state = {
            "history": session.history,
            "world_size": dist.world_size(),
            "data_epoch": epoch,
            "data_position": position,
        }
        ckpt.save_checkpoint(
            session.run_dir / "checkpoints",
            session.step,
            model=session.method.state_dict(),
            optimizer=session.optimizer,
            extra_tensors={"rng/cpu": torch.get_rng_state()},
            state=state,
            keep=session.config.train.keep_checkpoints,
        )
    dist.barrier()


def _run_knn(session: Session, bar: tqdm) -> None:
    """The kNN monitor (main process); every process calls this, since it holds a barrier."""
    if session.monitor is not None:
        results = session.monitor(session.method.encoder)
        session.logger.log(session.step, results, kind="knn")
        session.history.setdefault("knn", []).append({"step": session.step, **results})
        first = next(iter(results))
        bar.write(f"step {session.step}: kNN {first} = {results[first]:.2f}%")
    dist.barrier()


def _optimizer_step(session: Session, lr: float) -> tuple[MethodOutput, Tensor, Tensor | None]:
    """One optimizer step over ``accumulate`` micro-batches; returns the last output, the summed
    micro-batch losses and the gradient norm (when clipping)."""
    s, train = session, session.config.train
    rank, step = dist.rank(), session.step
    set_learning_rate(s.optimizer, lr)
    loss_sum = torch.zeros((), device=s.device)
    for micro in range(train.accumulate):
        indices = s.sampler.indices(step, micro, rank).to(s.images.device)
        batch = s.images[indices].to(s.device, non_blocking=True)
        generator = torch.Generator(device=s.device).manual_seed(view_seed(train.seed, step, micro, rank))
        views = s.policy(batch, generator)
        if train.channels_last:
            views.crops = [_channels_last(c) for c in views.crops]
        last_micro = micro == train.accumulate - 1
        # Gradients are averaged across processes once, on the last micro-batch.
        no_sync = s.model.no_sync() if dist.is_distributed() and not last_micro else contextlib.nullcontext()
        with no_sync:
            with autocast(s.device, s.amp_dtype):
                output = s.model(views, step)
            if not torch.isfinite(output.loss):
                raise FloatingPointError(
                    f"loss is {output.loss.item()} at step {step}; lower optim.lr or set optim.clip_grad"
                )
            (output.loss / train.accumulate).backward()
        loss_sum += output.loss.detach()
    clip = s.config.optim.clip_grad
    grad_norm = nn.utils.clip_grad_norm_(s.method.parameters(), clip) if clip is not None else None
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    s.method.on_optimizer_step(s.step, train.steps)
    return output, loss_sum, grad_norm


class _LogWindow:
    """Loss and throughput averaged over the steps since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.loss_sum = time.perf_counter(), 0, torch.zeros((), device=self.device)

    def add(self, loss_sum: Tensor) -> None:
        self.steps += 1
        self.loss_sum += loss_sum  # no .item() here: a host sync per step would stall the GPU


def _pretrain(config: Config, run_dir: Path, resume: bool) -> RunResult:
    s = _build_session(config, run_dir, resume)
    train, optim = config.train, config.optim
    collapse = CollapseDetector()
    stop_at = min(train.steps, s.step + train.stop_after) if train.stop_after else train.steps
    bar = progress_bar(train.steps, s.step, enabled=train.progress and dist.is_main())
    window, run_start, last_logs = _LogWindow(s.device), time.perf_counter(), {}
    s.model.train()
    while s.step < stop_at:
        lr = warmup_cosine(s.step, train.steps, s.base_lr, warmup_steps=s.warmup, final=optim.final_lr)
        output, loss_sum, grad_norm = _optimizer_step(s, lr)
        window.add(loss_sum)
        bar.update(1)
        step = s.step
        if step % train.log_every == 0 or step == stop_at:
            loss = dist.all_reduce_mean(window.loss_sum / (window.steps * train.accumulate)).item()
            throughput = window.steps * train.batch_size / max(time.perf_counter() - window.start, 1e-9)
            logs: dict[str, Any] = {"loss": loss, "lr": lr, "images_per_s": throughput}
            logs.update({k: to_scalar(v) for k, v in output.logs.items()})
            if grad_norm is not None:
                logs["grad_norm"] = float(grad_norm)
            if output.embeddings is not None:
                logs["embedding_std"] = normalized_embedding_std(output.embeddings)
                if step > s.warmup:
                    collapse.update(logs["embedding_std"], step)
            s.logger.log(step, logs)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{throughput:.0f}", lr=f"{lr:.3g}")
            s.history.setdefault("loss", []).append([step, loss])
            last_logs = logs
            window.reset()
        evaluated = bool(s.knn_every and step % s.knn_every == 0 and step < train.steps)
        if evaluated:
            _run_knn(s, bar)
        saved = bool(train.checkpoint_every and step % train.checkpoint_every == 0 and step < stop_at)
        if saved:
            _save(s)
        if (evaluated or saved) and window.steps == 0:
            window.reset()  # throughput counts training steps only
    bar.close()

    finished = s.step >= train.steps
    if finished:  # the periodic monitor skips the last step, so this is its last run
        _run_knn(s, bar)
    _save(s)
    summary: dict[str, Any] = {}
    if dist.is_main():
        summary = summarize(config, s.dataset, last_logs, s.history, s.step, time.perf_counter() - run_start)
        if finished:
            save_tensors_atomic(run_dir / "encoder.safetensors", s.method.encoder.state_dict())
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        write_report(run_dir, config, summary, s.history)
        print_summary(summary, finished)
    s.logger.close()
    dist.barrier()  # every process returns only once the run directory is complete
    return RunResult(run_dir=run_dir, step=s.step, finished=finished, summary=summary)


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
