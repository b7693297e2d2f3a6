"""Discrete speech units: frame features → k-means codebook → one label per frame, saved and reloaded.

HuBERT's targets (Hsu et al. 2021, "HuBERT: Self-Supervised Speech Representation Learning by Masked
Prediction of Hidden Units") and GSLM's units (Lakhotia et al. 2021) are the index of the nearest k-means
centre of each frame's features: 39-dim MFCCs (13 coefficients + deltas + delta-deltas) for HuBERT's
iteration 0, a Transformer layer of the previous model afterwards. The steps follow fairseq's
``examples/hubert/simple_kmeans``:

* features (``dump_mfcc_feature.py`` / ``dump_hubert_feature.py``): :func:`frame_features`, from
  :class:`~selfsup.audio.frontend.MFCC` at the encoder's frame rate or from ``hidden_states[layer]`` of an
  encoder (``output_layer=L`` in fairseq is 1-based over the Transformer blocks, which is our
  ``hidden_states[L]``: index 0 is the Transformer's input), through the run's input transform;
* fit (``learn_kmeans.py``): :func:`fit_codebook` on a seeded subset — like fairseq's ``--percent``, a
  ``fraction`` of the clips (whole utterances, ``np.random.choice`` without replacement there), then at
  most ``max_frames`` frames of them. Deliberate difference: our :func:`~selfsup.eval.cluster.kmeans`
  (Lloyd, greedy k-means++, ``n_init`` restarts) instead of scikit-learn's ``MiniBatchKMeans``: on a capped
  subset full batches are affordable, and it is deterministic for a seed on a device;
* labels (``dump_km_label.py``): :func:`assign`, the nearest centre in squared Euclidean distance.

MFCC frames are not centred (``center=False``, like Kaldi's ``snip_edges``): frame ``i`` covers samples
``[i·hop, i·hop + n_fft)``, the receptive field of the ``i``-th frame of wav2vec 2.0's convolutional
feature extractor (400 samples, stride 320 at 16 kHz), so label ``i`` describes what encoder frame ``i``
sees, with ``1 + (L - 400) // 320`` labels for ``L`` samples.

A units directory (written atomically, ``meta.json`` last, so it exists exactly when the rest does)::

    codebook.safetensors        centers (K, D) float32
    labels/<split>.safetensors  labels (T,) int32 of every clip concatenated, lengths (N,), samples (N,)
    labels/<split>.ids.json     the clip ids, in data-set order
    meta.json                   features (MFCC options, or run + layer + weights digest), input transform,
                                sample and label rate, the fit's settings and statistics, the splits

:func:`tokenize` writes the units of any audio set (JSON lines ``{"id", "units"}``), optionally with
consecutive repeats collapsed as textless-lib / GSLM's ``dedup`` does.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from selfsup.augment.base import InputTransform
from selfsup.data.base import Dataset
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError, DataError
from selfsup.eval.cluster import kmeans, nearest_centers
from selfsup.eval.features import FrameFeatures
from selfsup.io import save_tensors_atomic, write_atomic, write_text_atomic

UNITS_FORMAT = 1
META_FILE = "meta.json"
CODEBOOK_FILE = "codebook.safetensors"
# fairseq's learn_kmeans uses --percent 0.1 on LibriSpeech's 960 h; the cap bounds the fit's memory
# (max_frames x D floats) and time on any corpus.
DEFAULT_FRACTION = 0.1
DEFAULT_MAX_FRAMES = 200_000
# Window of the MFCCs: 25 ms (400 samples at 16 kHz), Kaldi's default frame length.
MFCC_WINDOW_S = 0.025

FeatureSource = str | nn.Module | tuple[Encoder, int]


# ------------------------------------------------------------------------------ frame features


def mfcc_options(sample_rate: float, frame_rate: float) -> dict[str, Any]:
    """The :class:`~selfsup.audio.frontend.MFCC` options of HuBERT's iteration-0 features at ``frame_rate``
    frames per second: 13 coefficients + deltas + delta-deltas (39), 25 ms windows, not centred."""
    from selfsup.audio.frontend import hop_length_for

    try:
        hop = hop_length_for(sample_rate, frame_rate)
    except ValueError as error:
        raise ConfigError(f"MFCC targets: {error}") from None
    window = round(MFCC_WINDOW_S * sample_rate)
    return {
        "sample_rate": float(sample_rate),
        "n_mfcc": 13,
        "n_fft": window,
        "win_length": window,
        "hop_length": hop,
        "deltas": True,
        "center": False,
    }


class _EncoderLayer(nn.Module):
    """``(waveform, padding_mask) -> (hidden_states[layer] (B, F, D), frame padding (B, F) | None)``."""

    def __init__(self, encoder: Encoder, layer: int) -> None:
        super().__init__()
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= encoder.num_layers:
            raise ConfigError(
                f"layer {layer!r} does not exist: the encoder has hidden states 0..{encoder.num_layers}"
            )
        self.encoder, self.layer = encoder, layer

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out = self.encoder(x, padding_mask=padding_mask)
        return out.hidden_states[self.layer], out.padding_mask


def _frontend(source: FeatureSource, dataset: Dataset, frame_rate: float | None) -> nn.Module:
    if isinstance(source, tuple):
        return _EncoderLayer(*source)
    if isinstance(source, nn.Module):
        return source
    if source != "mfcc":
        raise ValueError(f"source must be 'mfcc', an MFCC module or (encoder, layer), got {source!r}")
    from selfsup.audio.frontend import MFCC

    sample_rate = dataset.info.sample_rate
    if sample_rate is None or frame_rate is None:
        raise ValueError("MFCC features need the data's sample rate and the encoder's frame_rate")
    return MFCC(**mfcc_options(sample_rate, frame_rate))


def _batches(
    frontend: nn.Module,
    dataset: Dataset,
    transform: InputTransform,
    indices: Tensor,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Per batch of clips (in ``indices`` order): valid frames ``(n, D)`` float32, frames per clip ``(B,)``
    and samples per clip ``(B,)``, computed in eval mode without gradients."""
    flags = [(m, m.training) for m in frontend.modules()]
    frontend.eval()
    try:
        with torch.no_grad():
            for start in range(0, indices.numel(), batch_size):
                batch = dataset.batch(indices[start : start + batch_size]).to(device)
                x, padding_mask = transform(batch)
                if batch.lengths is not None:
                    samples = batch.lengths.cpu()
                elif padding_mask is not None:
                    samples = (~padding_mask).sum(dim=1).cpu()
                else:
                    samples = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
                feats, frame_padding = frontend(x, padding_mask)
                if frame_padding is None:
                    keep = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
                else:
                    keep = ~frame_padding
                yield feats[keep].float().cpu(), keep.sum(dim=1).cpu(), samples.to(torch.int64)
    finally:
        for module, training in flags:
            module.training = training


