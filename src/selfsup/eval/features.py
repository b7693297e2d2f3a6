"""Feature extraction for any modality: a frozen encoder over a data set, pooled or per frame, any
set of layers, cached on disk per checkpoint.

The features are what every probe works on (kNN, linear, weighted-layer, clustering, …), so they
are extracted once, in eval mode, through the run's deterministic input transform (no
augmentation), and kept as float32 on the CPU. Three shapes:

* pooled, ``layers=None``: ``(N, embed_dim)`` (``encoder(x).pooled``; with ``pooling="max"`` the
  global max of the last hidden state instead);
* pooled per layer, ``layers=[...]``: ``{layer: (N, C_layer)}``, each hidden state pooled with
  :func:`~selfsup.encoders.base.pool_hidden_state` (``pooling="mean"``) or :func:`max_pool_hidden_state`
  (``"max"``), padding excluded; with ``stack=True`` one
  ``(N, L, D)`` tensor for weighted-layer probes (the layers must share their width);
* per frame, ``pooling="none"``: :class:`FrameFeatures`, the unpadded frames/tokens of every sample
  concatenated ``(T, D)`` (or ``(T, L, D)`` stacked) with their ``(N,)`` lengths; convolutional maps
  count their ``H × W`` positions as frames.

With ``cache_dir`` the arrays are written to disk as they are computed (memory stays bounded) and
reused while the encoder weights, input transform, data, layers and pooling are unchanged
(:mod:`selfsup.eval.cache`). Streaming data sets are decoded ahead by the prefetching loader.
"""

from __future__ import annotations

import contextlib
import operator
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from selfsup.augment.base import InputTransform
from selfsup.data.base import Dataset
from selfsup.data.loader import PrefetchLoader, default_depth, default_workers
from selfsup.encoders.base import Encoder, EncoderOutput, pool_hidden_state
from selfsup.eval.cache import EntryWriter, feature_key, read_entry, weights_fingerprint

POOLINGS = ("mean", "max", "none")


