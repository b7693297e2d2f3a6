"""Atomic, pickle-free checkpoints: one ``safetensors`` file for tensors and one small JSON file.

A checkpoint for optimizer step ``N`` is the pair ``step_{N:08d}.safetensors`` +
``step_{N:08d}.json``. Tensors are stored under prefixes: ``model/<key>``, ``optim/<path>``
(optimizer state tensors such as ``momentum_buffer``, ``exp_avg``, Adam's ``step``) and
``extra/<key>`` (e.g. RNG states as uint8 tensors) and ``optimizers/<name>/<path>`` (further named
optimizers, such as the online probe's). The JSON holds everything else: the step,
the optimizer's non-tensor state (``param_groups`` hyper-parameters, scalar per-parameter
entries) and the caller's state.

Safety: loading reads JSON and safetensors only, so it never unpickles and never runs code
(no ``torch.load``). Atomicity: each file goes to a temporary file in the same directory, is
flushed and fsync'd, then ``os.replace``-d into place, the JSON last. A checkpoint exists
exactly when its JSON exists, so a crash at any point leaves the previous checkpoint as the
latest one. One writer per directory is assumed (rank 0 under DDP).

JSON encoding of Python values that JSON lacks, so optimizer state dicts round-trip exactly:
a tensor becomes ``{"__tensor__": "<name in the safetensors file>"}``, a tuple
``{"__tuple__": [...]}`` and a dict with non-string keys (the optimizer's integer parameter
ids) ``{"__dict__": [[key, value], ...]}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.optim import Optimizer

from selfsup.errors import CheckpointError
from selfsup.io import TMP_SUFFIX, atomic_path, fsync_directory

FORMAT = "selfsup-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d{8,})\.json$")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    model: the tensors saved as ``model``; optimizer_state: ready for
    ``optimizer.load_state_dict`` (None when no optimizer was saved); extra_tensors: the tensors
    saved as ``extra_tensors``; optimizer_states: the named ``optimizers`` (empty when none); state:
    the caller's JSON state; path: the JSON file.
    """

    step: int
    model: dict[str, Tensor]
    optimizer_state: dict[str, Any] | None
    extra_tensors: dict[str, Tensor] = field(default_factory=dict)
    optimizer_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _stem(step: int) -> str:
    return f"step_{step:08d}"


# ---------------------------------------------------------------------------- encoding


def _encode(obj: Any, path: str, tensors: dict[str, Tensor], *, allow_tensors: bool) -> Any:
    """Python value → JSON value; tensors are moved into ``tensors`` under ``path``."""
    if isinstance(obj, Tensor):
        if not allow_tensors:
            raise TypeError(f"state entry {path!r} is a tensor; pass tensors through extra_tensors instead")
        if path in tensors:
            raise ValueError(f"two checkpoint tensors would both be stored as {path!r}; rename one of them")
        # clone: safetensors rejects tensors that share storage (and views of larger buffers).
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {
            "__tuple__": [
                _encode(v, f"{path}/{i}", tensors, allow_tensors=allow_tensors) for i, v in enumerate(obj)
            ]
        }
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors, allow_tensors=allow_tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {
                k: _encode(v, f"{path}/{k}", tensors, allow_tensors=allow_tensors) for k, v in obj.items()
            }
        return {
            "__dict__": [
                [
                    _encode(k, f"{path}/key", tensors, allow_tensors=False),
                    _encode(v, f"{path}/{k}", tensors, allow_tensors=allow_tensors),
                ]
                for k, v in obj.items()
            ]
        }
    raise TypeError(
        f"cannot store {type(obj).__name__} at {path!r} in a checkpoint: only tensors, numbers, strings, "
        "None, bools, lists, tuples and dicts are allowed (no pickle)"
    )


