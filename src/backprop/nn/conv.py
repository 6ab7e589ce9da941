"""Convolutions in PyTorch's layout (NCHW, weights (out, in/groups, kh, kw)): im2col and batched matmuls.

Stride 1 (LeNet-5's layers, most layers): *flat* columns, made and used a chunk of images at a time.
Each channel of the (zero-padded) input is one C-ordered plane of Hp x Wp elements. Give output pixel
(y, x) the flat index p = y*Wp + x: its window element (i, j) is then plane element p + i*dh*Wp + j*dw,
so for each (channel, i, j) an image's columns are *one contiguous run* of L' = (OH-1)*Wp + OW plane
elements (:func:`_flat_view`), copied at memcpy speed. The positions with x >= OW wrap around a row into
the next one: junk, computed and thrown away (L' / (OH*OW) = 1.14 and 1.36 on LeNet-5's layers).

* forward (:func:`_flat_forward`): per chunk of images, copy the columns, one ``np.matmul`` (one BLAS
  product per image), copy the real positions out into (N, O, OH, OW). The bias rides in the product: a
  row of ones in the columns, the bias as one more weight column;
* dW, db (:func:`_flat_weight_grad`): the columns are made again, chunk by chunk, and multiplied by g laid
  on the same flat grid (zero at the junk positions): per-image products, summed; the row of ones gives db;
* dx (:func:`_input_grad_toeplitz`), ungrouped: each output-gradient row (all channels) times a banded
  (Toeplitz) matrix holding W along the width gives its whole contribution to kh input rows; then kh
  row-shifted adds. The input columns are cut into blocks so that most of the band's zeros drop out.
  Grouped, or a band too wide for its kw nonzeros: the shifted slabs of :func:`_input_grad_slabs` (W^T g
  on the padded grid in one product, then one long contiguous ``+=`` per channel and kernel offset).

Other strides: the classic im2col, a strided *view* (N, C, kh, kw, OH, OW) of the padded input copied
once into ``cols`` (N, G, C/G*kh*kw, OH*OW) and kept for dW (``sum_n cols_n @ g_n^T``); dx by per-image
``W^T g_n`` and a scatter-add of the columns (col2im), one strided ``+=`` per kernel offset
(:func:`_col2im`). A 1x1 convolution reads its input as its columns. No loop over samples or pixels.

The choices, measured on the project's 2-core machine (shared, so medians of alternating runs) with
LeNet-5's layers at batch 128, float32, one thread; "in training" is ms a step with the per-layer timer:

* flat columns: LeNet's second layer's columns copy in 0.29 ms instead of 1.0 ms (the classic copy moves
  runs of OW = 10 elements); the forward takes 1.6 ms instead of 2.1 ms (first layer 1.4 vs 1.5), in
  training 1.6 instead of 2.3 and 1.6 instead of 2.5;
* NOTE chunks of ~1 MiB of columns (:data:`_COLS_CHUNK_BYTES`), a few images: they are still in the L2
  cache (2 MiB a core) when the product reads them. Whole-batch columns (10-12 MB) read back from memory
  made the forward ~0.3 ms slower per layer; 256 KiB chunks, more calls, were slower again;
* NOTE recomputing the columns in backward instead of keeping them: keeping them (22 MB a step) was faster
  in isolation but slower in training (18.9 vs 16.2 ms a step: every step's columns go out to memory and
  come back), and the epoch's peak memory growth falls from 44 MB (the old code, which kept them) to 15 MB
  (PyTorch: ~41 MB). The price: the first layer's weight gradient, 1.5 ms in training instead of 1.3;
* NOTE per-image products: OpenBLAS multiplies matrices with m*n*k up to 10^6 with its small-matrix
  kernels, 80-115 GFLOP/s here, against 25-60 for its general path on one (O, K) @ (K, chunk*L') product
  (it moves the whole chunk into packed buffers), or on the transposed (chunk*L', K) @ (K, O), whose
  (N, L', O) result also costs a transposing copy. Products of 2-8 images at once under 10^6 were no faster;
* the banded dx of the second layer: 2.3 ms instead of 3.7 ms for the slabs (which write and read back
  25x the input gradient's size); in training 4.2 instead of 5.6 ms for the layer's whole backward;
* tried and dropped: the banded form for the forward (4x the useful work: slower than the flat columns);
  the slabs in cache-sized chunks, summed by one strided reduction (2.8-3.2 ms, no better); the columns
  built classically but in cache-sized chunks (no faster than the flat ones on the first layer, 1.3x
  slower on the second); one layout of g shared by dW and dx (no measurable gain);
* page faults: a step's arrays come back from the kernel every step unless malloc keeps them
  (:func:`backprop.engine.memory.tune_malloc`, which ``fit`` calls; a plain loop does not): ~3,000 faults a
  step, a quarter of its time at batch 128 (6,100 vs 8,300 samples/s);
* threads: NumPy's BLAS runs these small products on one thread; OpenBLAS's idle workers spin for ~0.1 s
  after any multithreaded product, taking the second core from any other thread. So where the thread limit
  allows two, the flat path's loops over images (forward, dW, dx) run in two halves on two threads of our own
  (:func:`backprop.engine.parallel.split`), the BLAS on one thread, and a captured step with convolutions
  keeps the BLAS on one thread throughout: each image computed as before, so bit-identical to one thread.
  Measured in isolation: 1.2-1.35x on LeNet-5's layers (copies and products compete for memory and the
  GIL between NumPy calls); LeNet-5 at batch 128 trained 12.1k -> 13.4k samples/s at 2 threads;
* compiled loops (the ``numba`` extra, float32, ungrouped layers of 2^20 multiply-adds or more): the same
  three loops over images in :mod:`backprop.nn.conv_kernels`, on numba's threads, which start in ~2 us and
  never need the GIL (a split's worker thread costs ~70 us a round trip on this virtual machine, and the
  GIL changes hands after every NumPy call). Each image's columns and ``cblas_sgemm`` call are the NumPy
  loops' own, so the results are the same to the bit. With them (and the compiled 2x2 max pooling and
  ReLU) LeNet-5 at batch 128 trained at ~21k samples/s at 2 threads instead of ~13.7k (benchmarks/README.md).

>>> import backprop as bp
>>> from backprop.nn.conv import Conv2d
>>> _ = bp.manual_seed(0)
>>> conv = Conv2d(1, 6, 5, padding=2)
>>> conv.weight.shape, conv.bias.shape
((6, 1, 5, 5), (6,))
>>> conv(bp.tensor(np.zeros((2, 1, 28, 28), dtype=np.float32))).shape
(2, 6, 28, 28)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

import backprop.nn.conv_kernels as conv_kernels  # noqa: PLR0402 - the module, not the package backprop.nn
from backprop.engine import kernels as _kernels
from backprop.engine.blas import one_thread
from backprop.engine.parallel import split
from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import DEFAULT_DTYPE, Function, Tensor
from backprop.nn._common import int_tuple as _ints
from backprop.nn._common import pad_images as _pad
from backprop.nn.contract import OnnxGraph
from backprop.nn.init import kaiming_uniform_, uniform_
from backprop.nn.module import Module, Parameter
from backprop.nn.registry import SIZE, Arg, Example, int_arg, layer_type, small_int

__all__ = ["Conv1d", "Conv1dFn", "Conv2d", "Conv2dFn", "conv1d", "conv2d"]

# Above this size (bytes), the weight gradient avoids the (N, O, K) temporary of the batched product.
_WGRAD_TEMP_BYTES = 1 << 24
# Fewest images a thread takes when a flat-path loop over images is split over two (engine/parallel.py):
# a split costs ~25-60 us of thread handoff; LeNet-5's layers take ~5-30 us an image.
_SPLIT_MIN_IMAGES = 16


# Fewest multiply-adds (images x outputs x column rows) for the compiled loops: below, a layer takes less
# than ~50 us, and a process that only runs such layers need not import numba (~0.5 s, 60 MB).
_COMPILED_MIN_WORK = 1 << 20


def _compiled(dt: Any, groups: int, work: int) -> Any:
    """The flat path's compiled loops (:mod:`backprop.nn.conv_kernels`) where they may run: float32, no
    groups, ``work`` multiply-adds or more, the ``numba`` extra (:func:`backprop.engine.kernels.enabled`);
    else None (the NumPy loops, whose results are the same to the bit)."""
    if groups != 1 or dt != np.float32 or work < _COMPILED_MIN_WORK or not _kernels.enabled(dt) \
            or not conv_kernels.ready():
        return None
    return conv_kernels


def _run_parts(kernel: Any, n: int, *args: Any, grain: int = 1) -> None:
    """``kernel(*args, bounds)`` over a batch of n images, in the parts :func:`split` would run (cut at a
    multiple of ``grain``), at once; the BLAS on one thread while two parts run."""
    bounds = _kernels.parallel_bounds(n, _SPLIT_MIN_IMAGES, grain)
    with one_thread(bounds.size > 2):
        kernel(*args, bounds)


# ------------------------------------------------------------------------------------- argument parsing
def _padding(padding: Any, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
             owner: str) -> tuple[tuple[int, int], ...]:
    """PyTorch's padding argument as (before, after) per spatial dimension.

    ``"same"`` pads ``dilation*(kernel-1)`` in total, half before and the rest (one more when it is odd)
    after, as PyTorch does; it needs stride 1. ``"valid"`` is no padding.
    """
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{owner}: padding='same' is not supported for strided convolutions "
                                 f"(stride={stride}); give the padding as numbers instead")
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((t // 2, t - t // 2) for t in total)
        raise ValueError(f"{owner}: padding must be 'same', 'valid', an int or a tuple of {n} ints, "
                         f"got {padding!r}")
    return tuple((p, p) for p in _ints(padding, n, "padding", owner, minimum=0))


def _check_groups(groups: Any, owner: str) -> int:
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{owner}: groups must be a positive integer, got {groups!r}")
    return int(groups)


# ------------------------------------------------------------------------------------------ the kernels
def _windows(xp: np.ndarray, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int],
             oh: int, ow: int) -> np.ndarray:
    """The read-only strided view (N, C, kh, kw, OH, OW): [n, c, i, j, y, x] = xp[n, c, y*sh + i*dh, x*sw + j*dw]."""
    sn, sc, s_h, s_w = xp.strides
    (sh, sw), (dh, dw) = stride, dilation
    return as_strided(xp, (xp.shape[0], xp.shape[1], kh, kw, oh, ow),
                      (sn, sc, s_h * dh, s_w * dw, s_h * sh, s_w * sw), writeable=False)


def _geometry(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], pads: tuple[tuple[int, int], ...],
              dilation: tuple[int, int], groups: int, owner: str, layout: str, squeeze_h: bool) -> tuple[int, int]:
    """Check shapes (naming the sizes involved) and return the output size (OH, OW)."""
    ndim = 3 if squeeze_h else 4
    if x.ndim != 4:
        raise ValueError(f"{owner}: expected input of shape {layout} ({ndim}-D) or an unbatched sample, "
                         f"got shape {x.shape[:2] + x.shape[3:] if squeeze_h else x.shape}")
    if w.ndim != 4:
        shape = w.shape[:2] + w.shape[3:] if squeeze_h else w.shape
        raise ValueError(f"{owner}: weight must be {ndim}-D (out_channels, in_channels/groups, "
                         f"{'k' if squeeze_h else 'kh, kw'}), got shape {shape}")
    _, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    wshape = w.shape[:2] + w.shape[3:] if squeeze_h else w.shape
    if o % groups:
        raise ValueError(f"{owner}: out_channels ({o}, weight shape {wshape}) must be divisible by "
                         f"groups ({groups})")
    if c != cg * groups:
        raise ValueError(f"{owner}: input has {c} channels (shape {x.shape[:2] + x.shape[3:] if squeeze_h else x.shape})"
                         f" but the weight {wshape} with groups={groups} expects {cg * groups} "
                         f"(in_channels/groups = {cg})")
    (pt, pb), (pl, pr) = pads
    hp, wp = h + pt + pb, wd + pl + pr
    ekh, ekw = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if ekh > hp or ekw > wp:
        if squeeze_h:
            raise ValueError(f"{owner}: kernel size {kw} (dilated: {ekw}) is larger than the padded input "
                             f"length {wp} (input {wd} + padding {pl + pr})")
        raise ValueError(f"{owner}: kernel size ({kh}, {kw}) (dilated: ({ekh}, {ekw})) is larger than the "
                         f"padded input size ({hp}, {wp}) (input ({h}, {wd}) + padding ({pt + pb}, {pl + pr}))")
    return (hp - ekh) // stride[0] + 1, (wp - ekw) // stride[1] + 1


# ------------------------------------------------------------------------------------ forward, backward
def _conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
                  pads: tuple[tuple[int, int], ...], dilation: tuple[int, int], groups: int,
                  oh: int, ow: int) -> tuple[np.ndarray, np.ndarray]:
    """out (N, O, OH, OW) and the columns (N, G, C/G*kh*kw, OH*OW) it was computed from (the classic im2col)."""
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    kg, l_ = cg * kh * kw, oh * ow
    if kh == kw == 1 and stride == (1, 1) and not any(pads[0] + pads[1]):
        cols = x.reshape(n, groups, kg, l_)  # a 1x1 convolution: the columns are the input itself (no copy)
    else:  # im2col: one strided copy of the windows
        cols = np.empty((n, groups, kg, l_), dtype=x.dtype)
        win = _windows(_pad(x, pads), kh, kw, stride, dilation, oh, ow)
        np.copyto(cols.reshape(win.shape), win)
    out = np.matmul(w.reshape(groups, o // groups, kg), cols)  # (N, G, O/G, L): one BLAS product per image
    if b is not None:
        out += b.reshape(groups, o // groups, 1)
    return out.reshape(n, o, oh, ow), cols


# ------------------------------------------------------------------------- the flat (row-shift) im2col
# Bytes of one chunk of flat columns: a few images at a time, so that the columns are written and read
# back by the product while they are in the L2 cache (2 MiB a core here) instead of going out to memory.
_COLS_CHUNK_BYTES = 1 << 20
# The flat columns hold (OH-1)*Wp + OW positions per image instead of OH*OW (the extra ones are
# discarded); above this ratio the classic im2col is used.
_FLAT_MAX_GROWTH = 2.0


def _flat_length(pads: tuple[tuple[int, int], ...], hp: int, wp: int, kh: int, kw: int,
                 stride: tuple[int, int], oh: int, ow: int) -> int | None:
    """The flat column length L' = (OH-1)*Wp + OW when the flat im2col applies (stride 1), else None."""
    if stride != (1, 1) or (kh == kw == 1 and not any(pads[0] + pads[1])):
        return None  # strided windows are not shifts of one row; a 1x1 convolution reads its input in place
    length = (oh - 1) * wp + ow
    return length if length <= _FLAT_MAX_GROWTH * oh * ow else None


