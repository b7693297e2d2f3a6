"""The ``onnx`` format: the encoder as ``model.onnx``, checked with ONNX Runtime before it is kept.

The graph takes ``input``: the NORMALISED encoder input of a batch (images ``(B, 3, S, S)`` after
resizing and mean/std normalization, vectors ``(B, D)`` after standardization; ``export.json``
repeats the numbers) with a dynamic batch axis, and returns ``embedding`` (the pooled ``(B, D)``
output) and, unless ``hidden=False``, ``last_hidden_state``. It is traced with PyTorch's
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs only ``onnx``,
runs offline, takes 0.5 s for a ResNet-18 (the ``torch.export``-based one: 4 s, and it also needs
``onnxscript`` and converts opsets after the fact) and writes the same bytes on every run. In eval
mode BatchNorm is folded into the convolutions.

Verification: a batch of another size than the traced one (so the dynamic axis is exercised) goes
through ONNX Runtime and through the PyTorch encoder; every output must agree within
``atol + rtol * |expected|`` (1e-4 each, fp32), else the export fails with
:class:`~selfsup.export.base.ExportError` and nothing is written. The batch is made of
random stored samples passed through the run's own transform (uint8 data such as images), or
standard-normal inputs for float data (standardized vectors are ~N(0, 1)); ``data=SPEC`` verifies
on the first samples of a real data source instead.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.data.base import Batch
from selfsup.encoders import Encoder
from selfsup.errors import ConfigError
from selfsup.export.base import EXPORT_DIR, EXPORTERS, ExportError
from selfsup.io import write_atomic

if TYPE_CHECKING:
    from selfsup.api import Pretrained

MODEL = "model.onnx"
INPUT = "input"
OUTPUTS = ("embedding", "last_hidden_state")
OPSET = 17  # supported by every onnxruntime release since 1.14
TRACE_BATCH = 2
_RANDOM_INPUTS = {
    True: "random stored samples through the run's input transform",
    False: "standard-normal inputs (the scale of standardized data)",
}


def require(module: str) -> ModuleType:
    """Import an optional dependency of the export, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the onnx export needs the {module!r} package: pip install 'selfsup[export]'"
        ) from None


class EncoderOutputs(nn.Module):
    """Tensors in, tensors out: ``x`` → ``(pooled, last_hidden_state)`` or ``pooled`` alone."""

    def __init__(self, encoder: Encoder, hidden: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.encoder(x)
        return (out.pooled, out.last_hidden_state) if self.hidden else out.pooled


def example_inputs(model: Pretrained, n: int, seed: int, data: str | None = None) -> Tensor:
    """A batch of ``n`` normalised encoder inputs (see the module docstring for where they come from)."""
    if data is not None:
        dataset = model.load_data(data)
        batch = dataset.batch(torch.arange(min(n, len(dataset))))
        return model.transform(batch)[0].float().cpu()
    info = model.info
    if info.sample_shape is None:
        raise ConfigError(
            f"ONNX export of variable-length {info.modality} encoders (inputs with a padding mask) is not "
            "supported yet"
        )
    generator = torch.Generator().manual_seed(seed)
    shape = (n, *info.sample_shape)
    if info.dtype == "uint8":
        stored = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        batch = Batch(inputs=stored, labels=torch.full((n,), -1), indices=torch.arange(n))
        return model.transform(batch)[0].float().cpu()
    return torch.randn(shape, generator=generator)


def _export(wrapper: EncoderOutputs, example: Tensor, path: Path, names: list[str], opset: int) -> None:
    dynamic = {name: {0: "batch"} for name in [INPUT, *names]}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated, and the tracer that the encoders'
        # shape checks become constants: true, and harmless, since only the batch axis varies.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def verify(
    path: Path, wrapper: EncoderOutputs, inputs: Tensor, names: list[str], atol: float, rtol: float
) -> dict[str, tuple[float, tuple[int, ...]]]:
    """Run ``inputs`` through ONNX Runtime and PyTorch; per output, the largest absolute difference
    and the shape.

    Raises :class:`ExportError` when an output differs by more than ``atol + rtol * |expected|``.
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(names, {INPUT: inputs.numpy()})
    with torch.no_grad():
        expected = wrapper(inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    differences = {}
    for name, actual, reference in zip(names, got, expected):
        reference_np = reference.float().numpy()
        if actual.shape != reference_np.shape:
            raise ExportError(
                f"ONNX Runtime output {name!r} has shape {actual.shape}, PyTorch {reference_np.shape}"
            )
        difference = float(np.abs(actual - reference_np).max()) if actual.size else 0.0
        differences[name] = (difference, tuple(reference_np.shape))
        if not np.allclose(actual, reference_np, atol=atol, rtol=rtol):
            raise ExportError(
                f"ONNX Runtime does not reproduce the PyTorch encoder: output {name!r} differs by up to "
                f"{difference:.3g} (allowed: atol {atol} + rtol {rtol} x |expected|) on a batch of "
                f"{inputs.shape[0]}; the export was not written. Try another opset (opset=...) or the "
                "safetensors format"
            )
    return differences


def _supports(model: Pretrained) -> str | None:
    if model.info.sample_shape is None:
        return f"variable-length {model.info.modality} inputs (a padding mask) are not supported by it yet"
    return None


@EXPORTERS.register("onnx", supports=_supports)
def export_onnx(
    model: Pretrained,
    directory: Path,
    *,
    opset: int = OPSET,
    hidden: bool = True,
    batch_size: int = 4,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    data: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """ONNX graph of the encoder (dynamic batch), verified with ONNX Runtime (every encoder)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"onnx export: batch_size must be a positive integer, got {batch_size!r}")
    onnx = require("onnx")
    ort = require("onnxruntime")
    # A CPU copy in eval mode: the caller's model stays where it is.
    wrapper = EncoderOutputs(copy.deepcopy(model.encoder).cpu(), hidden).eval()
    names = list(OUTPUTS if hidden else OUTPUTS[:1])
    example = example_inputs(model, TRACE_BATCH, seed)
    path = directory / MODEL
    try:
        write_atomic(path, lambda tmp: _export(wrapper, example, tmp, names, opset))
    except Exception as error:  # the exporter's errors are many kinds; the user gets one
        raise ExportError(
            f"torch.onnx.export failed for encoder {model.config.encoder.name!r} (opset {opset}): {error}. "
            "Try another opset (opset=...) or the safetensors format"
        ) from error
    onnx.checker.check_model(str(path))
    check = example_inputs(model, batch_size, seed + 1, data)
    checked = verify(path, wrapper, check, names, atol, rtol)
    return {
        "files": {MODEL: f"ONNX graph (opset {opset}), input {INPUT!r}, outputs {', '.join(names)}"},
        "opset": opset,
        "inputs": {INPUT: {"shape": ["batch", *check.shape[1:]], "dtype": "float32"}},
        "outputs": {name: {"shape": ["batch", *shape[1:]]} for name, (_, shape) in checked.items()},
        "verification": {
            "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
            "batch_size": int(check.shape[0]),
            "inputs": data or _RANDOM_INPUTS[model.info.dtype == "uint8"],
            "max_abs_difference": {name: difference for name, (difference, _) in checked.items()},
            "atol": atol,
            "rtol": rtol,
        },
        "usage": (
            "import onnxruntime\n"
            f"session = onnxruntime.InferenceSession('{EXPORT_DIR}/{MODEL}')\n"
            f"embedding = session.run(['embedding'], {{'{INPUT}': x}})[0]  # x: float32, normalised as "
            "export.json 'input' says"
        ),
    }
