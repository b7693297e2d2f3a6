"""wav2vec 2.0's losses as pure functions (Baevski et al. 2020, section 3.2, eq. 2-4).

``L = L_m + α · L_d (+ β · L_f)``:

* :func:`wav2vec2_logits` / :func:`wav2vec2_contrastive` — ``L_m``: at every masked frame ``t`` the
  context vector ``c_t`` (after ``final_proj``) must pick its quantized target ``q_t`` among ``K + 1``
  candidates, ``q_t`` and ``K`` distractors ``q̃`` quantized at *other masked frames of the same
  utterance*: ``-log exp(sim(c_t, q_t)/κ) / Σ_{q̃ ∈ Q_t} exp(sim(c_t, q̃)/κ)``, ``sim`` the cosine, ``κ = 0.1``.
  Distractors come from :func:`sample_negative_indices`.
* :func:`codebook_perplexity` and :func:`codebook_diversity` — ``L_d``, which spreads the use of the codebook.
* :func:`feature_penalty` — ``L_f``, fairseq's L2 penalty on the conv features (``features_pen``; the
  paper does not list it, every released recipe uses it with weight 10).

Reductions follow fairseq's ``Wav2vecCriterion`` (``infonce=True``): the contrastive term is a *sum* over
masked frames, the criterion's ``sample_size`` is the number of masked frames, and the extra terms are
multiplied by ``sample_size`` before fairseq divides the total gradient by ``sample_size``. The loss
fairseq optimizes is therefore ``Σ_t CE_t / n + 0.1 · L_d + 10 · L_f``; the method does exactly that
(per process and micro-batch: see ``selfsup.methods.wav2vec2``). Computed in fp32 (float64 stays
float64) with autocast off, as the other losses of the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.contrastive import compute_dtype

__all__ = [
    "codebook_diversity",
    "codebook_perplexity",
    "feature_penalty",
    "feature_penalty_sums",
    "perplexity_of_mean",
    "sample_negative_indices",
    "wav2vec2_accuracy",
    "wav2vec2_chance",
    "wav2vec2_contrastive",
    "wav2vec2_logits",
]


def sample_negative_indices(
    num_frames: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Distractor positions for ``num_frames`` masked frames of one utterance: ``(num_frames, K)`` int64.

    Row ``t`` holds ``K`` positions drawn uniformly, with replacement, from ``{0..num_frames-1} \\ {t}``:
    fairseq's ``Wav2Vec2Model.sample_negatives`` (``num_negatives=K``, ``cross_sample_negatives=0``)
    and transformers' ``_sample_negative_indices``: ``randint(0, n - 1)``, then ``+1`` where the draw is
    ``>= t``, which skips ``t`` and keeps the other ``n - 1`` equally likely. Positions index the
    utterance's masked frames in time order. ``num_frames < 2`` leaves no distractor: the result is
    all zeros and such frames must be excluded from the loss (the method does).
    """
    if num_frames < 0 or num_negatives < 1:
        raise ValueError(f"need num_frames >= 0 and num_negatives >= 1, got {num_frames}, {num_negatives}")
    if num_frames < 2:
        return torch.zeros(num_frames, num_negatives, dtype=torch.int64, device=device)
    draws = torch.randint(0, num_frames - 1, (num_frames, num_negatives), generator=generator, device=device)
    own = torch.arange(num_frames, device=draws.device).unsqueeze(1)
    return draws + (draws >= own).long()


