"""Compiled kernels (the ``numba`` extra) of an LSTM layer's two time loops in :mod:`backprop.nn.recurrence`:
each step's product and all of its gate arithmetic in one pass, the batch in two blocks of sequences that
run on two of numba's threads at once.

Why: the NumPy loops make ~15 calls a step forward and ~20 backward (each costs a microsecond or more
beside its arithmetic: at H=128, B=32, T=50 the gate arithmetic took ~30% of a step), and they cannot use a
second core: a step's product is too short for two BLAS threads, and threads of our own hand the GIL over
after every call (see :mod:`backprop.nn.conv_kernels`). But the sequences of a batch never meet in an LSTM:
each block of sequences runs its whole recurrence on its own thread, with no wait between steps.

Each block has arrays of its own, ``(blocks, steps, features, width)``: a step of a block is then one
contiguous (features, width) matrix, and its loops run over long contiguous ranges. NOTE: blocks of columns
of shared (features, batch) arrays ran no faster on two threads than on one: each thread's rows share
128-byte pairs of cache lines with the other's, which the cores' prefetchers fetch in pairs.

What differs from the NumPy loops: ``tanh`` is a rational approximation (Eigen's, clamped at +-7.905; at
most 4e-7 from the exact tanh, against NumPy's float32 tanh 1-2 units in the last place), because numba's
own calls the C library once per element (40x NumPy's vectorised one); it vectorises over the block's
columns. Every other operation is the NumPy loops' own, in the same order, without fused multiply-adds.
The batch is cut into the same blocks at one thread or two, so the results do not depend on the thread
count; they equal the NumPy loops' within float32 rounding. Float32, without ``lengths`` or ``proj_size``:
anything else runs the NumPy loops.

The tanh (plain Python until compiled, so this runs without numba too):

>>> import numpy as np
>>> [round(abs(float(_tanh(np.float32(v))) - float(np.tanh(v))), 7) for v in (0.0, 0.5, -3.0, 20.0)]
[0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from backprop.engine.blas import NO_TRANS, ROW_MAJOR, TRANS
from backprop.engine.kernels import compile_kernels, compiles

__all__ = ["lstm_backward", "lstm_forward", "ready", "tanh_array"]

_ROW, _NT, _T = ROW_MAJOR, NO_TRANS, TRANS
_ITEM = 4  # bytes of a float32
prange = range  # numba.prange once compiled (the kernels are plain functions until then, see conv_kernels)
_gemm: Any = None  # NumPy's OpenBLAS cblas_sgemm once compiled

# Eigen's float tanh: a 13/6 rational function of the clamped input
_CLAMP = np.float32(7.90531110763549805)
_A = [np.float32(v) for v in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
                              5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
                              -2.76076847742355e-16)]
_B = [np.float32(v) for v in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
                              1.19825839466702e-06)]
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = _A
_B0, _B2, _B4, _B6 = _B
_TINY = np.float32(0.0004)  # below it tanh(x) is x in float32


@functools.cache
def _compile() -> None:
    compile_kernels(globals(), ("_tanh_array", "_forward_block", "_backward_block"),
                    ("_forward_parallel", "_backward_parallel"), inline=("_tanh",))


@functools.cache
def ready() -> bool:
    """Whether these kernels compile here (once a process; see :func:`backprop.engine.kernels.compiles`)."""
    return compiles("LSTM loops", _warm_up)


def _warm_up() -> None:
    """Both loops, one block and two, on an LSTM of 1 unit, 1 step, no input; checked against hand values."""
    T, G, nb, K = 1, 4, 1, 1
    for blocks in (1, 2):
        ext, cells = np.zeros((blocks, T + 1, K, nb), np.float32), np.zeros((blocks, T + 1, 1, nb), np.float32)
        acts, sig = np.empty((blocks, T, G, nb), np.float32), np.empty((blocks, T, 3, nb), np.float32)
        tanh_c = np.empty((blocks, T, 1, nb), np.float32)
        lstm_forward(np.ones((G, K), np.float32), ext, acts, sig, cells, tanh_c, True, False, G)
        dh, dc = np.ones((blocks, 1, nb), np.float32), np.zeros((blocks, 1, nb), np.float32)
        dw, dx = np.zeros((blocks, G, K), np.float32), np.empty((blocks, T, nb, 0), np.float32)
        lstm_backward(np.ones((1, G), np.float32), np.zeros((blocks, T, 1, nb), np.float32), dh, dc, acts, sig, cells,
                      tanh_c, ext, dw, np.zeros((G, 0), np.float32), dx, True, False, 1)
        # h0 = c0 = 0 and no input: every gate's pre-activation is 0, so i = f = o = 0.5, g = 0, c = h = 0;
        # dL/dh = 1 gives dL/dc = o (1 - tanh(c)^2) = 0.5, of which c_{t-1} gets 0.5 f = 0.25; of the gates
        # only g's is not 0 (dc i = 0.25), and W_hh^T (ones) carries it to h_{t-1}
        if sig[0, 0, 0, 0] != 0.5 or ext[0, 1, 0, 0] != 0 or dc[0, 0, 0] != 0.25 or dh[0, 0, 0] != 0.25:
            raise ArithmeticError("wrong results on a known case")


def _tanh(v):  # pragma: no cover - compiled
    x = min(max(v, -_CLAMP), _CLAMP)
    x2 = x * x
    p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1) * x
    q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
    return x if abs(x) < _TINY else p / q


def _tanh_array(x, out):  # pragma: no cover - compiled
    for i in range(x.size):
        out[i] = _tanh(x[i])


def tanh_array(x: np.ndarray) -> np.ndarray:
    """The kernels' tanh of a flat float32 array (what the tests compare with ``np.tanh``)."""
    _compile()
    out = np.empty_like(x)
    _tanh_array(x, out)
    return out


