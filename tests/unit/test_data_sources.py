"""Tests of the image data sources (folder, tar shards, CIFAR pickles, arrays, digits) and the disk cache.

Expected values come from the test's own inputs (lossless PNGs with known pixels, arrays, the
sklearn digits re-scaled here, the .cls members read straight from the real CIFAR-10 shard).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.data import SOURCES, UNKNOWN_LABEL, CacheWarning, DataError, assemble, load_dataset, resolve_spec
from selfsup.data import cache as data_cache
from selfsup.data.cifar import load_restricted_pickle
from selfsup.data.decode import resize_center_crop

CIFAR_SHARDS = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"
needs_cifar = pytest.mark.skipif(
    not (CIFAR_SHARDS / "train-000.tar").is_file(), reason=f"real CIFAR-10 shards not found at {CIFAR_SHARDS}"
)


def load_images(spec: str, **options: object):
    """The in-memory path (streaming has its own tests in test_stream.py)."""
    return load_dataset(spec, loading="memory", **options)


def side(dataset) -> tuple[int, int]:
    """(H, W) of an image data set."""
    return tuple(dataset.info.sample_shape[1:])


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    pixels = {
        "dog/b.png": rgb(5, 5, 0),
        "cat/z.png": rgb(5, 5, 1),
        "cat/a.png": rgb(5, 5, 2),
        "dog/deep/c.png": rgb(5, 5, 3),
    }
    for name, array in pixels.items():
        save_png(tmp_path / name, array)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    save_png(tmp_path / ".hidden" / "x.png", rgb(5, 5, 4))

    ds = load_images(str(tmp_path))

    assert ds.classes == ["cat", "dog"]
    assert ds.ids == ["cat/a.png", "cat/z.png", "dog/b.png", "dog/deep/c.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.inputs.dtype == torch.uint8 and ds.inputs.shape == (4, 3, 5, 5)
    for i, sample_id in enumerate(ds.ids):
        assert torch.equal(ds.inputs[i], chw(pixels[sample_id]))
    assert ds.source == f"folder:{tmp_path}"
    assert ds.skipped == []


def test_folder_without_labels(tmp_path: Path) -> None:
    save_png(tmp_path / "x.png", rgb(4, 4, 0))
    save_png(tmp_path / "sub" / "y.png", rgb(4, 4, 1))
    ds = load_images(f"folder:{tmp_path}")  # explicit prefix
    assert ds.classes is None
    assert ds.labels.tolist() == [UNKNOWN_LABEL, UNKNOWN_LABEL]
    assert ds.ids == ["sub/y.png", "x.png"]  # sorted by path parts
    assert not ds.has_labels

    # A sub-folder without any image means this is not a class layout either.
    other = tmp_path / "other"
    save_png(other / "a" / "1.png", rgb(4, 4, 2))
    (other / "empty").mkdir()
    assert load_images(str(other)).labels.tolist() == [UNKNOWN_LABEL]


def test_colour_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    rgba = np.concatenate([rgb(4, 4, 0), np.full((4, 4, 1), 7, np.uint8)], axis=2)
    palette_colours = np.array([[255, 0, 0], [0, 255, 0], [10, 20, 30]], np.uint8)
    index = np.array([[0, 1, 2, 0]] * 4, np.uint8)
    palette_image = Image.fromarray(index, mode="P")
    palette_image.putpalette(palette_colours.reshape(-1).tolist())
    palette_image.info["transparency"] = 0  # palette transparency must not break the conversion
    grey16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).astype(np.uint16)
    cmyk = Image.new("CMYK", (4, 4), (255, 0, 0, 0))

    (tmp_path / "a_grey.png").write_bytes(png_bytes(grey, "L"))
    (tmp_path / "b_rgba.png").write_bytes(png_bytes(rgba, "RGBA"))
    palette_image.save(tmp_path / "c_palette.png", transparency=0)
    Image.fromarray(grey16).save(tmp_path / "d_grey16.png")
    cmyk.save(tmp_path / "e_cmyk.tif")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        ds = load_images(str(tmp_path))
    assert ds.ids == ["a_grey.png", "b_rgba.png", "c_palette.png", "d_grey16.png", "e_cmyk.tif"]
    assert torch.equal(ds.inputs[0], torch.from_numpy(grey).expand(3, 4, 4))
    assert torch.equal(ds.inputs[1], chw(rgba[..., :3]))  # alpha dropped, colour kept as is
    assert torch.equal(ds.inputs[2], chw(palette_colours[index]))
    assert torch.equal(ds.inputs[3], torch.from_numpy((grey16 // 257).astype(np.uint8)).expand(3, 4, 4))
    assert ds.inputs[4, :, 0, 0].tolist() == [0, 255, 255]  # full cyan ink, no black


def test_corrupt_image_is_skipped_or_raises_when_strict(tmp_path: Path) -> None:
    save_png(tmp_path / "good.png", rgb(3, 3, 0))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    full = io.BytesIO()
    Image.fromarray(rgb(64, 64, 1)).save(full, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])

    ds = load_images(str(tmp_path))
    assert ds.ids == ["good.png"]
    assert [sid for sid, _ in ds.skipped] == ["bad.jpg", "truncated.jpg"]
    assert all(reason for _, reason in ds.skipped)

    with pytest.raises(DataError, match=r"bad\.jpg.*strict"):
        load_images(str(tmp_path), strict=True)


def test_empty_or_imageless_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_images(str(tmp_path))
    (tmp_path / "readme.txt").write_text("hi")
    write_tar(tmp_path / "train-0.tar", [])
    with pytest.raises(DataError, match=r"no images found.*\*\.tar"):
        load_images(str(tmp_path))
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="all 1 inputs were skipped"):
        load_images(str(only_bad))


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    tall, wide = rgb(8, 4, 0), rgb(4, 8, 1)
    save_png(tmp_path / "tall.png", tall)
    save_png(tmp_path / "wide.png", wide)
    with pytest.raises(DataError, match=r"data\.image_size"):
        load_images(str(tmp_path))

    ds = load_images(str(tmp_path), image_size=4)
    assert side(ds) == (4, 4)
    # The shorter side already equals 4, so no resampling: only the centre crop (offset round(4/2)=2).
    assert torch.equal(ds.inputs[0], chw(tall[2:6]))
    assert torch.equal(ds.inputs[1], chw(wide[:, 2:6]))


def test_resize_matches_antialiased_bilinear_reference() -> None:
    # Independent reference: torch's antialiased bilinear resize of the short side to 8, then the
    # centre crop (offset round((14 - 8) / 2) = 3 along the long side).
    array = rgb(28, 16, 0)
    out = np.asarray(resize_center_crop(Image.fromarray(array), 8))
    assert out.shape == (8, 8, 3)
    ref = F.interpolate(chw(array)[None].float(), size=(14, 8), mode="bilinear", antialias=True)
    ref = ref[0, :, 3:11, :].round().clamp(0, 255)
    assert (chw(out).float() - ref).abs().max() <= 2


# ---------------------------------------------------------------------------------------------
# tar shards
# ---------------------------------------------------------------------------------------------


def make_shards(root: Path) -> dict[str, np.ndarray]:
    """Two shards: 3 + 2 good samples, a corrupt image, a bad .cls and one sample without .cls."""
    root.mkdir(parents=True, exist_ok=True)
    px = {f"s{i}": rgb(6, 6, i) for i in range(6)}
    write_tar(
        root / "part-0.tar",
        [
            ("s0.png", png_bytes(px["s0"])),
            ("s0.cls", b"2\n"),
            ("s1.png", png_bytes(px["s1"])),  # no .cls -> label -1
            ("broken.jpg", b"garbage"),
            ("broken.cls", b"1"),
            ("s2.png", png_bytes(px["s2"])),
            ("s2.cls", b"0"),
            ("s2.json", b"{}"),  # unrelated members are ignored
        ],
    )
    write_tar(
        root / "part-1.tar",
        [
            ("dir/s3.png", png_bytes(px["s3"])),
            ("dir/s3.cls", b"1"),
            ("s4.png", png_bytes(px["s4"])),
            ("s4.cls", b"cat"),  # bad .cls -> skipped
            ("s5.png", png_bytes(px["s5"])),
            ("s5.cls", b"2"),
        ],
    )
    (root / "classes.txt").write_text("zero\none\ntwo\n")
    return px


def test_tar_shards_labels_and_skips(tmp_path: Path) -> None:
    px = make_shards(tmp_path)
    ds = load_images(str(tmp_path / "part-0.tar"))
    assert ds.ids == ["part-0.tar/s0", "part-0.tar/s1", "part-0.tar/s2"]
    assert ds.labels.tolist() == [2, UNKNOWN_LABEL, 0]
    assert ds.classes == ["zero", "one", "two"]
    for i, key in enumerate(["s0", "s1", "s2"]):
        assert torch.equal(ds.inputs[i], chw(px[key]))
    assert [sid for sid, _ in ds.skipped] == ["part-0.tar/broken"]

    with pytest.raises(DataError, match=r"part-0\.tar/broken"):
        load_images(str(tmp_path / "part-0.tar"), strict=True)


def test_tar_glob_and_comma_list(tmp_path: Path) -> None:
    make_shards(tmp_path)
    by_glob = load_images(str(tmp_path / "part-*.tar"))
    by_list = load_images(f"{tmp_path / 'part-0.tar'},{tmp_path / 'part-1.tar'}")
    expected_ids = ["part-0.tar/s0", "part-0.tar/s1", "part-0.tar/s2", "part-1.tar/dir/s3", "part-1.tar/s5"]
    for ds in (by_glob, by_list):
        assert ds.ids == expected_ids
        assert ds.labels.tolist() == [2, -1, 0, 1, 2]
        assert [sid for sid, _ in ds.skipped] == ["part-0.tar/broken", "part-1.tar/s4"]
    assert torch.equal(by_glob.inputs, by_list.inputs)
    # Order follows the list, not the names.
    reverse = load_images(f"shards:{tmp_path / 'part-1.tar'},{tmp_path / 'part-0.tar'}")
    assert reverse.ids[:2] == ["part-1.tar/dir/s3", "part-1.tar/s5"]

    with pytest.raises(DataError, match="matched no files"):
        load_images(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(DataError, match="does not exist"):
        load_images(f"{tmp_path / 'part-0.tar'},{tmp_path / 'missing.tar'}")


def test_truncated_or_corrupt_shard_is_reported(tmp_path: Path) -> None:
    members = []
    for i in range(4):
        members += [(f"k{i}.png", png_bytes(rgb(8, 8, i))), (f"k{i}.cls", str(i % 3).encode())]
    write_tar(tmp_path / "full.tar", members)
    data = (tmp_path / "full.tar").read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tar:
        info = {m.name: m for m in tar.getmembers()}
    cls2 = info["k2.cls"]
    cuts = {
        "between k2.png and k2.cls": cls2.offset,  # tarfile alone would keep k2 with label -1
        "inside the k2.cls header": cls2.offset + 100,
        "inside the k2.png data": info["k2.png"].offset_data + 10,
        "after the last member, before the end marker": info["k3.cls"].offset_data + 512,
    }
    for what, cut in cuts.items():
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        ds = load_images(str(tmp_path / "cut.tar"))
        kept = 3 if what.startswith("after") else 2
        assert ds.ids == [f"cut.tar/k{i}" for i in range(kept)], what
        assert ds.labels.tolist() == [i % 3 for i in range(kept)], what
        assert [sid for sid, _ in ds.skipped] == [f"cut.tar/k{kept}", "cut.tar"], what
        with pytest.raises(DataError, match=r"cut\.tar"):
            load_images(str(tmp_path / "cut.tar"), strict=True)

    # A corrupt header in the middle (bad checksum) is reported too, not taken as the end.
    corrupt = bytearray(data)
    corrupt[cls2.offset : cls2.offset + 8] = b"XXXXXXXX"
    (tmp_path / "corrupt.tar").write_bytes(bytes(corrupt))
    ds = load_images(str(tmp_path / "corrupt.tar"))
    assert len(ds) == 2 and ds.skipped[-1][0] == "corrupt.tar"

    # max_samples stops streaming before the broken part is reached, so nothing is skipped.
    (tmp_path / "cut.tar").write_bytes(data[: cls2.offset])
    early = load_images(str(tmp_path / "cut.tar"), max_samples=2)
    assert early.ids == ["cut.tar/k0", "cut.tar/k1"] and early.skipped == []
    assert early.labels.tolist() == [0, 1]


@needs_cifar
def test_real_cifar_shard_with_max_samples() -> None:
    n = 300
    ds = load_images(str(CIFAR_SHARDS / "train-*.tar"), max_samples=n)
    assert len(ds) == n and side(ds) == (32, 32)
    assert ds.classes == (CIFAR_SHARDS / "classes.txt").read_text().split()
    # Independent read of the same shard: .cls members and the JPEGs decoded by PIL directly.
    expected: dict[str, int] = {}
    jpegs: dict[str, bytes] = {}
    with tarfile.open(CIFAR_SHARDS / "train-000.tar") as tar:
        for member in tar:
            key, ext = member.name.rsplit(".", 1)
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if ext == "cls":
                expected[key] = int(data)
            else:
                jpegs[key] = data
            if len(expected) >= n and len(jpegs) >= n:
                break
    keys = [sid.split("/", 1)[1] for sid in ds.ids]
    assert ds.labels.tolist() == [expected[k] for k in keys]
    assert all(k.startswith(ds.classes[label]) for k, label in zip(keys, ds.labels.tolist()))
    for i in (0, 17, n - 1):
        direct = np.asarray(Image.open(io.BytesIO(jpegs[keys[i]])).convert("RGB"))
        assert torch.equal(ds.inputs[i], chw(direct))


# ---------------------------------------------------------------------------------------------
# CIFAR pickles
# ---------------------------------------------------------------------------------------------


def make_cifar_dir(root: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A fake cifar-10-batches-py with the real files' structure (bytes keys, protocol 2)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x.png"] * 4,
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        all_data.append(data)
        all_labels.append(labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [f"c{i}".encode() for i in range(10)]}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.stack(all_data), np.array(all_labels)


def test_cifar_pickle_dir(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    data, labels = make_cifar_dir(root)
    train = load_images(str(root))
    assert len(train) == 20 and side(train) == (32, 32)
    assert train.classes == [f"c{i}" for i in range(10)]
    assert train.labels.tolist() == labels[:5].reshape(-1).tolist()
    assert train.ids[:2] == ["data_batch_1/0", "data_batch_1/1"]
    # Row layout: 1024 red values, then green, then blue, each 32x32 row-major.
    flat = data[:5].reshape(20, 3072)
    assert train.inputs[5, 1, 2, 3].item() == flat[5, 1024 + 2 * 32 + 3]
    assert torch.equal(train.inputs, torch.from_numpy(flat.reshape(20, 3, 32, 32)))

    for spec in (f"{root}:test", str(root / "test_batch"), f"cifar:{root}:test"):
        test = load_images(spec)
        assert test.labels.tolist() == labels[5].tolist(), spec
        assert torch.equal(test.inputs, torch.from_numpy(data[5].reshape(4, 3, 32, 32)))

    assert len(load_images(str(root), max_samples=6)) == 6
    assert side(load_images(str(root), image_size=16)) == (16, 16)


def _py2_str(data: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_uint8_array(array: np.ndarray) -> bytes:
    """The opcodes numpy 1 under Python 2 wrote for a 2-D uint8 array (as in the real CIFAR batches)."""
    rows, cols = array.shape
    dtype = (
        b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
        b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85"
        + _py2_str(b"b") + b"\x87R"
        + b"(" + _py2_int(1) + _py2_int(rows) + _py2_int(cols) + b"\x86" + dtype + b"\x89"
        + _py2_str(array.tobytes()) + b"tb"
    )  # fmt: skip


def test_python2_style_cifar_pickle(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 256, size=(2, 3072), dtype=np.uint8)
    stream = (
        b"\x80\x02}("
        + _py2_str(b"batch_label") + _py2_str(b"testing batch 1 of 1")
        + _py2_str(b"labels") + b"](" + _py2_int(7) + _py2_int(2) + b"e"
        + _py2_str(b"data") + _py2_uint8_array(data)
        + b"u."
    )  # fmt: skip
    assert np.array_equal(pickle.loads(stream, encoding="bytes")[b"data"], data)  # the opcodes are right
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "test_batch").write_bytes(stream)
    ds = load_images(f"{root}:test")
    assert ds.labels.tolist() == [7, 2] and ds.classes is None
    assert torch.equal(ds.inputs, torch.from_numpy(data.reshape(2, 3, 32, 32)))


class _Evil:
    """Unpickling this would run a shell command (it creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_rejects_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_restricted_pickle(evil)
    eval_pickle = tmp_path / "eval.pkl"
    eval_pickle.write_bytes(pickle.dumps(eval, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="eval"):
        load_restricted_pickle(eval_pickle)

    # Inside a CIFAR directory, the malicious batch is skipped (or raises when strict); never run.
    root = tmp_path / "cifar"
    make_cifar_dir(root)
    (root / "data_batch_3").write_bytes(evil.read_bytes())
    ds = load_images(str(root))
    assert len(ds) == 16 and [sid for sid, _ in ds.skipped] == ["data_batch_3"]
    with pytest.raises(DataError, match="data_batch_3"):
        load_images(str(root), strict=True)
    assert not marker.exists()

    # Plain arrays pickled by Python 3 with a newer protocol still load.
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 4, 5):
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps({"a": array, "b": [1, 2]}, protocol=protocol))
        loaded = load_restricted_pickle(path)
        assert np.array_equal(loaded["a"], array) and loaded["b"] == [1, 2]


