"""The export contract: a registry of formats, atomic output directories and the manifest.

An exporter is registered in :data:`EXPORTERS` as ``exporter(model, directory, **options) -> dict``:
it writes its files into ``directory`` (an empty temporary directory that becomes the export once
everything succeeded) and returns what the manifest ``export.json`` should say about them (``files``,
``usage``, ...). It is registered with ``supports=``, a function ``supports(model) -> str | None``
giving the reason a loaded run cannot be exported in that format (None when it can), so that an
unsupported pair fails before anything is written and the message names the formats that work.
Later issues add formats here (ViT for timm, transformers directories), not commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup.augment.base import ImageTransform, InputTransform
from selfsup.augment.vector import VectorTransform
from selfsup.errors import ConfigError, SelfsupError
from selfsup.io import fsync_directory, write_text_atomic
from selfsup.registry import Registry

if TYPE_CHECKING:
    from selfsup.api import Pretrained

MANIFEST = "export.json"
# Exporters write their usage examples with this in place of the export's path (they write into a
# temporary directory); export_model puts the final path in.
EXPORT_DIR = "<export_dir>"

Exporter = Callable[..., dict[str, Any]]
EXPORTERS: Registry[dict[str, Any]] = Registry("export format")


class ExportError(SelfsupError, RuntimeError):
    """An export could not be produced, or does not reproduce the PyTorch encoder (e.g. ONNX Runtime
    disagrees); nothing was written."""


def unsupported_reason(format: str, model: Pretrained) -> str | None:
    """Why ``model`` cannot be exported as ``format`` (None when it can)."""
    supports: Callable[[Pretrained], str | None] | None = EXPORTERS.metadata(format).get("supports")
    return None if supports is None else supports(model)


def working_formats(model: Pretrained) -> list[str]:
    """The registered formats that can export ``model``."""
    return [name for name in EXPORTERS.names() if unsupported_reason(name, model) is None]


def check_supported(format: str, model: Pretrained) -> None:
    """Raise a ConfigError naming the formats that work when ``format`` cannot export ``model``."""
    reason = unsupported_reason(format, model)
    if reason is not None:
        others = ", ".join(f for f in working_formats(model) if f != format) or "none"
        raise ConfigError(
            f"cannot export encoder {model.config.encoder.name!r} as {format!r}: {reason}. "
            f"Formats that work for this encoder: {others}."
        )


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success it replaces ``target``.

    A failure removes the temporary directory and leaves ``target`` as it was (absent, or the
    previous export). POSIX cannot rename a directory over a non-empty one, so an existing
    ``target`` is first renamed aside and deleted once the new directory is in place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not mkdtemp: the export gets the usual permissions (umask), not 0700.
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        fsync_directory(tmp)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:  # put the previous export back
                os.replace(old / target.name, target)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        fsync_directory(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe_input(transform: InputTransform) -> dict[str, Any]:
    """What the exported model's input is: the run's input transform, in words and numbers."""
    if isinstance(transform, ImageTransform):
        return {
            "modality": "image",
            "layout": "NCHW float32 RGB",
            "size": [transform.size, transform.size],
            "mean": list(transform.mean),
            "std": list(transform.std),
            "normalization": "x = (rgb / 255 - mean) / std per channel, after resizing the whole image "
            "to size (antialiased bilinear, no crop)",
        }
    if isinstance(transform, VectorTransform):
        return {
            "modality": "vector",
            "layout": "(B, D) float32",
            "width": int(transform.mean.shape[0]),
            "mean": transform.mean.tolist(),
            "std": transform.std.tolist(),
            "normalization": "x = (v - mean) / std per column, with the statistics of the training data",
        }
    return {"modality": transform.modality, "transform": transform.to_dict()}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    return write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def model_summary(model: Pretrained) -> dict[str, Any]:
    """The facts about the exported encoder every manifest repeats."""
    encoder = model.encoder
    return {
        "encoder": model.config.encoder.name,
        "encoder_params": dict(model.config.encoder.params),
        "modality": encoder.modality,
        "embed_dim": int(encoder.embed_dim),
        "num_layers": int(encoder.num_layers),
        "method": model.config.method.name,
        "data": model.config.data.source,
    }


__all__ = [
    "EXPORTERS",
    "EXPORT_DIR",
    "MANIFEST",
    "ExportError",
    "Exporter",
    "atomic_directory",
    "check_supported",
    "describe_input",
    "model_summary",
    "unsupported_reason",
    "working_formats",
    "write_json",
    "write_manifest",
]
