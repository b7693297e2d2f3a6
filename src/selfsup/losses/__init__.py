"""The loss maths of every method, as pure functions of tensors (no state, no communication).

Each function cites its paper and says how its value relates to the authors' released code.
"""

from selfsup.losses.contrastive import l2_normalize, nt_xent
from selfsup.losses.regression import byol

__all__ = ["byol", "l2_normalize", "nt_xent"]
