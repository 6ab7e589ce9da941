"""Compiled kernels (the ``numba`` extra) of the flat-path convolution in :mod:`backprop.nn.conv`: the same
arithmetic as its NumPy loops over images, on numba's threads, so two parts of a batch run at once.

Why: on this project's 2-core machine a Python worker thread gained 1.2-1.35x on LeNet-5's layers, not 2x:
waking it costs ~70 us a round trip, and the two threads hand the GIL to each other after every NumPy call
of their loops. A ``prange`` over the two parts of a batch starts in ~2 us and runs without the GIL, so each
layer's images run at the speed of one thread each (measured 1.96-2.0x for the forward loops alone).

What is the same, to the bit: each image's columns, each ``cblas_sgemm`` call with its arguments (NumPy's
``matmul`` calls the same function once per image), the chunks of the banded input gradient and the order
of its row adds, and the per-image weight gradients (summed afterwards by the caller in NumPy, in image
order). So these kernels, the NumPy loops, one thread or two, give equal results. Float32, ungrouped layers
only: anything else runs the NumPy loops.

The kernels are plain functions until the first call compiles them (:func:`backprop.engine.kernels.compile_kernels`):
this module imports without numba, and :mod:`backprop.nn.conv` calls it only when
:func:`backprop.engine.kernels.enabled` says kernels may run.

The columns of one image (what each product multiplies; plain Python until compiled, so this runs
without numba too):

>>> import numpy as np
>>> xf = np.arange(16, dtype=np.float32).reshape(1, 1, 16)    # one 4x4 image, its plane flat
>>> cols = np.empty((4, 11), dtype=np.float32)               # a 2x2 kernel: L' = (3 - 1) * 4 + 3
>>> _columns(xf, 0, cols, 2, 2, 1, 1, 4, 11)
>>> cols[3, :3]                                              # window element (1, 1) of outputs (0, 0..2)
array([5., 6., 7.], dtype=float32)
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from backprop.engine.blas import NO_TRANS, ROW_MAJOR, TRANS
from backprop.engine.kernels import compile_kernels, compiles

__all__ = ["forward", "input_grad_banded", "ready", "weight_grad"]

_ROW, _NT, _T = ROW_MAJOR, NO_TRANS, TRANS
_ITEM = 4  # bytes of a float32
prange = range  # numba.prange once compiled
_gemm: Any = None  # NumPy's OpenBLAS cblas_sgemm once compiled


def _columns(xf, m, cols, kh, kw, dh, dw, wp, length):  # pragma: no cover - compiled
    """Image m's flat columns: cols[(c*kh + i)*kw + j, :] = plane (m, c) from flat index i*dh*Wp + j*dw."""
    for ci in range(xf.shape[1]):
        for i in range(kh):
            for j in range(kw):
                start = i * dh * wp + j * dw
                src = xf[m, ci, start:start + length]
                dst = cols[(ci * kh + i) * kw + j]
                for p in range(length):
                    dst[p] = src[p]


def _forward_images(xf, wext, out, lo, hi, kh, kw, dh, dw, wp, bias):  # pragma: no cover - compiled
    o, kb = wext.shape
    oh, ow = out.shape[2], out.shape[3]
    length = (oh - 1) * wp + ow
    cols = np.empty((kb, length), dtype=np.float32)
    res = np.empty((o, length), dtype=np.float32)
    if bias:
        cols[kb - 1, :] = 1
    for m in range(lo, hi):
        _columns(xf, m, cols, kh, kw, dh, dw, wp, length)
        _gemm(_ROW, _NT, _NT, o, length, kb, 1.0, wext.ctypes.data, kb, cols.ctypes.data, length, 0.0,
              res.ctypes.data, length)
        for oo in range(o):
            for y in range(oh):
                src = res[oo, y * wp:y * wp + ow]
                dst = out[m, oo, y]
                for x in range(ow):
                    dst[x] = src[x]


def _forward_parts(xf, wext, out, kh, kw, dh, dw, wp, bias, bounds):  # pragma: no cover - compiled
    for t in prange(bounds.size - 1):
        _forward_images(xf, wext, out, bounds[t], bounds[t + 1], kh, kw, dh, dw, wp, bias)


@functools.cache
def _compile() -> None:
    compile_kernels(globals(), ("_columns", "_forward_images", "_weight_grad_images", "_banded_range"),
                    ("_forward_parts", "_weight_grad_parts", "_banded_parts"))


@functools.cache
def ready() -> bool:
    """Whether these kernels compile here (once a process; see :func:`backprop.engine.kernels.compiles`)."""
    return compiles("convolutions", _warm_up)


def _warm_up() -> None:
    """Each kernel, serial and parallel, on a 2-image 1x1 convolution (bias) of 4x4 planes: checked."""
    x = np.arange(32, dtype=np.float32).reshape(2, 1, 16)
    out = np.empty((2, 1, 4, 4), dtype=np.float32)
    per_image = np.empty((2, 2, 1), dtype=np.float32)
    for bounds in (np.array([0, 2]), np.array([0, 1, 2])):
        forward(x, np.ones((1, 2), np.float32), out, 1, 1, 1, 1, 4, True, bounds)
        weight_grad(x, out, per_image, 1, 1, 1, 1, 4, True, False, bounds)
        dxr = np.zeros((2, 4, 1, 1, 4), dtype=np.float32)
        input_grad_banded(np.ones((8, 4), np.float32), np.ones((1, 4, 4), np.float32), np.array([[0, 4, 0]]), dxr,
                          1, 4, 1, 1, 1, bounds)
    if out[1, 0, 3, 3] != 32 or per_image[0, 1, 0] != float((x[0] + 1).sum()) or dxr[1, 3, 0, 0, 0] != 4:
        raise ArithmeticError("wrong results on a known case")


