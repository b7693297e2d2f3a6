"""Fixed-length numeric vectors: their input transform (per-column standardization fitted on the
training data) and the ``vector_noise`` view policy (feature corruption plus Gaussian noise).

The standardization is fitted once when pretraining starts, over every training row, and stored in
the run, so ``embed`` and the probes standardize new data with the training statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup.augment.base import VIEW_POLICIES
from selfsup.data.base import Batch, DataInfo, Dataset
from selfsup.views import Views

# A column whose standard deviation is below this is treated as constant: it is centred but not
# scaled, so it stays 0 instead of being blown up into noise.
MIN_STD = 1e-6
_FIT_CHUNK = 65536


@dataclass(frozen=True)
class VectorTransform:
    """Vectors: ``(B, D)`` → ``(x - mean) / std`` per column, with ``mean``/``std`` ``(D,)`` float32."""

    mean: Tensor
    std: Tensor
    modality: str = "vector"

    @classmethod
    def fit(cls, dataset: Dataset) -> VectorTransform:
        """Column means and standard deviations (population, in float64) over every row of ``dataset``."""
        if dataset.info.modality != "vector" or dataset.info.sample_shape is None:
            raise ValueError(f"VectorTransform.fit needs a vector data set, got {dataset.info.modality}")
        width = dataset.info.sample_shape[0]
        total = torch.zeros(width, dtype=torch.float64)
        squares = torch.zeros(width, dtype=torch.float64)
        n = len(dataset)
        if n == 0:
            raise ValueError("cannot fit a standardization on an empty data set")
        for start in range(0, n, _FIT_CHUNK):
            rows = dataset.batch(torch.arange(start, min(n, start + _FIT_CHUNK))).inputs
            assert isinstance(rows, Tensor)
            rows = rows.double().cpu()
            total += rows.sum(dim=0)
            squares += rows.square().sum(dim=0)
        mean = total / n
        # Two-pass would be more exact, but the sums are float64 over standardizable data.
        var = (squares / n - mean.square()).clamp_min(0.0)
        std = var.sqrt()
        std = torch.where(std < MIN_STD, torch.ones_like(std), std)
        return cls(mean=mean.float(), std=std.float())

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        return self.standardize(batch.inputs), None  # type: ignore[arg-type]

    def standardize(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected (B, {self.mean.shape[0]}) vectors, got {tuple(x.shape)}")
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VectorTransform:
        return cls(
            mean=torch.tensor(data["mean"], dtype=torch.float32),
            std=torch.tensor(data["std"], dtype=torch.float32),
        )


CORRUPTIONS = ("zero", "batch_marginal")


@dataclass(frozen=True)
class VectorNoisePolicy:
    """Views of standardized vectors: feature corruption, then additive Gaussian noise.

    Each view independently: every feature of every sample is corrupted with probability
    ``corruption_p`` — set to 0 (the column mean after standardization; ``"zero"``, feature
    dropout) or replaced by the same feature of another sample of the batch (``"batch_marginal"``:
    a draw from the batch's empirical marginal, the corruption of SCARF, Bahri et al. 2022) — then
    ``N(0, noise_std²)`` noise is added. ``(B, D)`` → ``num_views`` tensors ``(B, D)``.
    """

    transform: VectorTransform
    corruption_p: float
    corruption: str
    noise_std: float
    num_views: int

    def __call__(self, batch: Batch, generator: torch.Generator) -> Views:
        x = self.transform.standardize(batch.inputs)  # type: ignore[arg-type]
        views = [self._view(x, generator) for _ in range(self.num_views)]
        return Views(inputs=views, num_global=self.num_views, labels=batch.labels, indices=batch.indices)

    def _view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        device = generator.device
        batch, width = x.shape
        out = x
        if self.corruption_p > 0:
            corrupt = (torch.rand(batch, width, generator=generator, device=device) < self.corruption_p).to(
                x.device
            )
            if self.corruption == "zero":
                replacement = torch.zeros_like(x)
            else:
                # For each (sample, feature), the feature of a uniformly drawn row of the batch.
                rows = torch.randint(0, batch, (batch, width), generator=generator, device=device).to(
                    x.device
                )
                replacement = x.gather(0, rows)
            out = torch.where(corrupt, replacement, out)
        if self.noise_std > 0:
            noise = torch.randn(batch, width, generator=generator, device=device).to(x.device)
            out = out + self.noise_std * noise
        return out


@VIEW_POLICIES.register("vector_noise", modality="vector")
def vector_noise(
    info: DataInfo,
    transform: VectorTransform,
    corruption_p: float = 0.3,
    corruption: str = "batch_marginal",
    noise_std: float = 0.1,
    num_views: int = 2,
) -> VectorNoisePolicy:
    """Vectors: each view corrupts features (probability corruption_p) and adds Gaussian noise."""
    if info.modality != "vector" or not isinstance(transform, VectorTransform):
        raise ValueError(
            f"the vector_noise view policy is for vectors, but the data holds {info.modality} samples"
        )
    if isinstance(corruption_p, bool) or not 0.0 <= float(corruption_p) < 1.0:
        raise ValueError(f"vector_noise: corruption_p is a probability in [0, 1), got {corruption_p!r}")
    if corruption not in CORRUPTIONS:
        raise ValueError(
            f"vector_noise: corruption must be one of {', '.join(CORRUPTIONS)}, got {corruption!r}"
        )
    if isinstance(noise_std, bool) or float(noise_std) < 0:
        raise ValueError(f"vector_noise: noise_std must be >= 0, got {noise_std!r}")
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"vector_noise: num_views must be a positive integer, got {num_views!r}")
    return VectorNoisePolicy(transform, float(corruption_p), corruption, float(noise_std), num_views)