def _forward_block(w_cat, ext, acts, sig, cells, tanh_c, b, reverse, chunk):  # pragma: no cover - compiled
    """Block b: every step's acts[b, t] = tanh(w_cat @ ext[b, t(+1)]), then the gates, c and h (into ext)."""
    _, T, G, nb = acts.shape
    H = G // 4
    K = ext.shape[2]
    half, one = np.float32(0.5), np.float32(1.0)
    for s in range(T):
        t = T - 1 - s if reverse else s
        rd = t + 1 if reverse else t  # the state this step reads
        wr = t if reverse else t + 1  # the state it writes
        a = acts[b, t].reshape(G * nb)
        for r0 in range(0, G, chunk):  # row chunks of the product, as the NumPy loop's (_row_chunks)
            m = min(chunk, G - r0)
            _gemm(_ROW, _NT, _NT, m, nb, K, one, w_cat.ctypes.data + r0 * K * _ITEM, K, ext[b, rd].ctypes.data, nb,
                  np.float32(0.0), a.ctypes.data + r0 * nb * _ITEM, nb)
        # NOTE: loops over contiguous ranges from 0 with few arrays each: the compiler vectorises them
        for k in range(G * nb):  # tanh of every gate's (halved) pre-activation, kept for the backward
            a[k] = _tanh(a[k])
        sg = sig[b, t].reshape(3 * H * nb)
        for k in range(3 * H * nb):  # i, f, o = sigmoid(2u) = 0.5 tanh(u) + 0.5
            sg[k] = a[k] * half + half
        si, sf, so, ug = sg[:H * nb], sg[H * nb:2 * H * nb], sg[2 * H * nb:], a[3 * H * nb:]
        cp, c = cells[b, rd].reshape(H * nb), cells[b, wr].reshape(H * nb)
        for k in range(H * nb):
            cn = sf[k] * cp[k]  # f * c_{t-1} + i * g
            cn += si[k] * ug[k]
            c[k] = cn
        tc, h = tanh_c[b, t].reshape(H * nb), ext[b, wr, :H].reshape(H * nb)
        for k in range(H * nb):
            v = _tanh(c[k])
            tc[k] = v
            h[k] = so[k] * v


def _forward_parallel(w_cat, ext, acts, sig, cells, tanh_c, reverse, chunk):  # pragma: no cover - compiled
    for b in prange(acts.shape[0]):
        _forward_block(w_cat, ext, acts, sig, cells, tanh_c, b, reverse, chunk)


def lstm_forward(w_cat: np.ndarray, ext: np.ndarray, acts: np.ndarray, sig: np.ndarray, cells: np.ndarray,
                 tanh_c: np.ndarray, parallel: bool, reverse: bool, chunk: int) -> None:
    """The forward time loop of :func:`backprop.nn.recurrence._lstm_forward` (no lengths, no projection) on
    blocks of sequences, ``(blocks, ...)`` of the NumPy loop's arrays (``ext``: (blocks, T+1, H + I [+1],
    width), its first H rows the states), on two threads when ``parallel``; ``chunk``: rows per product."""
    _compile()
    if parallel and acts.shape[0] > 1:
        _forward_parallel(w_cat, ext, acts, sig, cells, tanh_c, reverse, chunk)
    else:
        for b in range(acts.shape[0]):
            _forward_block(w_cat, ext, acts, sig, cells, tanh_c, b, reverse, chunk)


