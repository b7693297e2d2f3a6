"""The Probe contract: evaluators that work on cached, frozen features.

A probe is fitted on ``(N, D)`` training features with ``(N,)`` int64 labels (``-1`` where
unknown) and reports metrics on test features. Probes never see images or encoders, so one
extraction (:func:`selfsup.eval.features.extract_features`) serves every probe and every layer.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from selfsup.registry import Registry


@runtime_checkable
class Probe(Protocol):
    """``fit(features (N, D), labels (N,) int64) -> self``; ``evaluate(features (M, D), labels (M,)) ->
    {metric name: value}``. Samples labelled ``-1`` are ignored by both."""

    def fit(self, features: Tensor, labels: Tensor) -> Probe: ...

    def evaluate(self, features: Tensor, labels: Tensor) -> dict[str, float]: ...


# Factories take the probe's hyper-parameters as keywords and return an unfitted Probe.
PROBES: Registry[Probe] = Registry("probe")
