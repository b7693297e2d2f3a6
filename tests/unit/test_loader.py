"""Tests of the prefetching loader: order, equality with direct calls, bounded look-ahead, errors, close."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from selfsup.data.base import Batch, DataInfo, Dataset, InMemoryDataset
from selfsup.data.loader import MAX_DEFAULT_WORKERS, PrefetchLoader, default_workers
from selfsup.data.stream import open_streaming_shards


class FakeStreaming(Dataset):
    """A streaming data set whose sample ``i`` is the constant image ``i % 256``; records, for every
    batch it starts, how many batches were started but not yet handed to the consumer."""

    streaming = True

    def __init__(self, n: int = 64, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.labels = torch.arange(n, dtype=torch.int64) % 3
        self.ids = [str(i) for i in range(n)]
        self.info = DataInfo(modality="image", sample_shape=(3, 2, 2), dtype="uint8")
        self.source = "fake"
        self.skipped = []
        self.delay = delay
        self.fail_at = fail_at
        self.lock = threading.Lock()
        self.started = 0
        self.consumed = 0
        self.ahead: list[int] = []
        self.threads: set[str] = set()

    def batch(self, indices: Tensor) -> Batch:
        with self.lock:
            self.started += 1
            self.ahead.append(self.started - self.consumed)
            self.threads.add(threading.current_thread().name)
            number = self.started - 1
        time.sleep(self.delay)
        if self.fail_at is not None and int(indices[0]) == self.fail_at:
            raise ValueError(f"cannot decode batch {number}")
        inputs = (indices % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
        return Batch(inputs=inputs, labels=self.labels[indices], indices=indices)

    def _fingerprint(self) -> str:
        return "fake"


def schedule(count: int, size: int = 4, n: int = 64) -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, n, (size,), generator=generator) for _ in range(count)]


def consume(loader: PrefetchLoader, data: FakeStreaming) -> list[Batch]:
    out = []
    for batch in loader:
        with data.lock:
            data.consumed += 1
        out.append(batch)
    return out


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_yields_in_schedule_order_and_equals_direct_calls(workers: int) -> None:
    data = FakeStreaming(delay=0.002)
    plan = schedule(12)
    with PrefetchLoader(data, iter(plan), workers=workers, depth=3) as loader:
        got = consume(loader, data)
    assert len(got) == len(plan)
    for indices, batch in zip(plan, got):
        want = data.batch(indices)
        assert torch.equal(batch.indices, indices) and torch.equal(batch.inputs, want.inputs)
        assert torch.equal(batch.labels, want.labels)


@pytest.mark.parametrize(("workers", "depth"), [(1, 1), (2, 2), (2, 5), (4, 3)])
def test_never_more_than_depth_batches_in_flight(workers: int, depth: int) -> None:
    data = FakeStreaming(delay=0.003)
    loader = PrefetchLoader(data, (i for i in schedule(20)), workers=workers, depth=depth)
    for _ in loader:
        time.sleep(0.004)  # a slow consumer: the workers run as far ahead as they may
        with data.lock:
            data.consumed += 1
    assert max(data.ahead) <= depth
    assert max(data.ahead) == depth  # and they do run ahead
    assert all(name.startswith("selfsup-decode") for name in data.threads)


def test_with_a_real_streaming_data_set(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(10):
            out = io.BytesIO()
            Image.fromarray(np.full((6, 6, 3), 20 * i, np.uint8)).save(out, format="PNG")
            info = tarfile.TarInfo(f"{i:03d}.png")
            info.size = len(out.getvalue())
            tar.addfile(info, io.BytesIO(out.getvalue()))
    data = open_streaming_shards([shard], source="s", image_size=None)
    plan = [torch.tensor([3, 1, 3]), torch.tensor([9, 0]), torch.tensor([5])]
    with PrefetchLoader(data, plan, workers=2, depth=2) as loader:
        got = list(loader)
    for indices, batch in zip(plan, got):
        assert torch.equal(batch.inputs, data.batch(indices).inputs)
        assert batch.inputs[:, 0, 0, 0].tolist() == [20 * i for i in indices.tolist()]
    data.close()


def test_a_worker_error_is_raised_at_its_batch() -> None:
    data = FakeStreaming()
    plan = [torch.tensor([i, i]) for i in range(10)]
    data.fail_at = 4
    loader = PrefetchLoader(data, plan, workers=2, depth=3)
    got = [next(loader) for _ in range(4)]
    assert [int(b.indices[0]) for b in got] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot decode"):
        next(loader)
    with pytest.raises(StopIteration):
        next(loader)
    loader.close()  # closing twice is fine


def test_close_midway_returns_promptly() -> None:
    data = FakeStreaming(delay=0.05)

    def endless() -> Iterator[Tensor]:
        while True:
            yield torch.tensor([1, 2])

    loader = PrefetchLoader(data, endless(), workers=2, depth=8)
    next(loader)
    next(loader)
    begin = time.perf_counter()
    loader.close()
    # At most the batches already being decoded finish (one per worker), the queued ones are cancelled.
    assert time.perf_counter() - begin < 0.5
    assert data.started <= 2 + 8
    with pytest.raises(StopIteration):
        next(loader)


def test_breaking_out_of_a_with_block_stops_the_threads() -> None:
    data = FakeStreaming(delay=0.01)
    before = threading.active_count()
    with PrefetchLoader(data, schedule(50), workers=2, depth=4) as loader:
        for i, _ in enumerate(loader):
            if i == 2:
                break
    assert threading.active_count() == before
    assert data.started < 10


def test_in_memory_data_sets_are_indexed_directly() -> None:
    images = torch.arange(16 * 3 * 2 * 2, dtype=torch.int64).remainder(256).to(torch.uint8).view(16, 3, 2, 2)
    data = InMemoryDataset(
        images,
        torch.zeros(16, dtype=torch.int64),
        [str(i) for i in range(16)],
        info=DataInfo(modality="image", sample_shape=(3, 2, 2), dtype="uint8"),
        source="mem",
    )
    plan = schedule(5, n=16)
    before = threading.active_count()
    loader = PrefetchLoader(data, plan, workers=4, depth=2)
    got = list(loader)
    assert threading.active_count() == before and loader._pool is None
    assert all(torch.equal(b.inputs, images[i]) for b, i in zip(got, plan))


def test_arguments_and_default_workers() -> None:
    assert 1 <= default_workers() <= MAX_DEFAULT_WORKERS
    with pytest.raises(ValueError, match="depth"):
        PrefetchLoader(FakeStreaming(), [], workers=1, depth=0)
    with pytest.raises(ValueError, match="workers"):
        PrefetchLoader(FakeStreaming(), [], workers=-1, depth=1)
    assert list(PrefetchLoader(FakeStreaming(), [], workers=2, depth=2)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory() -> None:
    data = FakeStreaming()
    plan = schedule(4)
    with PrefetchLoader(data, plan, workers=2, depth=2, pin_memory=True) as loader:
        got = list(loader)
    assert all(b.inputs.is_pinned() and b.labels.is_pinned() for b in got)
    on_device = got[0].to("cuda")
    assert torch.equal(on_device.inputs.cpu(), data.batch(plan[0]).inputs)
