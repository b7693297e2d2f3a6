"""Batches decoded ahead of the step that needs them, on a small thread pool, in schedule order.

The schedule (an iterable of index tensors, e.g. ``StepSampler.indices(step, micro, rank)`` for
each step) fixes which samples each batch holds, so the batches are the same whether they are
decoded ahead or not, by one thread or eight: decoding ahead changes only when the work is done.
Threads rather than processes: Pillow releases the GIL while it decodes and resizes, so several
threads do decode in parallel, and they share the data set (its index and open files) without
copying or pickling it.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from torch import Tensor

from selfsup.data.base import Batch, Dataset

# More threads than this rarely pay off: the trainer consumes batches on one thread, and past a
# few decoders the copies and the GIL-held parts of decoding become the limit.
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Decoding threads to use by default: the CPU cores this process may run on, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


def default_depth(workers: int) -> int:
    """Batches in flight by default: two per worker (the one being waited for counts), at least 4."""
    return max(4, 2 * workers)


class PrefetchLoader(Iterator[Batch]):
    """Yields ``dataset.batch(indices)`` for each ``indices`` of ``schedule``, in schedule order.

    For a streaming data set (``dataset.streaming``) the batches are decoded ahead by ``workers``
    threads, with at most ``depth`` batches submitted and not yet handed out, so memory stays
    bounded (``depth`` batches besides the caller's) however long the schedule: while the caller
    works on one batch the next ``depth - 1`` are decoded, so ``depth > workers`` keeps every thread
    busy. Pillow releases the GIL while decoding, so the threads run in parallel (the Python parts
    of opening an image hold it: small images scale less than large ones). ``schedule`` is read
    lazily, on the caller's thread, never more than ``depth`` entries ahead. An in-memory data set
    is indexed directly, without threads (indexing a tensor is already fast, and may run on the GPU).

    An exception raised while making a batch is raised by ``next()`` at that batch, in order (the
    batches before it are still delivered). :meth:`close` (or leaving a ``with`` block, or
    dropping the iterator) cancels the batches not yet started and waits for those being decoded,
    at most one batch per thread, so stopping early never hangs.

    Args:
        dataset: any :class:`~selfsup.data.base.Dataset`.
        schedule: ``(B,)`` int64 index tensors, one per batch.
        workers: decoding threads (0 decodes on the consumer's thread, without prefetching).
        depth: batches in flight at most (>= 1); a few per worker keeps every thread busy.
        pin_memory: page-lock each streamed batch on its worker thread, so that ``batch.to("cuda",
            non_blocking=True)`` copies asynchronously (needs CUDA; ignored for in-memory data sets).
    """

    def __init__(
        self,
        dataset: Dataset,
        schedule: Iterable[Tensor],
        *,
        workers: int,
        depth: int,
        pin_memory: bool = False,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dataset = dataset
        self.workers = workers
        self.depth = depth
        self.pin_memory = pin_memory
        self._schedule: Iterator[Tensor] | None = iter(schedule)
        self._threaded = bool(dataset.streaming) and workers > 0
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="selfsup-decode") if self._threaded else None
        )
        self._pending: deque[Future[Batch]] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def __iter__(self) -> PrefetchLoader:
        return self

    def _fill(self) -> None:
        """Submit batches from the schedule until ``depth`` are in flight or the schedule ends."""
        assert self._pool is not None
        while self._schedule is not None and len(self._pending) < self.depth:
            indices = next(self._schedule, None)
            if indices is None:
                self._schedule = None
                break
            self._pending.append(self._pool.submit(self._make, indices))

    def _make(self, indices: Tensor) -> Batch:
        batch = self.dataset.batch(indices)
        return _pinned(batch) if self.pin_memory else batch

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        if not self._threaded:
            indices = None if self._schedule is None else next(self._schedule, None)
            if indices is None:
                self._schedule = None
                raise StopIteration
            return self._make(indices) if self.dataset.streaming else self.dataset.batch(indices)
        with self._lock:  # one consumer at a time: the deque and the schedule are not shared safely
            # Topped up here, once the caller is done with the previous batch: the batch being
            # waited for counts as in flight, so never more than ``depth`` are decoded or queued.
            self._fill()
            if not self._pending:
                self.close()
                raise StopIteration
            future = self._pending.popleft()
        try:
            return future.result()
        except BaseException:
            # The error belongs to this batch; the ones queued after it are of no use any more.
            self.close()
            raise

    def close(self) -> None:
        """Cancel the batches not started, wait for those being decoded, and stop iterating."""
        self._closed = True
        self._schedule = None
        pending, self._pending = self._pending, deque()
        for future in pending:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PrefetchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without close(): still cancel what is queued (without waiting: this may run at exit).
        pool = self.__dict__.get("_pool")
        if pool is not None and not self.__dict__.get("_closed", True):
            pool.shutdown(wait=False, cancel_futures=True)


def _pinned(batch: Batch) -> Batch:
    """``batch`` with its tensors in page-locked memory."""

    def pin(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.pin_memory()

    inputs = batch.inputs
    return Batch(
        inputs={k: v.pin_memory() for k, v in inputs.items()}
        if isinstance(inputs, dict)
        else inputs.pin_memory(),
        labels=batch.labels.pin_memory(),
        indices=batch.indices.pin_memory(),
        lengths=pin(batch.lengths),
        padding_mask=pin(batch.padding_mask),
    )


__all__ = ["MAX_DEFAULT_WORKERS", "PrefetchLoader", "default_workers"]