# ---------------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    ["NHW", "NHW1", "NHW3", "NHW4", "N1HW", "N3HW", "N4HW"],
)
def test_npy_layouts(tmp_path: Path, layout: str) -> None:
    base = np.random.default_rng(0).integers(0, 256, size=(3, 5, 6, 4), dtype=np.uint8)  # N, H, W, RGBA
    channels = {"NHW": 0, "NHW1": 1, "NHW3": 3, "NHW4": 4, "N1HW": 1, "N3HW": 3, "N4HW": 4}[layout]
    if channels == 0:
        array, expected = base[..., 0], np.repeat(base[..., :1], 3, axis=3)
    else:
        array = base[..., :channels]
        expected = np.repeat(array, 3, axis=3) if channels == 1 else base[..., :3]
    if layout.startswith("N") and layout[1].isdigit():
        array = array.transpose(0, 3, 1, 2)
    np.save(tmp_path / "x.npy", array)
    ds = load_images(str(tmp_path / "x.npy"))
    assert ds.inputs.shape == (3, 3, 5, 6)
    assert torch.equal(ds.inputs, torch.from_numpy(expected).permute(0, 3, 1, 2))
    assert ds.ids == ["0", "1", "2"] and not ds.has_labels


def test_npy_dtypes_and_errors(tmp_path: Path) -> None:
    ints = np.random.default_rng(0).integers(0, 256, size=(2, 4, 4, 3))
    np.save(tmp_path / "i16.npy", ints.astype(np.int16))
    assert torch.equal(
        load_images(str(tmp_path / "i16.npy")).inputs, torch.from_numpy(ints).permute(0, 3, 1, 2).byte()
    )

    floats = ints / 255.0
    np.save(tmp_path / "f.npy", floats.astype(np.float32))
    assert torch.equal(
        load_images(str(tmp_path / "f.npy")).inputs, torch.from_numpy(ints).permute(0, 3, 1, 2).byte()
    )

    np.save(tmp_path / "f_big.npy", ints.astype(np.float32))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_images(str(tmp_path / "f_big.npy"))
    np.save(tmp_path / "i_big.npy", ints * 2)
    with pytest.raises(DataError, match=r"0\.\.255"):
        load_images(str(tmp_path / "i_big.npy"))
    np.save(tmp_path / "bad_shape.npy", np.zeros((2, 5, 5, 7), np.uint8))
    with pytest.raises(DataError, match="channels"):
        load_images(str(tmp_path / "bad_shape.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        load_images(str(tmp_path / "objects.npy"))
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "missing.npy"))


