"""The ``safetensors`` format: every encoder of every modality, rebuilt by :func:`load_exported`.

The directory holds ``model.safetensors`` (the encoder's state dict, under its own key names) and
``config.json`` with what rebuilds it: the encoder's registry name and options, the data
description it was built for (the MLP reads its input width from it), its declared geometry
(``embed_dim``, ``num_layers``, ``modality``) and the run's input transform (``inputs.json``: image
size, mean and std, or the vector standardization). Loading never unpickles: the weights are
safetensors and the config is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from selfsup.augment.base import InputTransform
from selfsup.build import build_encoder
from selfsup.config import Component, Config
from selfsup.data.base import DataInfo
from selfsup.encoders import Encoder
from selfsup.errors import CheckpointError
from selfsup.export.base import EXPORT_DIR, EXPORTERS, describe_input, model_summary, write_json
from selfsup.io import save_tensors_atomic
from selfsup.modalities import transform_from_dict

if TYPE_CHECKING:
    from selfsup.api import Pretrained

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# Written into config.json so that load_exported can refuse other directories (a timm export also
# has a config.json and a model.safetensors, under other key names).
CONFIG_KIND = "selfsup-encoder"
CONFIG_VERSION = 1


def encoder_config(model: Pretrained) -> dict[str, Any]:
    """``config.json`` of the safetensors format: everything :func:`load_exported` needs."""
    return {
        "kind": CONFIG_KIND,
        "version": CONFIG_VERSION,
        **model_summary(model),
        "info": model.info.to_dict(),
        "transform": model.transform.to_dict(),
        "input": describe_input(model.transform),
    }


@EXPORTERS.register("safetensors")
def export_safetensors(model: Pretrained, directory: Path) -> dict[str, Any]:
    """The encoder's state dict and a JSON config that rebuilds it (every encoder, every modality)."""
    save_tensors_atomic(directory / WEIGHTS, model.encoder.state_dict(), metadata={"format": "pt"})
    write_json(directory / CONFIG, encoder_config(model))
    return {
        "files": {
            WEIGHTS: "the encoder's state dict (its own parameter names)",
            CONFIG: "encoder registry name and options, data description, input transform",
        },
        "usage": (
            "from selfsup.export import load_exported, load_exported_transform\n"
            f"encoder = load_exported('{EXPORT_DIR}')  # eval mode\n"
            "pooled = encoder(inputs).pooled  # inputs normalised as config.json 'input' says"
        ),
    }


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a selfsup safetensors export (no {CONFIG})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path} is corrupt: {error}") from None
    if not isinstance(config, dict) or config.get("kind") != CONFIG_KIND:
        raise CheckpointError(
            f"{config_path} does not describe a selfsup encoder (kind {CONFIG_KIND!r} expected); "
            "a timm export loads with timm, an ONNX export with onnxruntime"
        )
    if config.get("version") != CONFIG_VERSION:
        raise CheckpointError(
            f"{config_path} has version {config.get('version')!r}; this selfsup reads {CONFIG_VERSION}"
        )
    return config


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild the encoder of a ``safetensors`` export (a directory) in eval mode, without unpickling."""
    path = Path(path)
    config = _read_config(path)
    try:
        info = DataInfo.from_dict(config["info"])
        run_config = Config()
        run_config.encoder = Component(name=config["encoder"], params=dict(config["encoder_params"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path / CONFIG} is corrupt: {error}") from None
    encoder = build_encoder(run_config, info)
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read {path / WEIGHTS} (missing or corrupt?): {error}") from None
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as error:
        name = config["encoder"]
        raise CheckpointError(f"the weights in {path} do not fit encoder {name!r}: {error}") from None
    declared = config.get("embed_dim")
    if encoder.embed_dim != declared:
        raise CheckpointError(f"{path}: rebuilt encoder has embed_dim {encoder.embed_dim}, not {declared}")
    return encoder.to(device).eval()


def load_exported_transform(path: str | Path) -> InputTransform:
    """The input transform of a ``safetensors`` export: stored samples → what the encoder takes."""
    config = _read_config(Path(path))
    try:
        return transform_from_dict(config["transform"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{Path(path) / CONFIG} has no valid transform: {error}") from None
