"""selfsup: self-supervised representation learning, one library and CLI across modalities.

Python API (mirrors the ``selfsup`` command): :func:`pretrain`, :func:`embed`, :func:`load`,
:func:`evaluate_knn`. Registries: :data:`selfsup.encoders.ENCODERS`,
:data:`selfsup.methods.METHODS`, :data:`selfsup.augment.VIEW_POLICIES`,
:data:`selfsup.data.SOURCES`.
"""

__version__ = "0.1.0"

from selfsup.api import Embeddings, Pretrained, embed, evaluate_knn, load, make_config, pretrain

__all__ = [
    "Embeddings",
    "Pretrained",
    "__version__",
    "embed",
    "evaluate_knn",
    "load",
    "make_config",
    "pretrain",
]
