"""Construction: data, components, input transform and view policy from a config, in one place.

The training loop, the Python API, the demo and the command line all build through these
functions, so a run is assembled the same way whatever starts it:

    dataset = load_data(config)                                  # any modality (selfsup.data)
    config = resolve_components(config, dataset.info)            # fill defaults of the modality, validate
    transform = fit_transform(config, dataset)                   # stored in the run as inputs.json
    encoder = build_encoder(config, dataset.info)
    method = build_method(config, encoder, dataset.info)           # info: e.g. a classifier's classes
    policy = build_policy(config, dataset.info, transform, encoder)
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from selfsup.augment import VIEW_POLICIES
from selfsup.augment.base import InputTransform, ViewPolicy
from selfsup.config import Config, default_view_policy, from_dict, load_config, to_dict, validate
from selfsup.data import load_dataset
from selfsup.data.base import DataInfo, Dataset
from selfsup.encoders import ENCODERS, Encoder
from selfsup.encoders.base import missing_capabilities
from selfsup.errors import CheckpointError, ConfigError, DataError
from selfsup.io import write_text_atomic
from selfsup.methods import METHODS, Method
from selfsup.modalities import get_modality, transform_from_dict

INPUTS_FILE = "inputs.json"


def load_data(config: Config, source: str | None = None) -> Dataset:
    """The training data of ``config``, or ``source`` decoded with the same options (all of it)."""
    data = config.data
    spec = source or data.source
    if not spec:
        raise ConfigError("no data source given: set data.source (--data)")
    return load_dataset(
        spec,
        image_size=data.image_size,
        max_samples=data.max_samples if source is None else None,
        strict=data.strict,
        cache_dir=data.cache_dir,
        loading=data.loading,
        memory_limit_gb=data.memory_limit_gb,
        sample_rate=data.sample_rate,
        min_seconds=data.min_seconds,
    )


def resolve_components(config: Config, info: DataInfo) -> Config:
    """A copy of ``config`` with the modality's default method and encoder filled in, checked
    against the data: every component must exist, take its options and fit the modality."""
    modality = get_modality(info.modality)
    resolved = from_dict(to_dict(config))
    _apply_modality_defaults(resolved, modality.config_defaults)
    if resolved.method.name is None:
        resolved.method.name = modality.default_method
    if resolved.encoder.name is None:
        resolved.encoder.name = modality.default_encoder
    validate(resolved, info.modality)
    encoder_modality = ENCODERS.metadata(resolved.encoder.name).get("modality")
    if encoder_modality != info.modality:
        choices = ", ".join(ENCODERS.names_where(modality=info.modality)) or "none registered"
        raise ConfigError(
            f"encoder {resolved.encoder.name!r} takes {encoder_modality} inputs, but the data holds "
            f"{info.modality} samples; use one of: {choices} (or leave the encoder unset: the default for "
            f"{info.modality} data is {modality.default_encoder!r})"
        )
    policy = resolved.augment.policy or default_view_policy(resolved.method.name, info.modality)
    policy_modality = VIEW_POLICIES.metadata(policy).get("modality")
    if policy_modality != info.modality:
        choices = ", ".join(VIEW_POLICIES.names_where(modality=info.modality)) or "none registered"
        raise ConfigError(
            f"view policy {policy!r} makes {policy_modality} views, but the data holds {info.modality} "
            f"samples; choose one of: {choices}"
        )
    return resolved


def _apply_modality_defaults(config: Config, defaults: dict[str, Any]) -> None:
    """Set each ``section.key`` of ``defaults`` that ``config`` still holds at the library-wide default."""
    pristine = Config()
    for dotted, value in defaults.items():
        section, key = dotted.split(".")
        if getattr(getattr(config, section), key) == getattr(getattr(pristine, section), key):
            setattr(getattr(config, section), key, value)


def fit_transform(config: Config, dataset: Dataset) -> InputTransform:
    """The run's input transform: configured (images) or fitted on the training data (vectors)."""
    return get_modality(dataset.info.modality).fit_transform(dataset, config)


def _provided(factory: Any, available: dict[str, Any]) -> dict[str, Any]:
    """The builder-supplied arguments that ``factory`` declares (info, transform, encoder)."""
    accepted = inspect.signature(factory).parameters
    return {k: v for k, v in available.items() if k in accepted}


def build_encoder(config: Config, info: DataInfo) -> Encoder:
    """The encoder named by ``config`` for data described by ``info`` (weights from the current RNG)."""
    name = config.encoder.name
    if name is None:
        raise ConfigError("encoder is not set; resolve_components fills it from the data's modality")
    factory = ENCODERS.get(name)
    try:
        return factory(**_provided(factory, {"info": info}), **config.encoder.params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"encoder {name!r}: {error}") from None


