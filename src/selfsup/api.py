"""The Python API; each function mirrors a CLI command.

>>> run = selfsup.pretrain(data="digits:train", method="simclr", encoder="small_cnn", out="runs/x", steps=50)
>>> model = selfsup.load("runs/x")
>>> result = selfsup.embed("runs/x", data="digits:test", out="digits.npz")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.augment.base import InputTransform
from selfsup.build import build_encoder, load_data, load_encoder_weights, load_inputs
from selfsup.config import Config, apply_dict, apply_overrides, from_dict, load_config, load_recipe, to_dict
from selfsup.data.base import DataInfo, Dataset
from selfsup.encoders import Encoder
from selfsup.errors import CheckpointError, ConfigError
from selfsup.eval.features import extract_features
from selfsup.io import write_atomic
from selfsup.train.loop import RunResult, pretrain_run
from selfsup.train.runtime import resolve_device


def make_config(
    recipe: str | Config | None = None,
    *,
    data: str | None = None,
    method: str | None = None,
    encoder: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    strict: bool | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Defaults, then the recipe, then the explicit arguments, then ``key=value`` overrides."""
    if isinstance(recipe, Config):
        config = from_dict(to_dict(recipe))
    else:
        config = Config()
        if recipe is not None:
            apply_dict(config, load_recipe(recipe))
    flags = {
        "data.source": data,
        "method.name": method,
        "encoder.name": encoder,
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "train.device": device,
        "data.strict": strict,
    }
    # A method or encoder named on the command line replaces the recipe's, options included.
    if method is not None and method != config.method.name:
        config.method.params = {}
    if encoder is not None and encoder != config.encoder.name:
        config.encoder.params = {}
    apply_overrides(config, {k: v for k, v in flags.items() if v is not None})
    if overrides:
        apply_overrides(config, overrides)
    return config


def pretrain(
    data: str | None = None,
    method: str | None = None,
    encoder: str | None = None,
    out: str | Path = "runs/pretrain",
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    resume: bool = False,
    config: str | Config | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    strict: bool | None = None,
) -> RunResult:
    """Pretrain an encoder; see ``selfsup pretrain --help``. ``config`` is a recipe name, path or Config."""
    resolved = make_config(
        config,
        data=data,
        method=method,
        encoder=encoder,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        strict=strict,
        overrides=overrides,
    )
    return pretrain_run(resolved, out, resume=resume)


@dataclass
class Embeddings:
    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, -1 where unknown
    ids: np.ndarray  # (N,) str

    def save(self, path: str | Path) -> Path:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle, so numpy does not append ".npz" to the temp name
                np.savez(handle, embeddings=self.embeddings, labels=self.labels, ids=self.ids)

        return write_atomic(path, write)


class Pretrained:
    """A pretrained encoder with what its run knows about its inputs: the data description and the
    input transform (image size and normalization, or the fitted vector standardization)."""

    def __init__(
        self,
        run_dir: Path,
        config: Config,
        encoder: Encoder,
        info: DataInfo,
        transform: InputTransform,
        device: torch.device,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.encoder = encoder
        self.info = info
        self.transform = transform
        self.device = device

    def load_data(self, source: str) -> Dataset:
        """Load ``source`` as the run loaded its training data (image size, strictness, caches)."""
        dataset = load_data(self.config, source)
        new, trained = dataset.info, self.info
        # Images of another size are resized by the transform; every other shape must match.
        if new.modality != trained.modality or (
            new.modality != "image" and new.sample_shape != trained.sample_shape
        ):
            raise ConfigError(
                f"{source!r} holds {new.modality} samples of shape {new.sample_shape}, but the encoder of "
                f"{self.run_dir} was trained on {trained.modality} samples of shape {trained.sample_shape}"
            )
        return dataset

    def features(
        self,
        data: str | Dataset,
        *,
        layers: list[int] | None = None,
        pooling: str = "mean",
        stack: bool = False,
        batch_size: int | None = None,
        cache: bool = True,
        progress: bool = True,
        max_batch_seconds: float | None = 60.0,
        cache_limit_gb: float = 20.0,
    ) -> Any:
        """Features of every sample of ``data`` (see :func:`selfsup.eval.features.extract_features`):
        pooled ``(N, D)`` by default, ``{layer: (N, C)}``, stacked ``(N, L, D)`` or per frame. Cached
        under ``RUN/features/`` unless ``cache=False``; the cache is keyed by the weights, the
        transform, the data, the layers and the pooling. Audio is batched by duration (at most
        ``max_batch_seconds`` of padded audio per batch); a cache entry estimated above
        ``cache_limit_gb`` is refused up front."""
        dataset = self.load_data(data) if isinstance(data, str) else data
        return extract_features(
            self.encoder,
            dataset,
            self.transform,
            layers=layers,
            pooling=pooling,
            stack=stack,
            batch_size=batch_size or self.config.eval.batch_size,
            device=self.device,
            cache_dir=self.run_dir / "features" if cache else None,
            workers=self.config.data.workers,
            progress=progress,
            max_batch_seconds=max_batch_seconds,
            cache_limit_gb=cache_limit_gb,
        )

    def random_init(self) -> Pretrained:
        """The same architecture with the initial weights of this run (its seed), never trained: the
        random-initialisation baseline of every table. Its features are not cached."""
        torch.manual_seed(self.config.train.seed)
        encoder = build_encoder(self.config, self.info).to(self.device).eval()
        return _Untrained(self.run_dir, self.config, encoder, self.info, self.transform, self.device)

    def with_weights(self, weights: dict[str, Tensor]) -> Pretrained:
        """This encoder with other weights (e.g. an earlier checkpoint of the run), features cached."""
        encoder = build_encoder(self.config, self.info)
        try:
            encoder.load_state_dict(weights)
        except RuntimeError as error:
            raise CheckpointError(f"the weights do not fit the encoder of {self.run_dir}: {error}") from None
        encoder.to(self.device).eval()
        return Pretrained(self.run_dir, self.config, encoder, self.info, self.transform, self.device)

    def embed(self, data: str | Dataset, batch_size: int | None = None) -> Embeddings:
        dataset = self.load_data(data) if isinstance(data, str) else data
        features = self.features(dataset, batch_size=batch_size)
        return Embeddings(
            embeddings=np.asarray(features, dtype=np.float32),
            labels=dataset.labels.cpu().numpy().astype(np.int64),
            ids=np.asarray(dataset.ids, dtype=str),
        )


class _Untrained(Pretrained):
    def features(self, data: str | Dataset, **options: Any) -> Any:
        return super().features(data, **{**options, "cache": False})


def load(run_dir: str | Path, device: str = "cpu") -> Pretrained:
    """Load the encoder of a run: its final ``encoder.safetensors``, else its latest checkpoint."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"{run_dir} is not a selfsup run directory (no config.yaml)")
    config = load_config(config_path)
    info, transform = load_inputs(run_dir)
    encoder = build_encoder(config, info)
    try:
        encoder.load_state_dict(load_encoder_weights(run_dir))
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {run_dir} do not fit its encoder: {error}") from None
    resolved = resolve_device(device)
    encoder.to(resolved).eval()
    return Pretrained(run_dir, config, encoder, info, transform, resolved)


def embed(
    run: str | Path | Pretrained, data: str, out: str | Path | None = None, device: str = "cpu"
) -> Embeddings:
    """Embed every sample of ``data``; write ``embeddings``, ``labels`` and ``ids`` to ``out`` (.npz)."""
    model = run if isinstance(run, Pretrained) else load(run, device)
    result = model.embed(data)
    if out is not None:
        result.save(out)
    return result