def forward(xf: np.ndarray, wext: np.ndarray, out: np.ndarray, kh: int, kw: int, dh: int, dw: int, wp: int,
            bias: bool, bounds: np.ndarray) -> None:
    """out (N, O, OH, OW) = the convolution of the padded planes ``xf`` (N, C, Hp*Wp) with ``wext`` (O,
    C*kh*kw [+ 1 for the bias]), one product per image; the parts of the batch between ``bounds`` at once."""
    _compile()
    if bounds.size > 2:
        _forward_parts(xf, wext, out, kh, kw, dh, dw, wp, bias, bounds)
    else:
        _forward_images(xf, wext, out, 0, out.shape[0], kh, kw, dh, dw, wp, bias)


def _weight_grad_images(xf, g, per_image, lo, hi, kh, kw, dh, dw, wp, bias, by_rows):  # pragma: no cover
    o, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    kb = per_image.shape[1]
    length = (oh - 1) * wp + ow
    cols = np.empty((kb, length), dtype=np.float32)
    if bias:
        cols[kb - 1, :] = 1
    # NOTE: g laid on the flat grid, zero at the wrapped-around positions (never written): as conv.py's loop
    gg = np.zeros((length, o) if by_rows else (o, length), dtype=np.float32)
    for m in range(lo, hi):
        _columns(xf, m, cols, kh, kw, dh, dw, wp, length)
        if by_rows:
            for oo in range(o):
                for y in range(oh):
                    for x in range(ow):
                        gg[y * wp + x, oo] = g[m, oo, y, x]
            _gemm(_ROW, _NT, _NT, kb, o, length, 1.0, cols.ctypes.data, length, gg.ctypes.data, o, 0.0,
                  per_image.ctypes.data + m * kb * o * _ITEM, o)
        else:
            for oo in range(o):
                for y in range(oh):
                    src = g[m, oo, y]
                    dst = gg[oo, y * wp:y * wp + ow]
                    for x in range(ow):
                        dst[x] = src[x]
            _gemm(_ROW, _NT, _T, kb, o, length, 1.0, cols.ctypes.data, length, gg.ctypes.data, length, 0.0,
                  per_image.ctypes.data + m * kb * o * _ITEM, o)


def _weight_grad_parts(xf, g, per_image, kh, kw, dh, dw, wp, bias, by_rows, bounds):  # pragma: no cover
    for t in prange(bounds.size - 1):
        _weight_grad_images(xf, g, per_image, bounds[t], bounds[t + 1], kh, kw, dh, dw, wp, bias, by_rows)


def weight_grad(xf: np.ndarray, g: np.ndarray, per_image: np.ndarray, kh: int, kw: int, dh: int, dw: int,
                wp: int, bias: bool, by_rows: bool, bounds: np.ndarray) -> None:
    """per_image[n] (C*kh*kw [+ 1], O) = image n's columns times its output gradient g[n] (O, OH, OW) laid
    on the flat grid (as (L', O) when ``by_rows``, else (O, L') read transposed); parts as :func:`forward`."""
    _compile()
    if bounds.size > 2:
        _weight_grad_parts(xf, g, per_image, kh, kw, dh, dw, wp, bias, by_rows, bounds)
    else:
        _weight_grad_images(xf, g, per_image, 0, g.shape[0], kh, kw, dh, dw, wp, bias, by_rows)


def input_grad_banded(rows: np.ndarray, bands: np.ndarray, spans: np.ndarray, dxr: np.ndarray, nb: int, oh: int,
                      o: int, kh: int, dh: int, bounds: np.ndarray) -> None:
    """dxr (N, Hp, blocks, C, bx) += the banded products of conv.py's ``_input_grad_toeplitz``: per chunk of
    ``nb`` images from each part's start and per block b, ``rows[chunk rows, xa*O:xb*O] @ bands[b]``
    (spans[b] = (xa, xb, block)), added to the kh row-shifted places in the order of kernel rows; parts as
    :func:`forward`."""
    _compile()
    if bounds.size > 2:
        _banded_parts(rows, bands, spans, dxr, nb, oh, o, kh, dh, bounds)
    else:
        _banded_range(rows, bands, spans, dxr, 0, dxr.shape[0], nb, oh, o, kh, dh)


def _banded_range(rows, bands, spans, dxr, lo, hi, nb, oh, o, kh, dh):  # pragma: no cover - compiled
    c, bx = dxr.shape[3], dxr.shape[4]
    width = kh * c * bx
    ldr = rows.shape[1]
    p = np.empty((nb * oh, width), dtype=np.float32)
    for n0 in range(lo, hi, nb):
        m = min(nb, hi - n0)
        for b in range(spans.shape[0]):
            xa, xb, blk = spans[b, 0], spans[b, 1], spans[b, 2]
            _gemm(_ROW, _NT, _NT, m * oh, width, (xb - xa) * o, 1.0,
                  rows.ctypes.data + (n0 * oh * ldr + xa * o) * _ITEM, ldr, bands[b].ctypes.data, width, 0.0,
                  p.ctypes.data, width)
            for mm in range(m):
                for i in range(kh):  # NOTE: kernel rows in order: each dxr row gets its adds as NumPy's loop
                    for y in range(oh):
                        src = p[mm * oh + y, i * c * bx:(i + 1) * c * bx]
                        dst = dxr[n0 + mm, i * dh + y, blk].reshape(c * bx)
                        for k in range(c * bx):
                            dst[k] += src[k]


def _banded_parts(rows, bands, spans, dxr, nb, oh, o, kh, dh, bounds):  # pragma: no cover - compiled
    for t in prange(bounds.size - 1):
        _banded_range(rows, bands, spans, dxr, bounds[t], bounds[t + 1], nb, oh, o, kh, dh)
