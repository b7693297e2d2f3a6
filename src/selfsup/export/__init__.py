"""Export a pretrained encoder out of selfsup: ``selfsup export RUN_DIR --format FORMAT``.

One path for every modality; formats are entries of :data:`EXPORTERS`, so later issues add formats,
not commands. Each export is a directory (default ``RUN/export/<format>/``) written atomically, with
an ``export.json`` saying what is inside, what the input is (the run's normalization) and how to
load it:

* ``safetensors`` — every encoder: ``model.safetensors`` + ``config.json``; :func:`load_exported`
  rebuilds it (no unpickling).
* ``timm`` — ResNet-18/50 with the ImageNet stem as timm's headless ``resnet18`` / ``resnet50``.
* ``onnx`` — every fixed-size encoder: ``model.onnx`` checked against PyTorch with ONNX Runtime.
* ``hf`` — the ``wav2vec2`` speech encoder as a transformers ``Wav2Vec2Model`` / ``HubertModel``
  directory (option ``hf_model``), checked against transformers when it is installed.

>>> selfsup.export_run("runs/x", "onnx")            # runs/x/export/onnx/model.onnx
>>> encoder = load_exported(export_run("runs/x", "safetensors"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup.errors import ConfigError
from selfsup.export import hf as _hf  # noqa: F401  (registers the formats)
from selfsup.export import onnx as _onnx  # noqa: F401
from selfsup.export import timm as _timm  # noqa: F401
from selfsup.export.base import (
    EXPORT_DIR,
    EXPORTERS,
    MANIFEST,
    ExportError,
    atomic_directory,
    check_supported,
    describe_input,
    model_summary,
    working_formats,
    write_manifest,
)
from selfsup.export.native import load_exported, load_exported_transform

if TYPE_CHECKING:
    from selfsup.api import Pretrained

# Supplied by export_model, never by the user.
_PROVIDED = ("model", "directory")


def _check_options(format: str, options: dict[str, Any]) -> None:
    EXPORTERS.get(format)  # an unknown format fails here, with a suggestion
    try:
        EXPORTERS.check_kwargs(format, options, provided=_PROVIDED)
    except TypeError as error:
        raise ConfigError(str(error)) from None


def export_model(model: Pretrained, format: str, out: str | Path, **options: Any) -> Path:
    """Export a loaded run (``selfsup.load``) as ``format`` into the directory ``out``; returns it."""
    from selfsup import __version__

    _check_options(format, options)
    check_supported(format, model)
    target = Path(out)
    with atomic_directory(target) as tmp:
        details = EXPORTERS.get(format)(model=model, directory=tmp, **options)
        manifest = {
            "format": format,
            "selfsup_version": __version__,
            "run": str(model.run_dir),
            **model_summary(model),
            "input": describe_input(model.transform),
            **details,
        }
        manifest["usage"] = str(manifest.get("usage", "")).replace(EXPORT_DIR, str(target))
        write_manifest(tmp, manifest)
    return target


def export_run(
    run_dir: str | Path, format: str, out: str | Path | None = None, *, device: str = "cpu", **options: Any
) -> Path:
    """Export the encoder of ``run_dir`` as ``format`` (see :data:`EXPORTERS`); default out
    ``RUN/export/<format>/``. ``options`` go to the exporter (e.g. ``opset=18`` for onnx)."""
    from selfsup.api import load

    _check_options(format, options)  # before loading the run: a typo fails at once
    model = load(run_dir, device)
    target = Path(out) if out is not None else Path(run_dir) / "export" / format
    return export_model(model, format, target, **options)


__all__ = [
    "EXPORTERS",
    "MANIFEST",
    "ExportError",
    "atomic_directory",
    "export_model",
    "export_run",
    "load_exported",
    "load_exported_transform",
    "working_formats",
]