@pytest.mark.parametrize(
    ("image_key", "label_key"), [("images", "labels"), ("x", "y"), ("X", None), ("data", "targets")]
)
def test_npz_keys(tmp_path: Path, image_key: str, label_key: str | None) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(4, 3, 6, 6), dtype=np.uint8)
    labels = np.array([3, 0, -1, 2])
    arrays = {image_key: images, **({label_key: labels} if label_key else {})}
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_images(str(tmp_path / "d.npz"), max_samples=3)
    assert torch.equal(ds.inputs, torch.from_numpy(images[:3]))
    assert ds.labels.tolist() == (labels[:3].tolist() if label_key else [-1, -1, -1])


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nokey.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"^\S+nokey\.npz has arrays \['pixels'\]; name the data 'features'"):
        load_images(str(tmp_path / "nokey.npz"))
    np.savez(tmp_path / "more_labels.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="one per sample"):
        load_images(str(tmp_path / "more_labels.npz"), max_samples=1)
    np.save(tmp_path / "scalar.npy", np.array(3, np.uint8))
    with pytest.raises(DataError, match=r"shape \(\)"):
        load_images(str(tmp_path / "scalar.npy"))
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"\(2,\) integer"):
        load_images(str(tmp_path / "badlabels.npz"))


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def test_digits_splits_are_disjoint_complete_and_stratified() -> None:
    from sklearn.datasets import load_digits

    reference = load_digits()
    full, train, test = load_images("digits"), load_images("digits:train"), load_images("digits:test")
    index = {name: [int(i.split("/")[1]) for i in ds.ids] for name, ds in [("train", train), ("test", test)]}
    assert len(full) == 1797
    assert not set(index["train"]) & set(index["test"])
    assert sorted(index["train"] + index["test"]) == list(range(1797))
    counts = np.bincount(reference.target, minlength=10)
    test_counts = np.bincount(test.labels.numpy(), minlength=10)
    assert test_counts.tolist() == [round(0.2 * c) for c in counts]
    assert np.array_equal(test.labels.numpy(), reference.target[index["test"]])
    assert full.classes == [str(d) for d in range(10)]

    expected = np.rint(reference.images * 255 / 16).astype(np.uint8)
    assert torch.equal(full.inputs, torch.from_numpy(expected)[:, None].expand(1797, 3, 8, 8))
    assert full.inputs.max().item() == 255

    # The split never changes: a fixed seed, not the global random state.
    np.random.seed(123)
    assert load_images("digits:test").ids == test.ids

    big = load_images("digits:test", image_size=16, max_samples=5)
    assert big.inputs.shape == (5, 3, 16, 16)
    ref = F.interpolate(test.inputs[:5].float(), size=(16, 16), mode="bilinear", align_corners=False)
    assert (big.inputs.float() - ref).abs().max() <= 1
    with pytest.raises(DataError, match="digits:train"):
        load_images("digits:validation")


