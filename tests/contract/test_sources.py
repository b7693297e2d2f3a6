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


def _wav(seed: int, n: int = 2000) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    clip = np.random.default_rng(seed).integers(-9000, 9000, n + 100 * seed, dtype=np.int16)
    soundfile.write(buffer, clip, 8000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _audio_folder(root: Path) -> tuple[str, list[Path]]:
    files = []
    for cls in ("yes", "no"):
        (root / "clips" / cls).mkdir(parents=True)
        for i in range(2):
            path = root / "clips" / cls / f"{i}.wav"
            path.write_bytes(_wav(i + (5 if cls == "no" else 0)))
            files.append(path)
    return str(root / "clips"), files


def _audio_shards(root: Path) -> tuple[str, list[Path]]:
    path = root / "audio-0.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            for name, data in ((f"u{i}.wav", _wav(i)), (f"u{i}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path), [path]


def _manifest(root: Path) -> tuple[str, list[Path]]:
    """FSDD's layout: a CSV beside a tar archive of the clips, with a label column and a split column."""
    path = root / "recordings.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(5):
            data = _wav(i)
            info = tarfile.TarInfo(f"rec/{i}.wav")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = "".join(f"rec/{i}.wav,{i % 3},{'test' if i == 4 else 'train'}\n" for i in range(5))
    (root / "metadata.csv").write_text("path,digit,split\n" + rows)
    return f"{root / 'metadata.csv'}?label=digit&split=train", [path]


# Examples per source: a maker returning (spec, files behind it).
EXAMPLES: dict[str, list[Callable[[Path], tuple[str, list[Path]]]]] = {
    "arrays": [_vectors, _images_npy],
    "cifar": [_cifar],
    "digits": [_digits],
    "folder": [_folder, _audio_folder],
    "manifest": [_manifest],
    "shards": [_shards, _audio_shards],
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
    else:  # variable-length samples come padded, with their lengths and padding mask
        assert batch.lengths is not None and batch.padding_mask is not None
        assert (
            batch.inputs.shape[:2] == batch.padding_mask.shape
            and int(batch.lengths.max()) == batch.inputs.shape[1]
        )
        assert torch.equal(batch.padding_mask, torch.arange(batch.inputs.shape[1]) >= batch.lengths[:, None])
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