def _decode(obj: Any, tensors: dict[str, Tensor], where: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__tensor__"}:
        name = obj["__tensor__"]
        if name not in tensors:
            raise CheckpointError(f"{where}: refers to tensor {name!r}, which its .safetensors file lacks")
        return tensors[name]
    if set(obj) == {"__tuple__"}:
        return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
    if set(obj) == {"__dict__"}:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# ---------------------------------------------------------------------------- public API


def save_checkpoint(
    directory: Path | str,
    step: int,
    *,
    model: dict[str, Tensor],
    optimizer: Optimizer | None,
    extra_tensors: dict[str, Tensor] | None,
    state: dict[str, Any],
    keep: int = 2,
    keep_every: int | None = None,
    optimizers: dict[str, Optimizer] | None = None,
) -> Path:
    """Write the checkpoint for ``step`` atomically and return its JSON path.

    ``model`` is a state dict of tensors (e.g. ``method.state_dict()``); ``optimizer`` is saved
    through its ``state_dict()``; ``extra_tensors`` holds further tensors (RNG states from
    ``torch.Generator.get_state()``, …); ``state`` is JSON-able user state (no tensors). After
    writing, only the newest ``keep`` checkpoints are kept (never deleting the one just written),
    besides every checkpoint whose step is a multiple of ``keep_every`` (e.g. for choosing a checkpoint
    by label-free scores afterwards), and files left by an interrupted save are removed.
    ``optimizers`` are further named optimizers (e.g. the online probe's), stored apart from the
    method's ``optimizer`` and read back as :attr:`Checkpoint.optimizer_states`.
    """
    directory = Path(directory)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint just written is always kept), got {keep}")
    if keep_every is not None and keep_every < 1:
        raise ValueError(f"keep_every must be >= 1 (or None), got {keep_every}")
    tensors: dict[str, Tensor] = {}
    for prefix, mapping in (("model", model), ("extra", extra_tensors or {})):
        for key, value in mapping.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{prefix} entry {key!r} is a {type(value).__name__}, not a tensor")
            _encode(value, f"{prefix}/{key}", tensors, allow_tensors=True)
    optim_json = (
        None if optimizer is None else _encode(optimizer.state_dict(), "optim", tensors, allow_tensors=True)
    )
    named = {
        name: _encode(opt.state_dict(), f"optimizers/{name}", tensors, allow_tensors=True)
        for name, opt in (optimizers or {}).items()
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "tensors_file": f"{_stem(step)}.safetensors",
        "optimizer": optim_json,
        "optimizers": named,
        "state": _encode(state, "state", tensors, allow_tensors=False),
    }
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{_stem(step)}.json"
    tensor_path = directory / payload["tensors_file"]
    # Re-saving a step: retract the old checkpoint first, so a crash can never pair the old JSON
    # with the new tensors.
    if json_path.exists():
        json_path.unlink()
        fsync_directory(directory)
    with atomic_path(tensor_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "step": str(step)})
    payload["tensors_bytes"] = tensor_path.stat().st_size
    text = json.dumps(payload, indent=1, allow_nan=True)
    with atomic_path(json_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    _prune(directory, keep=keep, protect=step, keep_every=keep_every)
    return json_path


def _complete_steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    steps = []
    for path in directory.iterdir():
        m = _NAME.match(path.name)
        if m and (directory / f"step_{m.group(1)}.safetensors").is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def _prune(directory: Path, *, keep: int, protect: int, keep_every: int | None = None) -> None:
    steps = _complete_steps(directory)
    doomed = [s for s in steps[:-keep] if s != protect and not (keep_every and s % keep_every == 0)]
    for s in doomed:
        # JSON first: the checkpoint stops existing before its tensors go.
        (directory / f"{_stem(s)}.json").unlink(missing_ok=True)
        (directory / f"{_stem(s)}.safetensors").unlink(missing_ok=True)
    live = set(steps) - set(doomed)
    for path in directory.iterdir():
        m = re.match(r"^step_(\d{8,})\.safetensors$", path.name)
        orphan = m is not None and int(m.group(1)) not in live
        leftover = path.name.startswith(".step_") and path.name.endswith(TMP_SUFFIX)
        if orphan or leftover:
            path.unlink(missing_ok=True)


def list_checkpoints(directory: Path | str) -> list[tuple[int, Path]]:
    """``[(step, JSON path)]`` of every complete checkpoint in ``directory``, oldest first.

    Complete means what :func:`latest_checkpoint` means: the JSON and its tensors both exist.
    """
    directory = Path(directory)
    return [(s, directory / f"{_stem(s)}.json") for s in _complete_steps(directory)]


def latest_checkpoint(directory: Path | str) -> Path | None:
    """The JSON of the highest complete step in ``directory`` (None when there is none).

    Temporary files and a ``.safetensors`` without its ``.json`` (an interrupted save) are ignored.
    """
    directory = Path(directory)
    steps = _complete_steps(directory)
    return directory / f"{_stem(steps[-1])}.json" if steps else None


def load_checkpoint(json_path: Path | str, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; tensors are placed on ``device``.

    Raises :class:`CheckpointError` naming the file when either file is missing, truncated or
    not a selfsup checkpoint.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise CheckpointError(f"checkpoint state file {json_path} does not exist")
    try:
        payload = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{json_path} is not valid JSON (corrupt or truncated checkpoint): {e}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a {FORMAT} state file")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{json_path} has checkpoint version {payload.get('version')}; this selfsup reads {VERSION}"
        )
    for key in ("step", "tensors_file", "tensors_bytes", "optimizer", "state"):
        if key not in payload:
            raise CheckpointError(f"{json_path} lacks the entry {key!r} (corrupt checkpoint)")
    name = payload["tensors_file"]
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise CheckpointError(f"{json_path}: tensors_file must be a .safetensors file name, got {name!r}")
    tensor_path = json_path.parent / name
    if not tensor_path.is_file():
        raise CheckpointError(f"tensor file {tensor_path} of checkpoint {json_path} does not exist")
    size = tensor_path.stat().st_size
    if size != payload["tensors_bytes"]:
        raise CheckpointError(
            f"{tensor_path} has {size} bytes but {json_path.name} expects {payload['tensors_bytes']} "
            "(truncated, or overwritten by another run)"
        )
    try:
        tensors = load_file(str(tensor_path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {tensor_path} (corrupt checkpoint): {e}") from None
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    extra = {k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")}
    optim = payload["optimizer"]
    return Checkpoint(
        step=int(payload["step"]),
        model=model,
        optimizer_state=None if optim is None else _decode(optim, tensors, json_path),
        extra_tensors=extra,
        optimizer_states={
            name: _decode(value, tensors, json_path) for name, value in payload.get("optimizers", {}).items()
        },
        state=_decode(payload["state"], tensors, json_path),
        path=json_path,
    )
