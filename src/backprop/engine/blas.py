"""The matrix products of a Linear layer, arranged the way OpenBLAS computes them fastest on small batches.

``x @ w.T`` for a mini-batch x (B, in) and weights w (out, in) is the forward pass; ``g.T @ x`` the weight
gradient. For small B both are slow in OpenBLAS as written: measured on this project's 2-core machine,
(10, 784) @ (784, 256) takes 63 us as ``x @ w.T`` but 32 us as ``(w @ x.T).T`` copied back to C order, and
the (256, 10) @ (10, 784) weight gradient takes 54 us on two threads but 26 us on one (the two threads
mostly wait for each other on a product that short). So small batches use those forms; large ones the
plain products. The choice depends only on shapes, so a run stays reproducible to the bit.

A few rows (5-12) against a large weight are split into calls of a few rows each, so that OpenBLAS keeps
them on its small-matrix kernel, which skips copying (packing) the weight: up to twice as fast here (see
:func:`_rows_per_call`; only on the OpenBLAS cores that have that kernel).

A captured training step with plain SGD folds the update into the weight-gradient product:
:func:`gemm_update` computes ``w += alpha * g.T @ x`` in one BLAS call with ``beta=1`` (the gradient is
never written out, and the weights are read and written once instead of three times).

>>> import numpy as np
>>> x, w = np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)
>>> linear_forward(x, w).shape, weight_grad(np.ones((4, 2), np.float32), x).shape
((4, 2), (2, 3))
>>> bool((linear_forward(np.ones((10, 784), np.float32), np.ones((256, 784), np.float32)) == 784).all())
True
>>> gemm_update(w, np.ones((4, 2), np.float32), x, -0.25); w
array([[0., 0., 0.],
       [0., 0., 0.]], dtype=float32)
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

SMALL_BATCH = 64  # below this many rows, the transposed forward product and a single thread pay off
# NOTE: OpenBLAS's cores with a small-matrix sgemm kernel, which multiplies without packing the operands when
# M*N*K <= 1e6 and, for a transposed first operand, M*N <= 1200 and K >= 32 (OpenBLAS's
# kernel/x86_64/sgemm_small_kernel_permit_skylakex.c). A few rows against a large weight miss that by size.
_SMALL_KERNEL_CORES = {"SkylakeX", "Cooperlake", "SapphireRapids"}
_SMALL_MNK, _SMALL_MN_TRANSPOSED, CHUNKED_ROWS = 1_000_000, 1200, 12
MIN_WORK = 262_144  # m*n*k below which OpenBLAS uses one thread anyway (its SMP threshold)


class _OpenBLASThreads:
    """Direct access to NumPy's OpenBLAS (found once through threadpoolctl): its thread count (a ctypes
    call, ~0.1 us) and its ``cblas_?gemm`` (for the in-place update ``C += alpha A^T B``)."""

    def __init__(self) -> None:
        self.get: Callable[[], int] | None = None
        self.set: Callable[[int], Any] | None = None
        self.gemm: dict[np.dtype, Any] = {}
        self.symbols: dict[np.dtype, tuple[str, str]] = {}  # dtype -> (library path, cblas_?gemm's name)
        self.int_type: Any = ctypes.c_int
        self.small_kernels = False
        try:
            from threadpoolctl import ThreadpoolController

            libs = [lib for lib in ThreadpoolController().lib_controllers
                    if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") == "pthreads"]
            # NOTE: SciPy may bring its own OpenBLAS; NumPy's is the one its matmul (and this module) uses
            libs.sort(key=lambda lib: "numpy" not in lib.filepath)
            for lib in libs[:1]:
                self.small_kernels = getattr(lib, "architecture", "") in _SMALL_KERNEL_CORES
                dll = ctypes.CDLL(lib.filepath)
                for pre in ("", "scipy_"):
                    for suf in ("", "64_", "_64"):
                        get = getattr(dll, f"{pre}openblas_get_num_threads{suf}", None)
                        set_ = getattr(dll, f"{pre}openblas_set_num_threads{suf}", None)
                        if get is not None and set_ is not None and self.get is None:
                            self.get, self.set = get, set_
                        for dtype, name in ((np.dtype(np.float32), "sgemm"), (np.dtype(np.float64), "dgemm")):
                            fn = getattr(dll, f"{pre}cblas_{name}{suf}", None)
                            if fn is not None and dtype not in self.gemm:
                                self.int_type = ctypes.c_int64 if "64" in suf else ctypes.c_int
                                self.gemm[dtype] = self._declare(fn, dtype)
                                self.symbols[dtype] = (lib.filepath, f"{pre}cblas_{name}{suf}")
        except Exception:  # noqa: BLE001 - any failure only means: leave threading to the BLAS
            self.get = self.set = None
            self.gemm, self.symbols = {}, {}

    def _declare(self, fn: Any, dtype: np.dtype) -> Any:
        i, real = self.int_type, (ctypes.c_float if dtype == np.float32 else ctypes.c_double)
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i, i, i, real, ptr, i, ptr, i, real, ptr, i]
        fn.restype = None
        return fn


_threads: _OpenBLASThreads | None = None


def _openblas() -> _OpenBLASThreads:
    global _threads
    if _threads is None:
        _threads = _OpenBLASThreads()
    return _threads


def _set_threads(n: int) -> int:
    """Set NumPy's OpenBLAS to ``n`` threads; return how many it had."""
    t = _openblas()
    old = t.get()
    if old != n:
        t.set(n)
    return old


