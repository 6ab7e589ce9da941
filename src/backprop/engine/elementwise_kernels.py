"""Compiled kernels (the ``numba`` extra) of elementwise ops on large float32 arrays, in two parts at once on
numba's threads: ReLU's forward and backward, which NumPy runs on one thread (see
:mod:`backprop.engine.kernels` for why threads of our own do not pay).

The same results as :class:`backprop.engine.ops.ReLU`'s NumPy formulas: ``np.maximum(x, 0)`` (NaN stays
NaN) and ``g * (out > 0)`` (a product with 1 or 0, so an inf or NaN gradient gives NaN where out <= 0).

>>> import numpy as np
>>> x = np.array([-1.0, 0.0, 2.0, np.nan], dtype=np.float32)
>>> out = np.empty_like(x)
>>> _relu(x, out, np.array([0, 2, 4]))     # the loop itself: plain Python until compiled
>>> out
array([ 0.,  0.,  2., nan], dtype=float32)
"""

from __future__ import annotations

import functools

import numpy as np

from backprop.engine.kernels import compile_kernels, compiles

__all__ = ["ready", "relu", "relu_grad"]

prange = range  # numba.prange once compiled (the kernels are plain functions until then)


@functools.cache
def _compile() -> None:
    compile_kernels(globals(), (), ("_relu", "_relu_grad"))


@functools.cache
def ready() -> bool:
    """Whether these kernels compile here (once a process; see :func:`backprop.engine.kernels.compiles`)."""
    return compiles("ReLU", _warm_up)


def _warm_up() -> None:
    x = np.array([-1.0, 2.0, 0.0, 3.0], dtype=np.float32)
    out, dx = np.empty_like(x), np.empty_like(x)
    relu(x, out, np.array([0, 2, 4]))
    relu_grad(out, x, dx, np.array([0, 2, 4]))
    if out.tolist() != [0.0, 2.0, 0.0, 3.0] or dx.tolist() != [-0.0, 2.0, 0.0, 3.0]:
        raise ArithmeticError("wrong results on a known case")


def relu(x: np.ndarray, out: np.ndarray, bounds: np.ndarray) -> None:
    """out = max(x, 0) over flat arrays, the parts between ``bounds`` at once."""
    _compile()
    _relu(x, out, bounds)


def relu_grad(out: np.ndarray, g: np.ndarray, dx: np.ndarray, bounds: np.ndarray) -> None:
    """dx = g * (out > 0) over flat arrays, the parts between ``bounds`` at once."""
    _compile()
    _relu_grad(out, g, dx, bounds)


def _relu(x, out, bounds):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for t in prange(bounds.size - 1):
        for i in range(bounds[t], bounds[t + 1]):
            v = x[i]
            out[i] = v if (v > zero or np.isnan(v)) else zero  # NOTE: -0 gives +0, as NumPy's SIMD maximum


def _relu_grad(out, g, dx, bounds):  # pragma: no cover - compiled
    one, zero = np.float32(1.0), np.float32(0.0)
    for t in prange(bounds.size - 1):
        for i in range(bounds[t], bounds[t + 1]):
            dx[i] = g[i] * (one if out[i] > zero else zero)
