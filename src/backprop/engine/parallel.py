"""A second thread of our own for the batch loops of large ops (convolutions), with the BLAS on one thread.

NumPy's OpenBLAS parallelises one product at a time, and the products of a convolution done image by image
(see :mod:`backprop.nn.conv`) are too small for it: at 2 threads LeNet-5 trained no faster than at 1, while
OpenBLAS's second thread spun. Such an op's loop over chunks of images can instead run in two halves, one
on the calling thread and one on a worker thread, each with the BLAS on one thread: NumPy releases the GIL
inside its products and copies, so the halves overlap. Each image is computed exactly as before (the same
products, the same sums in the same order), so the results do not depend on the split, to the bit.

How many threads a split may use is the BLAS's thread limit (``threadpoolctl``, ``OMP_NUM_THREADS``...), at
most 2, and the CPUs this process may run on: a run limited to one thread never splits. A captured step
(:mod:`backprop.engine.capture`) that sets the BLAS to one thread for its whole run passes the limit it
found in :func:`budget`.

With the ``numba`` extra, the convolutions' loops run compiled on numba's threads instead
(:mod:`backprop.engine.kernels`, :mod:`backprop.nn.conv_kernels`); :func:`halfway` is where both cut a batch.

>>> out = [0] * 40
>>> def body(lo, hi):
...     for i in range(lo, hi):
...         out[i] = i * i
>>> split(40, body, min_per_thread=8)
>>> out[39]
1521
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from backprop.engine.blas import blas_threads, one_thread

__all__ = ["budget", "budget_limit", "halfway", "set_budget", "split", "threads"]

_limit: int | None = None  # the thread limit a captured step found before setting the BLAS to one thread


def set_budget(limit: int | None) -> int | None:
    """From now on splits may use ``limit`` threads whatever the BLAS is set to (None: the BLAS's own
    limit decides again); returns the previous budget, to restore."""
    global _limit
    previous, _limit = _limit, limit
    return previous


def budget_limit() -> int | None:
    """The budget set now (:func:`set_budget`, :func:`budget`), or None: the BLAS's own limit decides."""
    return _limit


@contextlib.contextmanager
def budget(limit: int) -> Iterator[None]:
    """While inside: splits may use ``limit`` threads (whatever the BLAS is set to now)."""
    previous = set_budget(limit)
    try:
        yield
    finally:
        set_budget(previous)


def threads() -> int:
    """How many threads a split may use now: 1 or 2."""
    limit = _limit if _limit is not None else blas_threads()
    if limit is None or limit < 2:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 1


class _Worker:
    """One daemon thread that runs the second half of a split."""

    def __init__(self) -> None:
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._job: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="backprop-split", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._go.acquire()
            fn, args = self._job  # type: ignore[misc]
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, re-raised there
                self._error = e
            self._done.release()

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        self._job, self._error = (fn, args), None
        self._go.release()

    def join(self) -> None:
        self._done.acquire()
        self._job = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


_worker: _Worker | None = None
_busy = threading.Lock()  # NOTE: one split at a time; a split from another thread (or nested) runs unsplit


def halfway(n: int, grain: int = 1) -> int:
    """Where :func:`split` cuts ``range(n)``: at ``n // 2`` rounded down to a multiple of ``grain`` (a body
    working in chunks of ``grain`` items from 0 then makes the same chunks, split or not)."""
    return n // 2 // grain * grain


def split(n: int, body: Callable[[int, int], None], min_per_thread: int, grain: int = 1) -> None:
    """``body(lo, hi)`` over ``[0, n)``: as two parts cut at :func:`halfway` on two threads when
    :func:`threads` allows two and each part has ``min_per_thread`` items or more (the BLAS on one thread
    meanwhile), else as one call. ``body`` must write only what its range owns."""
    global _worker
    mid = halfway(n, grain)
    if min(mid, n - mid) < min_per_thread or threads() < 2 or not _busy.acquire(blocking=False):
        body(0, n)
        return
    try:
        with one_thread():
            if _worker is None:
                _worker = _Worker()
            _worker.start(body, mid, n)
            try:
                body(0, mid)
            finally:
                _worker.join()
    finally:
        _busy.release()
