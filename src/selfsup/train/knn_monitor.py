"""The periodic kNN accuracy shown while pretraining, when labels exist.

A fixed, labeled subset is chosen once: the memory bank is up to ``monitor_samples`` labeled
training images and the queries are a held-out validation source, or, without one, a
deterministic 20% of that subset. Features are extracted without augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL, ImageDataset
from selfsup.encoders.base import Encoder
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy


@dataclass
class KNNMonitor:
    bank_images: Tensor
    bank_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    k: tuple[int, ...]
    temperature: float
    batch_size: int
    device: torch.device

    @classmethod
    def build(
        cls, train: ImageDataset, val: ImageDataset | None, *, max_samples: int, seed: int, **options: object
    ) -> KNNMonitor | None:
        """None when there are not enough labels to measure anything."""
        labeled = torch.nonzero(train.labels != UNKNOWN_LABEL).flatten()
        if labeled.numel() == 0:
            return None
        generator = torch.Generator().manual_seed(seed)
        labeled = labeled[torch.randperm(labeled.numel(), generator=generator)][:max_samples]
        if val is not None:
            query = torch.nonzero(val.labels != UNKNOWN_LABEL).flatten()[:max_samples]
            if query.numel() == 0:
                return None
            query_images, query_labels, bank = val.images[query], val.labels[query], labeled
        else:
            if labeled.numel() < 10:
                return None
            cut = labeled.numel() // 5
            query, bank = labeled[:cut], labeled[cut:]
            query_images, query_labels = train.images[query], train.labels[query]
        return cls(
            bank_images=train.images[bank],
            bank_labels=train.labels[bank],
            query_images=query_images,
            query_labels=query_labels,
            **options,  # type: ignore[arg-type]
        )

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        def features(images: Tensor) -> Tensor:
            return extract_features(
                encoder,
                images,
                size=self.size,
                mean=self.mean,
                std=self.std,
                batch_size=self.batch_size,
                device=self.device,
            )

        return knn_accuracy(
            features(self.bank_images),
            self.bank_labels,
            features(self.query_images),
            self.query_labels,
            k=self.k,
            temperature=self.temperature,
        )
