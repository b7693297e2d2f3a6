"""HuBERT: masked prediction of k-means units (Hsu et al., IEEE/ACM TASLP 2021).

The encoder's Transformer sees the conv features with spans of frames replaced by its mask embedding
(view policy ``speech_mask``) and predicts, at every masked frame, the frame's discrete unit: the nearest
k-means centre of MFCCs (iteration 0) or of a layer of the previous iteration's model
(:mod:`selfsup.units`, :mod:`selfsup.hubert_pipeline`). Following fairseq's ``HubertModel`` and
``HubertCriterion`` (``fairseq/models/hubert/hubert.py``, ``fairseq/criterions/hubert_criterion.py``):

* ``final_proj``: Linear ``embed_dim → final_dim`` (256); ``label_embs`` ``(num_clusters, final_dim)``
  initialised ``U(0, 1)``; logits ``cos(final_proj(c_t), e_k) / logit_temp`` (0.1). fairseq scores the
  positive first and every class as a negative with the positive's copy set to ``-inf``, which is a softmax
  over the ``num_clusters`` classes: :func:`cosine_logits` computes that directly;
* loss ``(w_m · Σ_masked CE + w_u · Σ_unmasked CE) / n + feature_pen · mean(conv_features²)`` where ``n``
  counts the frames of the terms with a non-zero weight (fairseq's ``sample_size``, by which its gradient
  is divided); ``pred_masked_weight`` 1, ``pred_nomask_weight`` 0, ``loss_weights [10]`` as HuBERT Base;
* targets aligned with the crop: a view cropped at sample ``s`` starts at label ``round(s · label_rate /
  sample_rate)`` (fairseq ``collater_frm_label``); frames without a label (the clip's labels end up to
  ``label_tolerance`` frames before its encoder frames) get no loss, as fairseq trims to the shorter.

Deliberate differences: frames past the labels are left out of the loss rather than cut from the
Transformer's input; the feature penalty averages only over valid frames (fairseq includes padding), so
padding never changes the loss; one label set (no ``untie_final_proj`` over several label sets).

Targets: ``targets`` names a units directory (:func:`selfsup.units.save_units`); without it iteration 0 is
fitted when the method is built: MFCCs of the training set at the encoder's frame rate, k-means on a seeded
``kmeans_fraction`` of the clips (at most ``kmeans_max_frames`` frames), labels for every clip, saved under
``RUN/units`` so a resumed run reuses them. In a distributed run rank 0 fits and writes them and every rank
reads the same files (a barrier between), so the labels are identical on every process by construction,
whatever the floating-point behaviour of each process's threads. The labels are a plain attribute on the
CPU (``(T,)`` int32 for the whole corpus): not in the state dict (too big; rebuilt identically from the
units directory on resume) and never broadcast by DDP.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.augment.base import InputTransform
from selfsup.data.base import Dataset
from selfsup.encoders.base import Encoder, pool_unmasked, require_capabilities
from selfsup.errors import ConfigError, DataError
from selfsup.losses.wav2vec2 import feature_penalty_sums
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.units import KMeansOptions, SplitLabels, Units, build_units, load_units

UNITS_DIR = "units"


# ------------------------------------------------------------------------------ pure functions


def cosine_logits(x: Tensor, label_embs: Tensor, temperature: float) -> Tensor:
    """``(N, K)`` logits ``cos(x_n, e_k) / temperature`` for ``x`` ``(N, D)`` and ``label_embs`` ``(K, D)``,
    in fp32 (fairseq ``compute_nce``: ``torch.cosine_similarity(x.float(), targets.float())``, eps 1e-8)."""
    x, e = x.float(), label_embs.float()
    dots = x @ e.T
    norms = x.norm(dim=1, keepdim=True) * e.norm(dim=1).unsqueeze(0)
    return dots / norms.clamp_min(1e-8) / temperature


def start_frames(crop_starts: Tensor, sample_rate: float, label_rate: float) -> Tensor:
    """The first label ``(B,)`` of views cropped at ``crop_starts`` ``(B,)`` samples: ``round(s · label_rate
    / sample_rate)`` (fairseq ``HubertDataset.collater_frm_label``)."""
    return torch.round(crop_starts.double() * (label_rate / sample_rate)).to(torch.int64)


def align_targets(
    labels: Tensor, offsets: Tensor, indices: Tensor, starts: Tensor, frame_lengths: Tensor, num_frames: int
) -> tuple[Tensor, Tensor]:
    """Frame targets ``(B, num_frames)`` int64 (-1: no target) and the labels missing per view ``(B,)``.

    ``labels`` ``(T,)`` every clip's labels concatenated, ``offsets`` ``(N + 1,)`` where each clip's start;
    view ``b`` shows clip ``indices[b]`` from label ``starts[b]`` on, with ``frame_lengths[b]`` valid frames.
    Frame ``j`` of view ``b`` gets ``labels[offsets[i] + starts[b] + j]`` while the clip has labels left."""
    clip_start = offsets[indices] + starts
    available = (offsets[indices + 1] - clip_start).clamp_min(0)
    valid_count = torch.minimum(frame_lengths, available)
    positions = torch.arange(num_frames).unsqueeze(0)
    valid = positions < valid_count.unsqueeze(1)
    where = (clip_start.unsqueeze(1) + positions).clamp(0, max(labels.numel() - 1, 0))
    targets = torch.where(valid, labels[where].to(torch.int64), torch.full_like(where, -1))
    return targets, (frame_lengths - available).clamp_min(0)


# ------------------------------------------------------------------------------ the method


# The encoder capabilities HuBERT uses (checked by the builder and by the model's constructor).
NEEDS = ("local_features", "contextualize", "mask:replace")


class HuBERT(Method):
    """HuBERT masked prediction around a ``wav2vec2``-style encoder (``local_features`` / ``contextualize``).

    Args:
        encoder: an audio encoder of the contract (``frame_rate``, ``output_lengths``, the two halves).
        targets: the frame labels of the training data, in data-set order
            (:class:`~selfsup.units.SplitLabels`).
        label_rate: labels per second of ``targets``; must equal ``encoder.frame_rate``.
        num_clusters: the codebook size (classes of the prediction).
        final_dim, logit_temp, pred_masked_weight, pred_nomask_weight, feature_pen: as fairseq (256, 0.1,
            1, 0, 10).
        label_tolerance: labels a clip may lack at its end relative to its encoder frames (fairseq warns
            beyond 0.1 s; 1-2 frames come from the feature windows); more is an error.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"audio": "speech_mask"}

    def __init__(
        self,
        encoder: Encoder,
        targets: SplitLabels,
        label_rate: float,
        num_clusters: int,
        *,
        sample_rate: float,
        final_dim: int = 256,
        logit_temp: float = 0.1,
        pred_masked_weight: float = 1.0,
        pred_nomask_weight: float = 0.0,
        feature_pen: float = 10.0,
        label_tolerance: int = 2,
    ) -> None:
        super().__init__(encoder)
        require_capabilities("hubert", encoder, NEEDS)
        check_label_rate(label_rate, encoder)
        if pred_masked_weight < 0 or pred_nomask_weight < 0 or pred_masked_weight + pred_nomask_weight <= 0:
            raise ValueError("pred_masked_weight and pred_nomask_weight must be >= 0, not both 0")
        if logit_temp <= 0:
            raise ValueError(f"logit_temp must be > 0, got {logit_temp}")
        self.final_proj = nn.Linear(encoder.embed_dim, final_dim)
        self.label_embs = nn.Parameter(torch.empty(num_clusters, final_dim).uniform_())
        self.num_clusters, self.logit_temp = int(num_clusters), float(logit_temp)
        self.pred_masked_weight, self.pred_nomask_weight = (
            float(pred_masked_weight),
            float(pred_nomask_weight),
        )
        self.feature_pen, self.label_tolerance = float(feature_pen), int(label_tolerance)
        self.sample_rate, self.label_rate = float(sample_rate), float(label_rate)
        check_label_lengths(targets, encoder, self.label_tolerance)
        top = int(targets.labels.max()) if targets.labels.numel() else -1
        if top >= num_clusters or (targets.labels.numel() and int(targets.labels.min()) < 0):
            raise ConfigError(f"the targets use units up to {top}, outside the {num_clusters} clusters")
        # Plain attributes, not buffers: not in checkpoints, not moved nor broadcast by DDP.
        self.labels = targets.labels.to(torch.int32).cpu()
        self.offsets = targets.offsets.cpu()
        self._warned_penalty = False

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        if views.indices is None:
            raise ValueError("HuBERT looks its targets up by views.indices; the view policy must pass them")
        x, padding = views.inputs[0], views.padding_mask(0)
        mask = views.mask(0)
        local = self.encoder.local_features(x, padding)  # type: ignore[operator]
        frame_padding = local.padding_mask
        b, f = local.projected.shape[:2]
        if mask is None:
            mask = torch.zeros(b, f, dtype=torch.bool, device=x.device)
        context = self.encoder.contextualize(  # type: ignore[operator]
            local.projected, padding_mask=frame_padding, mask=mask
        )
        out = context.output
        valid = (
            torch.ones(b, f, dtype=torch.bool, device=x.device) if frame_padding is None else ~frame_padding
        )
        targets = self._targets(views, valid.sum(dim=1).cpu(), f).to(x.device)
        has_target = valid & (targets >= 0)
        masked, unmasked = has_target & mask, has_target & ~mask
        with torch.autocast(device_type=x.device.type, enabled=False):
            hidden = out.last_hidden_state.float()
            total = hidden.new_zeros(())
            count = 0
            logs: dict[str, Tensor] = {}
            for name, where, weight in (
                ("m", masked, self.pred_masked_weight),
                ("u", unmasked, self.pred_nomask_weight),
            ):
                if weight == 0 and name == "u":
                    continue
                logits = cosine_logits(self.final_proj(hidden[where]), self.label_embs, self.logit_temp)
                goal = targets[where]
                ce = F.cross_entropy(logits, goal, reduction="sum")
                if weight > 0:
                    total = total + weight * ce
                    count += int(where.sum())
                with torch.no_grad():
                    correct = (
                        (logits.argmax(dim=1) == goal).float().sum() if goal.numel() else ce.new_zeros(())
                    )
                    logs[f"acc_{name}"] = correct / max(goal.numel(), 1)
                    logs[f"loss_{name}"] = ce.detach() / max(goal.numel(), 1)
            # fairseq: Σ CE / n + pen over the *global* batch's n predicted frames; dividing by
            # n_global / world makes DDP's gradient average equal it however the frames fall on ranks.
            loss = total / dist.per_process_share(torch.tensor(float(count)))
            penalty = self._feature_penalty(local, valid)
            if penalty is not None and self.feature_pen != 0:
                loss = loss + self.feature_pen * penalty
                logs["features_pen"] = penalty.detach()
        logs["masked_frames"] = torch.tensor(float(masked.sum()))
        logs["masked_accuracy"] = logs.pop("acc_m")
        # The encoder's output over the frames it saw (not the mask embedding's): the online probe's input.
        pooled = pool_unmasked(out.last_hidden_state.detach(), frame_padding, mask)
        return MethodOutput(loss=loss, logs=logs, embeddings=pooled, features=pooled)

    def _targets(self, views: Views, frame_lengths: Tensor, num_frames: int) -> Tensor:
        assert views.indices is not None
        indices = views.indices.cpu()
        if int(indices.max()) + 1 >= self.offsets.numel() or int(indices.min()) < 0:
            raise DataError(
                f"sample index {int(indices.max())} has no targets ({self.offsets.numel() - 1} clips)"
            )
        crop = views.crop_start(0)
        starts = (
            torch.zeros_like(indices)
            if crop is None
            else start_frames(crop.cpu(), self.sample_rate, self.label_rate)
        )
        targets, missing = align_targets(
            self.labels, self.offsets, indices, starts, frame_lengths, num_frames
        )
        worst = int(missing.argmax())
        if int(missing[worst]) > self.label_tolerance:
            raise DataError(
                f"clip {int(indices[worst])} has {int(missing[worst])} fewer labels than encoder frames "
                f"(more than label_tolerance={self.label_tolerance}); its labels were computed at another "
                "rate or on other audio"
            )
        return targets

    def _feature_penalty(self, local: Any, valid: Tensor) -> Tensor | None:
        """fairseq's ``features_pen`` (:func:`selfsup.losses.wav2vec2.feature_penalty`, over valid frames);
        None for an encoder whose ``local_features`` gives no ``conv_features`` (skipped, once warned)."""
        raw = getattr(local, "conv_features", None)
        if raw is None:
            if self.feature_pen != 0 and not self._warned_penalty:
                warnings.warn(
                    "the encoder's local_features() gives no conv_features (before the LayerNorm): "
                    "HuBERT's feature penalty is skipped",
                    stacklevel=3,
                )
                self._warned_penalty = True
            return None
        return dist.global_mean(*feature_penalty_sums(raw, ~valid))


