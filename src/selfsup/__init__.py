"""selfsup: self-supervised representation learning, one library and CLI across modalities.

Python API (mirrors the ``selfsup`` command): :func:`pretrain`, :func:`embed`, :func:`load`,
the evaluation protocols (:func:`evaluate_knn`, :func:`evaluate_linear`, :func:`evaluate_fewshot`,
:func:`finetune`, :func:`evaluate_layer`, :func:`evaluate_cluster`, :func:`evaluate_label_free`),
:func:`write_report`, :func:`export_run` and :func:`run_benchmark`. Registries:
:data:`selfsup.encoders.ENCODERS`, :data:`selfsup.methods.METHODS`, :data:`selfsup.augment.VIEW_POLICIES`,
:data:`selfsup.data.SOURCES`, :data:`selfsup.eval.PROBES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Every public name, with the module it comes from (imported on first use, so that
# `import selfsup.dist` in a spawned worker does not load every module of the package).
_API = {
    "Embeddings": "selfsup.api",
    "Pretrained": "selfsup.api",
    "embed": "selfsup.api",
    "load": "selfsup.api",
    "make_config": "selfsup.api",
    "pretrain": "selfsup.api",
    "evaluate_knn": "selfsup.eval.protocols",
    "evaluate_linear": "selfsup.eval.protocols",
    "evaluate_fewshot": "selfsup.eval.protocols",
    "evaluate_layer": "selfsup.eval.protocols",
    "evaluate_cluster": "selfsup.eval.protocols",
    "evaluate_label_free": "selfsup.eval.selection",
    "finetune": "selfsup.eval.finetune",
    "export_run": "selfsup.export",
    "write_report": "selfsup.report",
    "run_benchmark": "selfsup.benchmark",
}
__all__ = [
    "Embeddings",
    "Pretrained",
    "__version__",
    "embed",
    "evaluate_cluster",
    "evaluate_fewshot",
    "evaluate_knn",
    "evaluate_label_free",
    "evaluate_layer",
    "evaluate_linear",
    "export_run",
    "finetune",
    "load",
    "make_config",
    "pretrain",
    "run_benchmark",
    "write_report",
]

if TYPE_CHECKING:
    from selfsup.api import Embeddings, Pretrained, embed, load, make_config, pretrain
    from selfsup.benchmark import run_benchmark
    from selfsup.eval.finetune import finetune
    from selfsup.eval.protocols import (
        evaluate_cluster,
        evaluate_fewshot,
        evaluate_knn,
        evaluate_layer,
        evaluate_linear,
    )
    from selfsup.eval.selection import evaluate_label_free
    from selfsup.export import export_run
    from selfsup.report import write_report


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