# ---------------------------------------------------------------------------------------------
# spec parsing and registration
# ---------------------------------------------------------------------------------------------


def test_spec_detection_and_errors(tmp_path: Path) -> None:
    assert {"digits", "cifar", "arrays", "shards", "folder"} <= set(SOURCES.names())
    for name in ("digits", "cifar", "arrays", "shards", "folder"):
        assert callable(SOURCES.get(name).detect) and SOURCES.summary(name)
    assert resolve_spec("digits") == ("digits", "")
    assert resolve_spec("digits:test") == ("digits", "test")
    assert resolve_spec(str(tmp_path)) == ("folder", str(tmp_path))
    assert resolve_spec("/x/train-{0..4}*.tar")[0] == "shards"
    assert resolve_spec("a.npz")[0] == "arrays"
    with pytest.raises(DataError, match=r"does not exist.*digits:train"):
        load_images(str(tmp_path / "nowhere"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="cannot tell"):
        load_images(str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="image_size"):
        load_images("digits", image_size=0)


# ---------------------------------------------------------------------------------------------
# disk cache
# ---------------------------------------------------------------------------------------------


def test_disk_cache_hit_and_corrupt_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    save_png(data / "a" / "1.png", rgb(6, 6, 0))
    save_png(data / "b" / "2.png", rgb(6, 6, 1))
    (data / "b" / "3.png").write_bytes(b"broken")
    cache_dir = tmp_path / "cache"

    first = load_images(str(data), cache_dir=cache_dir, image_size=4)
    entries = list(cache_dir.glob("*.safetensors"))
    assert len(entries) == 1 and not list(cache_dir.glob("*.tmp"))

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite a cache hit")

    with monkeypatch.context() as patch:
        patch.setattr(assemble, "decode_image", no_decoding)
        second = load_images(str(data), cache_dir=cache_dir, image_size=4)
        # strict still reports the skip recorded in the cached entry
        with pytest.raises(DataError, match=r"b/3\.png"):
            load_images(str(data), cache_dir=cache_dir, image_size=4, strict=True)
    assert torch.equal(first.inputs, second.inputs) and torch.equal(first.labels, second.labels)
    assert (first.ids, first.classes, first.skipped, first.source) == (
        second.ids,
        second.classes,
        second.skipped,
        second.source,
    )

    # Another image_size is another entry.
    load_images(str(data), cache_dir=cache_dir, image_size=3)
    assert len(list(cache_dir.glob("*.safetensors"))) == 2

    # A corrupt entry is ignored with a warning, rebuilt and readable again afterwards.
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    with pytest.warns(CacheWarning, match="corrupt"):
        rebuilt = load_images(str(data), cache_dir=cache_dir, image_size=4)
    assert torch.equal(rebuilt.inputs, first.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_images(str(data), cache_dir=cache_dir, image_size=4)

    # Changing an input file changes the key: the new pixels are decoded, not served stale.
    new_pixels = rgb(4, 4, 9)
    save_png(data / "a" / "1.png", new_pixels)
    os.utime(data / "a" / "1.png", ns=(1, 1))
    changed = load_images(str(data), cache_dir=cache_dir, image_size=4)
    assert torch.equal(changed.inputs[0], chw(new_pixels))


def test_cache_key_depends_on_inputs(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"1")
    key = data_cache.cache_key("folder", "x", [f], image_size=None, max_samples=None)
    assert key == data_cache.cache_key("folder", "x", [f], image_size=None, max_samples=None)
    assert key != data_cache.cache_key("folder", "x", [f], image_size=None, max_samples=5)
    assert key != data_cache.cache_key("folder", "x", [f], image_size=8, max_samples=None)
    assert key != data_cache.cache_key("shards", "x", [f], image_size=None, max_samples=None)
    f.write_bytes(b"12")
    assert key != data_cache.cache_key("folder", "x", [f], image_size=None, max_samples=None)