def gemm_symbols() -> dict[np.dtype, tuple[str, str, bool]]:
    """dtype -> (the library holding NumPy's OpenBLAS, its ``cblas_?gemm``'s name, whether it takes 64-bit
    integers): what a compiler needs to call it by name (arguments: order, transA, transB, M, N, K, alpha, A,
    lda, B, ldb, beta, C, ldc, with CBLAS's :data:`ROW_MAJOR`, :data:`NO_TRANS`, :data:`TRANS`)."""
    t = _openblas()
    wide = t.int_type is ctypes.c_int64
    return {dtype: (path, name, wide) for dtype, (path, name) in t.symbols.items()}


def blas_threads() -> int | None:
    """NumPy's OpenBLAS's thread count now (one ctypes call), or None where that OpenBLAS cannot be found."""
    t = _openblas()
    return t.get() if t.get is not None else None


def set_blas_threads() -> Callable[[int], int] | None:
    """``set(n) -> previous``, NumPy's OpenBLAS thread count as one ctypes call each way; None where that
    OpenBLAS cannot be found (then the BLAS keeps its own policy)."""
    return _set_threads if _openblas().set is not None else None


@contextlib.contextmanager
def one_thread(when: bool = True) -> Iterator[None]:
    """While inside (if ``when``): NumPy's OpenBLAS on one thread, then back to the count it had. Where that
    OpenBLAS cannot be found, nothing changes."""
    setter = set_blas_threads() if when else None
    previous = setter(1) if setter is not None else 1
    try:
        yield
    finally:
        if previous != 1:
            setter(previous)


