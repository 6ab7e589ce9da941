"""How many threads the BLAS (NumPy's OpenBLAS or MKL) uses for backprop's matrix products.

Every matrix product of the engine runs in NumPy's BLAS, which by default starts one thread per core.
``set_num_threads(n)`` and ``get_num_threads()`` change and read that count through `threadpoolctl
<https://github.com/joblib/threadpoolctl>`_ (the BLAS's own API, not environment variables, which the BLAS
reads only once, when it is loaded). :func:`threadpool_limits` is threadpoolctl's, re-exported: a context
manager that limits the BLAS for a block and then restores it.

Environment variables, in the order they act:

* ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS``: read by the BLAS itself when NumPy
  loads it; backprop does nothing with them.
* ``BACKPROP_NUM_THREADS=n``: when backprop is imported, lowers the BLAS to at most ``n`` threads. It never
  raises the count above what the process already has, so it cannot undo a lower limit set by the
  variables above or by a parent library. Invalid values (not an integer >= 1) are ignored with a
  ``RuntimeWarning`` that names the variable, since an import cannot report an error more usefully.

Inside scikit-learn / joblib workers: joblib's default ``loky`` backend starts each worker with the BLAS
limited to ``cpu_count // n_jobs`` threads (``inner_max_num_threads``), so that ``n_jobs`` workers do not
start ``n_jobs * cpu_count`` threads between them. backprop keeps that limit: ``BACKPROP_NUM_THREADS``
only lowers it, and nothing else in backprop changes the count for longer than one product (the small-batch
weight gradient in :mod:`backprop.engine.blas` uses one thread and restores the count it found).

>>> import backprop.engine.threads as threads
>>> before = threads.get_num_threads()
>>> with threads.threadpool_limits(1, user_api="blas"):
...     threads.get_num_threads()
1
>>> threads.get_num_threads() == before
True
"""

from __future__ import annotations

import os
import warnings

import numpy as np  # NOTE: first: NumPy loads the BLAS that threadpoolctl looks for
from threadpoolctl import ThreadpoolController, threadpool_limits

__all__ = ["ENV_VAR", "get_num_threads", "limit_from_env", "set_num_threads", "threadpool_limits"]

ENV_VAR = "BACKPROP_NUM_THREADS"


def _blas() -> ThreadpoolController:
    # NOTE: a fresh controller each call (about 1 ms): libraries loaded since (SciPy's BLAS) are found too
    return ThreadpoolController().select(user_api="blas")


def get_num_threads() -> int:
    """The number of threads the BLAS uses (the largest, if several BLAS libraries are loaded; 1 if none)."""
    counts = [lib.num_threads for lib in _blas().lib_controllers]
    return max(counts, default=1)


def _check_count(n: object, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return int(n)


def set_num_threads(n: int) -> None:
    """Make every loaded BLAS library use ``n`` threads from now on (``n`` an integer >= 1).

    Unlike ``BACKPROP_NUM_THREADS`` this sets the count exactly, also above the current one. For a block of
    code only, use ``with threadpool_limits(n, user_api="blas"):``.
    """
    n = _check_count(n, "set_num_threads: n")
    _blas().limit(limits=n, user_api="blas")


def limit_from_env() -> int | None:
    """Apply ``BACKPROP_NUM_THREADS`` (see the module docstring); the count it set, or None."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return None
    try:
        n = _check_count(int(text), ENV_VAR)
    except ValueError:
        warnings.warn(f"{ENV_VAR} must be an integer >= 1, got {text!r}; ignored (the BLAS keeps "
                      f"{get_num_threads()} threads)", RuntimeWarning, stacklevel=2)
        return None
    blas = _blas()
    for lib in blas.lib_controllers:
        if lib.num_threads > n:  # NOTE: only ever lower: a joblib worker's or OMP_NUM_THREADS's limit stays
            lib.set_num_threads(n)
    return n


_FROM_ENV = limit_from_env()
