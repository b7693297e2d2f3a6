"""Typed configuration: dataclasses, YAML recipes and ``key=value`` overrides.

One :class:`Config` describes a run completely; it is saved resolved in every run directory
(``config.yaml``) so that a run can be resumed or reproduced. Unknown keys are rejected with a
"did you mean" suggestion; override values are parsed with ``yaml.safe_load`` (never ``eval``).

Components chosen from a registry (method, encoder, view policy) are a ``name`` plus free
keyword ``params``: ``method=byol``, ``method.base_momentum=0.99`` or ``encoder.stem=cifar``.
Their keys are checked against the registered factory's signature by :func:`validate`. A name
left empty is filled from the data's modality (:func:`selfsup.build.resolve_components`), so the
``config.yaml`` of a run always names every component.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError
from selfsup.registry import suggest


@dataclass
class Component:
    """A registered component: its name and keyword arguments for its factory."""

    name: str | None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    source: str | None = None
    """What to pretrain on (required): a folder, tar shards (path, list, glob), a CIFAR pickle dir,
    .npy/.npz, digits."""
    loading: str = "auto"
    """memory (decode once), stream (decode on demand: folders, tar shards) or auto (stream when too big)."""
    memory_limit_gb: float | None = None
    """Decoded size above which `auto` streams; None: a quarter of the machine's RAM."""
    workers: int | None = None
    """Threads decoding streamed samples ahead of the step that needs them; None: the cores, at most 8."""
    prefetch: int | None = None
    """Streamed micro-batches decoded ahead, the one being waited for included (bounded memory);
    None: max(4, 2 x workers), so that every worker thread has a batch to decode."""
    image_size: int | None = None
    """Decode images to this square size (shorter side, then center crop); None keeps a common native size."""
    max_samples: int | None = None
    """Use at most this many samples (the first ones in source order)."""
    sample_rate: int = 16000
    """Audio: decode every clip at this rate (Hz), resampling with soxr; the encoder's rate."""
    min_seconds: float = 0.1
    """Audio: skip (and count) clips shorter than this; 0.1 s is four wav2vec 2.0 frames."""
    normalize: bool = False
    """Audio: standardize each clip over its valid samples (fairseq normalize=True; wav2vec 2.0 Large
    and data2vec use it, wav2vec 2.0 / HuBERT Base do not)."""
    batch_seconds: float | None = None
    """Audio: size batches by total padded duration (longest clip x clips <= this many seconds, in
    length buckets) instead of train.batch_size clips; each micro-batch of each process gets one.
    null: the modality's choice (audio: 16 s); 0: batches of train.batch_size clips."""
    strict: bool = False
    """Raise on the first unreadable input instead of skipping and counting it."""
    cache_dir: str | None = None
    """Keep decoded data sets here (safetensors) so that the next run skips decoding."""
    val: str | None = None
    """Labeled source for the periodic kNN monitor; default: a held-out part of the labeled training data."""
    label_fraction: float | None = None
    """Train on this fraction of every class's labelled samples (a seeded stratified draw, at least one
    per class; eval.splits.stratified_draw); None: all of the data. Excludes labels_per_class."""
    labels_per_class: int | None = None
    """Train on this many labelled samples of every class (a seeded stratified draw); None: all."""
    label_seed: int = 0
    """Seed of the label draw (label_fraction / labels_per_class), so a draw can be repeated."""


@dataclass
class AugmentConfig:
    policy: str | None = None
    """View policy (see `selfsup list`); None uses the method's own for the data's modality."""
    size: int | None = None
    """Images: side of the views and of the evaluation inputs; None uses the decoded image size."""
    mean: tuple[float, ...] | None = None
    """Images: per-channel normalization mean; None is ImageNet's. (Vectors are standardized with
    statistics fitted on the training data instead.)"""
    std: tuple[float, ...] | None = None
    """Images: per-channel normalization std; None is ImageNet's."""
    params: dict[str, Any] = field(default_factory=dict)
    """Options of the view policy (e.g. crop_scale, blur_p); checked against the policy's signature."""


