"""Tests of the streaming image data sets: tar shard indexing, folders, compressed shards, skips.

Expected pixels come from the in-memory sources (``shards_source``, ``folder_source``) or, where a
case has no in-memory equivalent, from ``decode_image`` applied to the bytes the test wrote.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import stream, tar_index
from selfsup.data.base import UNKNOWN_LABEL, DataError
from selfsup.data.decode import decode_image, resize_center_crop
from selfsup.data.stream import open_streaming_folder, open_streaming_shards
from selfsup.data.tar_index import decompress_shard, index_shards

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random image (JPEG keeps it recognisable) with some noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(2, 2, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR), np.int16)
    return np.clip(field + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(start: int, count: int, size: tuple[int, int] = (12, 12)) -> list[tuple[str, bytes]]:
    """``count`` samples: JPEGs and PNGs alternating, labels ``index % 3``, one with no ``.cls``,
    and a group of non-image members that is not a sample."""
    members = []
    for i in range(start, start + count):
        key = f"s{i:05d}"
        fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
        members.append((f"{key}.{ext}", encode(rgb(*size, seed=i), fmt)))
        if i % 5 != 4:
            members.append((f"{key}.cls", str(i % 3).encode()))
        if i % 7 == 3:
            members.append((f"{key}.json", b'{"note": 1}'))
    members.append((f"meta{start}.json", b"{}"))
    return members


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "shards"
    directory.mkdir()
    write_tar(directory / "a-000.tar", sample_members(0, 9))
    write_tar(directory / "a-001.tar", sample_members(9, 8), fmt=tarfile.PAX_FORMAT)
    (directory / "classes.txt").write_text("zero\none\ntwo\n")
    return directory


def shard_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tar*"))


def in_memory_shards(directory: Path, image_size: int | None = None, pattern: str = "*.tar*") -> Any:
    """The in-memory ``shards`` source (None when the module cannot be imported)."""
    try:
        from selfsup.data.shards import shards_source
    except ImportError:  # pragma: no cover - only while the sources are being rewritten
        return None
    return shards_source(str(directory / pattern), image_size=image_size)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    """Image bytes by id, read with tarfile (the reference when no in-memory source is available)."""
    out = {}
    for path in shard_paths(directory):
        with tarfile.open(path) as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                if ext in ("jpg", "png"):
                    out[f"{path.name}/{stem}"] = tar.extractfile(member).read()
    return out


def permuted_with_repeats(n: int, seed: int) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.cat([order, order[:3], order[:1]])


# ---------------------------------------------------------------------------------------------
# tar shards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [None, 8])
def test_shards_match_the_in_memory_source(shard_dir: Path, image_size: int | None) -> None:
    with open_streaming_shards(
        shard_paths(shard_dir), source="shards:x", image_size=image_size, cache_dir=None
    ) as streamed:
        assert streamed.streaming and len(streamed) == 17
        assert streamed.info.classes == ("zero", "one", "two")
        side = image_size or 12
        assert streamed.info.sample_shape == (3, side, side)
        assert streamed.estimated_bytes() == 17 * 3 * side * side
        assert streamed.ids[:2] == ["a-000.tar/s00000", "a-000.tar/s00001"]
        expected_labels = [UNKNOWN_LABEL if i % 5 == 4 else i % 3 for i in range(17)]
        assert streamed.labels.tolist() == expected_labels
        order = permuted_with_repeats(len(streamed), seed=1)
        batch = streamed.batch(order)
        assert batch.inputs.shape == (len(order), 3, side, side) and batch.inputs.dtype == torch.uint8
        assert batch.inputs.is_contiguous()
        assert torch.equal(batch.indices, order)
        assert torch.equal(batch.labels, streamed.labels[order])

        reference = in_memory_shards(shard_dir, image_size)
        if reference is not None:
            assert reference.ids == streamed.ids
            assert torch.equal(reference.labels, streamed.labels)
            assert torch.equal(reference.batch(order).inputs, batch.inputs)
        else:  # compare with decode_image on the bytes written
            raw = shard_bytes(shard_dir)
            for row, i in enumerate(order.tolist()):
                want = decode_image(raw[streamed.ids[i]], image_size).transpose(2, 0, 1)
                assert np.array_equal(batch.inputs[row].numpy(), want)
        assert streamed.skipped == []


def test_corrupt_image_is_substituted_once_and_strict_raises(tmp_path: Path) -> None:
    members = sample_members(0, 6)
    members[2] = ("s00001.png", b"\x89PNG\r\n\x1a\n this is not a png")
    shard = write_tar(tmp_path / "c.tar", members)
    with open_streaming_shards([shard], source="shards:c", image_size=12) as data:
        assert len(data) == 6 and data.skipped == []  # the index does not decode
        first = data.batch(torch.tensor([1, 0, 1]))
        second = data.batch(torch.tensor([1]))
        # Sample 1 is replaced by sample 2, the next readable one, with its label and index.
        good = data.batch(torch.tensor([2]))
        assert torch.equal(first.inputs[0], good.inputs[0]) and torch.equal(first.inputs[2], good.inputs[0])
        assert torch.equal(second.inputs[0], good.inputs[0])
        assert first.indices.tolist() == [2, 0, 2] and first.labels.tolist() == [2, 0, 2]
        assert [sample_id for sample_id, _ in data.skipped] == ["c.tar/s00001"]
        assert data.substitutions == 3
    with open_streaming_shards([shard], source="shards:c", image_size=12, strict=True) as strict:
        strict.batch(torch.tensor([0, 2]))
        with pytest.raises(DataError, match="s00001"):
            strict.batch(torch.tensor([0, 1]))


def test_substitution_wraps_around_and_all_bad_raises(tmp_path: Path) -> None:
    members = [("a.jpg", encode(rgb(8, 8, 0), "JPEG")), ("b.jpg", b"junk"), ("c.jpg", b"junk")]
    with open_streaming_shards([write_tar(tmp_path / "w.tar", members)], source="w", image_size=8) as data:
        assert data.batch(torch.tensor([2, 1])).indices.tolist() == [0, 0]
    bad = write_tar(tmp_path / "bad.tar", [("a.jpg", b"junk"), ("b.jpg", b"junk")])
    with pytest.raises(DataError, match="all 2 samples failed"):
        open_streaming_shards([bad], source="bad", image_size=None)


def test_truncated_tar_keeps_the_samples_before_the_damage(tmp_path: Path) -> None:
    full = write_tar(tmp_path / "full.tar", sample_members(0, 8))
    with tarfile.open(full) as tar:
        cut_member = next(m for m in tar.getmembers() if m.name == "s00005.png")
    data = full.read_bytes()
    shard = tmp_path / "t.tar"
    shard.write_bytes(data[: cut_member.offset_data + cut_member.size // 2])  # inside s00005's image
    with open_streaming_shards([shard], source="shards:t", image_size=12) as streamed:
        assert streamed.ids == [f"t.tar/s{i:05d}" for i in range(5)]
        skipped_ids = [sample_id for sample_id, _ in streamed.skipped]
        assert skipped_ids == ["t.tar/s00005", "t.tar"]
        assert "unreadable tar data after 5 samples" in streamed.skipped[1][1]
        reference = in_memory_shards(tmp_path, None, pattern="t.tar")
        if reference is not None:
            assert reference.ids == streamed.ids
            assert [s for s, _ in reference.skipped] == skipped_ids
            assert torch.equal(
                reference.batch(torch.arange(5)).inputs, streamed.batch(torch.arange(5)).inputs
            )
    with pytest.raises(DataError, match="s00005"):
        open_streaming_shards([shard], source="shards:t", strict=True)


def test_bad_cls_and_missing_image_are_skipped_like_shards_py(tmp_path: Path) -> None:
    members = [
        ("a.jpg", encode(rgb(8, 8, 1), "JPEG")),
        ("a.cls", b"1"),
        ("b.jpg", encode(rgb(8, 8, 2), "JPEG")),
        ("b.cls", b"seven"),
        ("c.cls", b"0"),  # no image
        ("d.png", encode(rgb(8, 8, 3), "PNG")),
        ("d.cls", b"9"),  # out of range with 3 classes
        ("e.png", encode(rgb(8, 8, 4), "PNG")),
    ]
    shard = write_tar(tmp_path / "k.tar", members)
    (tmp_path / "classes.txt").write_text("x\ny\nz\n")
    index = index_shards([shard], 3)
    assert index.ids == ["k.tar/a", "k.tar/e"] and index.labels.tolist() == [1, UNKNOWN_LABEL]
    assert [s for s, _ in index.skipped] == ["k.tar/b", "k.tar/c", "k.tar/d"]
    assert index.skipped_after.tolist() == [1, 1, 1]
    with tarfile.open(shard) as tar:
        member = tar.getmember("e.png")
        assert (index.offset[1], index.size[1]) == (member.offset_data, member.size)
    # max_samples keeps the first readable samples and the skips met before the last of them.
    head = open_streaming_shards([shard], source="k", max_samples=1)
    assert head.ids == ["k.tar/a"] and head.skipped == []
    assert len(open_streaming_shards([shard], source="k", max_samples=2).skipped) == 3


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_header_scan_agrees_with_tarfile(tmp_path: Path, fmt: int) -> None:
    """The header scanner gives tarfile's members for every format, long and non-ASCII names,
    links and directories, and every truncation point."""
    rng = random.Random(fmt)
    path = tmp_path / "f.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("d")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i in range(5):
            long = "x" * 110 if i % 2 and fmt != tarfile.USTAR_FORMAT else ""
            key = f"d/{long}k{i}" + ("é" if fmt == tarfile.PAX_FORMAT and i == 3 else "")
            for suffix, data in (("jpg", os.urandom(rng.randint(1, 1200))), ("cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                info.mtime = 1.5 if fmt == tarfile.PAX_FORMAT else 0  # a float mtime: pax headers
                tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("l.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "d/k0.jpg"
        tar.addfile(link)
    data = path.read_bytes()
    cuts = sorted({*range(0, len(data) + 1, 512), *(rng.randrange(len(data)) for _ in range(15)), len(data)})
    for cut in cuts:
        piece = tmp_path / "cut.tar"
        piece.write_bytes(data[:cut])
        fast = tar_index._group_shard(piece, 2, fast=True)
        slow = tar_index._group_shard(piece, 2, fast=False)
        assert fast.keys == slow.keys, cut
        assert fast.offset.tolist() == slow.offset.tolist() and fast.size.tolist() == slow.size.tolist()
        assert fast.labels.tolist() == slow.labels.tolist()
        assert [(k, n) for k, _, n in fast.skips] == [(k, n) for k, _, n in slow.skips], cut
    assert len(tar_index._group_shard(path, 2, fast=True).keys) == 5


def test_index_cache_is_reused_until_the_shard_changes(shard_dir: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    shards = shard_paths(shard_dir)
    first = index_shards(shards, 3, cache_dir=cache)
    assert len(list((cache / "shard-index").glob("*.npz"))) == 2

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the shard should come from the index cache")

    monkeypatch.setattr(tar_index, "_scan_shard", no_scan)
    again = index_shards(shards, 3, cache_dir=cache)
    assert again.ids == first.ids and again.skipped == first.skipped
    for name in ("shard", "offset", "size", "labels"):
        assert np.array_equal(getattr(again, name), getattr(first, name))
    monkeypatch.undo()
    write_tar(shards[0], sample_members(0, 4))  # changed: indexed again
    assert len(index_shards(shards, 3, cache_dir=cache)) == 4 + 8


def test_compressed_shard_is_decompressed_once(tmp_path: Path, monkeypatch) -> None:
    plain = write_tar(tmp_path / "p.tar", sample_members(0, 5))
    packed = tmp_path / "p.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    cache = tmp_path / "cache"
    data = open_streaming_shards([packed], source="shards:p", cache_dir=cache)
    assert data.ids[0] == "p.tar.gz/s00000" and len(data) == 5
    copies = list((cache / "shards").glob("*.tar"))
    assert len(copies) == 1
    stamp = copies[0].stat().st_mtime_ns
    batch = data.batch(torch.arange(5))
    data.close()

    def no_gzip(*args: object, **kwargs: object) -> None:
        raise AssertionError("the shard should not be decompressed again")

    monkeypatch.setattr(gzip, "open", no_gzip)
    again = open_streaming_shards([packed], source="shards:p", cache_dir=cache)
    assert decompress_shard(packed, cache) == copies[0] and copies[0].stat().st_mtime_ns == stamp
    assert torch.equal(again.batch(torch.arange(5)).inputs, batch.inputs)
    again.close()

    with pytest.raises(DataError, match="data.cache_dir"):
        open_streaming_shards([packed], source="shards:p", cache_dir=None)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.undo()
    with pytest.raises(DataError, match="data.cache_dir"):
        decompress_shard(packed, blocked)


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------


def test_folder_matches_the_in_memory_source(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog"]):
        for i in range(3):
            folder = root / name / ("nested" if i == 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            (folder / f"{i}.{ext}").write_bytes(encode(rgb(10, 10, seed=10 * c + i), fmt))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(encode(rgb(10, 10, 99), "PNG"))
    with open_streaming_folder(root, source="folder:imgs", image_size=None) as data:
        assert data.ids == [
            "cat/0.jpg",
            "cat/1.png",
            "cat/nested/2.jpg",
            "dog/0.jpg",
            "dog/1.png",
            "dog/nested/2.jpg",
        ]
        assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.info.classes == ("cat", "dog")
        order = permuted_with_repeats(len(data), seed=2)
        batch = data.batch(order)
        try:
            from selfsup.data.folder import folder_source
        except ImportError:  # pragma: no cover - only while the sources are being rewritten
            folder_source = None
        if folder_source is not None:
            reference = folder_source(str(root))
            assert reference.ids == data.ids and torch.equal(reference.labels, data.labels)
            assert torch.equal(reference.batch(order).inputs, batch.inputs)
        for row, i in enumerate(order.tolist()):
            want = decode_image(root / data.ids[i]).transpose(2, 0, 1)
            assert np.array_equal(batch.inputs[row].numpy(), want)
    assert len(open_streaming_folder(root, source="f", max_samples=4)) == 4


def test_mixed_sizes_are_resized_to_the_first_with_one_warning(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    odd = rgb(14, 20, seed=5)
    (root / "a.png").write_bytes(encode(rgb(10, 10, seed=4), "PNG"))
    (root / "b.png").write_bytes(encode(odd, "PNG"))
    (root / "c.png").write_bytes(encode(rgb(16, 12, seed=6), "PNG"))
    data = open_streaming_folder(root, source="folder:mixed", image_size=None)
    assert data.info.sample_shape == (3, 10, 10) and data.labels.tolist() == [-1, -1, -1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = data.batch(torch.tensor([0, 1, 2]))
        data.batch(torch.tensor([2, 1]))
    assert len([w for w in caught if "resized" in str(w.message)]) == 1
    want = np.asarray(resize_center_crop(Image.fromarray(odd), 10)).transpose(2, 0, 1)
    assert np.array_equal(batch.inputs[1].numpy(), want)


# ---------------------------------------------------------------------------------------------
# threads, resources, identity
# ---------------------------------------------------------------------------------------------


def test_batch_is_safe_from_several_threads(shard_dir: Path) -> None:
    data = open_streaming_shards(shard_paths(shard_dir), source="s", image_size=None)
    generator = torch.Generator().manual_seed(3)
    requests = [torch.randint(0, len(data), (9,), generator=generator) for _ in range(24)]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(data.batch, requests))
    data.close()  # reopened on demand
    for request, got in zip(requests, parallel):
        want = data.batch(request)
        assert torch.equal(got.inputs, want.inputs) and torch.equal(got.labels, want.labels)
    data.close()


def test_close_releases_the_descriptors(shard_dir: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd on this platform")
    before = open_fds()
    data = open_streaming_shards(shard_paths(shard_dir), source="s", image_size=8)
    data.batch(torch.arange(len(data)))
    assert open_fds() == before + 2
    data.close()
    assert open_fds() == before
    with data:
        data.batch(torch.arange(3))
    assert open_fds() == before


def test_many_shards_are_opened_per_read(shard_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(stream, "MAX_OPEN_SHARDS", 1)
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    data = open_streaming_shards(shard_paths(shard_dir), source="s", image_size=8)
    reference = in_memory_shards(shard_dir, 8)
    batch = data.batch(torch.arange(len(data)))
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
    if reference is not None:
        assert torch.equal(batch.inputs, reference.batch(torch.arange(len(data))).inputs)


def test_fingerprint_follows_the_files(shard_dir: Path) -> None:
    shards = shard_paths(shard_dir)
    first = open_streaming_shards(shards, source="s", image_size=8).fingerprint
    assert open_streaming_shards(shards, source="s", image_size=8).fingerprint == first
    assert open_streaming_shards(shards, source="s", image_size=6).fingerprint != first
    write_tar(shards[1], sample_members(9, 7))
    os.utime(shards[1], ns=(1, 1))
    assert open_streaming_shards(shards, source="s", image_size=8).fingerprint != first


def test_subset_and_pickle_round_trip(shard_dir: Path) -> None:
    import pickle

    data = open_streaming_shards(shard_paths(shard_dir), source="s", image_size=8)
    data.batch(torch.tensor([0]))  # a descriptor is open: pickling must not carry it
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy.batch(torch.arange(5)).inputs, data.batch(torch.arange(5)).inputs)
    subset = data.subset(torch.tensor([4, 2]))
    assert subset.streaming and subset.ids == [data.ids[4], data.ids[2]]
    assert torch.equal(subset.batch(torch.tensor([1])).inputs, data.batch(torch.tensor([2])).inputs)


def test_stream_module_does_not_import_the_in_memory_sources_at_import_time() -> None:
    # sources.py imports stream.py, and shards.py/folder.py/cache.py import sources.py: stream.py
    # importing them at module level would make a cycle.
    import ast

    modules = {
        node.module
        for module in (stream, tar_index)
        for node in ast.parse(Path(module.__file__).read_text()).body
        if isinstance(node, ast.ImportFrom)
    }
    assert not modules & {
        "selfsup.data.shards",
        "selfsup.data.folder",
        "selfsup.data.sources",
        "selfsup.data.cache",
    }
