"""Evaluation on frozen features. Importing this package registers every probe in :data:`PROBES`."""

from selfsup.eval.base import PROBES, Probe
from selfsup.eval.features import extract_features
from selfsup.eval.knn import KNNProbe, knn_scores  # importing knn registers the "knn" probe

__all__ = ["PROBES", "KNNProbe", "Probe", "extract_features", "knn_scores"]