def check_label_rate(label_rate: float, encoder: Encoder) -> None:
    """A ConfigError unless the labels per second equal the encoder's frames per second."""
    frame_rate = encoder.frame_rate
    if frame_rate is None:
        raise ConfigError("HuBERT needs an audio encoder that declares its frame_rate")
    if not math.isclose(float(label_rate), float(frame_rate), rel_tol=1e-6):
        raise ConfigError(
            f"the targets have {label_rate:g} labels per second but the encoder makes {frame_rate:g} frames "
            f"per second; compute the units at {frame_rate:g} Hz (selfsup hubert / "
            f"selfsup.units.build_units with frame_rate={frame_rate:g}) or use an encoder with "
            f"{label_rate:g} frames per second"
        )


def check_label_lengths(targets: SplitLabels, encoder: Encoder, tolerance: int) -> None:
    """A ConfigError when a clip's label count differs from its encoder frames by more than ``tolerance``
    (fairseq ``verify_label_lengths``, which only warns, beyond 0.1 s)."""
    if targets.samples.numel() == 0:
        return
    expected = encoder.output_lengths(targets.samples)
    diff = (targets.lengths - expected).abs()
    worst = int(diff.argmax())
    if int(diff[worst]) > tolerance:
        raise ConfigError(
            f"clip {targets.ids[worst]!r}: {int(targets.lengths[worst])} labels for {int(expected[worst])} "
            "encoder "
            f"frames ({int(targets.samples[worst])} samples), more than label_tolerance={tolerance} apart; "
            "the units were computed at another frame rate or on other audio"
        )


