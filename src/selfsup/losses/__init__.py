"""The loss maths of every method, as pure functions of tensors (no state, no communication).

Each function cites its paper and says how its value relates to the authors' released code.
"""

from selfsup.losses.contrastive import l2_normalize, nt_xent
from selfsup.losses.data2vec import data2vec_regression, data2vec_targets, instance_norm_over_time
from selfsup.losses.regression import byol
from selfsup.losses.wav2vec2 import (
    codebook_diversity,
    codebook_perplexity,
    feature_penalty,
    sample_negative_indices,
    wav2vec2_accuracy,
    wav2vec2_chance,
    wav2vec2_contrastive,
    wav2vec2_logits,
)

__all__ = [
    "byol",
    "codebook_diversity",
    "codebook_perplexity",
    "data2vec_regression",
    "data2vec_targets",
    "feature_penalty",
    "instance_norm_over_time",
    "l2_normalize",
    "nt_xent",
    "sample_negative_indices",
    "wav2vec2_accuracy",
    "wav2vec2_chance",
    "wav2vec2_contrastive",
    "wav2vec2_logits",
]