def _backward_block(w_t, g_y, dh, dc, acts, sig, cells, tanh_c, ext, dw, w_ih, dx, b, reverse,
                    chunk):  # pragma: no cover - compiled
    """Block b of backpropagation through time: dL/du of each step (up to the sigmoid rows' 0.25), added
    into dw[b] times the step's [h_{t-1}; x_t; 1] (ext), into dx[b, t] times ``w_ih`` when it has columns, and
    carried to h_{t-1} by ``w_t`` (W_hh^T, its sigmoid columns scaled) and to c_{t-1} by f."""
    _, T, G, nb = acts.shape
    H = G // 4
    n = H * nb
    K, I = ext.shape[2], w_ih.shape[1]
    one, zero = np.float32(1.0), np.float32(0.0)
    d, c_t = dh[b].reshape(n), dc[b].reshape(n)
    ee = np.empty(G * nb, dtype=np.float32)  # this step's dL/du, (4H, width)
    for s in range(T):
        t = s if reverse else T - 1 - s
        rd = t + 1 if reverse else t
        a, sg = acts[b, t].reshape(G * nb), sig[b, t].reshape(3 * n)
        gy, tc, cp = g_y[b, t].reshape(n), tanh_c[b, t].reshape(n), cells[b, rd].reshape(n)
        so = sg[2 * n:]
        for k in range(n):  # NOTE: loops as the forward's
            dk = d[k] + gy[k]  # dL/dh_t
            d[k] = dk
            tm = tc[k] * tc[k]
            tm = one - tm
            tm *= so[k]
            tm *= dk
            c_t[k] += tm  # dL/dc_t
        ui, ug, si, ei, eg = a[:n], a[3 * n:], sg[:n], ee[:n], ee[3 * n:]
        for k in range(n):
            ei[k] = (c_t[k] * ug[k]) * (one - ui[k] * ui[k])  # di = dc * g
            eg[k] = (c_t[k] * si[k]) * (one - ug[k] * ug[k])  # dg = dc * i
        uf, uo, sf, ef, eo = a[n:2 * n], a[2 * n:3 * n], sg[n:2 * n], ee[n:2 * n], ee[2 * n:3 * n]
        for k in range(n):
            ef[k] = (c_t[k] * cp[k]) * (one - uf[k] * uf[k])  # df = dc * c_{t-1}
            eo[k] = (d[k] * tc[k]) * (one - uo[k] * uo[k])  # do = dh * tanh(c)
            c_t[k] *= sf[k]  # dL/dc_{t-1} = dc * f
        # [dW_hh | dW_ih | db] += dL/du [h_{t-1}; x_t; 1]^T, and dx_t = (dL/du)^T W_ih
        _gemm(_ROW, _NT, _T, G, K, nb, one, ee.ctypes.data, nb, ext[b, rd].ctypes.data, nb, one, dw[b].ctypes.data, K)
        if I > 0:
            _gemm(_ROW, _T, _NT, nb, I, G, one, ee.ctypes.data, nb, w_ih.ctypes.data, I, zero, dx[b, t].ctypes.data, I)
        for r0 in range(0, H, chunk):
            m = min(chunk, H - r0)
            _gemm(_ROW, _NT, _NT, m, nb, G, one, w_t.ctypes.data + r0 * G * _ITEM, G, ee.ctypes.data, nb,
                  zero, d.ctypes.data + r0 * nb * _ITEM, nb)


def _backward_parallel(w_t, g_y, dh, dc, acts, sig, cells, tanh_c, ext, dw, w_ih, dx, reverse,
                       chunk):  # pragma: no cover - compiled
    for b in prange(acts.shape[0]):
        _backward_block(w_t, g_y, dh, dc, acts, sig, cells, tanh_c, ext, dw, w_ih, dx, b, reverse, chunk)


def lstm_backward(w_t: np.ndarray, g_y: np.ndarray, dh: np.ndarray, dc: np.ndarray, acts: np.ndarray,
                  sig: np.ndarray, cells: np.ndarray, tanh_c: np.ndarray, ext: np.ndarray, dw: np.ndarray,
                  w_ih: np.ndarray, dx: np.ndarray, parallel: bool, reverse: bool, chunk: int) -> None:
    """The backward time loop of :func:`backprop.nn.recurrence._lstm_backward` (no lengths, no projection) on
    the blocks of :func:`lstm_forward`, with the weight gradient's sum over steps: ``dh``, ``dc`` (blocks, H,
    width) carried back in place; ``dw`` (blocks, 4H, H + I [+1]) += each step's share; ``dx`` (blocks, T,
    width, I) the input gradient when ``w_ih`` (4H, I) has columns (else give (4H, 0) and (blocks, T, width,
    0))."""
    _compile()
    if parallel and acts.shape[0] > 1:
        _backward_parallel(w_t, g_y, dh, dc, acts, sig, cells, tanh_c, ext, dw, w_ih, dx, reverse, chunk)
    else:
        for b in range(acts.shape[0]):
            _backward_block(w_t, g_y, dh, dc, acts, sig, cells, tanh_c, ext, dw, w_ih, dx, b, reverse, chunk)
