"""Tiny data sets and small component options for every registered modality, shared by the tests.

A new modality adds its tiny data set to ``TINY_DATA`` (the contract tests fail until it does) and
its components' cheap options to ``SMALL_ENCODER`` / ``SMALL_METHOD``.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from selfsup.api import make_config
from selfsup.augment import VIEW_POLICIES
from selfsup.augment.base import InputTransform, ViewPolicy
from selfsup.build import build_encoder, build_method, build_policy, fit_transform, resolve_components
from selfsup.config import Config
from selfsup.data.audio import AudioDataset, audio_info
from selfsup.data.base import DataInfo, Dataset, InMemoryDataset
from selfsup.encoders import ENCODERS, Encoder
from selfsup.encoders.base import missing_capabilities
from selfsup.methods import METHODS, Method, Views

SMALL_ENCODER: dict[str, dict[str, Any]] = {
    "resnet18": {"width": 8},
    "resnet18_narrow": {"width": 8},
    "resnet50": {"width": 4},
    "small_cnn": {"width": 4},
    "mlp": {"hidden_dim": 32, "num_layers": 2},
    # Audio encoders without dropout, so that two builds give the same loss in train mode.
    "wav2vec2": {
        "num_layers": 2,
        "embed_dim": 32,
        "num_heads": 2,
        "ffn_dim": 64,
        "conv_dim": 32,
        "pos_conv_kernel": 16,
        "pos_conv_groups": 4,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "feature_dropout": 0.0,
    },
    "byol_a_cnn": {"embed_dim": 32, "channels": 8, "dropout": 0.0},
    "audio_spt": {"embed_dim": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "n_mels": 32},
    # ViTs at test size: 2 blocks of width 32 on the 16-px tiny images, patch 4 (a 4x4 grid).
    "vit_tiny": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4},
    "vit_small": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4},
    "vit_base": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4},
}
SMALL_METHOD: dict[str, dict[str, Any]] = {
    "dino": {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8},
    "dinov2": {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8, "ibot_out_dim": 12},
    "simclr": {"hidden_dim": 32, "projection_dim": 16},
    "byol": {"hidden_dim": 32, "projection_dim": 16},
    "mocov2": {"hidden_dim": 32, "projection_dim": 16, "queue_size": 16},
    "mocov3": {"hidden_dim": 32, "projection_dim": 16},
    "nnclr": {"hidden_dim": 32, "projection_dim": 16, "predictor_hidden_dim": 32, "queue_size": 16},
    "dcl": {"hidden_dim": 32, "projection_dim": 16},
    "barlow_twins": {"hidden_dim": 32, "projection_dim": 16},
    "vicreg": {"hidden_dim": 32, "projection_dim": 16},
    "simsiam": {"hidden_dim": 32, "projection_dim": 16, "predictor_hidden_dim": 8},
    "wav2vec2": {"final_dim": 16, "num_codes": 8, "num_negatives": 5, "feature_dropout": 0.0},
    "hubert": {"num_clusters": 8, "final_dim": 16, "kmeans_n_init": 1},
    "swav": {
        "hidden_dim": 32,
        "projection_dim": 16,
        "num_prototypes": 8,
        "queue_size": 16,
        "freeze_prototypes_steps": 1,
    },
    "wmse": {"hidden_dim": 32, "projection_dim": 4, "whiten_size": 0},
    "lejepa": {"hidden_dim": 32, "projection_dim": 16, "num_slices": 32},
    "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
    "ijepa": {"predictor_dim": 16, "predictor_depth": 1},
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


def tiny_audio(n: int = 12, seed: int = 0, sample_rate: int = 16000) -> AudioDataset:
    """``n`` clips of 0.1 to 0.25 s of int16 noise with a tone per class (lengths differ: padding matters)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(sample_rate // 10, sample_rate // 4, (n,), generator=g)
    labels = torch.arange(n) % 3
    clips = []
    for length, label in zip(lengths.tolist(), labels.tolist()):
        t = torch.arange(length) / sample_rate
        tone = 8000 * torch.sin(2 * torch.pi * 220 * (label + 1) * t)
        noise = 2000 * torch.randn(length, generator=g)
        clips.append((tone + noise).round().clamp(-32768, 32767).to(torch.int16))
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    return AudioDataset(
        torch.cat(clips),
        offsets,
        labels,
        [f"clip{i}" for i in range(n)],
        info=audio_info(sample_rate, ("a", "b", "c")),
        source="tiny:audio",
    )


TINY_DATA: dict[str, Callable[..., Dataset]] = {
    "image": tiny_images,
    "vector": tiny_vectors,
    "audio": tiny_audio,
}


def modality_of(encoder: str) -> str:
    return str(ENCODERS.metadata(encoder)["modality"])


def small_encoder(name: str) -> Encoder:
    """The encoder ``name`` with its small test options, built as the builder builds it."""
    config = make_config(
        overrides=[f"encoder={name}", *(f"encoder.{k}={v}" for k, v in SMALL_ENCODER.get(name, {}).items())]
    )
    return build_encoder(config, TINY_DATA[modality_of(name)]().info)


# Encoders that are another registered encoder at other sizes (one class, one forward): the encoder
# contract tests cover each of them; method pairs are tested on the first of each family only.
SAME_CODE_AS = {"vit_small": "vit_tiny", "vit_base": "vit_tiny"}


def fits(method: str, encoder: str) -> bool:
    """Whether ``encoder`` has what ``method`` and its view policy for the encoder's modality declare they
    need (registry metadata ``needs``; :func:`selfsup.encoders.base.missing_capabilities`)."""
    policy = METHODS.get(method).default_view_policies[modality_of(encoder)]
    needs = (*METHODS.metadata(method).get("needs", ()), *VIEW_POLICIES.metadata(policy).get("needs", ()))
    return not missing_capabilities(small_encoder(encoder), needs)


def combinations() -> list[tuple[str, str]]:
    """Every (method, encoder) pair whose encoder's modality the method has a view policy for, and whose
    encoder has the capabilities the method and policy need (encoders that wrap a checkpoint directory,
    ``requires_checkpoint``, have tests of their own)."""
    return [
        (m, e)
        for m in METHODS.names()
        for e in ENCODERS.names()
        if not ENCODERS.metadata(e).get("requires_checkpoint")
        and e not in SAME_CODE_AS
        and modality_of(e) in METHODS.get(m).default_view_policies
        and fits(m, e)
    ]


def small_config(method: str, encoder: str, extra: list[str] | None = None) -> Config:
    overrides = [f"method={method}", f"encoder={encoder}"]
    overrides += [f"method.{k}={v}" for k, v in SMALL_METHOD.get(method, {}).items()]
    overrides += [f"encoder.{k}={v}" for k, v in SMALL_ENCODER.get(encoder, {}).items()]
    return make_config(overrides=overrides + (extra or []))


def build_parts(
    method: str, encoder: str, seed: int = 0, dataset: Dataset | None = None
) -> tuple[Method, ViewPolicy, InputTransform, Dataset]:
    """The method, view policy, transform and tiny data set the builder makes for this pair."""
    data = dataset if dataset is not None else TINY_DATA[modality_of(encoder)]()
    config = resolve_components(small_config(method, encoder), data.info)
    transform = fit_transform(config, data)
    torch.manual_seed(seed)
    built = build_method(
        config, build_encoder(config, data.info), data.info, dataset=data, transform=transform
    )
    policy = build_policy(config, data.info, transform, built.encoder)
    return built, policy, transform, data


def make_views(policy: ViewPolicy, data: Dataset, seed: int = 0) -> Views:
    return policy(data.batch(torch.arange(len(data))), torch.Generator().manual_seed(seed))


def first_samples_of_shard(source: Path, target: Path, count: int, corrupt: bool = False) -> Path:
    """A tar shard of the first ``count`` samples of a real shard (``source``); with ``corrupt``, one
    more sample whose JPEG is garbage."""
    with tarfile.open(source) as src, tarfile.open(target, "w") as dst:
        keys: list[str] = []
        for member in src:
            key = member.name.rsplit(".", 1)[0]
            if key not in keys:
                if len(keys) == count:
                    break
                keys.append(key)
            dst.addfile(member, src.extractfile(member))
        if corrupt:
            for name, payload in (("broken_0001.jpg", b"not a jpeg at all"), ("broken_0001.cls", b"3")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                dst.addfile(info, io.BytesIO(payload))
    return target