def _planes(x: np.ndarray, pads: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The zero-padded input (N, C, Hp, Wp) with every channel's image one C-ordered plane (a copy if needed)."""
    xp = _pad(x, pads)
    it = xp.itemsize
    if xp.strides[3] != it or (xp.shape[2] > 1 and xp.strides[2] != xp.shape[3] * it):
        xp = np.ascontiguousarray(xp)
    return xp


def _flat_view(xp: np.ndarray, groups: int, kh: int, kw: int, dilation: tuple[int, int],
               length: int) -> np.ndarray:
    """Read-only view (N, G, C/G, kh, kw, L'): [n, g, c, i, j, p] = plane (n, g*C/G + c) at flat index
    i*dh*Wp + j*dw + p. Output pixel (y, x) is p = y*Wp + x; the p with x >= OW wrap around a row: junk,
    computed and thrown away. The last index read is (Hp-1)*Wp + Wp-1: always inside the plane."""
    n, c, _, _ = xp.shape
    sn, sc, s_h, s_w = xp.strides
    cg = c // groups
    return as_strided(xp, (n, groups, cg, kh, kw, length),
                      (sn, cg * sc, sc, dilation[0] * s_h, dilation[1] * s_w, s_w), writeable=False)


def _valid(a: np.ndarray, oh: int, ow: int, wp: int) -> np.ndarray:
    """The (m, O, OH, OW) view of the real outputs in flat rows a (m, G, O/G, L') (C order)."""
    m, groups, og, _ = a.shape
    s0, _, so, sp = a.strides
    return as_strided(a, (m, groups * og, oh, ow), (s0, so, wp * sp, sp))


def _images_per_chunk(n: int, image_bytes: int) -> int:
    return max(1, min(n, _COLS_CHUNK_BYTES // max(1, image_bytes)))


def _flat_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: tuple[tuple[int, int], ...],
                  dilation: tuple[int, int], groups: int, oh: int, ow: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A stride-1 convolution from flat columns, a chunk of images at a time: (out, padded input), or None
    when the flat im2col does not apply.

    Image n's columns are ``cols[n, (c, i, j), p] = plane[n, c].flat[i*dh*Wp + j*dw + p]``: for each
    (c, i, j) one *contiguous* run of L' input elements (a memcpy), where the classic im2col copies OH runs
    of OW elements. With a bias, a row of ones is appended to the columns and the bias to the weights, so
    the product adds it (and, in backward, the same product gives its gradient).
    """
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    (pt, pb), (pl, pr) = pads
    hp, wp = x.shape[2] + pt + pb, x.shape[3] + pl + pr
    length = _flat_length(pads, hp, wp, kh, kw, (1, 1), oh, ow)
    if length is None:
        return None
    xp = _planes(x, pads)
    og, kg = o // groups, cg * kh * kw
    kb = kg + (b is not None)
    dt = np.result_type(x.dtype, w.dtype)
    wext = np.empty((groups, og, kb), dtype=dt)
    wext[:, :, :kg] = w.reshape(groups, og, kg)
    if b is not None:
        wext[:, :, kg] = b.reshape(groups, og)
    out = np.empty((n, o, oh, ow), dtype=dt)
    compiled = _compiled(dt, groups, n * o * oh * ow * kb)
    if compiled is not None:
        xp = np.ascontiguousarray(xp)
        _run_parts(compiled.forward, n, xp.reshape(n, xp.shape[1], hp * wp), wext.reshape(o, kb), out, kh, kw,
                   *dilation, wp, b is not None)
        return out, xp
    view = _flat_view(xp, groups, kh, kw, dilation, length)
    nb = _images_per_chunk(n, groups * kb * length * dt.itemsize)

    def images(lo: int, hi: int) -> None:  # NOTE: its own scratch: the two halves of a split run at once
        cols = np.empty((nb, groups, kb, length), dtype=dt)
        if b is not None:
            cols[:, :, kg] = 1
        dst = cols[:, :, :kg].reshape((nb,) + view.shape[1:])
        res = np.empty((nb, groups, og, length), dtype=dt)
        res_valid = _valid(res, oh, ow, wp)  # NOTE: views made once: as_strided costs ~30 us a call
        for n0 in range(lo, hi, nb):
            m = min(nb, hi - n0)
            np.copyto(dst[:m], view[n0:n0 + m])
            # NOTE: per-image products (numpy loops over the images inside one call): OpenBLAS multiplies
            # such small matrices (m*n*k up to 10^6) with its small-matrix kernels, 2-4x the rate of its
            # general path on one (O, K) @ (K, images*L') product of the same chunk
            np.matmul(wext, cols[:m], out=res[:m])
            np.copyto(out[n0:n0 + m], res_valid[:m])  # drop the wrapped-around positions

    split(n, images, _SPLIT_MIN_IMAGES)
    return out, xp


def _flat_weight_grad(g: np.ndarray, xp: np.ndarray, w_shape: tuple[int, ...], groups: int,
                      dilation: tuple[int, int], with_bias: bool, dt: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(dW as (O, C/G, kh, kw), db or None) of a flat-path convolution: the sum over images of
    ``cols_n @ g_n^T``, the columns recomputed from the padded input chunk by chunk, in cache.

    g is laid on the same flat grid, zero at the wrapped-around positions so that they add nothing (NOTE:
    0 * junk: an inf or NaN input next to the valid window can make a NaN here where PyTorch has inf; the
    forward output is NaN/inf there anyway). The row of ones in the columns gives db in the same product.
    """
    n, o, oh, ow = g.shape
    _, cg, kh, kw = w_shape
    og, kg = o // groups, cg * kh * kw
    kb = kg + with_bias
    wp = xp.shape[3]
    length = (oh - 1) * wp + ow
    # NOTE: g as (L', O/G) per image (a transposing copy) when there are many output channels, else
    # (O/G, L') read transposed by the product: LeNet's layers, per image: (151, 136) @ (136, 16) 7.2 us
    # vs 10.7 us as @ (16, 136)^T; (26, 892) @ (6, 892)^T 5.3 us vs 6.2 us, and a 3x cheaper copy
    by_rows = og >= 16
    per_image = np.empty((n, groups, kb, og), dtype=dt)  # summed once at the end: one call, not one a chunk
    compiled = _compiled(dt, groups, n * o * oh * ow * kb) if g.dtype == dt and xp.flags.c_contiguous else None
    if compiled is not None:
        _run_parts(compiled.weight_grad, n, xp.reshape(n, xp.shape[1], -1), np.ascontiguousarray(g),
                   per_image.reshape(n, kb, og), kh, kw, *dilation, wp, with_bias, by_rows)
    else:
        _flat_weight_grad_numpy(g, xp, per_image, groups, kh, kw, dilation, with_bias, by_rows, length)
    acc = per_image.sum(axis=0)  # NOTE: the same sum however the images were split
    gw = acc[:, :kg].transpose(0, 2, 1).reshape(w_shape)
    return gw, (acc[:, kg].reshape(o) if with_bias else None)


def _flat_weight_grad_numpy(g: np.ndarray, xp: np.ndarray, per_image: np.ndarray, groups: int, kh: int, kw: int,
                            dilation: tuple[int, int], with_bias: bool, by_rows: bool, length: int) -> None:
    """per_image[n] = image n's columns times g[n] on the flat grid, in NumPy, chunk by chunk."""
    n, _, oh, ow = g.shape
    _, _, kb, og = per_image.shape
    kg, dt, wp = kb - with_bias, per_image.dtype, xp.shape[3]
    view = _flat_view(xp, groups, kh, kw, dilation, length)
    nb = _images_per_chunk(n, groups * kb * length * dt.itemsize)

    def images(lo: int, hi: int) -> None:  # NOTE: its own scratch: the two halves of a split run at once
        cols = np.empty((nb, groups, kb, length), dtype=dt)
        if with_bias:
            cols[:, :, kg] = 1
        gg = np.zeros((nb, groups, length, og) if by_rows else (nb, groups, og, length), dtype=dt)
        g_valid = _valid(gg.transpose(0, 1, 3, 2) if by_rows else gg, oh, ow, wp)  # the zeros elsewhere stay
        gm = gg if by_rows else gg.transpose(0, 1, 3, 2)  # (nb, G, L', O/G)
        dst = cols[:, :, :kg].reshape((nb,) + view.shape[1:])
        for n0 in range(lo, hi, nb):
            m = min(nb, hi - n0)
            np.copyto(dst[:m], view[n0:n0 + m])
            np.copyto(g_valid[:m], g[n0:n0 + m])
            np.matmul(cols[:m], gm[:m], out=per_image[n0:n0 + m])

    split(n, images, _SPLIT_MIN_IMAGES)


def _weight_grad(g3: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """sum over n and pixels of g3[n, g, o, l] * cols[n, g, k, l], as (G, O/G, K/G)."""
    n, groups, og, l_ = g3.shape
    kg = cols.shape[2]
    temp = n * groups * og * kg * g3.itemsize
    if temp <= max(cols.nbytes, _WGRAD_TEMP_BYTES):
        # per-image products, summed: the fastest for these shapes (LeNet: 2-5x one big product). As
        # cols_n @ g_n^T (K, O) rather than g_n @ cols_n^T (O, K): measured up to 2x faster (LeNet's second
        # layer 0.47 vs 0.94 ms), never more than 10% slower, over 8 layer shapes
        return np.matmul(cols, g3.transpose(0, 1, 3, 2)).sum(axis=0).transpose(0, 2, 1)
    # many output channels on small images: that temporary would outgrow cols, so transpose both to
    # (G, rows, N*L) (copies no larger than cols) and contract in one product
    gt = g3.transpose(1, 2, 0, 3).reshape(groups, og, n * l_)
    ct = cols.transpose(1, 2, 0, 3).reshape(groups, kg, n * l_)
    return np.matmul(gt, ct.transpose(0, 2, 1))


def _col2im(dcols: np.ndarray, out: np.ndarray, stride: tuple[int, int], pads: tuple[tuple[int, int], ...],
            dilation: tuple[int, int]) -> None:
    """Scatter-add column gradients (N, C, kh, kw, OH, OW) back onto the input gradient ``out`` (N, C, H, W).

    One strided ``+=`` over the whole batch per kernel offset: kh*kw NumPy operations, none per image or
    pixel (a batched ``np.add.at`` was measured several times slower).
    """
    n, c, kh, kw, oh, ow = dcols.shape
    (pt, pb), (pl, pr) = pads
    (sh, sw), (dh, dw) = stride, dilation
    h, w = out.shape[2], out.shape[3]
    dxp = np.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dcols.dtype)
    hspan, wspan = sh * (oh - 1) + 1, sw * (ow - 1) + 1
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i * dh:i * dh + hspan:sh, j * dw:j * dw + wspan:sw] += dcols[:, :, i, j]
    np.copyto(out, dxp[:, :, pt:pt + h, pl:pl + w], casting="same_kind")


# Largest temporary (bytes) of the input gradient's shifted-slab form; it is computed in channel chunks below this.
_DX_CHUNK_BYTES = 1 << 23
# The shifted-slab form computes W^T g on the padded grid (Hp*Wp points) instead of the OH*OW outputs;
# above this ratio the extra products cost more than the slab loop saves.
_DX_MAX_GROWTH = 2.5


def _input_grad_slabs(g: np.ndarray, w: np.ndarray, groups: int, out: np.ndarray,
                      pads: tuple[tuple[int, int], ...], dilation: tuple[int, int]) -> None:
    """dL/dx of a stride-1 convolution into ``out`` (N, C, H, W), every scatter-add a long contiguous one.

    The output gradient is laid on the padded input grid, channels first: g_ext (O, N, Hp, Wp), zero
    outside the OH x OW outputs. Then for input channel c and kernel offset (i, j), ``(W^T g_ext)[c, i, j]``
    is a contiguous (N*Hp*Wp) slab that belongs at flat offset ``i*dh*Wp + j*dw`` of channel c's (N, Hp, Wp)
    block of the padded input gradient: one ``+=`` of N*Hp*Wp elements per channel and offset. The zero
    columns/rows of g_ext make the slab's overhang at the end of each image add zeros to the next. Measured
    on LeNet-5's second layer (batch 128): 1.2 ms instead of 2.3 ms for per-image products + the kh*kw
    (N, C, OH, OW) strided adds, whose inner loops are only OW (10) long.
    """
    n, o, oh, ow = g.shape
    _, cg, kh, kw = w.shape
    c = cg * groups
    og = o // groups
    (pt, pb), (pl, pr) = pads
    h, wd = out.shape[2], out.shape[3]
    hp, wp = h + pt + pb, wd + pl + pr
    block = n * hp * wp
    g_ext = np.zeros((o, n, hp, wp), dtype=g.dtype)
    g_ext[:, :, :oh, :ow] = g.transpose(1, 0, 2, 3)
    g_ext = g_ext.reshape(groups, og, block)
    slack = (kh - 1) * dilation[0] * wp + (kw - 1) * dilation[1]
    dxp = np.zeros(c * block + slack, dtype=np.result_type(g.dtype, w.dtype))
    kk = kh * kw
    wg = w.reshape(groups, og, cg * kk)  # W^T of a group: rows (channel, kernel offset)
    chunk = max(1, min(cg, _DX_CHUNK_BYTES // max(1, kk * block * dxp.itemsize)))
    offsets = [(i * kw + j, i * dilation[0] * wp + j * dilation[1]) for i in range(kh) for j in range(kw)]
    for gi in range(groups):  # loops over groups and channel chunks (a few), never samples or pixels
        for c0 in range(0, cg, chunk):
            c1 = min(cg, c0 + chunk)
            # one (chunk*kh*kw, O/G) @ (O/G, N*Hp*Wp) product: 1.5x faster than a batch of per-channel ones
            slabs = (wg[gi, :, c0 * kk:c1 * kk].T @ g_ext[gi]).reshape(c1 - c0, kk, block)
            start = (gi * cg + c0) * block
            for k, shift in offsets:
                dst = dxp[start + shift:start + shift + (c1 - c0) * block].reshape(c1 - c0, block)
                dst += slabs[:, k]
    dx = dxp[:c * block].reshape(c, n, hp, wp)[:, :, pt:pt + h, pl:pl + wd].transpose(1, 0, 2, 3)
    np.copyto(out, dx, casting="same_kind")


# The banded (Toeplitz) input gradient multiplies each block of input columns by a band with kw nonzeros
# in each run of `reach` entries (the output-gradient columns reaching the block): it is used while
# reach <= _TOEPLITZ_MAX_WASTE * kw and the bands take at most _TOEPLITZ_MAX_BYTES.
_TOEPLITZ_MAX_WASTE = 8.0
_TOEPLITZ_MAX_BYTES = 1 << 22
# Largest product (bytes) of the Toeplitz form at once; it is computed over chunks of images below this.
_TOEPLITZ_CHUNK_BYTES = 1 << 19


def _toeplitz_blocks(wp: int, kw: int, dw: int) -> tuple[int, int]:
    """(number of blocks, block width) of the input-gradient columns for the banded product.

    NOTE: a block of bx columns is reached by bx + (kw-1)*dw output-gradient columns, so the product does
    (bx + (kw-1)*dw) / kw times the useful work: narrow blocks waste less, but each is one more product and
    kh more adds. Blocks of about 2*(kw-1)*dw + 1 columns, at least 8: LeNet-5's second layer (Wp = 14,
    kw = 5) in two blocks of 7, 30% less work in the products than one block of 14, 2.3 instead of 2.45 ms
    in all."""
    span = (kw - 1) * dw
    nblk = max(1, round(wp / max(2 * span + 1, 8)))
    bx = -(-wp // nblk)
    return -(-wp // bx), bx


def _toeplitz_applies(g_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int, stride: tuple[int, int],
                      wp: int, dw: int, itemsize: int) -> bool:
    """Whether :func:`_input_grad_toeplitz` computes this input gradient (stride 1, no groups, narrow bands)."""
    o, c, kh, kw = w_shape
    ow = g_shape[3]
    if groups != 1 or stride != (1, 1):
        return False
    nblk, bx = _toeplitz_blocks(wp, kw, dw)
    reach = min(ow, bx + (kw - 1) * dw)  # output-gradient columns reaching one block
    return (reach * bx <= _TOEPLITZ_MAX_WASTE * kw * bx
            and nblk * reach * o * kh * c * bx * itemsize <= _TOEPLITZ_MAX_BYTES)


def _input_grad_toeplitz(g: np.ndarray, w: np.ndarray, out: np.ndarray, pads: tuple[tuple[int, int], ...],
                         dilation: tuple[int, int]) -> None:
    """dL/dx of a stride-1, ungrouped convolution into ``out`` (N, C, H, W): per block of input columns,
    one product of the output-gradient rows with a banded matrix, then kh row-shifted adds.

    Row y' of the output gradient (all channels, laid out (OW, O)) reaches input rows y' + i*dh, each
    through a banded (Toeplitz) matrix along the width: ``T[(x, o), (i, c, x + j*dw)] = W[o, c, i, j]``. So
    ``P = g_rows (N*OH, OW*O) @ T (OW*O, kh*C*Wp)`` holds, for each output row and kernel row i, its whole
    contribution to input row y' + i*dh, and dx is kh adds of row blocks of P. No (C*kh*kw)-row columns
    (the slab and col2im forms write and read back kh*kw times the input gradient's size), at the price of
    the band's zeros in the product; cutting the input columns into blocks (:func:`_toeplitz_blocks`), each
    reached by a contiguous range of output-gradient columns, drops most of them. LeNet-5's second layer
    (batch 128): 2.3 ms instead of 3.7 ms for the slabs.
    """
    n, o, oh, ow = g.shape
    _, c, kh, kw = w.shape
    (pt, pb), (pl, pr) = pads
    h, wd = out.shape[2], out.shape[3]
    hp, wp = h + pt + pb, wd + pl + pr
    dh, dw = dilation
    dt = np.result_type(g.dtype, w.dtype)
    nblk, bx = _toeplitz_blocks(wp, kw, dw)
    spans = []  # (first, last output-gradient column, block index) of the blocks some gradient reaches
    for blk in range(nblk):
        x0, x1 = blk * bx, min(wp, (blk + 1) * bx)
        xa, xb = max(0, x0 - (kw - 1) * dw), min(ow, x1)
        if xa < xb:  # else only padding columns: no gradient reaches them
            spans.append((xa, xb, blk))
    width = kh * c * bx
    bands = np.zeros((len(spans), max(xb - xa for xa, xb, _ in spans) * o, width), dtype=dt)
    blocks = []  # (first, last output-gradient column, the block's band, block index)
    for (xa, xb, blk), band in zip(spans, bands):
        x0, x1 = blk * bx, min(wp, (blk + 1) * bx)
        t = band[:(xb - xa) * o].reshape(xb - xa, o, kh, c, bx)
        s0, s1, s2, s3, s4 = t.strides
        for j in range(kw):  # the band's diagonal j: t[x - xa, o, i, c, x + j*dw - x0] = W[o, c, i, j]
            lo, hi = max(xa, x0 - j * dw), min(xb, x1 - j * dw)
            if lo < hi:
                diag = as_strided(t[lo - xa:, :, :, :, lo + j * dw - x0:], (o, kh, c, hi - lo), (s1, s2, s3, s0 + s4))
                np.copyto(diag, w[:, :, :, j].transpose(0, 2, 1)[..., None])
        blocks.append((xa, xb, t.reshape((xb - xa) * o, width), blk))
    rows = np.empty((n, oh, ow, o), dtype=dt)
    np.copyto(rows, g.transpose(0, 2, 3, 1))
    rows = rows.reshape(n * oh, ow * o)
    dxr = np.zeros((n, hp, nblk, c, bx), dtype=dt)
    nb = max(1, min(n, _TOEPLITZ_CHUNK_BYTES // max(1, oh * kh * c * bx * dxr.itemsize)))

    def images(lo: int, hi: int) -> None:  # NOTE: writes only its images' rows of dxr
        for n0 in range(lo, hi, nb):
            m = min(nb, hi - n0)
            for xa, xb, t, blk in blocks:
                p = (rows[n0 * oh:(n0 + m) * oh, xa * o:xb * o] @ t).reshape(m, oh, kh, c, bx)
                for i in range(kh):
                    dxr[n0:n0 + m, i * dh:i * dh + oh, blk] += p[:, :, i]
                del p

    compiled = _compiled(dt, 1, n * oh * ow * o * c * kh * kw)
    if compiled is not None:
        _run_parts(compiled.input_grad_banded, n, rows, bands, np.array(spans, dtype=np.int64), dxr, nb, oh, o, kh,
                   dh, grain=nb)
    else:  # NOTE: cut at a whole chunk: the same chunks (the same products, to the bit) split or not
        split(n, images, _SPLIT_MIN_IMAGES, grain=nb)
    for blk in range(nblk):  # crop the padding, back to (N, C, H, W)
        x0, x1 = max(blk * bx, pl), min((blk + 1) * bx, wp, pl + wd)
        if x0 < x1:
            np.copyto(out[:, :, :, x0 - pl:x1 - pl],
                      dxr[:, pt:pt + h, blk, :, x0 - blk * bx:x1 - blk * bx].transpose(0, 2, 1, 3), casting="same_kind")


def _forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
             pads: tuple[tuple[int, int], ...], dilation: tuple[int, int], groups: int,
             oh: int, ow: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(out, padded input or None, columns or None): the flat path where it applies, else im2col."""
    if stride == (1, 1):
        flat = _flat_forward(x, w, b, pads, dilation, groups, oh, ow)
        if flat is not None:
            return flat[0], flat[1], None
    out, cols = _conv_forward(x, w, b, stride, pads, dilation, groups, oh, ow)
    return out, None, cols


def _conv_backward(ctx: Any, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
    """Gradients (x, w[, b]) of a 2-D convolution; shared by Conv2dFn and Conv1dFn (which adds H = 1)."""
    needs = ctx.needs_grad
    w, groups = ctx.w, ctx.groups
    n = g.shape[0]
    o, cg, kh, kw = w.shape
    oh, ow = g.shape[2], g.shape[3]
    with_bias = len(needs) == 3
    (pt, pb), (pl, pr) = ctx.pads
    hp, wp = ctx.x_shape[2] + pt + pb, ctx.x_shape[3] + pl + pr
    gx = gw = gb = None
    if needs[1]:
        if ctx.xp is not None:  # flat path: the columns are recomputed, and give db too
            gw, gb = _flat_weight_grad(g, ctx.xp, w.shape, groups, ctx.dilation, ctx.b_dtype is not None,
                                       np.result_type(ctx.xp.dtype, w.dtype))
            if not (with_bias and needs[2]):
                gb = None
        else:
            g3 = g.reshape(n, groups, o // groups, oh * ow)
            gw = _weight_grad(g3, ctx.cols).reshape(w.shape)
        if gw.dtype != w.dtype or not gw.flags.c_contiguous:
            gw = gw.astype(w.dtype)
    if needs[0]:
        gx = np.empty(ctx.x_shape, dtype=ctx.x_dtype)
        if _toeplitz_applies(g.shape, w.shape, groups, ctx.stride, wp, ctx.dilation[1],
                             np.result_type(g.dtype, w.dtype).itemsize):
            _input_grad_toeplitz(g, w, gx, ctx.pads, ctx.dilation)
        elif ctx.stride == (1, 1) and hp * wp <= _DX_MAX_GROWTH * oh * ow:
            _input_grad_slabs(g, w, groups, gx, ctx.pads, ctx.dilation)
        else:  # strided (or a kernel almost as large as the input): per-image products, then col2im
            g3 = g.reshape(n, groups, o // groups, oh * ow)
            dcols = np.matmul(w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1), g3)
            _col2im(dcols.reshape(n, cg * groups, kh, kw, oh, ow), gx, ctx.stride, ctx.pads, ctx.dilation)
            del dcols
    if not with_bias:
        return gx, gw
    if needs[2] and gb is None:
        gb = g.sum(axis=(0, 2, 3))
    if gb is not None:
        gb = gb.astype(ctx.b_dtype, copy=False)
    return gx, gw, gb


# ------------------------------------------------------------------------------------ registered cases
def _conv2d_case(label: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], bias: bool = True,
                 **kw: Any) -> Case:
    inputs = [sample(x_shape, seed=1), sample(w_shape, seed=2)]
    if bias:
        inputs.append(sample((w_shape[0],), seed=3))
    return Case(f"conv2d {label}", lambda *t: conv2d(*t, **kw), inputs,
                lambda T, *t: T.nn.functional.conv2d(*t, **kw))


def _conv1d_case(label: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], bias: bool = True,
                 **kw: Any) -> Case:
    inputs = [sample(x_shape, seed=4), sample(w_shape, seed=5)]
    if bias:
        inputs.append(sample((w_shape[0],), seed=6))
    return Case(f"conv1d {label}", lambda *t: conv1d(*t, **kw), inputs,
                lambda T, *t: T.nn.functional.conv1d(*t, **kw))


_CONV2D_CASES = [
    _conv2d_case("3x3", (2, 2, 5, 5), (3, 2, 3, 3)),
    _conv2d_case("stride 2 pad 1", (2, 2, 6, 5), (3, 2, 3, 3), stride=2, padding=1),
    _conv2d_case("same no bias", (2, 3, 5, 6), (2, 3, 3, 3), bias=False, padding="same"),
    _conv2d_case("same asymmetric 2x3", (2, 2, 5, 5), (2, 2, 2, 3), padding="same"),
    _conv2d_case("same dilation 2", (2, 2, 6, 6), (2, 2, 2, 3), padding="same", dilation=2),
    _conv2d_case("valid", (2, 2, 5, 6), (3, 2, 2, 3), padding="valid"),
    _conv2d_case("dilation 2 pad 1", (2, 2, 7, 6), (2, 2, 3, 2), padding=1, dilation=2),
    _conv2d_case("groups 2", (2, 4, 5, 5), (4, 2, 3, 3), padding=1, groups=2),
    _conv2d_case("groups 2 stride 2 no bias", (2, 4, 6, 7), (2, 2, 3, 2), bias=False, stride=2, groups=2),
    _conv2d_case("depthwise", (2, 4, 5, 5), (4, 1, 3, 3), padding=(1, 0), groups=4),
    _conv2d_case("batch 1 stride (2,1) pad (1,0) 2x3", (1, 2, 5, 7), (3, 2, 2, 3), stride=(2, 1),
                 padding=(1, 0)),
    _conv2d_case("1x1", (2, 3, 4, 4), (2, 3, 1, 1)),
    _conv2d_case("unbatched", (2, 5, 5), (3, 2, 3, 3), padding=1),
]
_CONV1D_CASES = [
    _conv1d_case("k3", (2, 2, 7), (3, 2, 3)),
    _conv1d_case("stride 2 pad 1 no bias", (2, 2, 8), (3, 2, 3), bias=False, stride=2, padding=1),
    _conv1d_case("same even kernel dilation 2", (2, 2, 7), (2, 2, 4), padding="same", dilation=2),
    _conv1d_case("groups 2", (1, 4, 6), (4, 2, 2), groups=2, padding="valid"),
    _conv1d_case("unbatched", (2, 6), (2, 2, 3), padding=1),
]


# --------------------------------------------------------------------------------------- the Functions
@register(cases(*_CONV2D_CASES))
class Conv2dFn(Function):
    """2-D cross-correlation (PyTorch's conv2d): x (N, C, H, W), w (O, C/groups, kh, kw), optional b (O,).

    Keyword arguments are PyTorch's: ``stride``, ``padding`` (ints, pairs, ``"same"`` or ``"valid"``),
    ``dilation``, ``groups``.
    """

    def forward(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        owner = "conv2d"
        if w.ndim != 4:
            raise ValueError(f"{owner}: weight must be 4-D (out_channels, in_channels/groups, kh, kw), "
                             f"got shape {w.shape}")
        stride = _ints(stride, 2, "stride", owner)
        dilation = _ints(dilation, 2, "dilation", owner)
        groups = _check_groups(groups, owner)
        pads = _padding(padding, w.shape[2:], stride, dilation, owner)
        oh, ow = _geometry(x, w, stride, pads, dilation, groups, owner, "(N, C, H, W)", False)
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"{owner}: bias must have shape ({w.shape[0]},), got {b.shape}")
        out, self.xp, self.cols = _forward(x, w, b, stride, pads, dilation, groups, oh, ow)
        self.w, self.x_shape, self.x_dtype = w, x.shape, x.dtype
        self.b_dtype = None if b is None else b.dtype
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups
        return out

    def backward(self, g):
        return _conv_backward(self, g)


@register(cases(*_CONV1D_CASES))
class Conv1dFn(Function):
    """1-D cross-correlation (PyTorch's conv1d): x (N, C, L), w (O, C/groups, k); a conv2d with H = 1."""

    def forward(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        owner = "conv1d"
        if w.ndim != 3:
            raise ValueError(f"{owner}: weight must be 3-D (out_channels, in_channels/groups, k), "
                             f"got shape {w.shape}")
        if x.ndim != 3:
            raise ValueError(f"{owner}: expected input of shape (N, C, L) (3-D) or an unbatched sample, "
                             f"got shape {x.shape}")
        stride = (1, *_ints(stride, 1, "stride", owner))
        dilation = (1, *_ints(dilation, 1, "dilation", owner))
        groups = _check_groups(groups, owner)
        pads = ((0, 0), *_padding(padding, w.shape[2:], stride[1:], dilation[1:], owner))
        x4, w4 = x[:, :, None, :], w[:, :, None, :]
        oh, ow = _geometry(x4, w4, stride, pads, dilation, groups, owner, "(N, C, L)", True)
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"{owner}: bias must have shape ({w.shape[0]},), got {b.shape}")
        out, self.xp, self.cols = _forward(x4, w4, b, stride, pads, dilation, groups, oh, ow)
        self.w, self.x_shape, self.x_dtype = w4, x4.shape, x.dtype
        self.b_dtype = None if b is None else b.dtype
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups
        return out.reshape(out.shape[0], out.shape[1], ow)

    def backward(self, g):
        grads = _conv_backward(self, g[:, :, None, :])
        gx, gw = grads[0], grads[1]
        if gx is not None:
            gx = gx.reshape(gx.shape[0], gx.shape[1], gx.shape[3])
        if gw is not None:
            gw = gw.reshape(gw.shape[0], gw.shape[1], gw.shape[3])
        return (gx, gw, *grads[2:])


# ------------------------------------------------------------------------------------------ functional
def _as_input(x: Any, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return Tensor(np.asarray(x, dtype=like.data.dtype))


def _apply(fn: type[Function], x: Tensor, weight: Tensor, bias: Tensor | None, unbatched_ndim: int,
           **kw: Any) -> Tensor:
    weight = weight if isinstance(weight, Tensor) else Tensor(np.asarray(weight))
    x = _as_input(x, weight)
    if bias is not None and not isinstance(bias, Tensor):
        bias = Tensor(np.asarray(bias, dtype=weight.data.dtype))
    unbatched = x.ndim == unbatched_ndim
    if unbatched:  # PyTorch accepts one unbatched sample
        x = x.reshape(1, *x.shape)
    out = fn.apply(x, weight, **kw) if bias is None else fn.apply(x, weight, bias, **kw)
    return out.reshape(out.shape[1:]) if unbatched else out


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation) as ``torch.nn.functional.conv2d``.

    ``x`` (N, C, H, W) or unbatched (C, H, W); ``weight`` (O, C/groups, kh, kw); ``bias`` (O,) or None.
    ``stride``, ``dilation``: int or (h, w); ``padding``: int, (h, w), ``"same"`` (stride 1 only; one more
    row/column after than before when the dilated kernel size is even, as PyTorch) or ``"valid"``.
    """
    return _apply(Conv2dFn, x, weight, bias, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Tensor:
    """1-D convolution (cross-correlation) as ``torch.nn.functional.conv1d``: x (N, C, L) or (C, L), weight (O, C/groups, k)."""
    return _apply(Conv1dFn, x, weight, bias, 2, stride=stride, padding=padding, dilation=dilation, groups=groups)


# ---------------------------------------------------------------------------------------------- Modules
class _ConvNd(Module):
    _dims = 2
    _fn: type[Function] = Conv2dFn

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, dtype: Any = DEFAULT_DTYPE,
                 padding_mode: str = "zeros") -> None:
        owner, n = type(self).__name__, self._dims
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
        groups = _check_groups(groups, owner)
        if in_channels % groups:
            raise ValueError(f"{owner}: in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups:
            raise ValueError(f"{owner}: out_channels ({out_channels}) must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise NotImplementedError(f"{owner}: only padding_mode='zeros' is implemented, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), groups
        self.kernel_size = _ints(kernel_size, n, "kernel_size", owner)
        self.stride = _ints(stride, n, "stride", owner)
        self.dilation = _ints(dilation, n, "dilation", owner)
        _padding(padding, self.kernel_size, self.stride, self.dilation, owner)  # validate now, as PyTorch
        self.padding = padding if isinstance(padding, str) else _ints(padding, n, "padding", owner, minimum=0)
        self.padding_mode = padding_mode
        self.weight = Parameter(np.empty((out_channels, in_channels // groups, *self.kernel_size), dtype=dtype))
        self.bias = Parameter(np.empty(out_channels, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # NOTE: PyTorch's kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        # fan_in = in_channels/groups * prod(kernel_size); the bias uses the same bound.
        kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = int(np.prod(self.weight.data.shape[1:]))
            bound = 1.0 / math.sqrt(fan_in)
            uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return _apply(self._fn, x, self.weight, self.bias, self._dims + 1, stride=self.stride,
                      padding=self.padding, dilation=self.dilation, groups=self.groups)

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Conv (strides, pads, incl. ``"same"``/``"valid"``, dilations, group)."""
        n = self._dims
        g.need_batched(n + 2, "(N, C, L)" if n == 1 else "(N, C, H, W)")
        pads = _padding(self.padding, self.kernel_size, self.stride, self.dilation, type(self).__name__)
        inputs = [x, g.weight(self.weight.data, "weight")]
        if self.bias is not None:
            inputs.append(g.weight(self.bias.data, "bias"))
        return g.node("Conv", inputs, kernel_shape=list(self.kernel_size), strides=list(self.stride),
                      dilations=list(self.dilation), pads=[p[0] for p in pads] + [p[1] for p in pads],
                      group=self.groups)

    def extra_repr(self) -> str:
        n = self._dims
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * n:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * n:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


def _conv_weights(kw: dict[str, Any], dims: int) -> int:
    kernel = kw["kernel_size"]
    kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,) * dims
    return kw["out_channels"] * (kw["in_channels"] // max(kw.get("groups", 1), 1)) * math.prod(kernel)


_CONV_ARGS = {
    "in_channels": SIZE, "out_channels": SIZE, "kernel_size": int_arg(1, required=True),
    "stride": int_arg(1), "padding": int_arg(0, allow_str=("same", "valid")),
    "dilation": int_arg(1), "groups": Arg(int, check=lambda v: small_int(v, 1), expect="an integer >= 1"),
    "bias": Arg(bool, get=lambda m: m.bias is not None),
}


@layer_type(_CONV_ARGS, examples=[
    Example(lambda: Conv2d(2, 4, 3, padding=1), (2, 2, 5, 5), lambda T: T.nn.Conv2d(2, 4, 3, padding=1)),
    Example(lambda: Conv2d(4, 2, (2, 3), stride=2, dilation=(1, 2), groups=2, bias=False), (2, 4, 7, 8),
            lambda T: T.nn.Conv2d(4, 2, (2, 3), stride=2, dilation=(1, 2), groups=2, bias=False), "strided groups"),
    Example(lambda: Conv2d(2, 3, 2, padding="same"), (1, 2, 4, 5), lambda T: T.nn.Conv2d(2, 3, 2, padding="same"),
            "same"),
], min_weights=lambda kw: _conv_weights(kw, 2))
class Conv2d(_ConvNd):
    """2-D convolution layer, as ``torch.nn.Conv2d``: weight (out, in/groups, kh, kw), bias (out,).

    Initialised like PyTorch: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    fan_in = in_channels/groups * kh * kw, drawn from ``backprop``'s global generator (``bp.manual_seed``).
    """

    _dims = 2
    _fn = Conv2dFn


@layer_type(_CONV_ARGS, examples=[
    Example(lambda: Conv1d(2, 3, 3, stride=2, padding=1), (2, 2, 7), lambda T: T.nn.Conv1d(2, 3, 3, stride=2, padding=1)),
], min_weights=lambda kw: _conv_weights(kw, 1))
class Conv1d(_ConvNd):
    """1-D convolution layer, as ``torch.nn.Conv1d``: weight (out, in/groups, k), bias (out,)."""

    _dims = 1
    _fn = Conv1dFn
