"""The machinery every streaming data set shares: substitution of unreadable samples, the fingerprint
and the lifecycle of the open files.

A streaming data set (:class:`~selfsup.data.stream.StreamingImageDataset`,
:class:`~selfsup.data.audio_stream.StreamingAudioDataset`) keeps labels and ids in memory and decodes
samples when a batch asks for them. What differs between modalities is only how one sample is read
and decoded, so :class:`StreamingDataset` leaves exactly that to its subclasses (:meth:`_decode`) and
does the rest once:

* an unreadable sample is replaced by the next readable one (mod N), so a batch keeps its size and
  its content never depends on thread timing; with ``strict=True`` it raises DataError naming it;
* the fingerprint (which keys feature caches) is the source's when given, else a digest of what
  determines the samples;
* the reader's files are released by :meth:`~StreamingDataset.close` (or the context manager), and
  the lock is recreated when the data set travels to another process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from selfsup.data.base import DataError, Dataset, error_reason

_Self = TypeVar("_Self", bound="StreamingDataset")


class Closable(Protocol):
    """What the base needs of a reader: releasing its open files (reads open them again)."""

    def close(self) -> None: ...


class OpenFiles:
    """Read-only descriptors of ``paths``, opened on first use and kept until :meth:`close`; safe to
    use from several threads at once (readers ``os.pread`` them: the offset travels with the call, so
    threads share a descriptor with no seek and no lock). :meth:`close` releases them (they are
    opened again on the next use); a pickled copy carries the paths, not the descriptors."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._fds = [-1] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def open_once(self, i: int) -> int:
        """A fresh descriptor of ``paths[i]``, not kept: the caller closes it."""
        return os.open(self.paths[i], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def fd(self, i: int) -> int:
        """The kept descriptor of ``paths[i]``."""
        fd = self._fds[i]
        if fd < 0:
            with self._lock:
                if self._fds[i] < 0:
                    self._fds[i] = self.open_once(i)
                fd = self._fds[i]
        return fd

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, [-1] * len(self.paths)
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        # Descriptors and locks do not travel to another process; they are opened again there.
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"])  # type: ignore[misc]


class StreamingDataset(Dataset):
    """A data set whose samples are decoded on demand by :meth:`_decode`, the one subclass hook.

    Unreadable samples: with ``strict=True`` a sample that fails to read or decode raises DataError
    naming it. Otherwise sample ``i`` is replaced by the first of ``i + 1, i + 2, ...`` (mod N) that
    decodes (:meth:`_sample`), so a batch keeps its size and its content never depends on thread
    timing. Each failing sample is recorded once in ``skipped`` (``(id, reason)``) and every
    substitution made by a batch is counted in ``substitutions``.

    Fingerprint: the one given (a string, or a callable computed on first use: stat'ing a large
    source's files takes seconds), else a SHA-256 over ``info``, ``source``, ``ids`` and ``labels``,
    plus :meth:`_fingerprint_extra`.

    Call :meth:`close` (or use the data set as a context manager) to release the reader's open files;
    a closed data set opens them again if used. Subclasses implement :meth:`_decode` and ``batch``
    (which calls :meth:`_positions`, :meth:`_sample` per position and :meth:`_count_substitutions`),
    and set ``info``.
    """

    streaming = True
    #: One item in messages: "an unreadable sample is replaced", "all 3 samples failed to decode".
    _noun: ClassVar[str] = "sample"
    #: What the data is, in "no readable image in ...".
    _content_noun: ClassVar[str] = "sample"

    reader: Closable

    def __init__(
        self,
        reader: Closable,
        labels: np.ndarray | Tensor,
        ids: list[str],
        *,
        source: str,
        strict: bool = False,
        skipped: Sequence[tuple[str, str]] = (),
        fingerprint: str | Callable[[], str] | None = None,
    ) -> None:
        self.reader = reader
        self.labels = torch.as_tensor(np.asarray(labels, np.int64)).reshape(-1)
        self.ids = ids
        self.source = source
        self.strict = strict
        self.skipped = list(skipped)
        self.substitutions = 0
        self._given_fingerprint = fingerprint
        self._bad: dict[int, str] = {}  # index -> reason, for samples known not to decode
        # Guards the shared records (skipped, _bad, substitutions, subclasses' warn-once flags):
        # batch() may run on several loader threads at once.
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------

    @abstractmethod
    def _decode(self, i: int) -> np.ndarray:
        """Sample ``i`` decoded, at the data set's shape; raises (any exception) on unreadable data.

        Called from :meth:`_sample`, itself called from ``batch``: a warning raised here with
        ``stacklevel=4`` points at the caller of ``batch``.
        """

    def _sample(self, i: int) -> tuple[int, np.ndarray]:
        """(index actually used, decoded sample) for sample ``i``, substituting unreadable ones."""
        n = len(self.ids)
        j = i
        for _ in range(n):
            if j not in self._bad:
                try:
                    return j, self._decode(j)
                # Decoders raise many exception types on malformed input (Pillow's format plugins:
                # OSError, SyntaxError, ValueError, struct.error, ...; soundfile several more); every
                # one means "unreadable".
                except Exception as error:
                    reason = error_reason(error)
                    if self.strict:
                        raise DataError(
                            f"cannot read {self.ids[j]} in {self.source!r}: {reason}. (strict=True; with "
                            f"strict=False an unreadable {self._noun} is replaced by the next readable one "
                            "and listed in dataset.skipped.)"
                        ) from error
                    with self._lock:
                        if j not in self._bad:
                            self._bad[j] = reason
                            self.skipped.append((self.ids[j], reason))
                            # The subclass's module logger, so that log filters by module still apply.
                            logging.getLogger(type(self).__module__).warning(
                                f"%s: cannot decode %s (%s); using the next readable {self._noun} instead",
                                self.source,
                                self.ids[j],
                                reason,
                            )
            j = (j + 1) % n
        raise DataError(
            f"no readable {self._content_noun} in {self.source!r}: all {n} {self._noun}s failed to decode"
        )

    def _positions(self, indices: Tensor) -> list[int]:
        """``indices`` (any shape, any device) as positions in ``[0, N)``; negative ones count from the
        end, as in tensor indexing; out of range raises IndexError."""
        wanted = torch.as_tensor(indices).detach().to("cpu", torch.int64).reshape(-1).tolist()
        n = len(self.ids)
        if wanted and not -n <= min(wanted) <= max(wanted) < n:
            raise IndexError(f"index out of range for a data set of {n} {self._noun}s")
        return [i % n for i in wanted]

    def _count_substitutions(self, asked: Sequence[int], used: Sequence[int]) -> None:
        """Add to ``substitutions`` the positions of one batch whose sample was replaced (once per
        batch, under the lock: loader threads finish batches concurrently)."""
        substituted = sum(j != i for i, j in zip(asked, used))
        if substituted:
            with self._lock:
                self.substitutions += substituted

    # -- identity --------------------------------------------------------------------------

    def _fingerprint_extra(self) -> bytes:
        """Bytes beyond ``info``, ``source``, ``ids`` and ``labels`` that determine the samples (none
        here; audio adds the clip lengths). Feature caches are keyed by the result: keep it stable."""
        return b""

    def _fingerprint(self) -> str:
        given = self._given_fingerprint
        if callable(given):
            given = self._given_fingerprint = given()
        if given is None:
            digest = hashlib.sha256(repr(self.info.to_dict()).encode())
            digest.update(self.source.encode())
            digest.update("\0".join(self.ids).encode())
            digest.update(self.labels.numpy().tobytes())
            digest.update(self._fingerprint_extra())  # b"" leaves the digest as it was
            given = self._given_fingerprint = digest.hexdigest()
        return given

    # -- resources -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the reader's open files (they are opened again if the data set is used afterwards)."""
        self.reader.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A safety net only: descriptors must not leak when a data set is dropped without close().
        # (A constructor that failed may have left no reader.)
        reader = self.__dict__.get("reader")
        if reader is not None:
            reader.close()

    def __getstate__(self) -> dict[str, Any]:
        # Locks do not travel to another process (one is made there), and a lazy fingerprint is
        # resolved here: the callable may not pickle, and the other process should not stat again.
        state = dict(self.__dict__)
        del state["_lock"]
        if callable(state["_given_fingerprint"]):
            state["_given_fingerprint"] = self.fingerprint
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


__all__ = ["Closable", "OpenFiles", "StreamingDataset"]
