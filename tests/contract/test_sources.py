"""Every registered data source honours the Dataset contract, on a small example of each.

Parametrized over ``SOURCES.names()``: a new source fails here until it adds an example below.
Checked for every source: the declared info matches the batches, labels are -1 or a class index,
ids and labels line up, the fingerprint is stable and follows the files, and streamable sources
give the same samples streamed as decoded in memory.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import SOURCES, UNKNOWN_LABEL, Dataset, load_dataset
from selfsup.data.sources import STREAMABLE
from selfsup.modalities import MODALITIES


def _png(seed: int, size: int = 6) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _shards(root: Path) -> tuple[str, list[Path]]:
    path = root / "part-0.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(5):
            for name, data in ((f"k{i}.png", _png(i)), (f"k{i}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (root / "classes.txt").write_text("even\nodd\n")
    return str(path), [path]


def _folder(root: Path) -> tuple[str, list[Path]]:
    files = []
    for cls in ("cat", "dog"):
        (root / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            path = root / "imgs" / cls / f"{i}.png"
            path.write_bytes(_png(i + (10 if cls == "dog" else 0)))
            files.append(path)
    return str(root / "imgs"), files


def _cifar(root: Path) -> tuple[str, list[Path]]:
    directory = root / "cifar-10-batches-py"
    directory.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 0]}
        (directory / name).write_bytes(pickle.dumps(batch))
        files.append(directory / name)
    (directory / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    return str(directory), files


def _vectors(root: Path) -> tuple[str, list[Path]]:
    path = root / "x.npz"
    np.savez(path, features=np.random.default_rng(0).normal(size=(7, 5)), labels=np.arange(7) % 3)
    return str(path), [path]


def _images_npy(root: Path) -> tuple[str, list[Path]]:
    path = root / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8))
    return str(path), [path]


def _digits(root: Path) -> tuple[str, list[Path]]:
    return "digits:test", []


# Examples per source: a maker returning (spec, files behind it).
EXAMPLES: dict[str, list[Callable[[Path], tuple[str, list[Path]]]]] = {
    "arrays": [_vectors, _images_npy],
    "cifar": [_cifar],
    "digits": [_digits],
    "folder": [_folder],
    "shards": [_shards],
}
CASES = [(name, maker) for name in SOURCES.names() for maker in EXAMPLES.get(name, [])]


def test_every_source_has_an_example() -> None:
    missing = sorted(set(SOURCES.names()) - set(EXAMPLES))
    assert not missing, f"add an example for {missing} to tests/contract/test_sources.py"


def _check_contract(dataset: Dataset) -> None:
    info = dataset.info
    assert info.modality in MODALITIES
    n = len(dataset)
    assert (
        n > 0
        and dataset.labels.shape == (n,)
        and dataset.labels.dtype == torch.int64
        and len(dataset.ids) == n
    )
    labels = dataset.labels
    assert int(labels.min()) >= UNKNOWN_LABEL
    if info.classes is not None:
        assert int(labels.max()) < len(info.classes)
    indices = torch.tensor([n - 1, 0, n - 1])
    batch = dataset.batch(indices)
    assert (
        isinstance(batch.inputs, torch.Tensor)
        and str(batch.inputs.dtype).removeprefix("torch.") == info.dtype
    )
    if info.sample_shape is not None:
        assert tuple(batch.inputs.shape) == (3, *info.sample_shape)
    assert torch.equal(batch.labels, labels[indices]) and torch.equal(batch.indices, indices)
    assert torch.equal(batch.inputs[0], batch.inputs[2])  # the same sample twice gives the same data
    assert isinstance(dataset.fingerprint, str) and dataset.fingerprint == dataset.fingerprint


@pytest.mark.parametrize(("name", "maker"), CASES, ids=[f"{n}-{m.__name__}" for n, m in CASES])
def test_source_contract(name: str, maker: Callable[[Path], tuple[str, list[Path]]], tmp_path: Path) -> None:
    spec, files = maker(tmp_path)
    dataset = load_dataset(spec, loading="memory")
    _check_contract(dataset)
    again = load_dataset(spec, loading="memory")
    assert again.fingerprint == dataset.fingerprint and again.ids == dataset.ids
    if files:  # the fingerprint follows the files (feature caches are keyed by it)
        os.utime(files[0], ns=(1, 1))
        assert load_dataset(spec, loading="memory").fingerprint != dataset.fingerprint
    if name in STREAMABLE:
        streamed = load_dataset(spec, loading="stream")
        assert (
            streamed.streaming
            and streamed.ids == dataset.ids
            and torch.equal(streamed.labels, dataset.labels)
        )
        _check_contract(streamed)
        every = torch.arange(len(dataset))
        assert torch.equal(streamed.batch(every).inputs, dataset.batch(every).inputs)
    else:
        with pytest.raises(Exception, match="cannot stream"):
            load_dataset(spec, loading="stream")
