"""wav2vec 2.0: self-supervised speech representations by masked contrastive prediction (Baevski et al. 2020).

One forward, as fairseq's ``Wav2Vec2Model.forward`` (``quantize_targets=True``) with its
``Wav2vecCriterion`` (``infonce=True``, ``loss_weights=[0.1, 10]``):

1. ``encoder.local_features(waveform)``: conv features ``z`` (after the feature LayerNorm: fairseq's
   ``unmasked_features``) and their projection (the Transformer's input);
2. targets: the conv features of the *masked* frames, through dropout (``feature_dropout``: fairseq
   ``dropout_features``, 0.1 in Base), the Gumbel product quantizer (:mod:`selfsup.quantizer`) and
   ``project_q`` (Linear ``code_dim → final_dim``) — quantized from the unmasked input;
3. context: ``encoder.contextualize(projected, mask=mask)``, masked frames replaced by the mask
   embedding, then ``final_proj`` (Linear ``embed_dim → final_dim``) at the masked frames;
4. loss ``Σ_t CE_t / n + α · L_d + β · L_f`` (:mod:`selfsup.losses.wav2vec2`): the contrastive
   cross-entropy over ``K`` distractors from the other masked frames of the same utterance summed over
   the ``n`` masked frames and divided by ``n`` (fairseq's ``sample_size``), the diversity loss
   (``α = 0.1``) and the conv feature penalty (``β = 10``), exactly the objective whose gradient fairseq
   applies (it sums, multiplies the extra terms by ``sample_size`` and divides the gradient by it).

Randomness that is not the view's: the distractors and the Gumbel noise of every utterance are drawn
from a generator seeded by ``(seed, optimizer step, sample index)`` (``Views.indices``; the position in
the batch when absent). So they are a function of the step, not of micro-batching, batch order or
padding: ``train.accumulate`` does not change them, a resumed run draws the same ones, and a padded
batch gives the same loss. The quantizer's temperature is :func:`selfsup.quantizer.gumbel_temperature`
of the step. Nothing changes state in ``forward`` (the collapse warning's flag aside).

Differences from fairseq, each deliberate:

* Masks may hold a different number of frames per utterance (fairseq's ``require_same_masks`` trims every
  row to the batch's smallest count); each utterance's distractors come from its own masked frames
  (as transformers' ``_sample_negative_indices``). An utterance with fewer than two masked frames has no
  distractor; its frames are left out of ``L_m`` (and of ``n``) but not of the quantizer's perplexity.
* The feature penalty averages over valid frames only (fairseq: the padded batch).
* A distractor is "identical to the positive" (logit ``-inf``) when its codes equal the positive's in
  every group — the exact form of fairseq's float comparison of the two vectors.
* The normalisation is per process and micro-batch: with DDP or ``train.accumulate`` each part's mean
  over its own masked frames is averaged, where fairseq divides the sum over all of them by their total
  count (equal when the parts hold equally many masked frames, as with equal-length clips).
* Logged losses are in nats (fairseq logs bits: ``/ ln 2``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.encoders.base import Encoder, pool_unmasked, require_capabilities
from selfsup.losses.wav2vec2 import (
    codebook_diversity,
    feature_penalty_sums,
    perplexity_of_mean,
    sample_negative_indices,
    wav2vec2_accuracy,
    wav2vec2_chance,
    wav2vec2_contrastive,
    wav2vec2_logits,
)
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views
from selfsup.quantizer import GumbelVectorQuantizer, gumbel_noise, gumbel_temperature


def utterance_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit generator seed for one utterance at one optimizer step (blake2b: equal on every process)."""
    digest = hashlib.blake2b(f"wav2vec2:{seed}:{step}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def pad_rows(values: Tensor, rows: Tensor, ranks: Tensor, batch: int, width: int) -> Tensor:
    """Scatter ``values`` ``(N, ...)`` (frame ``i`` of utterance ``rows[i]``, ``ranks[i]``-th masked frame)
    into ``(batch, width, ...)``, zeros elsewhere; differentiable in ``values``."""
    out = values.new_zeros((batch, width, *values.shape[1:]))
    return out.index_put((rows, ranks), values)


# The encoder capabilities wav2vec 2.0 uses (checked by the builder and by the constructor).
NEEDS = ("local_features", "contextualize", "mask:replace")


@METHODS.register("wav2vec2", needs=NEEDS)
class Wav2Vec2(Method):
    """wav2vec 2.0 (Baevski et al. 2020) with fairseq's Base pretraining settings as defaults.

    Args:
        encoder: an encoder with ``local_features`` / ``contextualize`` (``selfsup.encoders.audio``'s
            ``wav2vec2``), ``conv_dim`` and ``mask_mode="replace"``.
        final_dim: width of the space where context and targets are compared (fairseq ``final_dim``:
            256 Base, 768 Large).
        num_groups, num_codes: the quantizer's ``G`` groups of ``V`` codewords (``latent_groups=2``,
            ``latent_vars=320``).
        code_dim: width of a quantized vector before ``project_q``; 0 means ``final_dim`` (fairseq
            ``latent_dim=0``).
        temperature_start, temperature_end, temperature_decay: the Gumbel temperature
            ``max(start · decay^step, end)`` (fairseq ``latent_temp=(2, 0.5, 0.999995)``, tuned for
            400k updates: a short run should decay faster, e.g. ``decay = (end/start)^(1/(0.7·steps))``).
        logit_temperature: ``κ`` of the contrastive logits (``logit_temp=0.1``).
        num_negatives: ``K`` distractors per masked frame (``num_negatives=100``).
        diversity_weight: ``α`` (``loss_weights[0] = 0.1``).
        feature_penalty_weight: ``β`` (``loss_weights[1] = 10``); needs an encoder whose
            ``local_features`` returns ``conv_features`` (the conv output before the feature LayerNorm);
            0 switches the penalty off.
        feature_dropout: dropout on the quantizer's input (``dropout_features=0.1`` in Base).
        seed: mixed into the per-utterance seeds of the distractors and the Gumbel noise.
        collapse_fraction, collapse_after: warn once when, from step ``collapse_after`` on, the code
            perplexity of a batch falls below ``collapse_fraction`` of the largest it could reach
            (``G · min(V, masked frames)``): the codebook has collapsed onto a few codewords.
    """

    default_view_policies: ClassVar[dict[str, str]] = {"audio": "speech_mask"}

    def __init__(
        self,
        encoder: Encoder,
        final_dim: int = 256,
        num_groups: int = 2,
        num_codes: int = 320,
        code_dim: int = 0,
        temperature_start: float = 2.0,
        temperature_end: float = 0.5,
        temperature_decay: float = 0.999995,
        logit_temperature: float = 0.1,
        num_negatives: int = 100,
        diversity_weight: float = 0.1,
        feature_penalty_weight: float = 10.0,
        feature_dropout: float = 0.1,
        seed: int = 0,
        collapse_fraction: float = 0.1,
        collapse_after: int = 200,
    ) -> None:
        super().__init__(encoder)
        require_capabilities("wav2vec2", encoder, NEEDS)
        for name, value in (("final_dim", final_dim), ("num_negatives", num_negatives)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(code_dim, int) and code_dim >= 0):
            raise ValueError(f"code_dim must be an integer >= 0 (0: final_dim), got {code_dim!r}")
        gumbel_temperature(0, temperature_start, temperature_end, temperature_decay)  # validates the schedule
        if not temperature_end <= temperature_start:
            raise ValueError(
                f"temperature_end {temperature_end} must not exceed temperature_start {temperature_start}"
            )
        if not logit_temperature > 0:
            raise ValueError(f"logit_temperature must be positive, got {logit_temperature}")
        for name, value in (
            ("diversity_weight", diversity_weight),
            ("feature_penalty_weight", feature_penalty_weight),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), got {feature_dropout}")
        if not 0.0 <= collapse_fraction < 1.0:
            raise ValueError(f"collapse_fraction must be in [0, 1), got {collapse_fraction}")
        vq_dim = code_dim or final_dim
        self.quantizer = GumbelVectorQuantizer(int(encoder.conv_dim), num_groups, num_codes, vq_dim)
        # fairseq / transformers: plain nn.Linear initialisation for both projections.
        self.project_q = nn.Linear(vq_dim, final_dim)
        self.final_proj = nn.Linear(encoder.embed_dim, final_dim)
        self.feature_dropout = nn.Dropout(feature_dropout)
        self.temperature_schedule = (
            float(temperature_start),
            float(temperature_end),
            float(temperature_decay),
        )
        self.logit_temperature = float(logit_temperature)
        self.num_negatives = num_negatives
        self.diversity_weight = float(diversity_weight)
        self.feature_penalty_weight = float(feature_penalty_weight)
        self.seed = int(seed)
        self.collapse_fraction = float(collapse_fraction)
        self.collapse_after = int(collapse_after)
        self._collapse_warned = False  # logging only: never read by the maths

    def temperature(self, step: StepInfo) -> float:
        """The Gumbel-softmax temperature of optimizer step ``step.step``."""
        return gumbel_temperature(step.step, *self.temperature_schedule)

    def _utterance_noise(
        self, views: Views, step: StepInfo, counts: list[int], device: torch.device
    ) -> tuple[list[Tensor], Tensor | None]:
        """Per utterance: its distractor positions ``(n_b, K)`` and (training) Gumbel noise ``(n_b, G, V)``,
        from one generator seeded by ``(seed, step, sample index)``; the noise concatenated ``(N, G, V)``."""
        indices = views.indices.tolist() if views.indices is not None else list(range(len(counts)))
        shape = (self.quantizer.num_groups, self.quantizer.num_codes)
        negatives, noise = [], []
        for index, count in zip(indices, counts, strict=True):
            generator = torch.Generator(device=device).manual_seed(
                utterance_seed(self.seed, step.step, int(index))
            )
            # Distractors first, so that they are the same in training and evaluation.
            negatives.append(sample_negative_indices(count, self.num_negatives, generator, device))
            if self.training:
                noise.append(gumbel_noise((count, *shape), generator, device))
        return negatives, (torch.cat(noise) if self.training else None)

    def forward(self, views: Views, step: StepInfo) -> MethodOutput:
        mask = views.mask(0)
        if mask is None:
            raise ValueError(
                "wav2vec2 needs a frame mask with its view (the 'speech_mask' view policy makes one)"
            )
        local = self.encoder.local_features(views.inputs[0], views.padding_mask(0))
        padding = local.padding_mask
        b, f = local.features.shape[:2]
        if mask.shape != (b, f):
            raise ValueError(
                f"the view's mask is {tuple(mask.shape)} but the encoder gives {(b, f)} frames; "
                "make the mask with the encoder's output_lengths (speech_mask does)"
            )
        mask = mask.to(local.features.device)
        if padding is not None:
            mask = mask & ~padding  # never a target on padding (the policy already ensures it)
        counts_t = mask.sum(dim=1)
        counts = counts_t.tolist()
        if sum(counts) == 0:
            raise ValueError(
                "wav2vec2: no frame of the batch is masked; raise mask_prob or lengthen the clips"
            )
        context = self.encoder.contextualize(local.projected, padding_mask=padding, mask=mask)
        hidden = context.output.last_hidden_state

        # Masked frames in (utterance, time) order; ranks number them within their utterance.
        rows, frames = mask.nonzero(as_tuple=True)
        ranks = (mask.cumsum(dim=1) - 1)[rows, frames]
        width = max(counts)
        negatives_list, noise = self._utterance_noise(views, step, counts, hidden.device)
        negatives = torch.zeros(b, width, self.num_negatives, dtype=torch.int64, device=hidden.device)
        for row, rows_negatives in enumerate(negatives_list):
            negatives[row, : rows_negatives.shape[0]] = rows_negatives

        temperature = self.temperature(step)
        quantized = self.quantizer(
            self.feature_dropout(local.features[rows, frames]), temperature=temperature, noise=noise
        )
        targets = pad_rows(self.project_q(quantized.vectors), rows, ranks, b, width)
        codes = pad_rows(quantized.codes, rows, ranks, b, width)
        predictions = pad_rows(self.final_proj(hidden[rows, frames]), rows, ranks, b, width)
        logits = wav2vec2_logits(predictions, targets, negatives, self.logit_temperature, target_codes=codes)
        slots = torch.arange(width, device=hidden.device)
        valid = (slots < counts_t.unsqueeze(1)) & (counts_t >= 2).unsqueeze(1)
        sample_size = valid.sum()
        contrastive_sum = wav2vec2_contrastive(logits, valid)
        # Batch statistics over the masked frames of every process (the one-process values under DDP).
        probs = quantized.logits.float().softmax(dim=-1)  # (M, G, V)
        prob_perplexity = perplexity_of_mean(
            dist.global_mean(probs.sum(dim=0), torch.tensor(float(probs.shape[0]), device=probs.device))
        )
        diversity = codebook_diversity(prob_perplexity, self.quantizer.total_codes)
        extra = self.diversity_weight * diversity
        logs = {
            "loss_contrastive": contrastive_sum.detach() / sample_size.clamp_min(1),
            "loss_diversity": diversity.detach(),
            "prob_perplexity": prob_perplexity.detach(),
            "code_perplexity": quantized.code_perplexity,
            "gumbel_temperature": torch.tensor(temperature),
            "accuracy": wav2vec2_accuracy(logits, valid),
            "accuracy_chance": wav2vec2_chance(logits, valid),
            "masked_fraction": counts_t.sum() / (b * f if padding is None else (~padding).sum()),
        }
        if self.feature_penalty_weight > 0:
            conv = getattr(local, "conv_features", None)
            if conv is None:
                raise ValueError(
                    "wav2vec2: feature_penalty_weight > 0 needs the encoder's conv features before the "
                    "feature LayerNorm (LocalFeatures.conv_features); this encoder does not give them. Set "
                    "method.feature_penalty_weight=0"
                )
            penalty = dist.global_mean(*feature_penalty_sums(conv, padding))
            extra = extra + self.feature_penalty_weight * penalty
            logs["loss_feature_penalty"] = penalty.detach()
        # fairseq's objective, Σ CE / n + α L_d + β L_f, with n the masked frames of the *global* batch:
        # dividing by n_global / world makes DDP's gradient average equal it however frames fall on ranks.
        loss = contrastive_sum / dist.per_process_share(sample_size) + extra
        self._check_collapse(quantized.code_perplexity, len(rows), step)

        # The online probe's features: the last hidden state pooled over valid *unmasked* frames of this
        # same pass (masked frames hold the mask embedding's predictions, not a representation of the
        # input); an utterance masked everywhere falls back to all its valid frames.
        features = pool_unmasked(hidden.detach(), padding, mask)
        return MethodOutput(loss=loss, logs=logs, embeddings=features, features=features)

    def _check_collapse(self, code_perplexity: Tensor, frames: int, step: StepInfo) -> None:
        """Warn once when the batch's hard code perplexity shows a collapsed codebook (issue 7's "silent
        collapse"): below ``collapse_fraction · G · min(V, frames)`` from step ``collapse_after`` on."""
        if self._collapse_warned or step.step < self.collapse_after or self.collapse_fraction == 0:
            return
        reachable = self.quantizer.num_groups * min(self.quantizer.num_codes, frames)
        value = float(code_perplexity)
        if value < self.collapse_fraction * reachable:
            self._collapse_warned = True
            warnings.warn(
                f"wav2vec2: the quantizer's codebook looks collapsed at step {step.step}: code perplexity "
                f"{value:.1f} of at most {reachable} for this batch ({self.quantizer.num_groups} groups x "
                f"{self.quantizer.num_codes} codewords). The contrastive task is then trivial (distractors "
                "equal to the target are ignored) and the representation stops improving. Raise "
                "method.diversity_weight, keep the Gumbel temperature high for longer "
                "(method.temperature_decay closer to 1) or lower the learning rate.",
                stacklevel=2,
            )
