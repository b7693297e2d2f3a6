"""The training loop: the one place where data, views, method, optimizer and checkpoints meet.

Same code path for every modality, on one CPU, one GPU and N processes under ``torchrun`` (DDP).
Per optimizer step ``s``: ``accumulate`` micro-batches, each ``batch = dataset.batch(indices)``
(decoded ahead by the prefetching loader when streaming), ``views = policy(batch, generator)``,
``method(views, StepInfo(s, steps))`` under autocast and backward (gradient sync only on the last
micro-batch); then a check that the loss was finite on every process, ``before_optimizer_step``,
optional clipping, the optimizer step with the scheduled learning rate, and ``on_optimizer_step``
once (EMA teachers and the like). What is built before the first step comes from
:mod:`selfsup.build`; the loop knows no modality.

Two optional evaluators ride along, each in its own module with a small hook here: the online
linear probe (:mod:`selfsup.train.online_probe`, fed ``MethodOutput.features`` after every
micro-batch and stepped after the method's optimizer step) and validation with early stopping for
classifier methods (:mod:`selfsup.train.validation`, after the step's logging, before its
checkpoint). Both save their state in the checkpoints, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

import selfsup
from selfsup import dist
from selfsup.augment.base import InputTransform, ViewPolicy
from selfsup.build import (
    INPUTS_FILE,
    build_encoder,
    build_method,
    build_policy,
    fit_transform,
    init_encoder_from,
    labelled_subset,
    load_data,
    load_inputs,
    resolve_components,
    save_inputs,
)
from selfsup.config import RUNTIME_KEYS, Config, differences, dump_config, load_config, validate
from selfsup.data.audio import AudioDataset, clip_lengths
from selfsup.data.base import Batch, Dataset, InMemoryDataset
from selfsup.data.loader import PrefetchLoader, default_depth, default_workers
from selfsup.errors import CheckpointError, ConfigError, DataError
from selfsup.io import save_tensors_atomic, write_text_atomic
from selfsup.methods import Method, MethodOutput, StepInfo
from selfsup.modalities import get_modality
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
from selfsup.train.online_probe import OnlineProbe
from selfsup.train.optim import build_optimizer, set_learning_rate
from selfsup.train.report import announce, print_summary, summarize, write_report
from selfsup.train.runtime import autocast, resolve_device, resolve_precision, seed_everything
from selfsup.train.sampler import DurationSampler, StepSampler, view_seed
from selfsup.train.schedules import warmup_cosine
from selfsup.train.validation import Validation

# In-memory data sets smaller than this live on the GPU: no loader, no host copies.
GPU_RESIDENT_BYTES = 4 * 2**30


@dataclass
class RunResult:
    run_dir: Path
    step: int
    finished: bool
    summary: dict[str, Any] = field(default_factory=dict)


def scaled_learning_rate(config: Config) -> float:
    scale = {"linear": config.train.batch_size / 256, "sqrt": math.sqrt(config.train.batch_size), "none": 1.0}
    return config.optim.lr * scale[config.optim.lr_scaling]


def pretrain_run(config: Config, out: str | Path, *, resume: bool = False) -> RunResult:
    """Pretrain as ``config`` says, writing everything to the run directory ``out``."""
    validate(config)
    if not config.data.source:
        raise ConfigError(
            "no data to pretrain on: pass --data SPEC (e.g. --data digits:train, scikit-learn's bundled "
            "digits), or a recipe that sets data.source"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; the run directory must be a new or existing folder")
    requested = config.train.device
    device_type = (
        "cuda"
        if requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    initialised_here = dist.init_from_env(device_type)
    try:
        return _pretrain(config, out, resume)
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
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoints.mkdir(exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError) as error:
            raise ConfigError(f"cannot create the run directory {run_dir}: {error}") from None
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
    dataset: Dataset
    transform: InputTransform
    method: Method
    model: nn.Module  # the method, wrapped in DDP when distributed
    policy: ViewPolicy
    optimizer: torch.optim.Optimizer
    sampler: StepSampler | DurationSampler | None  # None for a 0-step run
    monitor: KNNMonitor | None
    base_lr: float
    warmup: int
    knn_every: int
    probe: OnlineProbe | None = None
    validation: Validation | None = None
    step: int = 0
    history: dict[str, Any] = field(default_factory=dict)
    logger: MetricsLogger | None = None
    batches: Iterator[Batch] | None = None


def _load_training_data(config: Config) -> tuple[Dataset, Dataset | None]:
    """Training and monitor data; with a disk cache the main process fills it before the others read it.

    The training data is the labelled draw of ``data.labels_per_class`` / ``data.label_fraction`` when
    one is set."""
    if config.data.cache_dir and not dist.is_main():
        dist.barrier()
    dataset = labelled_subset(config, load_data(config))
    val = load_data(config, config.data.val) if config.data.val else None
    if config.data.cache_dir and dist.is_main():
        dist.barrier()
    if val is not None and val.info.modality != dataset.info.modality:
        raise DataError(
            f"data.val holds {val.info.modality} samples but the training data holds {dataset.info.modality}"
        )
    return dataset, val


def _carve_validation(config: Config, dataset: Dataset) -> tuple[Dataset, Dataset | None]:
    """``(training part, validation split)`` for ``train.val_fraction`` (None when unset or when the labels
    are too few for a split: then the run trains for its steps without early stopping, with a warning)."""
    fraction = config.train.val_fraction
    if fraction is None:
        return dataset, None
    from selfsup.eval.splits import train_val_split

    try:
        train, val = train_val_split(dataset.labels, fraction, seed=config.train.seed)
    except DataError as error:
        warnings.warn(f"no validation split, so no early stopping: {error}", stacklevel=2)
        return dataset, None
    return dataset.subset(train), dataset.subset(val)


def _input_transform(config: Config, run_dir: Path, dataset: Dataset, resuming: bool) -> InputTransform:
    """Fitted (or configured) once when a run starts and stored in the run; a resumed run reads it back.
    A run that starts from another run's encoder (``train.init_from``) takes that run's transform."""
    if resuming and (run_dir / INPUTS_FILE).exists():
        return load_inputs(run_dir)[1]
    if config.train.init_from:
        info, transform = load_inputs(Path(config.train.init_from))
        if info.modality != dataset.info.modality:
            raise ConfigError(
                f"train.init_from: {config.train.init_from} was trained on {info.modality} data, "
                f"but this run's data holds {dataset.info.modality} samples"
            )
    else:
        transform = fit_transform(config, dataset)
    if dist.is_main():
        save_inputs(run_dir, dataset.info, transform)
    return transform


def _build_model(
    config: Config,
    dataset: Dataset,
    transform: InputTransform,
    run_dir: Path,
    device: torch.device,
    fresh: bool,
) -> tuple[Method, nn.Module]:
    """The method (its encoder initialised from ``train.init_from`` on a fresh run), on ``device``, and the
    module the step calls (the method wrapped in DDP when distributed)."""
    train = config.train
    seed_everything(train.seed)  # identical initial weights on every process
    encoder = build_encoder(config, dataset.info)
    method = build_method(
        config, encoder, dataset.info, dataset=dataset, transform=transform, run_dir=run_dir
    )
    if train.init_from and fresh:
        init_encoder_from(train.init_from, config, method.encoder)
    if train.sync_bn and dist.is_distributed():
        method = convert_sync_batchnorm(method)
    method.to(device)
    if train.channels_last and dataset.info.modality == "image":
        method.to(memory_format=torch.channels_last)
    model: nn.Module = method
    if dist.is_distributed():
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(method, device_ids=device_ids, **type(method).ddp_options)
    return method, model


def _build_sampler(
    config: Config, dataset: Dataset, policy: ViewPolicy
) -> StepSampler | DurationSampler | None:
    """The step-to-indices map (None for a 0-step run): ``train.batch_size`` samples per step, or, for
    audio with ``data.batch_seconds``, batches of clips sized by the padded duration of their views (a
    clip longer than the policy's crop counts as the crop; one batch per micro-batch of each process);
    a batch larger than the data is a clear error."""
    train = config.train
    if train.steps <= 0:
        return None
    seconds = config.data.batch_seconds
    if seconds:  # None or 0: batches of train.batch_size samples
        lengths, rate = _view_lengths(dataset, policy), dataset.info.sample_rate
        if lengths is None or not rate:
            modality = dataset.info.modality
            raise ConfigError(
                f"data.batch_seconds sizes batches of audio clips, but the data holds {modality} samples; "
                "unset it and use train.batch_size"
            )
        if isinstance(seconds, bool) or not seconds > 0:
            raise ConfigError(f"data.batch_seconds must be > 0 seconds (or null), got {seconds!r}")
        try:
            return DurationSampler(
                lengths,
                round(seconds * rate),
                seed=train.seed,
                accumulate=train.accumulate,
                world_size=dist.world_size(),
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
    try:
        return StepSampler(
            len(dataset),
            train.batch_size,
            seed=train.seed,
            accumulate=train.accumulate,
            world_size=dist.world_size(),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _warmup_steps(config: Config) -> int:
    train, optim = config.train, config.optim
    warmup = optim.warmup_steps if optim.warmup_steps is not None else train.steps // 10
    if warmup > train.steps:  # e.g. a recipe's 10-epoch warm-up with a short --steps
        warnings.warn(
            f"optim.warmup_steps={warmup} exceeds train.steps={train.steps}; using {train.steps}",
            stacklevel=3,
        )
        warmup = train.steps
    return warmup


def _build_monitor(
    config: Config, dataset: Dataset, val: Dataset | None, transform: InputTransform, device: torch.device
) -> KNNMonitor | None:
    if not dist.is_main():
        return None
    return KNNMonitor.build(
        dataset,
        val,
        max_samples=config.eval.monitor_samples,
        seed=config.train.seed,
        transform=transform,
        k=tuple(config.eval.knn_k),
        temperature=config.eval.knn_temperature,
        batch_size=config.eval.batch_size,
        device=device,
    )


def _build_session(config: Config, run_dir: Path, resume: bool) -> Session:
    train, optim = config.train, config.optim
    device = resolve_device(train.device, dist.local_rank())
    amp_dtype = resolve_precision(train.precision, device)
    dataset, val = _load_training_data(config)
    dataset, val_split = _carve_validation(config, dataset)
    config = resolve_components(config, dataset.info)
    latest = _prepare_run_dir(run_dir, config, resume)
    transform = _input_transform(config, run_dir, dataset, latest is not None)
    resident = isinstance(dataset, InMemoryDataset | AudioDataset)
    if device.type == "cuda" and resident and dataset.nbytes < GPU_RESIDENT_BYTES:
        dataset = dataset.to(device)
    method, model = _build_model(config, dataset, transform, run_dir, device, fresh=latest is None)
    base_lr = scaled_learning_rate(config)
    optimizer = build_optimizer(
        optim.name,
        method.parameter_groups(optim.weight_decay),
        lr=base_lr,
        weight_decay=optim.weight_decay,
        momentum=optim.momentum,
        betas=optim.betas,
        eta=optim.eta,
        clip_lr=optim.clip_lr,
    )
    policy = build_policy(config, dataset.info, transform, method.encoder)
    session = Session(
        config=config,
        run_dir=run_dir,
        device=device,
        amp_dtype=amp_dtype,
        dataset=dataset,
        transform=transform,
        method=method,
        model=model,
        policy=policy,
        optimizer=optimizer,
        sampler=_build_sampler(config, dataset, policy),
        monitor=_build_monitor(config, dataset, val, transform, device),
        base_lr=base_lr,
        warmup=_warmup_steps(config),
        knn_every=train.knn_every if train.knn_every is not None else max(train.steps // 5, 1),
    )
    _attach_evaluators(session, val_split)
    if latest is not None:
        _restore(session, latest)
    # Opened after the restore: the metrics of steps after the checkpoint (a killed run) are dropped.
    session.logger = MetricsLogger(run_dir, enabled=dist.is_main(), start_step=session.step)
    if dist.is_main():
        info = _run_info(config, device, amp_dtype)
        info["resumed_from_step"] = session.step
        write_text_atomic(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
        announce(config, dataset, val, device, amp_dtype, session.step)
    return session


def _attach_evaluators(s: Session, val_split: Dataset | None) -> None:
    """The online probe (``eval.online_probe``); validation and early stopping (``train.val_fraction``)."""
    config = s.config
    s.probe = OnlineProbe.build(config, s.dataset, s.method.encoder.embed_dim, s.device)
    if val_split is not None:
        Validation.check(s.method)
        every = config.train.val_every or max(config.train.steps // 20, 1)
        s.validation = Validation(
            val_split,
            s.transform,
            s.run_dir,
            every=every,
            patience=config.train.patience,
            batch_size=config.eval.batch_size,
            device=s.device,
            amp_dtype=s.amp_dtype,
        )


def _restore(session: Session, checkpoint: Path) -> None:
    try:
        loaded = ckpt.load_checkpoint(checkpoint)
        session.method.load_state_dict(loaded.model)
        session.optimizer.load_state_dict(loaded.optimizer_state)
        if session.probe is not None:
            session.probe.load(loaded.extra_tensors, loaded.optimizer_states.get("online_probe"))
        if session.validation is not None:
            session.validation.load_state_dict(loaded.state["early_stopping"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(
            f"cannot resume from {checkpoint}: it does not fit this run's model ({error})"
        ) from None
    if "rng/cpu" in loaded.extra_tensors:
        torch.set_rng_state(loaded.extra_tensors["rng/cpu"])
    if "rng/cuda" in loaded.extra_tensors and session.device.type == "cuda":
        torch.cuda.set_rng_state(loaded.extra_tensors["rng/cuda"], session.device)
    session.step, session.history = loaded.step, loaded.state.get("history", {})
    if loaded.state.get("world_size", dist.world_size()) != dist.world_size():
        warnings.warn(
            "resuming with a different number of processes: augmentations will differ", stacklevel=2
        )


def _save(session: Session) -> None:
    """Checkpoint the current step (main process), then wait for it on every process."""
    if dist.is_main():
        state: dict[str, Any] = {"history": session.history, "world_size": dist.world_size()}
        if session.sampler is not None:
            state["data_epoch"], state["data_position"] = session.sampler.position(session.step)
        extra = {"rng/cpu": torch.get_rng_state()}
        if session.device.type == "cuda":
            extra["rng/cuda"] = torch.cuda.get_rng_state(session.device)
        optimizers = {}
        if session.probe is not None:
            extra.update(session.probe.state_tensors())
            optimizers["online_probe"] = session.probe.optimizer
        if session.validation is not None:
            state["early_stopping"] = session.validation.state_dict()
        ckpt.save_checkpoint(
            session.run_dir / "checkpoints",
            session.step,
            model=session.method.state_dict(),
            optimizer=session.optimizer,
            extra_tensors=extra,
            state=state,
            keep=session.config.train.keep_checkpoints,
            keep_every=session.config.train.keep_every,
            optimizers=optimizers,
        )
    dist.barrier()


def _run_knn(session: Session, bar: tqdm) -> None:
    """The kNN monitor (main process); every process calls this, since it holds a barrier."""
    if session.monitor is not None:
        assert session.logger is not None
        probe = session.probe.accuracy if session.probe is not None else None
        results = session.monitor(session.method.encoder, probe)
        session.logger.log(session.step, results, kind="knn")
        session.history.setdefault("knn", []).append({"step": session.step, **results})
        first = next(iter(results))
        unit = "" if first == "rankme" else "%"
        bar.write(f"step {session.step}: monitor {first} = {results[first]:.2f}{unit}")
    dist.barrier()


def _validate(session: Session) -> None:
    """Validation and early stopping (every process: the main one measures, all decide alike)."""
    assert session.validation is not None and session.logger is not None
    results = session.validation(session.method, session.step)
    session.logger.log(session.step, results, kind="val")
    session.history.setdefault("val", []).append({"step": session.step, **results})


def _batches(session: Session, stop_at: int) -> PrefetchLoader:
    """This process's micro-batches from the current step to ``stop_at``, in order (decoded ahead)."""
    s, train = session, session.config.train
    assert s.sampler is not None
    sampler, rank = s.sampler, dist.rank()
    schedule = (
        sampler.indices(step, micro, rank)
        for step in range(s.step, stop_at)
        for micro in range(train.accumulate)
    )
    data = s.config.data
    workers = data.workers or default_workers()
    depth = data.prefetch or default_depth(workers)
    pin = s.device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
    return PrefetchLoader(s.dataset, schedule, workers=workers, depth=depth, pin_memory=pin)


def _check_finite(bad: Tensor, step: int) -> None:
    """Raise the same error on every process when any process saw a non-finite loss at this step.

    Every process has run its backward (a NaN loss only poisons the averaged gradients), so no
    process is left waiting in DDP's all-reduce; one tiny collective then tells them all.
    """
    flags = torch.zeros(dist.world_size(), device=bad.device)
    flags[dist.rank()] = bad.float()
    flags = dist.all_reduce_mean(flags)  # one small collective: which processes saw a bad loss
    ranks = torch.nonzero(flags > 0).flatten().tolist()
    if ranks:
        where = f" on process(es) {ranks}" if dist.is_distributed() else ""
        raise FloatingPointError(
            f"the loss was not finite at step {step}{where}; no update was applied. Lower optim.lr, set "
            "optim.clip_grad, or use train.precision=fp32"
        )


def _optimizer_step(session: Session, lr: float) -> tuple[MethodOutput, Tensor, Tensor | None]:
    """One optimizer step over ``accumulate`` micro-batches; returns the last output, the summed
    micro-batch losses and the gradient norm (when clipping)."""
    s, train = session, session.config.train
    assert s.batches is not None
    rank, step = dist.rank(), session.step
    info = StepInfo(step=step, total_steps=train.steps)
    set_learning_rate(s.optimizer, lr)
    loss_sum = torch.zeros((), device=s.device)
    bad = torch.zeros((), dtype=torch.bool, device=s.device)
    for micro in range(train.accumulate):
        batch = next(s.batches).to(s.device)
        generator = torch.Generator(device=s.device).manual_seed(view_seed(train.seed, step, micro, rank))
        views = s.policy(batch, generator)
        if train.channels_last:
            views.inputs = [_channels_last(x) for x in views.inputs]
        last_micro = micro == train.accumulate - 1
        # Gradients are averaged across processes once, on the last micro-batch.
        no_sync = s.model.no_sync() if dist.is_distributed() and not last_micro else contextlib.nullcontext()
        with no_sync:
            with autocast(s.device, s.amp_dtype):
                output = s.model(views, info)
            (output.loss / train.accumulate).backward()
        if s.probe is not None:  # detached features: the probe's own graph and gradients
            s.probe.accumulate(output.features, views.labels)
        loss = output.loss.detach()
        bad |= ~torch.isfinite(loss)
        loss_sum += loss
    _check_finite(bad, step)
    s.method.before_optimizer_step(info)
    clip = s.config.optim.clip_grad
    grad_norm = nn.utils.clip_grad_norm_(s.method.parameters(), clip) if clip is not None else None
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    s.method.on_optimizer_step(info)
    if s.probe is not None:
        s.probe.step()
    return output, loss_sum, grad_norm


class _LogWindow:
    """Loss and throughput averaged over the steps since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.loss_sum = time.perf_counter(), 0, torch.zeros((), device=self.device)
        self.samples, self.audio = 0, 0

    def add(self, loss_sum: Tensor, samples: int, audio: int = 0) -> None:
        """One step's summed loss, its samples (clips), and its valid audio samples (0 if not audio)."""
        self.steps += 1
        self.loss_sum += loss_sum  # no .item() here: a host sync per step would stall the GPU
        self.samples += samples
        self.audio += audio


def _view_lengths(dataset: Dataset, policy: ViewPolicy) -> Tensor | None:
    """Samples per clip that reach the encoder (its length, or the view policy's ``crop_samples``);
    None unless the data are audio clips."""
    lengths = clip_lengths(dataset)
    crop = getattr(policy, "crop_samples", None)
    return lengths if lengths is None or crop is None else lengths.clamp_max(crop)


def _step_load(s: Session, step: int, lengths: Tensor | None) -> tuple[int, int]:
    """(samples, valid audio samples) of the global batch of ``step``, from the sampler (no host sync);
    ``lengths``: the clips' lengths for audio data, else None (then 0 audio samples)."""
    sampler = s.sampler
    assert sampler is not None
    samples = sampler.step_samples(step)
    if lengths is None:
        return samples, 0
    if isinstance(sampler, DurationSampler):
        return samples, sampler.step_length(step)
    world = dist.world_size()
    parts = [sampler.indices(step, m, r) for m in range(s.config.train.accumulate) for r in range(world)]
    return samples, int(lengths[torch.cat(parts)].sum())


def _log_step(
    s: Session, window: _LogWindow, output: MethodOutput, lr: float, grad_norm: Tensor | None
) -> dict[str, Any]:
    train = s.config.train
    loss = dist.all_reduce_mean(window.loss_sum / (window.steps * train.accumulate)).item()
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    logs: dict[str, Any] = {"loss": loss, "lr": lr, "samples_per_s": window.samples / elapsed}
    rate = s.dataset.info.sample_rate
    if window.audio and rate:  # seconds of audio per second: the figure that compares speech trainers
        logs["audio_seconds_per_s"] = window.audio / rate / elapsed
    logs.update({k: to_scalar(v) for k, v in output.logs.items()})
    if grad_norm is not None:
        logs["grad_norm"] = float(grad_norm)
    if output.embeddings is not None and output.embeddings.shape[0] > 1:
        # A duration batch can hold one long clip: no spread to measure (not a NaN in the log).
        logs["embedding_std"] = normalized_embedding_std(output.embeddings)
    if s.probe is not None:
        logs.update(s.probe.train_logs())
    assert s.logger is not None
    s.logger.log(s.step, logs)
    s.history.setdefault("loss", []).append([s.step, loss])
    return logs


def _pretrain(config: Config, run_dir: Path, resume: bool) -> RunResult:
    s = _build_session(config, run_dir, resume)
    config = s.config  # resolved: the modality's default method and encoder filled in
    train, optim = config.train, config.optim
    unit = get_modality(s.dataset.info.modality).unit
    collapse = CollapseDetector()
    stop_at = min(train.steps, s.step + train.stop_after) if train.stop_after else train.steps
    if s.validation is not None and s.validation.state.stopped:
        stop_at = s.step  # resuming a run that stopped early: nothing left to train
    bar = progress_bar(train.steps, s.step, enabled=train.progress and dist.is_main())
    window, run_start, last_logs = _LogWindow(s.device), time.perf_counter(), {}
    lengths = _view_lengths(s.dataset, s.policy) if s.step < stop_at else None
    s.model.train()
    loader = _batches(s, stop_at) if s.step < stop_at else None
    s.batches = iter(loader) if loader is not None else None
    try:
        while s.step < stop_at:
            lr = warmup_cosine(s.step, train.steps, s.base_lr, warmup_steps=s.warmup, final=optim.final_lr)
            output, loss_sum, grad_norm = _optimizer_step(s, lr)
            window.add(loss_sum, *_step_load(s, s.step - 1, lengths))
            bar.update(1)
            step = s.step
            if step % train.log_every == 0 or step == stop_at:
                last_logs = _log_step(s, window, output, lr, grad_norm)
                if "embedding_std" in last_logs and step > s.warmup:
                    collapse.update(last_logs["embedding_std"], step)
                speed = {f"{unit}/s": f"{last_logs['samples_per_s']:.0f}"}
                if "audio_seconds_per_s" in last_logs:
                    speed = {"audio s/s": f"{last_logs['audio_seconds_per_s']:.1f}"}
                bar.set_postfix(loss=f"{last_logs['loss']:.4f}", **speed, lr=f"{lr:.3g}")
                window.reset()
            evaluated = bool(s.knn_every and step % s.knn_every == 0 and step < train.steps)
            if evaluated:
                _run_knn(s, bar)
            validated = s.validation is not None and s.validation.due(step, train.steps)
            if validated:
                _validate(s)  # before the checkpoint, which then holds this evaluation's state
            stopping = validated and s.validation is not None and s.validation.state.stopped
            saved = _checkpoint_due(train.checkpoint_every, train.keep_every, step) and step < stop_at
            if saved and not stopping:
                _save(s)
            if (evaluated or saved or validated) and window.steps == 0:
                window.reset()  # throughput counts training steps only
            if stopping:
                bar.write(f"step {step}: no improvement in {train.patience} validations, stopping early")
                break
            if _out_of_time(train.time_limit_s, run_start, s.device) and s.step < stop_at:
                bar.write(
                    f"step {step}: train.time_limit_s={train.time_limit_s} reached, stopping (resumable)"
                )
                break
    finally:
        if loader is not None:
            loader.close()
    bar.close()
    return _finish(s, run_start, last_logs)


def _out_of_time(limit: float | None, start: float, device: torch.device) -> bool:
    """Whether the time limit has passed, agreed by every process (one tiny collective, only with a limit)."""
    if limit is None:
        return False
    late = torch.tensor(float(time.perf_counter() - start > limit), device=device)
    return bool(dist.all_reduce_mean(late) > 0)


def _checkpoint_due(every: int, keep_every: int | None, step: int) -> bool:
    """Checkpoints every ``train.checkpoint_every`` steps, and at the multiples of ``train.keep_every``."""
    return bool((every and step % every == 0) or (keep_every and step % keep_every == 0))


def _finish(s: Session, run_start: float, last_logs: dict[str, Any]) -> RunResult:
    config, run_dir = s.config, s.run_dir
    stopped = s.validation is not None and s.validation.state.stopped
    finished = s.step >= config.train.steps or stopped
    if finished and s.validation is not None:
        dist.barrier()  # best.safetensors is complete
        s.validation.restore_best(s.method)  # the final checkpoint and encoder then hold the best weights
    if finished:  # the periodic monitor skips the last step, so this is its last run
        _run_knn(s, progress_bar(0, 0, enabled=False))
    _save(s)
    summary: dict[str, Any] = {}
    if dist.is_main():
        seconds = time.perf_counter() - run_start
        summary = summarize(config, s.dataset, last_logs, s.history, s.step, seconds, device=s.device)
        if s.validation is not None:
            state = s.validation.state
            summary.update(best_val_top1=state.best_top1, best_step=state.best_step)
            summary["stopped_early_at"] = s.step if stopped else None
        if finished:
            save_tensors_atomic(run_dir / "encoder.safetensors", s.method.encoder.state_dict())
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_report(run_dir)
        print_summary(summary, finished)
    assert s.logger is not None
    s.logger.close()
    dist.barrier()  # every process returns only once the run directory is complete
    return RunResult(run_dir=run_dir, step=s.step, finished=finished, summary=summary)


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
