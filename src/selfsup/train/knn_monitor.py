"""The periodic kNN accuracy shown while pretraining, when labels exist.

A fixed, labeled subset is chosen once, at random with the run's seed: the memory bank is up to
``monitor_samples`` labeled training samples and the queries up to ``monitor_samples`` labeled
samples of a held-out validation source, or, without one, a held-out 20% of that training subset.
Random rather than the first N, so that a class-sorted source (a folder of class sub-folders) does
not give a curve over a few classes. Features go through the run's deterministic input transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.augment.base import InputTransform
from selfsup.data.base import UNKNOWN_LABEL, Dataset
from selfsup.encoders.base import Encoder
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy


def labeled_sample(dataset: Dataset, count: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``count`` indices of labeled samples of ``dataset``, drawn uniformly without replacement."""
    labeled = torch.nonzero(dataset.labels.cpu() != UNKNOWN_LABEL).flatten()
    return labeled[torch.randperm(labeled.numel(), generator=generator)][:count]


@dataclass
class KNNMonitor:
    bank: Dataset
    query: Dataset
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
        """None when there are not enough labels to measure anything."""
        generator = torch.Generator().manual_seed(seed)
        bank = labeled_sample(train, max_samples, generator)
        if bank.numel() == 0:
            return None
        if val is not None:
            query = labeled_sample(val, max_samples, generator)
            if query.numel() == 0:
                return None
            query_set = val.subset(query)
        else:
            if bank.numel() < 10:
                return None
            cut = bank.numel() // 5
            query_set, bank = train.subset(bank[:cut]), bank[cut:]
        return cls(
            bank=train.subset(bank),
            query=query_set,
            transform=transform,
            k=k,
            temperature=temperature,
            batch_size=batch_size,
            device=device,
        )

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        def features(data: Dataset) -> torch.Tensor:
            out = extract_features(
                encoder, data, self.transform, batch_size=self.batch_size, device=self.device
            )
            assert isinstance(out, torch.Tensor)
            return out

        return knn_accuracy(
            features(self.bank),
            self.bank.labels,
            features(self.query),
            self.query.labels,
            k=self.k,
            temperature=self.temperature,
        )