@dataclass
class OptimConfig:
    name: str = "lars"
    lr: float = 0.3
    """Base learning rate, for a batch of 256 when lr_scaling is 'linear' (lr = lr * batch / 256)."""
    lr_scaling: str = "linear"
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eta: float = 0.001
    """LARS trust coefficient."""
    clip_lr: bool = False
    """LARS: cap each tensor's adapted rate at the learning rate (solo-learn's ``clip_lars_lr``)."""
    warmup_steps: int | None = None
    """Linear warm-up length; None means 10% of the steps."""
    final_lr: float = 0.0
    clip_grad: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps; 0 writes the randomly initialised encoder (the usual baseline row)."""
    batch_size: int = 256
    """Global batch per optimizer step, summed over processes and accumulation micro-batches."""
    accumulate: int = 1
    """Micro-batches per optimizer step (gradient accumulation)."""
    seed: int = 0
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    precision: str = "auto"
    """bf16, fp32, or auto: bf16 autocast on GPUs with bf16, fp32 on CPUs (see docs/ARCHITECTURE.md)."""
    channels_last: bool = True
    sync_bn: bool = True
    """Global BatchNorm: statistics over the global batch when distributed (SimCLR's "global BN")."""
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    """Newest checkpoints kept (the one just written always is)."""
    keep_every: int | None = None
    """Also save, and never prune, the checkpoints of steps that are multiples of this (None: none),
    e.g. to choose a checkpoint by label-free scores afterwards."""
    log_every: int = 10
    knn_every: int | None = None
    """Run the kNN monitor every N steps; None: five times per run; 0: only at the end. Needs labels."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this many steps in this invocation, e.g. to fit a job time limit."""
    time_limit_s: float | None = None
    """Stop (with a checkpoint) once this invocation has trained this many seconds; --resume continues.
    The learning-rate schedule still spans train.steps, so a run cut short has not annealed."""
    progress: bool = True
    init_from: str | None = None
    """A run directory whose encoder weights the encoder starts from (fine-tuning); its encoder must be
    the same (name and options) and its inputs.json gives the input transform. None: random init."""
    val_fraction: float | None = None
    """Carve this fraction of the labelled training data (stratified, seeded with train.seed) out as a
    validation split for a classifier method (finetune): its top-1 is measured every val_every steps,
    the best weights are kept (best.safetensors) and restored at the end. None: no validation."""
    val_every: int | None = None
    """Validate every N steps (and at the last step); None: 20 times per run."""
    patience: int | None = None
    """Stop early after this many validations without improvement; None: never stop early."""


@dataclass
class EvalConfig:
    knn_k: tuple[int, ...] = (20, 200)
    knn_temperature: float = 0.07
    batch_size: int = 256
    monitor_samples: int = 5000
    """Samples used by the periodic monitor (kNN when labelled, RankMe always)."""
    online_probe: bool | str = "auto"
    """A linear classifier trained on the detached features during pretraining (reported apart from the
    offline probes as online_train_top1 / online_top1); auto: on when the training data has labels."""
    online_probe_lr: float = 1e-3
    """Fixed AdamW learning rate of the online probe (its own optimizer)."""


@dataclass
class Config:
    method: Component = field(default_factory=lambda: Component(None))
    """None: the data's modality's default (SimCLR for images and vectors)."""
    encoder: Component = field(default_factory=lambda: Component(None))
    """None: the data's modality's default (ResNet-18 for images, an MLP for vectors)."""
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    expected: dict[str, Any] = field(default_factory=dict)
    """Free-form: what a recipe is expected to reach, and where the numbers come from."""


# Keys that may differ between a run and its resumption: they do not change the maths.
RUNTIME_KEYS = frozenset(
    {
        "train.stop_after",
        "train.time_limit_s",
        "train.progress",
        "train.device",
        "data.cache_dir",
        "data.workers",
        "data.prefetch",
        "data.loading",
        "data.memory_limit_gb",
        # What is kept on disk, not what is computed: saving a checkpoint consumes no randomness.
        "train.keep_checkpoints",
        "train.keep_every",
    }
)


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""
    return _plain(asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("params", "expected"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from a nested dict (a recipe), rejecting unknown keys."""
    config = Config()
    apply_dict(config, data)
    return config


def apply_dict(config: Config, data: dict[str, Any], prefix: str = "") -> None:
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("params", "expected"):
            target = _resolve(config, prefix + key)
            if isinstance(target, Component) or is_dataclass(target):
                apply_dict(config, value, prefix + key + ".")
                continue
        set_value(config, prefix + key, value)


def _section_fields(obj: Any) -> list[str]:
    return [f.name for f in fields(obj)]


def _resolve(config: Config, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        if not is_dataclass(obj):
            return None
        if part not in _section_fields(obj):
            return None
        obj = getattr(obj, part)
    return obj


def _rename(component: Component, name: str) -> None:
    """Choose another registered component: the options set so far were for the old one (a recipe's ResNet
    ``stem`` means nothing to a ViT), so they go, as with ``--encoder`` / ``--method``."""
    if name != component.name:
        component.params = {}
    component.name = name


def set_value(config: Config, dotted: str, value: Any) -> None:
    """Set ``section.key`` (or ``method.<param>`` for a component) with type coercion."""
    parts = dotted.split(".")
    obj: Any = config
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        is_last = depth == len(parts) - 1
        if isinstance(obj, Component) and part not in ("name", "params"):
            # method.temperature=0.2 -> method.params["temperature"]; checked against the factory later
            obj.params[".".join(parts[depth:])] = value
            return
        if isinstance(obj, Component) and part == "name" and is_last and isinstance(value, str):
            _rename(obj, value)
            return
        names = _section_fields(obj)
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(
                f"unknown config key {path!r}.{suggest(part, names)} Keys under {where}: {', '.join(names)}."
            )
        if is_last:
            current = getattr(obj, part)
            if isinstance(current, Component):
                if isinstance(value, str):
                    _rename(current, value)
                    return
                if isinstance(value, dict):
                    apply_dict(config, value, path + ".")
                    return
                raise ConfigError(f"{path!r} takes a registered name, got {value!r}")
            if part == "params" and isinstance(value, dict):
                getattr(obj, part).update(value)
                return
            setattr(obj, part, _coerce(path, value, _field_type(obj, part), current))
            return
        obj = getattr(obj, part)
        if part == "params" and isinstance(obj, dict):
            # augment.params.crop_scale=[0.2,1] -> augment.params["crop_scale"]; checked by the factory
            obj[".".join(parts[depth + 1 :])] = value
            return
        if not (is_dataclass(obj) or isinstance(obj, Component)):
            raise ConfigError(f"{path!r} is a value, not a section; cannot set {dotted!r}")


def _field_type(obj: Any, name: str) -> str:
    for f in fields(obj):
        if f.name == name:
            return str(f.type)
    raise AssertionError(name)


def _coerce(path: str, value: Any, type_name: str, current: Any) -> Any:
    """Check and convert a parsed value against the field's annotation (a string under PEP 563)."""
    optional = "None" in type_name
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path!r} cannot be null")
    base = type_name.replace(" | None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if base == "int":
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base == "str":
            if not isinstance(value, str | int | float):
                raise TypeError
            return str(value)
        if base.startswith("tuple"):
            if not isinstance(value, list | tuple):
                value = [value]
            item = float if "float" in base else int
            items = tuple(item(v) for v in value)
            if "..." not in base and current is not None and len(items) != len(current):
                raise ConfigError(f"{path!r} takes {len(current)} values, got {len(items)}")
            return items
        if base.startswith("dict"):
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path!r} expects {type_name}, got {value!r}") from None
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """``'optim.lr=0.1'`` → ``('optim.lr', 0.1)``; values are YAML scalars/lists, never evaluated code."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=0.1)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse the value of {key!r}: {error}") from None
    return key, value


def apply_overrides(config: Config, overrides: list[str] | dict[str, Any]) -> Config:
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        set_value(config, key, value)
    return config


def recipe_names() -> list[str]:
    root = importlib.resources.files("selfsup") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a YAML recipe from a path, or by name from the packaged ``selfsup/recipes``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        packaged = importlib.resources.files("selfsup") / "recipes" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            names = recipe_names()
            raise ConfigError(
                f"no recipe {name_or_path!r} (neither a YAML file nor a packaged recipe)."
                f"{suggest(name_or_path, names)} Packaged: {', '.join(names)}."
            )
        text = packaged.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name_or_path!r} must be a mapping of sections")
    return data


def load_config(path: str | Path) -> Config:
    return from_dict(yaml.safe_load(Path(path).read_text()) or {})


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def differences(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Flattened keys whose values differ between two configs."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


# Arguments the builder supplies to registered factories itself; a user may not set them.
PROVIDED = {
    "method": ("encoder", "info", "dataset", "transform", "run_dir"),
    "encoder": ("info",),
    "policy": ("info", "transform", "encoder"),
}


def validate(config: Config, modality: str | None = None) -> None:
    """Check names and component options against the registries, and basic ranges.

    Components whose name is still None (filled from the data's modality later) are skipped; the
    builder calls this again once they are resolved, with the data's ``modality``.
    """
    from selfsup.augment import VIEW_POLICIES
    from selfsup.encoders import ENCODERS
    from selfsup.methods import METHODS

    for label, registry, component in (
        ("method", METHODS, config.method),
        ("encoder", ENCODERS, config.encoder),
    ):
        if component.name is None:
            continue
        try:
            registry.get(component.name)
            registry.check_kwargs(component.name, component.params, provided=PROVIDED[label])
        except (KeyError, TypeError) as error:
            raise ConfigError(f"{label}: {error}") from None
    if config.augment.policy is not None:
        try:
            VIEW_POLICIES.get(config.augment.policy)
        except KeyError as error:
            raise ConfigError(f"augment.policy: {error}") from None
    policy = config.augment.policy
    if policy is None and modality is not None and config.method.name is not None:
        policy = default_view_policy(config.method.name, modality)
    if policy is not None:
        try:
            VIEW_POLICIES.check_kwargs(policy, config.augment.params, provided=PROVIDED["policy"])
        except TypeError as error:
            raise ConfigError(f"augment.params: {error}") from None
    t = config.train
    for key, value, least in (
        ("train.steps", t.steps, 0),
        ("train.batch_size", t.batch_size, 1),
        ("train.accumulate", t.accumulate, 1),
        ("train.log_every", t.log_every, 1),
        ("train.keep_checkpoints", t.keep_checkpoints, 1),
    ):
        if value < least:
            raise ConfigError(f"{key} must be at least {least}, got {value}")
    _validate_new_keys(config)
    if config.data.prefetch is not None and config.data.prefetch < 1:
        raise ConfigError(
            f"data.prefetch must be at least 1 (or null for automatic), got {config.data.prefetch}"
        )
    if config.data.workers is not None and config.data.workers < 1:
        raise ConfigError(
            f"data.workers must be at least 1 (or null for automatic), got {config.data.workers}"
        )
    if t.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {t.precision!r}")
    if config.optim.lr_scaling not in ("linear", "sqrt", "none"):
        raise ConfigError(f"optim.lr_scaling must be linear, sqrt or none, got {config.optim.lr_scaling!r}")
    from selfsup.data.sources import LOADING_MODES

    if config.data.loading not in LOADING_MODES:
        raise ConfigError(
            f"data.loading must be one of {', '.join(LOADING_MODES)}, got {config.data.loading!r}"
        )


def _validate_new_keys(config: Config) -> None:
    """Ranges of the keep-every, label-draw, validation and online-probe keys."""
    t, d = config.train, config.data
    for key, value in (
        ("train.keep_every", t.keep_every),
        ("train.val_every", t.val_every),
        ("train.patience", t.patience),
        ("data.labels_per_class", d.labels_per_class),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be at least 1 (or null), got {value}")
    if d.label_fraction is not None and not 0.0 < d.label_fraction <= 1.0:
        raise ConfigError(f"data.label_fraction must be in (0, 1] (or null), got {d.label_fraction}")
    if d.label_fraction is not None and d.labels_per_class is not None:
        raise ConfigError("set one of data.label_fraction and data.labels_per_class, not both")
    if not d.sample_rate >= 1:
        raise ConfigError(f"data.sample_rate must be at least 1 (samples per second), got {d.sample_rate}")
    if not d.min_seconds >= 0:
        raise ConfigError(f"data.min_seconds must be >= 0, got {d.min_seconds}")
    if d.batch_seconds is not None and not d.batch_seconds >= 0:
        raise ConfigError(f"data.batch_seconds must be >= 0 (0: count batches; null), got {d.batch_seconds}")
    if t.val_fraction is not None and not 0.0 < t.val_fraction < 1.0:
        raise ConfigError(f"train.val_fraction must be in (0, 1) (or null), got {t.val_fraction}")
    if config.eval.online_probe not in (True, False, "auto"):
        raise ConfigError(f"eval.online_probe must be true, false or auto, got {config.eval.online_probe!r}")
    if not config.eval.online_probe_lr > 0:
        raise ConfigError(f"eval.online_probe_lr must be > 0, got {config.eval.online_probe_lr}")


def default_view_policy(method: str, modality: str) -> str:
    """The view policy ``method`` uses on ``modality`` unless ``augment.policy`` names another."""
    from selfsup.methods import METHODS

    policies: dict[str, str] = METHODS.get(method).default_view_policies
    if modality not in policies:
        raise ConfigError(
            f"method {method!r} has no default view policy for {modality} data "
            f"(it has: {', '.join(sorted(policies)) or 'none'}); set augment.policy"
        )
    return policies[modality]


__all__ = [
    "PROVIDED",
    "RUNTIME_KEYS",
    "Component",
    "Config",
    "ConfigError",
    "apply_overrides",
    "default_view_policy",
    "differences",
    "dump_config",
    "from_dict",
    "load_config",
    "load_recipe",
    "parse_override",
    "recipe_names",
    "to_dict",
    "validate",
]
