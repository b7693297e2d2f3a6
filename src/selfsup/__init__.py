"""selfsup: self-supervised representation learning, one library and CLI across modalities.

Python API (mirrors the ``selfsup`` command): :func:`pretrain`, :func:`embed`, :func:`load`,
:func:`evaluate_knn`. Registries: :data:`selfsup.encoders.ENCODERS`,
:data:`selfsup.methods.METHODS`, :data:`selfsup.augment.VIEW_POLICIES`,
:data:`selfsup.data.SOURCES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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

if TYPE_CHECKING:
    from selfsup.api import Embeddings, Pretrained, embed, evaluate_knn, load, make_config, pretrain


def __getattr__(name: str) -> Any:
    # The API is imported on first use, so that `import selfsup.dist` (e.g. in a spawned worker)
    # does not load every module of the package.
    if name in __all__:
        from selfsup import api

        return getattr(api, name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