# ------------------------------------------------------------------------------ the factory


def _resolve_targets(
    encoder: Encoder,
    dataset: Dataset | None,
    transform: InputTransform | None,
    run_dir: Path | None,
    targets: str | None,
    target_features: str,
    target_layer: int | None,
    options: KMeansOptions,
) -> Units:
    if targets is not None:
        return load_units(targets)
    if dataset is None or transform is None:
        raise ConfigError(
            "hubert needs targets: set method.targets to a units directory (selfsup hubert writes them), "
            "or pretrain with training data so that iteration 0 is fitted (MFCC k-means)"
        )
    if encoder.frame_rate is None:
        raise ConfigError("HuBERT needs an audio encoder that declares its frame_rate")
    if target_features == "mfcc":
        source: Any = "mfcc"
        run = None
    else:
        from selfsup.api import load

        if target_layer is None:
            raise ConfigError("method.target_features names a run: set method.target_layer too (e.g. 6)")
        model = load(target_features)
        source, run = (model.encoder, int(target_layer)), target_features
    directory = None if run_dir is None else Path(run_dir) / UNITS_DIR

    def build() -> Units:
        return build_units(
            source,
            dataset,
            transform,
            frame_rate=encoder.frame_rate,
            options=options,
            directory=directory,
            run=run,
        )

    if directory is None or not dist.is_distributed():
        return build()
    # Rank 0 fits and writes; the others read the same files: identical labels on every process.
    if dist.is_main():
        build()
    dist.barrier()
    return load_units(directory)


