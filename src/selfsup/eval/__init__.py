"""Evaluation on frozen features. Importing this package registers every probe in :data:`PROBES`
(``knn``, ``linear``, ``layer``, ``cluster``)."""

from selfsup.eval.base import PROBES, Probe
from selfsup.eval.cluster import ClusterProbe
from selfsup.eval.features import extract_features
from selfsup.eval.knn import KNNProbe, knn_scores
from selfsup.eval.layer import WeightedLayerProbe
from selfsup.eval.linear import LinearProbe

__all__ = [
    "PROBES",
    "ClusterProbe",
    "KNNProbe",
    "LinearProbe",
    "Probe",
    "WeightedLayerProbe",
    "extract_features",
    "knn_scores",
]
