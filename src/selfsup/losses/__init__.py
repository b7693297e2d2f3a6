"""The loss maths of every method, as pure functions of tensors (no state, no communication).

Each function cites its paper and says how its value relates to the authors' released code.
"""

from selfsup.losses.clustering import sinkhorn_knopp, swav
from selfsup.losses.contrastive import dcl, info_nce, l2_normalize, nt_xent
from selfsup.losses.data2vec import data2vec_regression, data2vec_targets, instance_norm_over_time
from selfsup.losses.distillation import dino, dino_center_update, dino_cross_entropy, ibot_patch, koleo
from selfsup.losses.masked import ijepa, mae, patchify, unpatchify
from selfsup.losses.redundancy import barlow_twins, barlow_twins_terms, vicreg, vicreg_terms
from selfsup.losses.regression import byol, negative_cosine
from selfsup.losses.sigreg import epps_pulley_grid, lejepa, lejepa_terms, random_directions, sigreg
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
from selfsup.losses.whitening import whiten, wmse

__all__ = [
    "barlow_twins",
    "barlow_twins_terms",
    "byol",
    "codebook_diversity",
    "codebook_perplexity",
    "data2vec_regression",
    "data2vec_targets",
    "dcl",
    "dino",
    "dino_center_update",
    "dino_cross_entropy",
    "epps_pulley_grid",
    "feature_penalty",
    "ibot_patch",
    "ijepa",
    "info_nce",
    "instance_norm_over_time",
    "koleo",
    "l2_normalize",
    "lejepa",
    "lejepa_terms",
    "mae",
    "negative_cosine",
    "nt_xent",
    "patchify",
    "random_directions",
    "sample_negative_indices",
    "sigreg",
    "sinkhorn_knopp",
    "swav",
    "unpatchify",
    "vicreg",
    "vicreg_terms",
    "wav2vec2_accuracy",
    "wav2vec2_chance",
    "wav2vec2_contrastive",
    "wav2vec2_logits",
    "whiten",
    "wmse",
]
