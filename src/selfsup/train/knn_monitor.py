"""The periodic monitor run while pretraining: kNN accuracy when labels exist, RankMe always.

A fixed subset is chosen once, at random with the run's seed. With labels, the memory bank is up to
``monitor_samples`` labeled training samples and the queries up to ``monitor_samples`` labeled
samples of a held-out validation source, or, without one, a held-out 20% of that training subset.
Random rather than the first N, so that a class-sorted source (a folder of class sub-folders) does
not give a curve over a few classes. Without labels the monitor is label-free: the bank is up to
``monitor_samples`` training samples and only RankMe is measured, so that every run logs a curve.
Features go through the run's deterministic input transform. When the run trains an online linear
probe, its top-1 on the same held-out queries is reported as ``online_top1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.augment.base import InputTransform
from selfsup.data.base import UNKNOWN_LABEL, Dataset
from selfsup.encoders.base import Encoder
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.rank import rankme


def labeled_sample(dataset: Dataset, count: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``count`` indices of labeled samples of ``dataset``, drawn uniformly without replacement."""
    labeled = torch.nonzero(dataset.labels.cpu() != UNKNOWN_LABEL).flatten()
    return labeled[torch.randperm(labeled.numel(), generator=generator)][:count]


# (features (M, D), labels (M,)) -> top-1 accuracy in %: the online probe's evaluation.
ProbeAccuracy = Callable[[Tensor, Tensor], float]


@dataclass
class KNNMonitor:
    bank: Dataset
    query: Dataset | None  # None: no labels, the monitor is label-free (RankMe only)
    transform: InputTransform
    k: tuple[int, ...]
    temperature: float
    batch_size: int
    device: torch.device

    @classmethod
    def build(
        cls,
        train: Dataset,
        val: Dataset | None,
        *,
        max_samples: int,
        seed: int,
        transform: InputTransform,
        k: tuple[int, ...],
        temperature: float,
        batch_size: int,
        device: torch.device,
    ) -> KNNMonitor | None:
        """A labelled monitor when there are enough labels, else a label-free one; None for a data set
        of fewer than two samples."""
        options = {
            "transform": transform,
            "k": k,
            "temperature": temperature,
            "batch_size": batch_size,
            "device": device,
        }
        labelled = cls._labelled_split(train, val, max_samples, seed)
        if labelled is not None:
            return cls(bank=labelled[0], query=labelled[1], **options)
        if len(train) < 2:
            return None
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:max_samples]
        return cls(bank=train.subset(chosen), query=None, **options)

    @staticmethod
    def _labelled_split(
        train: Dataset, val: Dataset | None, max_samples: int, seed: int
    ) -> tuple[Dataset, Dataset] | None:
        generator = torch.Generator().manual_seed(seed)
        bank = labeled_sample(train, max_samples, generator)
        if bank.numel() == 0:
            return None
        if val is not None:
            query = labeled_sample(val, max_samples, generator)
            return (train.subset(bank), val.subset(query)) if query.numel() else None
        if bank.numel() < 10:
            return None
        cut = bank.numel() // 5
        return train.subset(bank[cut:]), train.subset(bank[:cut])

    def _features(self, encoder: Encoder, data: Dataset) -> Tensor:
        out = extract_features(encoder, data, self.transform, batch_size=self.batch_size, device=self.device)
        assert isinstance(out, Tensor)
        return out

    def __call__(self, encoder: Encoder, probe: ProbeAccuracy | None = None) -> dict[str, float]:
        """kNN metrics (labelled monitors), ``online_top1`` (with ``probe``) and ``rankme`` of the bank."""
        bank = self._features(encoder, self.bank)
        results: dict[str, float] = {}
        if self.query is not None:
            query = self._features(encoder, self.query)
            results.update(
                knn_accuracy(
                    bank, self.bank.labels, query, self.query.labels, k=self.k, temperature=self.temperature
                )
            )
            if probe is not None:
                results["online_top1"] = probe(query, self.query.labels)
        results["rankme"] = rankme(bank)
        return results