def wav2vec2_logits(
    predictions: Tensor,
    targets: Tensor,
    negative_indices: Tensor,
    temperature: float = 0.1,
    *,
    target_codes: Tensor | None = None,
) -> Tensor:
    """Logits of the contrastive task: ``(B, M, 1 + K)``, column 0 the positive.

    Args:
        predictions: ``(B, M, D)`` context vectors ``c_t`` at the (up to) ``M`` masked frames of each of
            ``B`` utterances (rows padded at the end when utterances have fewer masked frames).
        targets: ``(B, M, D)`` the quantized targets ``q_t`` at the same frames.
        negative_indices: ``(B, M, K)`` int64 positions along ``M`` (same utterance) of the distractors
            (:func:`sample_negative_indices` per utterance).
        temperature: ``κ`` (fairseq ``logit_temp``, 0.1).
        target_codes: ``(B, M, G)`` the targets' codes; a distractor with the positive's codes in every
            group is identical to it. None compares the target vectors exactly instead, as fairseq does.

    Returns ``cos(c_t, candidate) / κ`` in fp32 with ``-inf`` at every distractor identical to the
    positive (fairseq ``compute_preds``: ``neg_is_pos`` filled with ``-inf``): a distractor that *is* the
    target cannot be told apart from it, so it is left out of the softmax. The cosine is
    ``torch.cosine_similarity``'s (each norm floored at 1e-8). All ``M × M`` similarities of an utterance
    are one batched matrix product and the distractors are gathered from it, which equals gathering
    ``(B, M, K, D)`` distractor vectors first (fairseq) in value and gradient, with far less memory.
    """
    if predictions.ndim != 3 or predictions.shape != targets.shape:
        raise ValueError(
            f"predictions and targets must both be (B, M, D), got {tuple(predictions.shape)} and "
            f"{tuple(targets.shape)}"
        )
    b, m, _ = predictions.shape
    if negative_indices.ndim != 3 or negative_indices.shape[:2] != (b, m):
        raise ValueError(
            f"negative_indices must be (B, M, K) = ({b}, {m}, K), got {tuple(negative_indices.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    dtype = compute_dtype(predictions)
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        c = F.normalize(predictions.to(dtype), dim=-1, eps=1e-8)
        q = F.normalize(targets.to(dtype), dim=-1, eps=1e-8)
        similarity = torch.bmm(c, q.transpose(1, 2)) / temperature  # (B, M, M): [b, t, s] = cos(c_t, q_s) / κ
        positive = similarity.diagonal(dim1=1, dim2=2).unsqueeze(-1)  # (B, M, 1)
        negative = similarity.gather(2, negative_indices)  # (B, M, K)
        if target_codes is not None:
            if target_codes.shape[:2] != (b, m):
                raise ValueError(
                    f"target_codes must be (B, M, G) = ({b}, {m}, G), got {tuple(target_codes.shape)}"
                )
            k, g = negative_indices.shape[2], target_codes.shape[2]
            gathered = target_codes.gather(1, negative_indices.reshape(b, m * k, 1).expand(-1, -1, g)).view(
                b, m, k, g
            )
            identical = (gathered == target_codes.unsqueeze(2)).all(dim=-1)
        else:
            k, d = negative_indices.shape[2], targets.shape[2]
            gathered = targets.gather(1, negative_indices.reshape(b, m * k, 1).expand(-1, -1, d)).view(
                b, m, k, d
            )
            identical = (gathered == targets.unsqueeze(2)).all(dim=-1)
        negative = negative.masked_fill(identical, float("-inf"))
        return torch.cat([positive, negative], dim=-1)


def wav2vec2_contrastive(logits: Tensor, valid: Tensor) -> Tensor:
    """``L_m`` summed over the valid frames: ``Σ_t -log softmax(logits_t)[0]`` (fairseq: ``reduction="sum"``).

    logits: ``(B, M, 1 + K)`` from :func:`wav2vec2_logits`; valid: ``(B, M)`` bool, the frames that count
    (real masked frames of utterances with at least two masked frames). Divide by ``valid.sum()`` (fairseq's
    ``sample_size``) for the mean. A frame whose distractors are all identical to its target contributes 0.
    """
    if valid.shape != logits.shape[:2]:
        raise ValueError(f"valid must be (B, M) = {tuple(logits.shape[:2])}, got {tuple(valid.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        selected = logits[valid].to(compute_dtype(logits))  # (n, 1 + K)
        target = torch.zeros(selected.shape[0], dtype=torch.int64, device=logits.device)
        return F.cross_entropy(selected, target, reduction="sum")


def wav2vec2_accuracy(logits: Tensor, valid: Tensor) -> Tensor:
    """Fraction of valid frames whose positive has the largest logit, as fairseq's criterion counts it
    (``argmax == 0`` and not ``argmin == 0``: a frame whose candidates are all equal is wrong). Detached.
    A random scorer gets about ``1 / (1 + number of distractors that are not -inf)``."""
    with torch.no_grad():
        selected = logits[valid]
        if selected.shape[0] == 0:
            return torch.tensor(float("nan"), device=logits.device)
        top = selected.argmax(dim=-1) == 0
        bottom = selected.argmin(dim=-1) == 0
        return (top & ~bottom).float().mean()


def wav2vec2_chance(logits: Tensor, valid: Tensor) -> Tensor:
    """The accuracy of a random scorer on these logits: the mean over valid frames of ``1 / (1 + k_t)``,
    ``k_t`` the distractors of frame ``t`` that are not ``-inf`` (not identical to its target). Detached.
    Logged beside the accuracy: when the codebook collapses, distractors become identical to their
    targets and both numbers approach 1, so accuracy alone would look perfect."""
    with torch.no_grad():
        selected = logits[valid]
        if selected.shape[0] == 0:
            return torch.tensor(float("nan"), device=logits.device)
        distinct = torch.isfinite(selected[:, 1:]).sum(dim=-1)
        return (1.0 / (1.0 + distinct.float())).mean()


def codebook_perplexity(probs: Tensor, valid: Tensor | None = None) -> Tensor:
    """Codebook perplexity ``Σ_g exp(H(p̄_g))`` with ``p̄_g = mean_n probs[n, g]`` over the (valid) frames.

    probs: ``(N, G, V)`` per-frame code distributions (softmax of the logits, or one-hot choices);
    valid: ``(N,)`` bool, frames to average over (None: all). Between ``G`` (every frame of a group on one
    code) and ``G · V`` (uniform use). fairseq ``prob_perplexity`` / ``code_perplexity`` and transformers'
    ``_compute_perplexity`` (which, like here, averages over masked frames only); ``0 · log 0 = 0`` exactly
    (fairseq adds 1e-7 inside the log). Computed in fp32.
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must be (N, G, V), got {tuple(probs.shape)}")
    with torch.autocast(device_type=probs.device.type, enabled=False):
        p = probs.to(compute_dtype(probs))
        if valid is not None:
            weights = valid.to(p.dtype).view(-1, 1, 1)
            mean = (p * weights).sum(dim=0) / weights.sum().clamp_min(1.0)
        else:
            mean = p.mean(dim=0)  # (G, V)
        return perplexity_of_mean(mean)


def perplexity_of_mean(mean: Tensor) -> Tensor:
    """``Σ_g exp(H(p̄_g))`` of the average code distributions ``mean`` ``(G, V)`` (see
    :func:`codebook_perplexity`; a method averaging over several processes passes the global mean)."""
    with torch.autocast(device_type=mean.device.type, enabled=False):
        p = mean.to(compute_dtype(mean))
        entropy = -torch.xlogy(p, p).sum(dim=-1)  # (G,)
        return entropy.exp().sum()


def codebook_diversity(prob_perplexity: Tensor, total_codes: int) -> Tensor:
    """``L_d = (G·V - perplexity) / (G·V)``: 0 at uniform use of every codeword, ``1 - 1/V`` when each group
    uses one codeword. fairseq's ``get_extra_losses`` and transformers' ``diversity_loss``; the paper's eq. 4
    writes the negative entropy ``(1/GV) Σ_g -H(p̄_g)`` instead, which both implementations replace by
    this perplexity form (same minimiser: uniform ``p̄_g``)."""
    if total_codes < 1:
        raise ValueError(f"total_codes must be positive, got {total_codes}")
    return (total_codes - prob_perplexity) / total_codes


def feature_penalty(conv_features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """``mean(f²)`` over the conv features ``(B, F, C)`` of the valid frames (fairseq ``features_pen``).

    fairseq takes ``features.float().pow(2).mean()`` over every frame of the padded batch, padded frames
    included; here padded frames (``padding_mask`` ``(B, F)``, True at padding) are left out, so that
    padding never changes the loss. The features are the conv stack's output before the feature LayerNorm.
    """
    total, count = feature_penalty_sums(conv_features, padding_mask)
    return total / count.clamp_min(1.0)


def feature_penalty_sums(conv_features: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Σ f², number of values)`` over the valid frames: :func:`feature_penalty`'s numerator and
    denominator, for a mean over the batch of every process (:func:`selfsup.dist.global_mean`)."""
    if conv_features.ndim != 3:
        raise ValueError(f"conv_features must be (B, F, C), got {tuple(conv_features.shape)}")
    with torch.autocast(device_type=conv_features.device.type, enabled=False):
        squared = conv_features.to(compute_dtype(conv_features)).square()
        if padding_mask is None:
            return squared.sum(), torch.tensor(float(squared.numel()), device=squared.device)
        keep = (~padding_mask).to(squared.dtype).unsqueeze(-1)
        return (squared * keep).sum(), keep.sum() * conv_features.shape[2]