def build_method(
    config: Config,
    encoder: Encoder,
    info: DataInfo | None = None,
    *,
    dataset: Dataset | None = None,
    transform: InputTransform | None = None,
    run_dir: Path | None = None,
) -> Method:
    """The method named by ``config`` around ``encoder``. A factory may declare any of ``info`` (the
    finetune method reads its number of classes from it), ``dataset`` and ``transform`` (the training
    data and its input transform: HuBERT fits its first targets on them) and ``run_dir`` (where a method
    keeps files of its own, e.g. HuBERT's codebook and frame labels); it gets those the caller has."""
    name = config.method.name
    if name is None:
        raise ConfigError("method is not set; resolve_components fills it from the data's modality")
    factory = METHODS.get(name)
    needs = tuple(METHODS.metadata(name).get("needs", ()))
    _check_fits(f"method {name!r}", needs, encoder, config)
    if "mask:replace" not in needs:
        # The mask embedding is used only where masked tokens are replaced (dropping them, as MAE does, needs
        # none): frozen otherwise, not left without a gradient (which would stall DDP).
        for parameter in encoder.mask_parameters():
            parameter.requires_grad_(False)
    given = {"info": info, "dataset": dataset, "transform": transform, "run_dir": run_dir}
    available = {k: v for k, v in given.items() if v is not None}
    provided = {"encoder": encoder, **_provided(factory, available)}
    try:
        return factory(**provided, **config.method.params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method {name!r}: {error}") from None


def build_policy(config: Config, info: DataInfo, transform: InputTransform, encoder: Encoder) -> ViewPolicy:
    assert config.method.name is not None
    name = config.augment.policy or default_view_policy(config.method.name, info.modality)
    factory = VIEW_POLICIES.get(name)
    _check_fits(f"view policy {name!r}", VIEW_POLICIES.metadata(name).get("needs", ()), encoder, config)
    provided = _provided(factory, {"info": info, "transform": transform, "encoder": encoder})
    try:
        return factory(**provided, **config.augment.params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"augment ({name} view policy): {error}") from None


def _check_fits(what: str, needs: tuple[str, ...], encoder: Encoder, config: Config) -> None:
    """A clear error when ``encoder`` lacks a capability the method or view policy declares it needs."""
    missing = missing_capabilities(encoder, tuple(needs))
    if missing:
        fitting = [
            n
            for n in ENCODERS.names_where(modality=encoder.modality)
            if not ENCODERS.metadata(n).get("requires_checkpoint")
        ]
        raise ConfigError(
            f"{what} needs an encoder with {', '.join(missing)}; {config.encoder.name!r} has none. "
            f"Encoders of {encoder.modality} data: {', '.join(fitting)}"
        )


def labelled_subset(config: Config, dataset: Dataset) -> Dataset:
    """The training data restricted to ``data.labels_per_class`` / ``data.label_fraction`` labelled samples
    of every class (:func:`selfsup.eval.splits.stratified_draw` with ``data.label_seed``); unchanged when
    neither is set."""
    data = config.data
    if data.labels_per_class is None and data.label_fraction is None:
        return dataset
    from selfsup.eval.splits import stratified_draw

    if not dataset.has_labels:
        raise DataError(
            f"data.labels_per_class / data.label_fraction need labels, but {data.source!r} has none"
        )
    chosen = stratified_draw(
        dataset.labels, per_class=data.labels_per_class, fraction=data.label_fraction, seed=data.label_seed
    )
    return dataset.subset(chosen)


def load_encoder_weights(run_dir: Path) -> dict[str, Tensor]:
    """The encoder weights of a run: its final ``encoder.safetensors``, else those of its latest checkpoint
    (safetensors only: nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from selfsup.train import checkpoint as ckpt

    path = run_dir / "encoder.safetensors"
    if path.exists():
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"cannot read {path} (corrupt?): {error}") from None
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        raise CheckpointError(f"{run_dir} has neither encoder.safetensors nor a checkpoint")
    return checkpoint_encoder_weights(latest)


def checkpoint_encoder_weights(checkpoint: Path) -> dict[str, Tensor]:
    """The encoder's tensors in one training checkpoint (its ``model/encoder.*`` entries)."""
    from selfsup.train import checkpoint as ckpt

    model = ckpt.load_checkpoint(checkpoint).model
    return {k.removeprefix("encoder."): v for k, v in model.items() if k.startswith("encoder.")}


def init_encoder_from(run_dir: str | Path, config: Config, encoder: Encoder) -> None:
    """Load the encoder weights of the run ``run_dir`` into ``encoder`` (``train.init_from``), after
    checking that the run's encoder is the one ``config`` builds (name and options)."""
    run_dir = Path(run_dir)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"train.init_from={str(run_dir)!r} is not a selfsup run directory (no config.yaml)")
    saved = load_config(saved_path).encoder
    if (saved.name, saved.params) != (config.encoder.name, config.encoder.params):
        raise ConfigError(
            f"train.init_from: {run_dir} holds encoder {saved.name!r} with options {saved.params}, but this "
            f"run builds {config.encoder.name!r} with {config.encoder.params}; use the same encoder"
        )
    try:
        encoder.load_state_dict(load_encoder_weights(run_dir))
    except RuntimeError as error:
        raise CheckpointError(f"the encoder weights in {run_dir} do not fit this encoder: {error}") from None


def save_inputs(run_dir: Path, info: DataInfo, transform: InputTransform) -> None:
    """Write what the encoder's inputs are (``inputs.json``): the data's info and the input transform."""
    payload = {"info": info.to_dict(), "transform": transform.to_dict()}
    write_text_atomic(run_dir / INPUTS_FILE, json.dumps(payload, indent=1) + "\n")


def load_inputs(run_dir: Path) -> tuple[DataInfo, InputTransform]:
    """Read a run's ``inputs.json`` (see :func:`save_inputs`)."""
    path = run_dir / INPUTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} lacks {INPUTS_FILE} (the data description and input normalization of the run); "
            "it was not written by this version of selfsup, or pretraining never started"
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return DataInfo.from_dict(payload["info"]), transform_from_dict(payload["transform"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt: {error}") from None


__all__ = [
    "INPUTS_FILE",
    "build_encoder",
    "build_method",
    "build_policy",
    "checkpoint_encoder_weights",
    "fit_transform",
    "init_encoder_from",
    "labelled_subset",
    "load_data",
    "load_encoder_weights",
    "load_inputs",
    "resolve_components",
    "save_inputs",
]
