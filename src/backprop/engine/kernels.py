"""What compiled kernels (the ``numba`` extra) need from the engine: whether they may run, NumPy's OpenBLAS
``cblas_?gemm`` as a function they can call, and how many threads a parallel kernel may use.

Kernels are optional accelerators: every op they speed up has a NumPy path that stays complete and tested,
and ``BACKPROP_NUMBA=0`` in the environment turns them all off. numba (60 MB) is imported only when a kernel
is about to run, never by ``import backprop``.

Parallel kernels (``numba.njit(parallel=True)``, a ``prange`` over the parts of a batch) run on numba's
threads, which never need the GIL: with GNU OpenMP or TBB as numba's threading layer a parallel region
starts in ~2 us, where a Python worker thread (:mod:`backprop.engine.parallel`) must be woken and must take
the GIL back after every NumPy call, ~70 us a round trip on this project's 2-core virtual machine. numba's
own fallback layer, ``workqueue``, sleeps between regions (~130 us a start): there :func:`parallel_bounds`
makes one part and the kernels run on the calling thread.

>>> enabled() in (True, False)
True
>>> from backprop.engine.parallel import budget
>>> with budget(1):
...     parallel_bounds(100, 16).tolist()
[0, 100]
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backprop.engine.blas import gemm_symbols
from backprop.engine.parallel import budget_limit, halfway, threads
from backprop.extras import available

__all__ = ["cache_dir", "compile_kernels", "compiles", "enabled", "external_gemm", "parallel_allowed", "parallel_bounds"]


def enabled(dtype: Any = np.float32) -> bool:
    """Whether compiled kernels may run for arrays of ``dtype``: numba installed, NumPy's OpenBLAS found
    (the kernels' products call it), and not turned off by ``BACKPROP_NUMBA=0``. Imports numba (once)."""
    if os.environ.get("BACKPROP_NUMBA", "1") == "0":
        return False
    return _ready(np.dtype(dtype))


@functools.cache
def _ready(dtype: np.dtype) -> bool:
    return dtype in gemm_symbols() and available("numba")


@functools.cache
def external_gemm(dtype: str) -> Any:
    """NumPy's OpenBLAS ``cblas_?gemm`` as a numba external function, resolved by its name when the machine
    code is loaded (so numba can cache functions that call it, where a ctypes pointer would be baked in);
    None where that OpenBLAS cannot be found. Arguments: CBLAS's order, transA, transB (``blas.ROW_MAJOR``,
    ``NO_TRANS``, ``TRANS``), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc; addresses are ``uintp``
    (``arr.ctypes.data``)."""
    found = gemm_symbols().get(np.dtype(dtype))
    if found is None:
        return None
    import llvmlite.binding
    from numba import types

    llvmlite.binding.load_library_permanently(found[0])
    i = types.int64 if found[2] else types.intc
    real = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    return types.ExternalFunction(found[1], types.void(types.intc, types.intc, types.intc, i, i, i, real, types.uintp,
                                                       i, types.uintp, i, real, types.uintp, i))


def cache_dir() -> Path | None:
    """Where generated kernels and numba's machine code for them are kept: ``$BACKPROP_CACHE/kernels``, else
    ``$XDG_CACHE_HOME/backprop/kernels``, else ``~/.cache/backprop/kernels``; None if it cannot be written."""
    root = os.environ.get("BACKPROP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "backprop")
    folder = Path(root) / "kernels"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def parallel_bounds(n: int, min_per_part: int, grain: int = 1) -> np.ndarray:
    """Where the parts of ``range(n)`` a parallel kernel runs at once begin and end: ``[0, n]`` (one part),
    or ``[0, mid, n]`` with :func:`backprop.engine.parallel.split`'s cut when the thread limit allows two
    (:func:`backprop.engine.parallel.threads`), each part gets ``min_per_part`` items or more, and numba's
    threading layer starts regions without sleeping (not ``workqueue``). So a kernel computes each item,
    and each chunk of ``grain`` items, exactly as that split does."""
    mid = halfway(n, grain)
    if min(mid, n - mid) < min_per_part or not parallel_allowed():
        return np.array([0, n], dtype=np.int64)
    return np.array([0, mid, n], dtype=np.int64)


def parallel_allowed(own_blas: bool = False) -> bool:
    """Whether a parallel kernel may run two parts at once now (see :func:`parallel_bounds`).

    NOTE: numba's threads and OpenBLAS's both spin for a while after their work, waiting for more. An op
    whose kernels run between the products of other ops (a convolution, pooling, ReLU in an eager step)
    therefore runs two parts only under an explicit thread budget (:func:`backprop.engine.parallel.budget`),
    which a captured step sets while it keeps the BLAS on one thread for the whole step: in LeNet-5's eager
    loop at 2 threads, two parts took 49 ms a step, against 15 ms in one, as the two pools took the cores
    from each other. An op that runs all of its products inside its kernels, on one BLAS thread
    (``own_blas``: an LSTM's loops), may use the threads the BLAS is allowed."""
    if not own_blas and budget_limit() is None:
        return False
    return threads() >= 2 and _spinning_layer()


@functools.cache
def _spinning_layer() -> bool:
    """Run one parallel region, then ask numba which threading layer it chose."""
    import numba

    @numba.njit(parallel=True, nogil=True)
    def touch(a: np.ndarray) -> None:  # pragma: no cover - compiled
        for t in numba.prange(a.size):
            a[t] = t

    try:
        touch(np.zeros(2))
        return numba.threading_layer() != "workqueue"
    except Exception:  # noqa: BLE001 - no parallel layer at all: run serially
        return False


#: numba's options for every kernel: no GIL (threads of the caller's own may run meanwhile), machine code
#: kept on disk beside the module, no bounds checks (the callers check shapes), and NumPy's error model:
#: NOTE a division by zero gives inf or NaN as in NumPy, with no check that stops the loop vectorising
OPTIONS = {"nogil": True, "cache": True, "boundscheck": False, "error_model": "numpy"}


def compile_kernels(namespace: dict[str, Any], serial: Sequence[str], parallel: Sequence[str],
                    inline: Sequence[str] = ()) -> None:
    """Replace the plain Python functions ``inline``, ``serial`` and ``parallel`` of a kernel module's
    ``namespace`` (its ``globals()``) by numba functions, in that order: ``inline`` ones are inlined where
    they are called (NOTE: a call to a separately compiled function keeps a loop from vectorising), the
    ``parallel`` ones compiled with ``parallel=True``; ``prange`` in the namespace becomes ``numba.prange``
    and ``_gemm`` :func:`external_gemm` for float32.

    NOTE: a kernel module defines its kernels as plain functions so that it imports without numba (its
    callers import it at the top, like any module); numba compiles a function when first called and finds
    the functions it calls in the module's globals then, so these are replaced before the first call."""
    import numba

    def njit(fn: Callable[..., Any], **options: Any) -> Any:
        try:
            return numba.njit(**OPTIONS, **options)(fn)
        except RuntimeError:  # NOTE: no folder numba may keep machine code in: compile in memory each process
            return numba.njit(**{**OPTIONS, "cache": False}, **options)(fn)

    namespace["prange"] = numba.prange
    namespace["_gemm"] = external_gemm("<f4")
    for name in inline:
        namespace[name] = njit(namespace[name], inline="always")
    for name in serial:
        namespace[name] = njit(namespace[name])
    for name in parallel:
        namespace[name] = njit(namespace[name], parallel=True)


def compiles(what: str, warm_up: Callable[[], None]) -> bool:
    """Whether the kernels of ``what`` compile and run here: ``warm_up`` calls each of them on tiny inputs
    (compiling them, or loading them from numba's cache). A failure (a numba or LLVM that cannot build them)
    warns once and answers False: the NumPy loops then run, as without the extra. Callers cache the answer."""
    try:
        warm_up()
    except Exception as e:  # noqa: BLE001 - any failure only means: run the NumPy loops
        warnings.warn(f"backprop: the compiled kernels of {what} did not compile ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); the NumPy loops run instead "
                      "(BACKPROP_NUMBA=0 says so without this warning)", RuntimeWarning, stacklevel=2)
        return False
    return True
