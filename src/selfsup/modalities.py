"""The modalities the library knows, and what each one brings: default encoder and method, and how
its input transform is fitted (or configured) and restored.

Adding a modality means adding a data source that returns :class:`~selfsup.data.base.Dataset` with
``info.modality`` set, a view policy, an encoder and a :class:`Modality` entry here; the loop, the
checkpoints and the evaluators do not change (docs/ARCHITECTURE.md, "Adding a modality").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfsup.augment.audio_transform import AudioTransform
from selfsup.augment.base import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, InputTransform
from selfsup.augment.vector import VectorTransform
from selfsup.config import Config
from selfsup.data.base import Dataset
from selfsup.errors import ConfigError
from selfsup.registry import UnknownNameError, suggest


@dataclass(frozen=True)
class Modality:
    """name: the ``DataInfo.modality`` it serves. unit: what a sample is called in logs ("images").
    default_encoder / default_method: used when the config names none.
    fit_transform(dataset, config): the run's input transform, fitted on the training data or read
    from the config. transform_from_dict: restores it from a run's ``inputs.json``."""

    name: str
    unit: str
    default_encoder: str
    default_method: str
    fit_transform: Callable[[Dataset, Config], InputTransform]
    transform_from_dict: Callable[[dict[str, Any]], InputTransform]
    config_defaults: dict[str, Any] = field(default_factory=dict)


MODALITIES: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    if modality.name in MODALITIES:
        raise ValueError(f"modality {modality.name!r} is registered twice")
    MODALITIES[modality.name] = modality
    return modality


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise UnknownNameError(
            f"unknown modality {name!r}.{suggest(name, MODALITIES)} Known: {', '.join(sorted(MODALITIES))}."
        )
    return MODALITIES[name]


def _image_transform(dataset: Dataset, config: Config) -> ImageTransform:
    shape = dataset.info.sample_shape
    assert shape is not None  # images have a fixed size
    augment = config.augment
    try:
        return ImageTransform(
            size=augment.size or shape[1],
            mean=tuple(augment.mean) if augment.mean is not None else IMAGENET_MEAN,
            std=tuple(augment.std) if augment.std is not None else IMAGENET_STD,
        )
    except ValueError as error:
        raise ConfigError(f"augment: {error}") from None


def _vector_transform(dataset: Dataset, config: Config) -> VectorTransform:
    for key in ("size", "mean", "std"):
        if getattr(config.augment, key) is not None:
            raise ConfigError(
                f"augment.{key} applies to images; vectors are standardized with statistics fitted on the "
                "training data. Unset it."
            )
    return VectorTransform.fit(dataset)


def _audio_transform(dataset: Dataset, config: Config) -> AudioTransform:
    for key in ("size", "mean", "std"):
        if getattr(config.augment, key) is not None:
            raise ConfigError(
                f"augment.{key} applies to images; audio clips are scaled to [-1, 1) (and standardized per "
                "clip with data.normalize=true). Unset it."
            )
    rate = dataset.info.sample_rate
    assert rate is not None  # audio sources always declare it
    return AudioTransform(sample_rate=int(rate), normalize=bool(config.data.normalize))


register_modality(
    Modality(
        name="image",
        unit="images",
        default_encoder="resnet18",
        default_method="simclr",
        fit_transform=_image_transform,
        transform_from_dict=ImageTransform.from_dict,
    )
)
register_modality(
    Modality(
        name="vector",
        unit="vectors",
        default_encoder="mlp",
        default_method="simclr",
        fit_transform=_vector_transform,
        transform_from_dict=VectorTransform.from_dict,
    )
)


# The encoder and method are registered by their own modules (selfsup.encoders.audio, selfsup.methods):
# names only here, so this module imports whether or not they exist yet.
register_modality(
    Modality(
        name="audio",
        unit="clips",
        default_encoder="wav2vec2",
        default_method="wav2vec2",
        fit_transform=_audio_transform,
        transform_from_dict=AudioTransform.from_dict,
        # Count batches of 256 clips of up to 15 s would not fit in memory, and LARS at 0.3 x 256/256 is an
        # image-classification setting: wav2vec 2.0's own (fairseq Base) optimizer, 16 s batches.
        config_defaults={
            "data.batch_seconds": 16.0,
            "train.batch_size": 8,
            "optim.name": "adamw",
            "optim.lr": 5e-4,
            "optim.lr_scaling": "none",
            "optim.betas": (0.9, 0.98),
            "optim.weight_decay": 0.01,
            "optim.clip_grad": 10.0,
        },
    )
)


def transform_from_dict(data: dict[str, Any]) -> InputTransform:
    """Restore an input transform saved with ``transform.to_dict()`` (its ``modality`` says which)."""
    return get_modality(str(data["modality"])).transform_from_dict(data)


__all__ = ["MODALITIES", "Modality", "get_modality", "register_modality", "transform_from_dict"]
