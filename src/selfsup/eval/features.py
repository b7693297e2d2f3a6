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
(:mod:`selfsup.eval.cache`); the entry's size is estimated before anything runs, logged, and refused
above ``cache_limit_gb``. Streaming data sets are decoded ahead by the prefetching loader.

Variable-length data (audio) whose data set declares its samples' lengths (:func:`sample_lengths`)
is batched by duration, as SUPERB / fairseq batch by ``max_tokens``: the samples sorted by length,
longest first, cut so that a batch holds at most ``max_batch_seconds`` of padded audio (and at most
``batch_size`` samples), so little compute goes to padding and memory does not depend on the longest
clip of the set. The encoder runs under :func:`torch.inference_mode`; its output padding mask keeps
padding out of every pooled and per-frame feature, so the features are those of each sample alone
(tested by padding). Results are written back in the data set's order.

Baselines go through the same path: :class:`FrontendEncoder` makes a fixed front-end (log-mel, MFCC)
look like a 0-layer encoder whose pooled output is the mean and standard deviation of its frames.
"""

from __future__ import annotations

import contextlib
import math
import operator
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from selfsup.augment.base import InputTransform
from selfsup.data.base import Dataset, SubsetDataset
from selfsup.data.loader import PrefetchLoader, default_depth, default_workers
from selfsup.encoders.base import Encoder, EncoderOutput, pool_hidden_state
from selfsup.eval.cache import (
    DEFAULT_CACHE_LIMIT_GB,
    EntryWriter,
    check_entry_size,
    estimate_entry_bytes,
    feature_key,
    read_entry,
    weights_fingerprint,
)

POOLINGS = ("mean", "max", "none")
# Padded audio per batch: 60 s at 16 kHz is 960,000 samples, where a wav2vec 2.0 Base's first
# convolution (512 channels at 1/5 of the rate) holds about 400 MB in fp32; fairseq pretrains with
# max_tokens = 1.4M samples (87.5 s) per GPU, with gradients.
DEFAULT_MAX_BATCH_SECONDS = 60.0


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


def mean_std_pool(hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Mean and standard deviation over the valid frames: ``(B, T, C)`` (``padding_mask`` ``(B, T)``,
    True = padded) → ``(B, 2C)`` float32, ``[mean, std]``; the std is the population one
    (``correction=0``), so a one-frame sample has std 0 and a sample with no valid frame gives zeros.
    The statistics pooling of x-vectors (Snyder et al. 2018) and of the log-mel / MFCC baselines."""
    if hidden.ndim != 3:
        raise ValueError(f"mean_std_pool needs (B, T, C) frames, got {tuple(hidden.shape)}")
    hidden = hidden.double()
    if padding_mask is None:
        keep = torch.ones(hidden.shape[:2], dtype=torch.float64, device=hidden.device)
    else:
        keep = (~padding_mask).to(torch.float64)
    count = keep.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1)
    mean = (hidden * keep.unsqueeze(-1)).sum(dim=1) / count
    centred = (hidden - mean.unsqueeze(1)) * keep.unsqueeze(-1)  # two passes: no E[x^2] - E[x]^2
    std = ((centred**2).sum(dim=1) / count).sqrt()
    return torch.cat([mean, std], dim=1).float()


class FrontendEncoder(Encoder):
    """A fixed audio front-end as a 0-layer encoder, for the log-mel / MFCC baselines.

    ``frontend(waveform (B, T), padding_mask (B, T) | None) -> (features (B, F, C), frame padding mask
    (B, F) | None)`` (:class:`selfsup.audio.frontend.LogMelFrontend`, ``MFCC``). ``hidden_states`` is
    ``(features,)``; ``pooled`` is :func:`mean_std_pool` of the valid frames, ``(B, 2C)``. It has no
    trainable parameter; ``dim`` (``C``) is the front-end's ``output_dim``, else read from one forward pass
    of 0.1 s of silence.
    """

    modality = "audio"

    def __init__(self, frontend: nn.Module, dim: int | None = None, sample_rate: float | None = None) -> None:
        super().__init__()
        self.frontend = frontend
        self.num_layers = 0
        rate = sample_rate or getattr(frontend, "sample_rate", None) or 16000
        dim = dim if dim is not None else getattr(frontend, "output_dim", None)
        if dim is None:
            with torch.no_grad():
                probe, _ = frontend(torch.zeros(1, max(1, int(0.1 * float(rate)))), None)
            dim = int(probe.shape[-1])
        self.dim = dim
        self.embed_dim = 2 * dim
        self.frame_rate = getattr(frontend, "frame_rate", None)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.frontend.output_lengths(lengths)  # type: ignore[operator]

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        if mask is not None:
            raise ValueError("a front-end baseline takes no token mask")
        features, frame_mask = self.frontend(x, padding_mask)
        return EncoderOutput(mean_std_pool(features, frame_mask), features, (features,), frame_mask)


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


