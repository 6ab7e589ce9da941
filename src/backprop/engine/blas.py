"""The matrix products of a Linear layer, arranged the way OpenBLAS computes them fastest on small batches.

``x @ w.T`` for a mini-batch x (B, in) and weights w (out, in) is the forward pass; ``g.T @ x`` the weight
gradient. For small B both are slow in OpenBLAS as written: measured on this project's 2-core machine,
(10, 784) @ (784, 256) takes 63 us as ``x @ w.T`` but 32 us as ``(w @ x.T).T`` copied back to C order, and
the (256, 10) @ (10, 784) weight gradient takes 54 us on two threads but 26 us on one (the two threads
mostly wait for each other on a product that short). So small batches use those forms; large ones the
plain products. The choice depends only on shapes, so a run stays reproducible to the bit.

>>> import numpy as np
>>> x, w = np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)
>>> linear_forward(x, w).shape, weight_grad(np.ones((4, 2), np.float32), x).shape
((4, 2), (2, 3))
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np

SMALL_BATCH = 64  # below this many rows, the transposed forward product and a single thread pay off
MIN_WORK = 262_144  # m*n*k below which OpenBLAS uses one thread anyway (its SMP threshold)


class _OpenBLASThreads:
    """Direct access to OpenBLAS's thread count (a ctypes call, ~0.1 us), found once through threadpoolctl."""

    def __init__(self) -> None:
        self.get: Callable[[], int] | None = None
        self.set: Callable[[int], Any] | None = None
        try:
            from threadpoolctl import ThreadpoolController

            for lib in ThreadpoolController().lib_controllers:
                if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") == "pthreads":
                    dll = ctypes.CDLL(lib.filepath)
                    for pre in ("", "scipy_"):
                        for suf in ("", "64_", "_64"):
                            get = getattr(dll, f"{pre}openblas_get_num_threads{suf}", None)
                            set_ = getattr(dll, f"{pre}openblas_set_num_threads{suf}", None)
                            if get is not None and set_ is not None:
                                self.get, self.set = get, set_
                                return
        except Exception:  # noqa: BLE001 - any failure only means: leave threading to the BLAS
            self.get = self.set = None


_threads: _OpenBLASThreads | None = None


def _openblas() -> _OpenBLASThreads:
    global _threads
    if _threads is None:
        _threads = _OpenBLASThreads()
    return _threads


def linear_forward(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` (C order)."""
    b = x.shape[0]
    if x.ndim == 2 and b < SMALL_BATCH and b * w.shape[0] * w.shape[1] >= MIN_WORK:
        return np.ascontiguousarray((w @ x.T).T)
    return x @ w.T


def weight_grad(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``g.T @ x``: the gradient of a (out, in) weight from output gradients g (B, out) and inputs x (B, in)."""
    b = g.shape[0]
    if b < SMALL_BATCH and b * g.shape[1] * x.shape[1] >= MIN_WORK:
        t = _openblas()
        if t.set is not None:
            # NOTE: whatever limit the user set (threadpoolctl, OMP_NUM_THREADS) is read and restored
            n = t.get()
            if n > 1:
                t.set(1)
                try:
                    return g.T @ x
                finally:
                    t.set(n)
    return g.T @ x
