"""Shared test settings: small thread count (CI has 2 cores) and the optional real data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """../shared/data/cifar10 beside the checkout; tests using it are skipped where it is absent."""
    path = SHARED_DATA / "cifar10"
    if not (path / "train-000.tar").exists():
        pytest.skip(f"real CIFAR-10 shards not found at {path}")
    return path


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    """../shared/data with FSDD (fsdd/metadata.csv + its tar) and LJ Speech (speech/ljspeech/clips.tar);
    tests using it are skipped where they are absent."""
    if (
        not (SHARED_DATA / "fsdd" / "metadata.csv").exists()
        or not (SHARED_DATA / "speech" / "ljspeech" / "clips.tar").exists()
    ):
        pytest.skip(f"FSDD / LJ Speech not found under {SHARED_DATA}")
    return SHARED_DATA