@METHODS.register("hubert", needs=NEEDS)
def hubert(
    encoder: Encoder,
    *,
    dataset: Dataset | None = None,
    transform: InputTransform | None = None,
    run_dir: Path | None = None,
    targets: str | None = None,
    num_clusters: int = 100,
    target_features: str = "mfcc",
    target_layer: int | None = None,
    kmeans_fraction: float = 0.1,
    kmeans_max_frames: int = 200_000,
    kmeans_n_init: int = 3,
    kmeans_iters: int = 100,
    kmeans_seed: int = 0,
    final_dim: int = 256,
    logit_temp: float = 0.1,
    pred_masked_weight: float = 1.0,
    pred_nomask_weight: float = 0.0,
    feature_pen: float = 10.0,
    label_tolerance: int = 2,
) -> HuBERT:
    """HuBERT: masked prediction of k-means units (MFCC iteration 0 fitted in the run, or method.targets)."""
    options = KMeansOptions(
        num_clusters=num_clusters,
        fraction=kmeans_fraction,
        max_frames=kmeans_max_frames,
        n_init=kmeans_n_init,
        iters=kmeans_iters,
        seed=kmeans_seed,
    )
    units = _resolve_targets(
        encoder, dataset, transform, run_dir, targets, target_features, target_layer, options
    )
    check_label_rate(units.label_rate, encoder)
    if targets is not None and units.num_clusters != num_clusters:
        raise ConfigError(
            f"the codebook in {targets} has {units.num_clusters} clusters but "
            f"method.num_clusters={num_clusters}"
        )
    if dataset is None:
        split = units.splits.get("train")
        if split is None:
            raise ConfigError(f"the units in {targets} have no 'train' labels")
    else:
        found = units.find(dataset)
        if found is None:
            names = ", ".join(f"{n} ({s.source})" for n, s in units.splits.items()) or "none"
            raise DataError(
                f"the units in {units.directory} label other data (splits: {names}), not the training data "
                f"{dataset.source!r}; label it with the same codebook (selfsup hubert --label-splits)"
            )
        split = found
    sample_rate = units.meta.get("sample_rate") or (dataset.info.sample_rate if dataset is not None else None)
    if sample_rate is None:
        raise ConfigError("the units do not record their sample rate")
    return HuBERT(
        encoder,
        split,
        units.label_rate,
        units.num_clusters,
        sample_rate=float(sample_rate),
        final_dim=final_dim,
        logit_temp=logit_temp,
        pred_masked_weight=pred_masked_weight,
        pred_nomask_weight=pred_nomask_weight,
        feature_pen=feature_pen,
        label_tolerance=label_tolerance,
    )


hubert.default_view_policies = HuBERT.default_view_policies  # type: ignore[attr-defined]
hubert.ddp_options = HuBERT.ddp_options  # type: ignore[attr-defined]

__all__ = [
    "HuBERT",
    "align_targets",
    "check_label_lengths",
    "check_label_rate",
    "cosine_logits",
    "hubert",
    "start_frames",
]