def max_pool_hidden_state(hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Global max of one hidden state ``(B, C, H, W)`` / ``(B, T, C)`` / ``(B, C)`` → ``(B, C)`` float32,
    over space or over unpadded tokens (``padding_mask`` ``(B, T)``, True = padded): the second pooling
    of the linear-probe grid (max-pooled maps often probe better than averaged ones for early layers)."""
    hidden = hidden.float()
    if hidden.ndim == 2:
        return hidden
    if hidden.ndim == 4:
        return hidden.amax(dim=(2, 3))
    if hidden.ndim == 3:
        if padding_mask is not None and padding_mask.shape == hidden.shape[:2]:
            hidden = hidden.masked_fill(padding_mask.unsqueeze(-1), float("-inf"))
        return hidden.amax(dim=1)
    raise ValueError(f"cannot pool a hidden state of shape {tuple(hidden.shape)}")


@dataclass
class FrameFeatures:
    """Per-frame features: ``values`` ``(T, D)`` (or ``(T, L, D)``, or one per layer in ``layers``)
    of all samples' valid frames, concatenated in sample order; ``lengths`` ``(N,)`` frames per sample."""

    values: Tensor | dict[int, Tensor]
    lengths: Tensor

    @property
    def offsets(self) -> Tensor:
        """``(N + 1,)`` start of each sample's frames (the last entry is ``T``)."""
        return torch.cat([self.lengths.new_zeros(1), self.lengths.cumsum(0)])

    def sample(self, index: int) -> Tensor | dict[int, Tensor]:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        if isinstance(self.values, dict):
            return {k: v[start:end] for k, v in self.values.items()}
        return self.values[start:end]


Extracted = Tensor | dict[int, Tensor] | FrameFeatures


def _positive_int(name: str, value: object) -> int:
    try:
        number = operator.index(value)  # ints and numpy integers, not floats or bools
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _check_encoder_device(encoder: Encoder, device: torch.device) -> None:
    param = next(encoder.parameters(), None)
    if param is None:
        return
    same = param.device.type == device.type and (device.index is None or param.device.index == device.index)
    if not same:
        raise ValueError(
            f"the encoder is on {param.device} but extraction was asked to run on {device}; "
            f"move it first with encoder.to({str(device)!r})"
        )


def _check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty sequence of ints, got {layers!r}")
    count = num_layers + 1
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(
                f"layer {layer!r} does not exist: the encoder has {count} hidden states "
                f"(indices 0..{num_layers}, or negative from the end)"
            )
    return list(dict.fromkeys(layers))


def _frames(hidden: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(B, T, D)`` tokens or ``(B, C, H, W)`` maps → the valid frames ``(n, D)`` and ``(B,)`` counts."""
    if hidden.ndim == 4:
        hidden = hidden.flatten(2).transpose(1, 2)  # (B, H*W, C)
    if hidden.ndim == 2:
        hidden = hidden.unsqueeze(1)  # one "frame" per sample
    if hidden.ndim != 3:
        raise ValueError(f"cannot take frames of a hidden state of shape {tuple(hidden.shape)}")
    if padding_mask is None or hidden.shape[1] != padding_mask.shape[1]:
        keep = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    else:
        keep = ~padding_mask
    return hidden[keep].float(), keep.sum(dim=1)


class _RamSink:
    """Same interface as :class:`~selfsup.eval.cache.EntryWriter`, in memory."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[Tensor]] = {}

    def allocate(self, name: str, shape: tuple[int, ...], dtype: str = "float32") -> Tensor:
        return torch.empty(shape, dtype=getattr(torch, dtype))

    def append(self, name: str, rows: Tensor) -> None:
        self.chunks.setdefault(name, []).append(rows.detach().cpu())

    def appended(self, name: str, width: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        parts = self.chunks.get(name)
        return torch.cat(parts) if parts else torch.zeros((0, *width), dtype=dtype)


@torch.no_grad()
def extract_features(
    encoder: Encoder,
    dataset: Dataset,
    transform: InputTransform,
    *,
    layers: Sequence[int] | None = None,
    stack: bool = False,
    pooling: str = "mean",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    prefetch: int | None = None,
    progress: bool = False,
) -> Extracted:
    """Features of every sample of ``dataset`` (in order) from ``encoder`` in eval mode.

    Each batch goes through ``transform`` (the run's deterministic input transform) on ``device``
    (where the encoder must already be), then the encoder, under autocast with ``amp_dtype`` if
    given. Every module's training flag is restored afterwards. The result does not depend on
    ``batch_size``. See the module docstring for the shapes returned. ``progress`` shows a bar with
    throughput and ETA on stderr.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if stack and layers is None:
        raise ValueError("stack=True needs layers=[...] (the layers to stack)")
    batch_size = _positive_int("batch_size", batch_size)
    wanted = None if layers is None else _check_layers(layers, encoder.num_layers)
    dev = torch.device(device)
    _check_encoder_device(encoder, dev)

    key = None
    if cache_dir is not None:
        key = feature_key(
            weights=weights_fingerprint(encoder),
            encoder=type(encoder).__name__,
            transform=transform.to_dict(),
            data=dataset.fingerprint,
            layers=wanted,
            stack=stack,
            pooling=pooling,
        )
        cached = read_entry(Path(cache_dir), key)
        if cached is not None:
            return _assemble(cached[1], wanted, stack, pooling)

    sink: Any = EntryWriter(Path(cache_dir), key) if cache_dir is not None and key is not None else _RamSink()
    try:
        keys: list[int | None] = [None] if wanted is None else list(wanted)
        collector = _Collector(sink, len(dataset), keys, pooling, encoder.embed_dim)
        loading = _Loading(batch_size, workers, prefetch, progress)
        arrays = _run(encoder, dataset, transform, collector, loading, dev, amp_dtype)
        if isinstance(sink, EntryWriter):
            sink.commit({"layers": wanted, "pooling": pooling, "stack": stack, "samples": len(dataset)})
            entry = read_entry(Path(cache_dir), key)  # type: ignore[arg-type]
            if entry is None:
                raise OSError(f"the feature cache entry {key} could not be read back from {cache_dir}")
            arrays = entry[1]
    except BaseException:
        if isinstance(sink, EntryWriter):
            sink.abort()
        raise
    return _assemble(arrays, wanted, stack, pooling)


def _name(layer: int | None) -> str:
    return "pooled" if layer is None else f"layer{layer}"


class _Collector:
    """Receives each batch's encoder output and writes the requested features into ``sink``."""

    def __init__(self, sink: Any, n: int, keys: list[int | None], pooling: str, embed_dim: int) -> None:
        self.sink, self.n, self.keys, self.pooling, self.embed_dim = sink, n, keys, pooling, embed_dim
        self.results: dict[str, Tensor] = {}
        self.lengths = sink.allocate("lengths", (n,), "int64") if pooling == "none" else None
        self.widths: dict[str, tuple[int, ...]] = {}

    def add(self, out: EncoderOutput, start: int) -> None:
        for layer in self.keys:
            name = _name(layer)
            hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
            if self.pooling != "none":
                if self.pooling == "max":
                    feats = max_pool_hidden_state(hidden, out.padding_mask)
                else:
                    feats = out.pooled if layer is None else pool_hidden_state(hidden, out.padding_mask)
                if name not in self.results:
                    self.results[name] = self.sink.allocate(name, (self.n, feats.shape[1]))
                self.results[name][start : start + feats.shape[0]] = feats.float().cpu()
            else:
                frames, counts = _frames(hidden, out.padding_mask)
                self.widths[name] = tuple(frames.shape[1:])
                self.sink.append(name, frames.cpu())
                assert self.lengths is not None
                self.lengths[start : start + counts.shape[0]] = counts.cpu()

    def finish(self) -> dict[str, Tensor]:
        results = dict(self.results)
        if self.n == 0 and self.pooling != "none":
            for layer in self.keys:
                width = self.embed_dim if layer is None else 0
                results[_name(layer)] = self.sink.allocate(_name(layer), (0, width))
        if self.pooling == "none":
            assert self.lengths is not None
            results["lengths"] = self.lengths
            if isinstance(self.sink, _RamSink):
                for layer in self.keys:
                    name = _name(layer)
                    width = self.widths.get(name, (self.embed_dim,))
                    results[name] = self.sink.appended(name, width, torch.float32)
        return results


@dataclass(frozen=True)
class _Loading:
    batch_size: int
    workers: int | None
    prefetch: int | None
    progress: bool


def _run(
    encoder: Encoder,
    dataset: Dataset,
    transform: InputTransform,
    collector: _Collector,
    loading: _Loading,
    dev: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, Tensor]:
    n = len(dataset)
    autocast = (
        torch.autocast(device_type=dev.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    flags = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    size = loading.batch_size
    schedule = [torch.arange(s, min(n, s + size)) for s in range(0, n, size)]
    threads = loading.workers or default_workers()
    depth = loading.prefetch or default_depth(threads)
    loader = PrefetchLoader(dataset, schedule, workers=threads, depth=depth, pin_memory=dev.type == "cuda")
    # Shown only once extraction has taken 2 s: small sets (and the kNN monitor) stay quiet.
    bar = tqdm(
        total=n,
        unit="sample",
        desc="features",
        disable=not loading.progress,
        file=sys.stderr,
        leave=False,
        delay=2.0,
    )
    try:
        start = 0
        for batch in loader:
            x, padding_mask = transform(batch.to(dev))
            with autocast:
                out = encoder(x, padding_mask=padding_mask)
            collector.add(out, start)
            start += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
        loader.close()
        for module, training in flags:
            module.training = training
    return collector.finish()


def _assemble(arrays: dict[str, Tensor], wanted: list[int] | None, stack: bool, pooling: str) -> Extracted:
    keys: list[int | None] = [None] if wanted is None else list(wanted)
    per_layer = {layer: arrays[_name(layer)] for layer in keys}
    values: Tensor | dict[int, Tensor]
    if wanted is None:
        values = per_layer[None]
    elif stack:
        widths = {tuple(v.shape[1:]) for v in per_layer.values()}
        if len(widths) > 1:
            raise ValueError(
                f"cannot stack layers {wanted}: their widths differ ({sorted(widths)}); "
                "ask for layers of one width, or use stack=False"
            )
        values = torch.stack([per_layer[layer] for layer in wanted], dim=1)
    else:
        values = {layer: per_layer[layer] for layer in wanted}  # type: ignore[misc]
    if pooling == "none":
        return FrameFeatures(values=values, lengths=arrays["lengths"])
    return values


def raw_input_features(dataset: Dataset, transform: InputTransform, *, batch_size: int = 1024) -> Tensor:
    """The baseline of every table: the encoder's inputs themselves, flattened ``(N, prod(shape))``
    float32 (normalized images, standardized vectors), through the same transform as the features."""
    n = len(dataset)
    out: Tensor | None = None
    for start in range(0, n, batch_size):
        x, _ = transform(dataset.batch(torch.arange(start, min(n, start + batch_size))))
        flat = x.reshape(x.shape[0], -1).float().cpu()
        if out is None:
            out = torch.empty(n, flat.shape[1])
        out[start : start + flat.shape[0]] = flat
    return out if out is not None else torch.zeros(0, 0)


__all__ = ["POOLINGS", "FrameFeatures", "extract_features", "max_pool_hidden_state", "raw_input_features"]