def _rows_per_call(rows: int, mnk_per_row: int, transposed_mn_per_row: int = 0) -> int:
    """Rows per BLAS call that keep a product of ``rows`` rows on OpenBLAS's small-matrix kernel; 0: one call.

    NOTE: measured on this project's Sapphire Rapids (1 thread, float32): 10 rows x 784 -> 256 forward 95 us in
    one call, 46 us in chunks of 4 rows; 256 -> 256 35 -> 20 us; 300 x 784 119 -> 77 us; 200 x 512 54 -> 25 us;
    input gradient 10 x 256 -> 784 74 -> 43 us. Beyond 12 rows, or with chunks under 4 rows (a 512 x 784
    weight), one call is as fast or faster, so the split is made only for 5-12 rows. A deterministic rule of
    shapes: eager and captured steps, and a resumed run, compute the same sums in the same order.
    """
    if not 4 < rows <= CHUNKED_ROWS or rows * mnk_per_row <= _SMALL_MNK and rows * transposed_mn_per_row <= \
            _SMALL_MN_TRANSPOSED:
        return 0
    per_call = _SMALL_MNK // mnk_per_row
    if transposed_mn_per_row:
        per_call = min(per_call, _SMALL_MN_TRANSPOSED // transposed_mn_per_row)
    return per_call if per_call >= 4 and _openblas().small_kernels else 0


def _in_chunks(a: np.ndarray, b: np.ndarray, rows: int) -> np.ndarray:
    """``a @ b`` computed ``rows`` rows of ``a`` at a time."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    for s in range(0, a.shape[0], rows):
        np.matmul(a[s:s + rows], b, out=out[s:s + rows])
    return out


def linear_forward(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` (C order)."""
    b = x.shape[0]
    if x.ndim == 2 and x.dtype == np.float32 == w.dtype and w.shape[1] >= 32:
        per_call = _rows_per_call(b, w.size, w.shape[0])
        if per_call:
            return _in_chunks(x, w.T, per_call)
    if x.ndim == 2 and b < SMALL_BATCH and b * w.shape[0] * w.shape[1] >= MIN_WORK:
        return np.ascontiguousarray((w @ x.T).T)
    return x @ w.T


def input_grad(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``g @ w``: the gradient of a Linear layer's input from its output gradients g (B, out)."""
    if g.ndim == 2 and g.dtype == np.float32 == w.dtype:
        per_call = _rows_per_call(g.shape[0], w.size)
        if per_call:
            return _in_chunks(g, w, per_call)
    return g @ w


ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enums


def _address(a: np.ndarray) -> int:
    """The address of an array's first element. NOTE: not a.ctypes.data: each .ctypes object leaves a small
    allocation behind (tracemalloc sees it grow); ``c_char.from_buffer`` is a quarter of the cost of
    ``__array_interface__`` (0.27 against 0.91 us here) but needs a writable array of at least one byte."""
    try:
        return _addressof(_c_char.from_buffer(a))
    except (TypeError, ValueError):
        return a.__array_interface__["data"][0]


_addressof, _c_char = ctypes.addressof, ctypes.c_char


def gemm_update(w: np.ndarray, g: np.ndarray, x: np.ndarray, alpha: float) -> None:
    """``w += alpha * g.T @ x`` in place, as one ``gemm`` with ``beta = 1`` (the SGD update of a Linear weight
    (out, in) from its output gradients g (B, out) and inputs x (B, in), with ``alpha = -lr``).

    NOTE: the product is accumulated into w inside the BLAS kernel (one rounding less than forming the
    gradient first), so it equals ``w -= lr * (g.T @ x)`` within float32 rounding, not to the bit.
    """
    t = _openblas()
    fn = t.gemm.get(w.dtype)
    if (fn is None or not (w.flags.c_contiguous and w.flags.writeable and g.flags.c_contiguous
                           and x.flags.c_contiguous) or g.dtype != w.dtype or x.dtype != w.dtype):
        w += alpha * (g.T @ x)
        return
    b, out, inp = g.shape[0], w.shape[0], w.shape[1]
    _short(fn, b, out * inp, ROW_MAJOR, TRANS, NO_TRANS, out, inp, b, alpha, _address(g), out, _address(x),
           inp, 1.0, _address(w), inp)


def weight_grad(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``g.T @ x``: the gradient of a (out, in) weight from output gradients g (B, out) and inputs x (B, in)."""
    return _short(np.matmul, g.shape[0], g.shape[1] * x.shape[1], g.T, x)


def _short(product: Callable[..., Any], rows: int, work_per_row: int, *args: Any) -> Any:
    """``product(*args)``, on one OpenBLAS thread when it is short: fewer than ``SMALL_BATCH`` rows yet enough
    work that OpenBLAS would use its threads (two threads mostly wait for each other on such a product).

    NOTE: whatever limit the user set (threadpoolctl, OMP_NUM_THREADS) is read and restored.
    """
    if rows < SMALL_BATCH and rows * work_per_row >= MIN_WORK:
        t = _openblas()
        n = t.get() if t.set is not None else 1
        if n > 1:
            t.set(1)
            try:
                return product(*args)
            finally:
                t.set(n)
    return product(*args)
