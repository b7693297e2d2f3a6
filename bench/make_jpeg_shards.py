"""Write generated RGB JPEGs into WebDataset tar shards, for benchmarking streaming data loading.

Each sample is ``<key>.jpg`` (quality 90) plus ``<key>.cls`` (its class index as ASCII); a
``classes.txt`` beside the shards names the classes. The images are random smooth colour fields
overlaid with a class-specific stripe pattern and per-pixel noise, so that they compress like
photographs (roughly 10 KB at 128x128) instead of like flat colour, and the labels mean something.
The output is a pure function of ``--seed``, ``--count``, ``--size`` and ``--per-shard``: every
sample draws from its own generator seeded by ``(seed, index)``, and the tar members carry fixed
metadata (mtime 0, uid 0), so shards are byte-identical across runs and across process counts.

    python bench/make_jpeg_shards.py --out /tmp/jpeg-shards                # 100,000 images
    python bench/make_jpeg_shards.py --out /tmp/small --count 2000 --size 64
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# Stripe orientation (degrees) and period (pixels at size 128) of each class: distinct enough that
# a linear probe on a pretrained encoder can tell them apart, subtle enough not to be trivial.
CLASSES: tuple[tuple[str, float, float], ...] = (
    ("stripes-000-fine", 0.0, 6.0),
    ("stripes-045-fine", 45.0, 6.0),
    ("stripes-090-fine", 90.0, 6.0),
    ("stripes-135-fine", 135.0, 6.0),
    ("stripes-000-wide", 0.0, 16.0),
    ("stripes-045-wide", 45.0, 16.0),
    ("stripes-090-wide", 90.0, 16.0),
    ("stripes-135-wide", 135.0, 16.0),
    ("rings-fine", -1.0, 8.0),
    ("rings-wide", -1.0, 20.0),
)


def make_image(seed: int, index: int, size: int) -> tuple[bytes, int]:
    """The JPEG bytes and class index of sample ``index``: a pure function of ``(seed, index, size)``."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSES)))
    _, angle, period = CLASSES[label]
    # A smooth colour field: a coarse random grid upsampled bilinearly.
    grid = rng.integers(0, 256, size=(int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (128.0 / size)
    phase = float(rng.uniform(0, 2 * np.pi))
    if angle < 0:
        cy, cx = rng.uniform(32, 96, size=2)
        coord = np.hypot(yy - cy, xx - cx)
    else:
        theta = np.deg2rad(angle + rng.uniform(-10, 10))
        coord = xx * np.cos(theta) + yy * np.sin(theta)
    stripes = np.sin(2 * np.pi * coord / period + phase)[..., None]
    tint = rng.uniform(20, 60, size=3).astype(np.float32)
    noise = rng.normal(0.0, 10.0, size=(size, size, 3)).astype(np.float32)
    pixels = np.clip(field + stripes * tint + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue(), label


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata: the shard bytes depend on the content only
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, seed: int, start: int, stop: int, size: int) -> int:
    """Write samples ``start..stop-1`` to the tar ``path`` (atomically); returns the bytes written."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index in range(start, stop):
            data, label = make_image(seed, index, size)
            key = f"{index:08d}"
            _add(tar, f"{key}.jpg", data)
            _add(tar, f"{key}.cls", str(label).encode("ascii"))
    os.replace(tmp, path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the shards into")
    parser.add_argument("--count", type=int, default=100_000, help="number of images (default 100000)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--per-shard", type=int, default=10_000, help="samples per shard (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 8 or args.per_shard < 1:
        parser.error("--count and --per-shard must be >= 1 and --size >= 8")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classes.txt").write_text("".join(name + "\n" for name, _, _ in CLASSES), encoding="utf-8")
    starts = range(0, args.count, args.per_shard)
    paths = [args.out / f"train-{i:06d}.tar" for i in range(len(starts))]
    began = time.perf_counter()
    # One task per shard: each writes its own file, so the pool needs no coordination.
    with ProcessPoolExecutor(max_workers=max(1, min(args.processes, len(paths)))) as pool:
        sizes = list(
            pool.map(
                write_shard,
                paths,
                [args.seed] * len(paths),
                starts,
                [min(s + args.per_shard, args.count) for s in starts],
                [args.size] * len(paths),
            )
        )
    seconds = time.perf_counter() - began
    total = sum(sizes)
    decoded = args.count * 3 * args.size * args.size
    print(f"wrote {args.count} images in {len(paths)} shard(s) to {args.out} in {seconds:.1f} s")
    print(f"total bytes written: {total:,} ({total / 2**20:.1f} MiB, {total / args.count:,.0f} per sample)")
    print(f"decoded size (N x 3 x {args.size}^2): {decoded:,} ({decoded / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
