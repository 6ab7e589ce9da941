"""Compiled kernels (the ``numba`` extra) of 2x2 max pooling over tiles (``MaxPool2d(2)``), forward and
backward: the arithmetic of :mod:`backprop.nn.pooling`'s separable NumPy form, on numba's threads, so two
parts of a batch run at once (see :mod:`backprop.nn.conv_kernels` for why threads of our own do not).

The same results as the NumPy form: the maximum of each window row (NaN if either element is NaN, as
``np.maximum``), the first maximal column of each window row (``x[.., 1] > x[.., 0]``), the window's maximum
and its first maximal row the same way, and in backward the gradient times "row chosen" times "column
chosen" (0 or 1, as the NumPy form multiplies by booleans: an inf or NaN gradient gives NaN at the other
elements there too). Float32 only; other kernels and dtypes run the NumPy form.

>>> import numpy as np
>>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
>>> best, rows, cols = np.empty((1, 1, 2, 2), np.float32), np.empty((1, 1, 2, 2), bool), np.empty((1, 1, 2, 2, 2), bool)
>>> _max2x2_images(x, best, rows, cols, 0, 1)     # the loop itself: plain Python until compiled
>>> best[0, 0]
array([[ 5.,  7.],
       [13., 15.]], dtype=float32)
"""

from __future__ import annotations

import functools

import numpy as np

from backprop.engine.kernels import compile_kernels, compiles

__all__ = ["max2x2", "max2x2_grad", "ready"]

prange = range  # numba.prange once compiled (the kernels are plain functions until then, see conv_kernels)


@functools.cache
def _compile() -> None:
    compile_kernels(globals(), ("_max2x2_images", "_max2x2_grad_images"), ("_max2x2_parts", "_max2x2_grad_parts"))


def _max2x2_images(x, best, rows, cols, lo, hi):  # pragma: no cover - compiled
    oh, ow = best.shape[2], best.shape[3]
    for n in range(lo, hi):
        for c in range(x.shape[1]):
            for oy in range(oh):
                top, bottom = x[n, c, 2 * oy], x[n, c, 2 * oy + 1]
                ctop, cbottom = cols[n, c, oy, 0], cols[n, c, oy, 1]
                b, r = best[n, c, oy], rows[n, c, oy]
                for ox in range(ow):
                    a0, a1 = top[2 * ox], top[2 * ox + 1]
                    c0, c1 = bottom[2 * ox], bottom[2 * ox + 1]
                    ctop[ox] = a1 > a0
                    cbottom[ox] = c1 > c0
                    h0 = a0 if (a0 > a1 or np.isnan(a0)) else a1  # np.maximum: NaN wins, a tie gives the second
                    h1 = c0 if (c0 > c1 or np.isnan(c0)) else c1
                    r[ox] = h1 > h0
                    b[ox] = h0 if (h0 > h1 or np.isnan(h0)) else h1


def _max2x2_parts(x, best, rows, cols, bounds):  # pragma: no cover - compiled
    for t in prange(bounds.size - 1):
        _max2x2_images(x, best, rows, cols, bounds[t], bounds[t + 1])


@functools.cache
def ready() -> bool:
    """Whether these kernels compile here (once a process; see :func:`backprop.engine.kernels.compiles`)."""
    return compiles("2x2 max pooling", _warm_up)


def _warm_up() -> None:
    x = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4)
    best, rows, cols = np.empty((2, 1, 2, 2), np.float32), np.empty((2, 1, 2, 2), bool), np.empty((2, 1, 2, 2, 2), bool)
    dx = np.empty_like(x)
    for bounds in (np.array([0, 2]), np.array([0, 1, 2])):
        max2x2(x, best, rows, cols, bounds)
        max2x2_grad(best, rows, cols, dx, bounds)
    if best[1, 0, 1, 1] != 31 or dx[1, 0, 3, 3] != 31 or dx[1, 0, 3, 2] != 0:
        raise ArithmeticError("wrong results on a known case")


def max2x2(x: np.ndarray, best: np.ndarray, rows: np.ndarray, cols: np.ndarray, bounds: np.ndarray) -> None:
    """best (N, C, OH, OW) = the maxima of the 2x2 tiles of x (N, C, H, W); rows (N, C, OH, OW): the window's
    second row is its first maximal one; cols (N, C, OH, 2, OW): in that window row, the second column is
    the first maximal one. The parts of the batch between ``bounds`` run at once."""
    _compile()
    if bounds.size > 2:
        _max2x2_parts(x, best, rows, cols, bounds)
    else:
        _max2x2_images(x, best, rows, cols, 0, x.shape[0])


def _max2x2_grad_images(g, rows, cols, dx, lo, hi):  # pragma: no cover - compiled
    oh, ow = g.shape[2], g.shape[3]
    for n in range(lo, hi):
        for c in range(g.shape[1]):
            for oy in range(oh):
                top, bottom = dx[n, c, 2 * oy], dx[n, c, 2 * oy + 1]
                ctop, cbottom = cols[n, c, oy, 0], cols[n, c, oy, 1]
                gr, r = g[n, c, oy], rows[n, c, oy]
                for ox in range(ow):
                    second = np.float32(1.0) if r[ox] else np.float32(0.0)
                    f0 = gr[ox] * (np.float32(1.0) - second)
                    f1 = gr[ox] * second
                    right = np.float32(1.0) if ctop[ox] else np.float32(0.0)
                    top[2 * ox + 1] = f0 * right
                    top[2 * ox] = f0 * (np.float32(1.0) - right)
                    right = np.float32(1.0) if cbottom[ox] else np.float32(0.0)
                    bottom[2 * ox + 1] = f1 * right
                    bottom[2 * ox] = f1 * (np.float32(1.0) - right)


def _max2x2_grad_parts(g, rows, cols, dx, bounds):  # pragma: no cover - compiled
    for t in prange(bounds.size - 1):
        _max2x2_grad_images(g, rows, cols, dx, bounds[t], bounds[t + 1])


def max2x2_grad(g: np.ndarray, rows: np.ndarray, cols: np.ndarray, dx: np.ndarray, bounds: np.ndarray) -> None:
    """dx (N, C, H, W) at each 2x2 tile = g (N, C, OH, OW) at the element :func:`max2x2` chose, 0 (g times 0)
    at the others; elements outside the tiles are left as they are. Parts as :func:`max2x2`."""
    _compile()
    if bounds.size > 2:
        _max2x2_grad_parts(g, rows, cols, dx, bounds)
    else:
        _max2x2_grad_images(g, rows, cols, dx, 0, g.shape[0])