def sample_lengths(dataset: Dataset) -> Tensor | None:
    """``(N,)`` int64 stored length of every sample of a variable-length data set (audio: samples at
    ``info.sample_rate``), when the data set declares them without decoding (a ``lengths`` attribute;
    a subset takes its base's); None for fixed-size samples or when the data set does not say."""
    if dataset.info.sample_shape is not None:
        return None
    if isinstance(dataset, SubsetDataset):
        base = sample_lengths(dataset.base)
        return None if base is None else base[dataset.positions]
    lengths = getattr(dataset, "lengths", None)
    if lengths is None or callable(lengths):
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (len(dataset),) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        return None
    return lengths.long().cpu()


def duration_batches(lengths: Tensor, *, max_batch_length: int | None, max_batch_size: int) -> list[Tensor]:
    """Batches of sample indices ``(B,)`` for samples of ``lengths`` ``(N,)``, sorted by length (longest
    first; equal lengths in index order) and cut greedily so that every batch's padded size
    ``B x longest`` is at most ``max_batch_length`` (None: no bound) and ``B <= max_batch_size``. A sample
    longer than the bound makes a batch of its own. Every index appears exactly once.

    Longest first, so a batch that does not fit in memory fails at the start, not after an hour.
    """
    max_batch_size = _positive_int("max_batch_size", max_batch_size)
    if max_batch_length is not None:
        max_batch_length = _positive_int("max_batch_length", max_batch_length)
    lengths = lengths.long().cpu()
    order = torch.sort(-lengths, stable=True).indices
    batches, start, n = [], 0, lengths.shape[0]
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        size = (
            max_batch_size if max_batch_length is None else min(max_batch_size, max_batch_length // longest)
        )
        size = max(size, 1)
        batches.append(order[start : start + size])
        start += size
    return batches


def _frame_positions(offsets: Tensor, lengths: Tensor, samples: Tensor) -> Tensor:
    """Rows of the frames of ``samples`` ``(B,)`` in a ``(T, ...)`` array of all samples' frames,
    sample after sample (the order ``_frames`` returns them in)."""
    counts = lengths[samples]
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(total) + torch.repeat_interleave(offsets[samples] - first, counts)


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
    max_batch_seconds: float | None = DEFAULT_MAX_BATCH_SECONDS,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    cache_limit_gb: float = DEFAULT_CACHE_LIMIT_GB,
    workers: int | None = None,
    prefetch: int | None = None,
    progress: bool = False,
) -> Extracted:
    """Features of every sample of ``dataset`` (in order) from ``encoder`` in eval mode.

    Each batch goes through ``transform`` (the run's deterministic input transform) on ``device``
    (where the encoder must already be), then the encoder, under inference mode and under autocast
    with ``amp_dtype`` if given. Every module's training flag is restored afterwards. The result does
    not depend on ``batch_size`` nor ``max_batch_seconds`` (variable-length data: batches by padded
    duration, see the module docstring; None: by count alone). See the module docstring for the
    shapes returned. With ``cache_dir``, an entry estimated above ``cache_limit_gb`` GiB (or above
    the free disk space) is refused with a :class:`~selfsup.errors.ConfigError` before anything runs.
    ``progress`` shows a bar with throughput and ETA on stderr.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if stack and layers is None:
        raise ValueError("stack=True needs layers=[...] (the layers to stack)")
    batch_size = _positive_int("batch_size", batch_size)
    if max_batch_seconds is not None and not (
        isinstance(max_batch_seconds, (int, float))
        and math.isfinite(max_batch_seconds)
        and max_batch_seconds > 0
    ):
        raise ValueError(f"max_batch_seconds must be a positive number or None, got {max_batch_seconds!r}")
    wanted = None if layers is None else _check_layers(layers, encoder.num_layers)
    dev = torch.device(device)
    _check_encoder_device(encoder, dev)
    keys: list[int | None] = [None] if wanted is None else list(wanted)
    plan = _plan(encoder, dataset, batch_size, max_batch_seconds, pooling)

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
        collector = _Collector(
            sink,
            len(dataset),
            keys,
            pooling,
            encoder.embed_dim,
            plan.frame_lengths,
            prefix_tokens=int(getattr(encoder, "num_prefix_tokens", 0)),
        )
        if cache_dir is not None:
            collector.size_check = _SizeCheck(
                Path(cache_dir), cache_limit_gb, len(dataset), len(keys), encoder
            )
            if pooling != "none" or plan.frames is not None:
                collector.size_check(plan.frames)
                collector.size_check = None
        loading = _Loading(batch_size, workers, prefetch, progress)
        arrays = _run(encoder, dataset, transform, collector, loading, plan, dev, amp_dtype)
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


@dataclass(frozen=True)
class _Plan:
    """Which samples go together: ``schedule`` (index batches, in processing order), ``lengths``
    ``(N,)`` stored lengths when the data declares them (then batches are by duration and sorted),
    ``frame_lengths`` ``(N,)`` the encoder's output frames per sample (per-frame features of sorted
    batches are written at their final place) and ``frames`` their sum (or the token grid's), when known."""

    schedule: list[Tensor]
    lengths: Tensor | None
    frame_lengths: Tensor | None
    frames: int | None


def _plan(
    encoder: Encoder, dataset: Dataset, batch_size: int, max_seconds: float | None, pooling: str
) -> _Plan:
    n = len(dataset)
    lengths = sample_lengths(dataset)
    if lengths is None:
        schedule = [torch.arange(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
        grid = encoder.token_grid
        frames = n * math.prod(grid) if pooling == "none" and grid else None
        return _Plan(schedule, None, None, frames)
    rate = dataset.info.sample_rate
    budget = None if max_seconds is None or not rate else max(1, int(max_seconds * float(rate)))
    schedule = duration_batches(lengths, max_batch_length=budget, max_batch_size=batch_size)
    frame_lengths = None
    if pooling == "none":
        frame_lengths = torch.as_tensor(encoder.output_lengths(lengths)).long().cpu()
    frames = None if frame_lengths is None else int(frame_lengths.sum())
    return _Plan(schedule, lengths, frame_lengths, frames)


class _SizeCheck:
    """Estimate the cache entry's size (:func:`~selfsup.eval.cache.estimate_entry_bytes`), log it and
    refuse it above the limit; called up front, or after the first batch when only the first batch
    tells how many frames a sample has (convolutional maps)."""

    def __init__(self, cache_dir: Path, limit_gb: float, samples: int, layers: int, encoder: Encoder) -> None:
        self.cache_dir, self.limit_gb, self.samples, self.layers = cache_dir, limit_gb, samples, layers
        self.width = int(encoder.embed_dim)

    def __call__(self, frames: int | None) -> None:
        nbytes = estimate_entry_bytes(self.samples, self.layers, self.width, frames)
        rows = f"{self.samples} samples" if frames is None else f"{frames} frames of {self.samples} samples"
        what = f"{rows} x {self.layers} layer(s) x {self.width} values x 4 bytes"
        check_entry_size(nbytes, self.cache_dir, limit_gb=self.limit_gb, what=what)


class _Collector:
    """Receives each batch's encoder output and writes the requested features into ``sink``, at the
    rows of the batch's samples (batches may come in any order)."""

    def __init__(
        self,
        sink: Any,
        n: int,
        keys: list[int | None],
        pooling: str,
        embed_dim: int,
        frame_lengths: Tensor | None = None,
        prefix_tokens: int = 0,
    ) -> None:
        self.sink, self.n, self.keys, self.pooling, self.embed_dim = sink, n, keys, pooling, embed_dim
        # A ViT's class / register tokens lead each token sequence; layer features pool (or list) the
        # patch tokens only, so a layer's mean is over the image, as the pooled output of `pool="mean"`.
        self.prefix_tokens = prefix_tokens
        self.results: dict[str, Tensor] = {}
        self.lengths = sink.allocate("lengths", (n,), "int64") if pooling == "none" else None
        self.widths: dict[str, tuple[int, ...]] = {}
        self.frame_lengths = frame_lengths
        self.offsets = (
            None
            if frame_lengths is None
            else torch.cat([frame_lengths.new_zeros(1), frame_lengths.cumsum(0)])
        )
        self.size_check: _SizeCheck | None = None

    def add(self, out: EncoderOutput, rows: Tensor) -> None:
        for layer in self.keys:
            name = _name(layer)
            hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
            if self.prefix_tokens and hidden.ndim == 3:
                hidden = hidden[:, self.prefix_tokens :]
            if self.pooling != "none":
                if self.pooling == "max":
                    feats = max_pool_hidden_state(hidden, out.padding_mask)
                else:
                    feats = out.pooled if layer is None else pool_hidden_state(hidden, out.padding_mask)
                if name not in self.results:
                    self.results[name] = self.sink.allocate(name, (self.n, feats.shape[1]))
                self.results[name][rows] = feats.float().cpu()
                continue
            frames, counts = _frames(hidden, out.padding_mask)
            frames, counts = frames.cpu(), counts.cpu()
            assert self.lengths is not None
            self.lengths[rows] = counts
            if self.size_check is not None:
                per_sample = frames.shape[0] / max(rows.shape[0], 1)
                self.size_check(math.ceil(per_sample * self.n))
                self.size_check = None
            if self.offsets is None or self.frame_lengths is None:  # batches in order: append
                self.widths[name] = tuple(frames.shape[1:])
                self.sink.append(name, frames)
                continue
            expected = self.frame_lengths[rows]
            if not torch.equal(counts, expected):
                raise ValueError(
                    f"the encoder returned {counts.tolist()} valid frames for samples of "
                    f"{expected.tolist()} frames by its output_lengths(); per-frame features need the "
                    "two to agree (and an output padding mask for padded batches)"
                )
            if name not in self.results:
                self.results[name] = self.sink.allocate(name, (int(self.offsets[-1]), *frames.shape[1:]))
            self.results[name][_frame_positions(self.offsets, self.frame_lengths, rows)] = frames

    def finish(self) -> dict[str, Tensor]:
        results = dict(self.results)
        if self.n == 0 and self.pooling != "none":
            for layer in self.keys:
                width = self.embed_dim if layer is None else 0
                results[_name(layer)] = self.sink.allocate(_name(layer), (0, width))
        if self.pooling == "none":
            assert self.lengths is not None
            results["lengths"] = self.lengths
            for layer in self.keys:
                name = _name(layer)
                if name in results:
                    continue
                if isinstance(self.sink, _RamSink):
                    width = self.widths.get(name, (self.embed_dim,))
                    results[name] = self.sink.appended(name, width, torch.float32)
                elif name not in self.sink.arrays:  # no frame at all: an empty array of the entry
                    results[name] = self.sink.allocate(name, (0, self.embed_dim))
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
    plan: _Plan,
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
    threads = loading.workers or default_workers()
    depth = loading.prefetch or default_depth(threads)
    loader = PrefetchLoader(
        dataset, plan.schedule, workers=threads, depth=depth, pin_memory=dev.type == "cuda"
    )
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
        for rows, batch in zip(plan.schedule, loader, strict=True):
            # Inference mode: no autograd bookkeeping at all (faster than no_grad). The collector works
            # outside it, so the features it keeps are ordinary tensors that probes may train on.
            with torch.inference_mode():
                x, padding_mask = transform(batch.to(dev))
                with autocast:
                    out = encoder(x, padding_mask=padding_mask)
            if out.padding_mask is None and batch.lengths is not None:
                _check_unpadded(encoder, out, batch.lengths)
            collector.add(out, rows)
            bar.update(len(batch))
    finally:
        bar.close()
        loader.close()
        for module, training in flags:
            module.training = training
    return collector.finish()


def _check_unpadded(encoder: Encoder, out: EncoderOutput, lengths: Tensor) -> None:
    """An encoder may return no output padding mask only when no output frame is padding (clips whose
    lengths differ by less than a frame); otherwise its features would include the padding."""
    hidden = out.last_hidden_state
    if hidden.ndim != 3:
        return
    frames = torch.as_tensor(encoder.output_lengths(lengths.cpu()))
    if bool((frames < hidden.shape[1]).any()):
        raise ValueError(
            f"{type(encoder).__name__} returned no padding mask for a batch whose clips have "
            f"{sorted(set(frames.tolist()))} frames of {hidden.shape[1]}, so its features would include "
            "the padding; an encoder of variable-length inputs must return EncoderOutput.padding_mask"
        )


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


__all__ = [
    "DEFAULT_MAX_BATCH_SECONDS",
    "POOLINGS",
    "FrameFeatures",
    "FrontendEncoder",
    "duration_batches",
    "extract_features",
    "max_pool_hidden_state",
    "mean_std_pool",
    "raw_input_features",
    "sample_lengths",
]