def frame_features(
    source: FeatureSource,
    dataset: Dataset,
    transform: InputTransform,
    *,
    frame_rate: float | None = None,
    indices: Tensor | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> FrameFeatures:
    """Per-frame features of the clips of ``dataset`` (all, or ``indices`` in that order).

    ``source``: ``"mfcc"`` (39-dim MFCCs at ``frame_rate`` frames per second, see :func:`mfcc_options`), any
    front-end module ``(waveform, padding_mask) -> (features (B, F, D), frame padding (B, F) | None)``, or
    ``(encoder, layer)`` for ``encoder(x).hidden_states[layer]``. Each batch goes through ``transform`` on
    ``device`` (where an encoder must already be). Returns the valid frames ``(T, D)`` float32 of every clip
    concatenated with ``(N,)`` frames per clip; padding never reaches them.
    """
    frontend = _frontend(source, dataset, frame_rate)
    chosen = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    values, lengths = [], []
    for frames, counts, _ in _batches(frontend, dataset, transform, chosen, batch_size, torch.device(device)):
        values.append(frames)
        lengths.append(counts)
    if not values:
        return FrameFeatures(values=torch.zeros(0, 0), lengths=torch.zeros(0, dtype=torch.int64))
    return FrameFeatures(values=torch.cat(values), lengths=torch.cat(lengths).to(torch.int64))


# ------------------------------------------------------------------------------ codebook


def sample_clips(num_clips: int, fraction: float, seed: int) -> Tensor:
    """Sorted indices of ``ceil(num_clips * fraction)`` clips drawn without replacement with ``seed``
    (fairseq ``learn_kmeans.py --percent``: whole utterances, so every frame of a chosen clip is seen)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    count = min(num_clips, math.ceil(num_clips * fraction))
    order = torch.randperm(num_clips, generator=torch.Generator().manual_seed(seed))
    return order[:count].sort().values


@dataclass
class Codebook:
    """centers ``(K, D)`` float32; ``inertia``: mean squared distance of the fitted frames to their centre;
    ``frames``: how many frames the fit saw."""

    centers: Tensor
    inertia: float
    frames: int


def fit_codebook(
    features: Tensor,
    num_clusters: int,
    *,
    seed: int = 0,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    n_init: int = 3,
    iters: int = 100,
) -> Codebook:
    """k-means of ``features`` ``(T, D)`` into ``num_clusters`` centres, on at most ``max_frames`` frames
    drawn with ``seed`` (all when None or fewer), with :func:`~selfsup.eval.cluster.kmeans` (``n_init``
    restarts of at most ``iters`` Lloyd iterations; fairseq's MiniBatchKMeans uses ``max_iter=100``). The
    same inputs and seed give the same codebook on the same device."""
    if features.ndim != 2:
        raise ValueError(f"features must be (T, D), got {tuple(features.shape)}")
    x = features
    if max_frames is not None and x.shape[0] > max_frames:
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:max_frames]
        x = x[pick.sort().values.to(x.device)]
    if x.shape[0] < num_clusters:
        raise ValueError(
            f"k-means into {num_clusters} clusters needs at least as many frames, got {x.shape[0]}"
        )
    _, centers, inertia = kmeans(x, num_clusters, n_init=n_init, iters=iters, seed=seed)
    return Codebook(centers=centers.cpu(), inertia=inertia / x.shape[0], frames=int(x.shape[0]))


def assign(features: Tensor, codebook: Codebook | Tensor) -> Tensor:
    """The nearest centre ``(T,)`` int64 of every frame of ``features`` ``(T, D)`` (fairseq ``ApplyKmeans``:
    squared Euclidean distance)."""
    centers = codebook.centers if isinstance(codebook, Codebook) else codebook
    return nearest_centers(features, centers)


# ------------------------------------------------------------------------------ units on disk


@dataclass
class SplitLabels:
    """Frame labels of one data set: ``labels`` ``(T,)`` int32 of every clip concatenated in data-set order,
    ``lengths`` ``(N,)`` labels per clip, ``samples`` ``(N,)`` samples per clip, the clip ``ids``, and the
    data set's ``source`` and ``fingerprint``."""

    labels: Tensor
    lengths: Tensor
    samples: Tensor
    ids: list[str]
    source: str
    fingerprint: str

    @property
    def offsets(self) -> Tensor:
        """``(N + 1,)`` where each clip's labels start (the last entry is ``T``)."""
        return torch.cat([self.lengths.new_zeros(1), self.lengths.cumsum(0)])

    def clip(self, index: int) -> Tensor:
        offsets = self.offsets
        return self.labels[int(offsets[index]) : int(offsets[index + 1])]


@dataclass
class Units:
    """A codebook with the labels it gave: ``centers`` ``(K, D)``, ``meta`` (see the module docstring) and
    the labelled ``splits`` by name; ``directory`` where it is stored (None: in memory only)."""

    centers: Tensor
    meta: dict[str, Any]
    splits: dict[str, SplitLabels] = field(default_factory=dict)
    directory: Path | None = None

    @property
    def num_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def label_rate(self) -> float:
        return float(self.meta["label_rate"])

    def find(self, dataset: Dataset) -> SplitLabels | None:
        """The labels of ``dataset``: the split with its fingerprint, else, when the ids of every clip are
        found in the splits (e.g. ``dataset`` is a subset), labels gathered by id; None otherwise."""
        fingerprint = dataset.fingerprint
        for split in self.splits.values():
            if split.fingerprint == fingerprint:
                return split
        where: dict[str, tuple[SplitLabels, int]] = {}
        for split in self.splits.values():
            for i, clip_id in enumerate(split.ids):
                where.setdefault(clip_id, (split, i))
        if not all(clip_id in where for clip_id in dataset.ids):
            return None
        clips = [where[clip_id] for clip_id in dataset.ids]
        labels = [s.clip(i) for s, i in clips]
        return SplitLabels(
            labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int32),
            lengths=torch.tensor([len(x) for x in labels], dtype=torch.int64),
            samples=torch.tensor([int(s.samples[i]) for s, i in clips], dtype=torch.int64),
            ids=list(dataset.ids),
            source=dataset.source,
            fingerprint=fingerprint,
        )


def split_name(spec: str) -> str:
    """A file-name-safe name for the labels of the data spec ``spec``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")[-60:] or "data"


def save_units(directory: str | Path, units: Units) -> Path:
    """Write ``units`` to ``directory`` (codebook, every split's labels, then ``meta.json``), atomically."""
    directory = Path(directory)
    save_tensors_atomic(directory / CODEBOOK_FILE, {"centers": units.centers})
    for name in units.splits:
        _save_split(directory, name, units.splits[name])
    meta = dict(units.meta)
    meta["splits"] = {
        name: {
            "source": s.source,
            "fingerprint": s.fingerprint,
            "clips": len(s.ids),
            "frames": int(s.labels.numel()),
        }
        for name, s in units.splits.items()
    }
    write_text_atomic(directory / META_FILE, json.dumps(meta, indent=1) + "\n")
    units.meta, units.directory = meta, directory
    return directory


def _save_split(directory: Path, name: str, split: SplitLabels) -> None:
    labels_dir = directory / "labels"
    tensors = {"labels": split.labels.to(torch.int32), "lengths": split.lengths, "samples": split.samples}
    save_tensors_atomic(labels_dir / f"{name}.safetensors", tensors)
    write_text_atomic(labels_dir / f"{name}.ids.json", json.dumps(split.ids) + "\n")


def load_units(directory: str | Path) -> Units:
    """Read a units directory written by :func:`save_units` (safetensors and JSON: nothing unpickled)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise ConfigError(
            f"{directory} is not a units directory (no {META_FILE}); make one with `selfsup hubert`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != UNITS_FORMAT:
            raise ConfigError(
                f"{meta_path} has format {meta.get('format')!r}; this selfsup reads {UNITS_FORMAT}"
            )
        centers = load_file(str(directory / CODEBOOK_FILE))["centers"]
        splits = {}
        for name, info in meta.get("splits", {}).items():
            tensors = load_file(str(directory / "labels" / f"{name}.safetensors"))
            ids = json.loads((directory / "labels" / f"{name}.ids.json").read_text(encoding="utf-8"))
            splits[name] = SplitLabels(
                labels=tensors["labels"],
                lengths=tensors["lengths"],
                samples=tensors["samples"],
                ids=list(ids),
                source=info["source"],
                fingerprint=info["fingerprint"],
            )
    except (OSError, SafetensorError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(
            f"the units in {directory} are incomplete or corrupt ({error}); delete and rebuild them"
        ) from None
    return Units(centers=centers, meta=meta, splits=splits, directory=directory)


# ------------------------------------------------------------------------------ building units


@dataclass(frozen=True)
class KMeansOptions:
    """How a codebook is fitted: ``fraction`` of the training clips (seeded), at most ``max_frames`` of
    their frames, ``n_init`` k-means restarts of at most ``iters`` iterations, ``seed``."""

    num_clusters: int = 100
    fraction: float = DEFAULT_FRACTION
    max_frames: int | None = DEFAULT_MAX_FRAMES
    n_init: int = 3
    iters: int = 100
    seed: int = 0


def feature_description(
    source: FeatureSource, dataset: Dataset, frame_rate: float | None, run: str | Path | None = None
) -> dict[str, Any]:
    """What :func:`tokenize` needs to recompute the features: MFCC options, or the run (``run``: the
    directory the encoder comes from), layer and weights."""
    if isinstance(source, tuple):
        from selfsup.eval.cache import weights_fingerprint

        encoder, layer = source
        return {
            "kind": "encoder",
            "run": None if run is None else str(Path(run).resolve()),
            "layer": int(layer),
            "weights": weights_fingerprint(encoder),
        }
    if source == "mfcc":
        assert dataset.info.sample_rate is not None and frame_rate is not None
        return {"kind": "mfcc", "mfcc": mfcc_options(dataset.info.sample_rate, frame_rate)}
    return {"kind": "module", "name": type(source).__name__}


def _label(
    frontend: nn.Module,
    centers: Tensor,
    dataset: Dataset,
    transform: InputTransform,
    batch_size: int,
    device: torch.device,
) -> SplitLabels:
    labels, lengths, samples = [], [], []
    everything = torch.arange(len(dataset))
    for frames, counts, clip_samples in _batches(
        frontend, dataset, transform, everything, batch_size, device
    ):
        labels.append(
            assign(frames, centers).to(torch.int32)
            if frames.numel()
            else frames.new_zeros(0, dtype=torch.int32)
        )
        lengths.append(counts)
        samples.append(clip_samples)
    return SplitLabels(
        labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int32),
        lengths=torch.cat(lengths).to(torch.int64) if lengths else torch.zeros(0, dtype=torch.int64),
        samples=torch.cat(samples) if samples else torch.zeros(0, dtype=torch.int64),
        ids=list(dataset.ids),
        source=dataset.source,
        fingerprint=dataset.fingerprint,
    )


def build_units(
    source: FeatureSource,
    train: Dataset,
    transform: InputTransform,
    *,
    frame_rate: float,
    options: KMeansOptions = KMeansOptions(),
    splits: dict[str, Dataset] | None = None,
    directory: str | Path | None = None,
    run: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> Units:
    """Fit a codebook on ``train`` (``options``) and label ``train`` (split ``"train"``) and every data set
    of ``splits``; written to ``directory`` when given. ``run``: the run directory of an ``(encoder, layer)``
    source, recorded so that :func:`tokenize` can recompute its features. Resumable: a directory that already
    holds a
    codebook fitted the same way on the same data is reused, and only the missing splits are labelled."""
    dev = torch.device(device)
    frontend = _frontend(source, train, frame_rate)
    frontend_device = next((p.device for p in frontend.parameters()), None)
    if frontend_device is None:
        frontend.to(dev)  # an MFCC front-end (buffers only) follows the data
    wanted = {"train": train, **(splits or {})}
    fit = {
        "num_clusters": options.num_clusters,
        "fraction": options.fraction,
        "max_frames": options.max_frames,
        "n_init": options.n_init,
        "iters": options.iters,
        "seed": options.seed,
        "data": train.fingerprint,
        "source": train.source,
    }
    meta = {
        "format": UNITS_FORMAT,
        "num_clusters": options.num_clusters,
        "features": feature_description(source, train, frame_rate, run),
        "transform": transform.to_dict(),
        "sample_rate": train.info.sample_rate,
        "label_rate": float(frame_rate),
        "fit": fit,
    }
    units = _reusable(directory, meta)
    if units is None:
        clips = sample_clips(len(train), options.fraction, options.seed)
        features = frame_features(
            frontend, train, transform, indices=clips, batch_size=batch_size, device=dev
        )
        assert isinstance(features.values, Tensor)
        try:
            codebook = fit_codebook(
                features.values.to(dev),
                options.num_clusters,
                seed=options.seed,
                max_frames=options.max_frames,
                n_init=options.n_init,
                iters=options.iters,
            )
        except ValueError as error:
            raise ConfigError(
                f"k-means targets: {error} ({len(clips)} of {len(train)} clips drawn with fraction "
                f"{options.fraction}); use fewer clusters or a larger fraction of the training data"
            ) from None
        meta["fit"] = {
            **fit,
            "clips_seen": int(clips.numel()),
            "frames_seen": codebook.frames,
            "inertia_per_frame": codebook.inertia,
            "dim": int(codebook.centers.shape[1]),
        }
        units = Units(centers=codebook.centers, meta=meta)
    for name, dataset in wanted.items():
        if name not in units.splits or units.splits[name].fingerprint != dataset.fingerprint:
            units.splits[name] = _label(frontend, units.centers.to(dev), dataset, transform, batch_size, dev)
            if directory is not None:
                save_units(directory, units)
    if directory is not None and units.directory is None:
        save_units(directory, units)
    return units


def _reusable(directory: str | Path | None, meta: dict[str, Any]) -> Units | None:
    """The units in ``directory`` if they were fitted as ``meta`` says (same features, data and k-means)."""
    if directory is None or not (Path(directory) / META_FILE).is_file():
        return None
    units = load_units(directory)
    saved = {k: v for k, v in units.meta.get("fit", {}).items() if k in meta["fit"]}
    same = (
        saved == meta["fit"]
        and units.meta.get("features") == meta["features"]
        and units.meta.get("transform") == meta["transform"]
        and units.meta.get("label_rate") == meta["label_rate"]
    )
    if not same:
        raise ConfigError(
            f"{directory} holds units fitted differently (other features, data or k-means settings); "
            "delete it or choose another directory"
        )
    return units


# ------------------------------------------------------------------------------ tokenize


def dedup(units: list[int]) -> list[int]:
    """Consecutive repeats collapsed to one (textless-lib / GSLM ``dedup``): ``[1, 1, 2, 2, 1]`` gives
    ``[1, 2, 1]``."""
    return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]


def resolve_units_dir(path: str | Path) -> Path:
    """A units directory itself, or the targets of a HuBERT run: ``RUN/units`` (fitted inside the run) or
    the directory its ``method.targets`` names."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    if (path / "units" / META_FILE).is_file():
        return path / "units"
    if (path / "config.yaml").is_file():
        from selfsup.config import load_config

        targets = load_config(path / "config.yaml").method.params.get("targets")
        if targets and (Path(targets) / META_FILE).is_file():
            return Path(targets)
    raise ConfigError(
        f"{path} holds no codebook: give a units directory (with {META_FILE}) or a HuBERT run directory "
        "(RUN/units, or the run's method.targets)"
    )


def _units_source(
    units: Units, data_spec: str, device: torch.device
) -> tuple[nn.Module, Dataset, InputTransform]:
    features = units.meta["features"]
    if features["kind"] == "encoder":
        from selfsup.api import load
        from selfsup.eval.cache import weights_fingerprint

        if not features.get("run"):
            raise ConfigError(
                f"the codebook in {units.directory} does not say which run's encoder it was fitted on"
            )
        model = load(features["run"], device=str(device))
        if weights_fingerprint(model.encoder) != features["weights"]:
            raise ConfigError(
                f"the encoder of {features['run']} changed since the codebook in {units.directory} was "
                "fitted on it"
            )
        return (
            _EncoderLayer(model.encoder, int(features["layer"])),
            model.load_data(data_spec),
            model.transform,
        )
    if features["kind"] != "mfcc":
        raise ConfigError(
            f"the codebook in {units.directory} was fitted on features tokenize cannot recompute"
        )
    from selfsup.audio.frontend import MFCC
    from selfsup.data import load_dataset
    from selfsup.modalities import transform_from_dict

    dataset = load_dataset(data_spec, sample_rate=units.meta["sample_rate"])
    return MFCC(**features["mfcc"]).to(device), dataset, transform_from_dict(units.meta["transform"])


def tokenize(
    run_or_units_dir: str | Path,
    data_spec: str,
    out: str | Path,
    dedup: bool = False,
    *,
    batch_size: int = 8,
    device: str = "cpu",
) -> Path:
    """Write the discrete units of every clip of ``data_spec`` to ``out`` (JSON lines ``{"id", "units"}``, in
    data-set order), with the codebook of a units directory or a HuBERT run (:func:`resolve_units_dir`); the
    features are recomputed as the codebook was fitted (MFCC, or the layer of the run's encoder). ``dedup``
    collapses consecutive repeats. Returns ``out``."""
    units = load_units(resolve_units_dir(run_or_units_dir))
    dev = torch.device(device)
    frontend, dataset, transform = _units_source(units, data_spec, dev)
    labels = _label(frontend, units.centers.to(dev), dataset, transform, batch_size, dev)
    offsets = labels.offsets.tolist()
    collapse = dedup
    lines = []
    for i, clip_id in enumerate(labels.ids):
        clip = labels.labels[offsets[i] : offsets[i + 1]].tolist()
        lines.append(json.dumps({"id": clip_id, "units": _dedup(clip) if collapse else clip}))

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)

    return write_atomic(out, write)


_dedup = dedup


def add_tokenize_command(commands: Any) -> argparse.ArgumentParser:
    """``selfsup tokenize``: add the sub-command to ``commands`` (an argparse sub-parsers object)."""
    p = commands.add_parser("tokenize", help="write the discrete units (k-means codebook) of an audio set")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--units", help="units directory (codebook + meta.json), e.g. OUT/iter1/units")
    which.add_argument("--run", help="HuBERT run directory: its codebook (RUN/units or its method.targets)")
    p.add_argument("--data", required=True, help="audio source to tokenize")
    p.add_argument("--out", required=True, help='output JSON lines: one {"id", "units"} per clip')
    p.add_argument("--dedup", action="store_true", help="collapse consecutive repeated units (GSLM)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=tokenize_command)
    return p


def tokenize_command(args: argparse.Namespace) -> int:
    """Handler of ``selfsup tokenize``."""
    path = tokenize(
        args.units or args.run,
        args.data,
        args.out,
        args.dedup,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"wrote the units of {args.data} to {path}")
    return 0


__all__ = [
    "Codebook",
    "KMeansOptions",
    "SplitLabels",
    "Units",
    "add_tokenize_command",
    "assign",
    "build_units",
    "dedup",
    "fit_codebook",
    "frame_features",
    "load_units",
    "mfcc_options",
    "resolve_units_dir",
    "sample_clips",
    "save_units",
    "split_name",
    "tokenize",
    "tokenize_command",
]
