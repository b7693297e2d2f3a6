"""Tiny data sets and small component options for every registered modality, shared by the tests.

A new modality adds its tiny data set to ``TINY_DATA`` (the contract tests fail until it does) and
its components' cheap options to ``SMALL_ENCODER`` / ``SMALL_METHOD``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from selfsup.api import make_config
from selfsup.augment.base import InputTransform, ViewPolicy
from selfsup.build import build_encoder, build_method, build_policy, fit_transform, resolve_components
from selfsup.config import Config
from selfsup.data.base import DataInfo, InMemoryDataset
from selfsup.encoders import ENCODERS
from selfsup.methods import METHODS, Method, Views

SMALL_ENCODER: dict[str, dict[str, Any]] = {
    "resnet18": {"width": 8},
    "resnet18_narrow": {"width": 8},
    "resnet50": {"width": 4},
    "small_cnn": {"width": 4},
    "mlp": {"hidden_dim": 32, "num_layers": 2},
}
SMALL_METHOD: dict[str, dict[str, Any]] = {
    "simclr": {"hidden_dim": 32, "projection_dim": 16},
    "byol": {"hidden_dim": 32, "projection_dim": 16},
}


def tiny_images(n: int = 12, seed: int = 0, size: int = 16) -> InMemoryDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    info = DataInfo(modality="image", sample_shape=(3, size, size), dtype="uint8", classes=("a", "b", "c"))
    return InMemoryDataset(
        images, torch.arange(n) % 3, [f"img{i}" for i in range(n)], info=info, source="tiny:image"
    )


def tiny_vectors(n: int = 12, seed: int = 0, width: int = 10) -> InMemoryDataset:
    g = torch.Generator().manual_seed(seed)
    # Columns on very different scales, as real tables have: the standardization must matter.
    x = torch.randn(n, width, generator=g) * torch.logspace(-2, 3, width) + torch.arange(width) * 10
    info = DataInfo(modality="vector", sample_shape=(width,), dtype="float32", classes=("a", "b", "c"))
    return InMemoryDataset(
        x, torch.arange(n) % 3, [str(i) for i in range(n)], info=info, source="tiny:vector"
    )


TINY_DATA: dict[str, Callable[..., InMemoryDataset]] = {"image": tiny_images, "vector": tiny_vectors}


def modality_of(encoder: str) -> str:
    return str(ENCODERS.metadata(encoder)["modality"])


def combinations() -> list[tuple[str, str]]:
    """Every (method, encoder) pair whose encoder's modality the method has a view policy for."""
    return [
        (m, e)
        for m in METHODS.names()
        for e in ENCODERS.names()
        if modality_of(e) in METHODS.get(m).default_view_policies
    ]


def small_config(method: str, encoder: str, extra: list[str] | None = None) -> Config:
    overrides = [f"method={method}", f"encoder={encoder}"]
    overrides += [f"method.{k}={v}" for k, v in SMALL_METHOD.get(method, {}).items()]
    overrides += [f"encoder.{k}={v}" for k, v in SMALL_ENCODER.get(encoder, {}).items()]
    return make_config(overrides=overrides + (extra or []))


def build_parts(
    method: str, encoder: str, seed: int = 0, dataset: InMemoryDataset | None = None
) -> tuple[Method, ViewPolicy, InputTransform, InMemoryDataset]:
    """The method, view policy, transform and tiny data set the builder makes for this pair."""
    data = dataset if dataset is not None else TINY_DATA[modality_of(encoder)]()
    config = resolve_components(small_config(method, encoder), data.info)
    transform = fit_transform(config, data)
    torch.manual_seed(seed)
    built = build_method(config, build_encoder(config, data.info), data.info)
    policy = build_policy(config, data.info, transform, built.encoder)
    return built, policy, transform, data


def make_views(policy: ViewPolicy, data: InMemoryDataset, seed: int = 0) -> Views:
    return policy(data.batch(torch.arange(len(data))), torch.Generator().manual_seed(seed))
