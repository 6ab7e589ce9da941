"""Pooling in PyTorch's NCHW layout: max, average and adaptive average pooling over 2-D windows.

Max and average pooling loop over the kernel *offsets*, not over samples or pixels: for offset (i, j) the
strided view ``xp[:, :, i::sh, j::sw]`` (cut to the output size) holds that element of every window of
every image at once, so a 2x2 pool is a few whole-batch NumPy operations per offset. On LeNet-5's first
pooling layer (batch 128) that was measured 8x faster than copying the windows out for ``argmax`` and
40x faster than reducing a 6-D window view (``x.reshape(N, C, H/2, 2, W/2, 2).max(axis=(3, 5))``: NumPy
reduces short strided axes element by element).

Max pooling over windows that tile the input (stride = kernel, no padding or dilation: MaxPool2d(2)) is
separable (:func:`_tiled_max`): a max along the window rows, then down the rows, 4 NumPy calls for 2x2
instead of 13 (LeNet-5's first pooling layer: 0.7 ms instead of 1.15 ms, in training 0.8 instead of
1.5); its backward writes the gradient to the chosen row, then the chosen column, in place in the input
gradient (:func:`_tiled_max_grad`).

Max pooling sends the gradient to the first maximal element of each window (row-major order), as PyTorch
does: exactly one element per window, also on ties (whole windows of 0 after a ReLU). The general path
stores that element's offset in the window (uint8 for kernels up to 16x16), not a mask; the tiled one
the first maximal column of each window row and the first row holding the maximum (booleans for 2x2),
which together name the same element. Padding is -inf for max and 0 for average pooling, as in PyTorch.
Non-overlapping windows (stride >= kernel, the common 2x2/stride-2 case) write the input gradient
directly; overlapping ones scatter-add it. With the ``numba`` extra, 2x2 tiles of float32 inputs of 64k
elements or more run compiled (:mod:`backprop.nn.pooling_kernels`: the same maxima, choices and gradients,
to the bit), in two parts of the batch at once where two threads are allowed.

>>> import backprop as bp
>>> from backprop.nn.pooling import MaxPool2d
>>> x = bp.tensor(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), requires_grad=True)
>>> y = MaxPool2d(2)(x); y.data[0, 0]      # the gradient flows back to the 5, 7, 13 and 15 of x
array([[ 5.,  7.],
       [13., 15.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np

import backprop.nn.pooling_kernels as pooling_kernels  # noqa: PLR0402 - the module, not the package backprop.nn
from backprop.engine import kernels as _kernels
from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import Function, Tensor
from backprop.nn._common import int_tuple as _ints
from backprop.nn._common import pad_images as _pad
from backprop.nn.contract import OnnxGraph
from backprop.nn.module import Module
from backprop.nn.registry import Arg, Example, int_arg, layer_type

__all__ = [
    "AdaptiveAvgPool2d", "AdaptiveAvgPool2dFn", "AvgPool2d", "AvgPool2dFn", "MaxPool2d", "MaxPool2dFn",
    "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d",
]


# ------------------------------------------------------------------------------------------- geometry
class _Geometry:
    """Window arithmetic of one pooling call (PyTorch's rules, including ceil_mode)."""

    def __init__(self, shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], ceil_mode: bool, owner: str) -> None:
        if len(shape) not in (3, 4):
            raise ValueError(f"{owner}: expected input of shape (N, C, H, W) or unbatched (C, H, W), "
                             f"got shape {shape}")
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        h, w = shape[-2:]
        out = []
        for name, n, k, s, p, d in (("height", h, kernel[0], stride[0], padding[0], dilation[0]),
                                    ("width", w, kernel[1], stride[1], padding[1], dilation[1])):
            ek = d * (k - 1) + 1
            if 2 * p > ek:
                raise ValueError(f"{owner}: padding should be at most half of the (dilated) kernel size, got "
                                 f"padding={padding}, kernel_size={kernel}, dilation={dilation}")
            span = n + 2 * p - ek
            o = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (o - 1) * s >= n + p:  # the last window must start inside the input or left padding
                o -= 1
            if span < 0 or o < 1:
                raise ValueError(f"{owner}: input {name} {n} (+ padding {2 * p}) is smaller than the "
                                 f"(dilated) kernel size {ek}: input shape {shape}, kernel_size={kernel}")
            out.append(o)
        self.out = (out[0], out[1])
        # rows/columns added after the input: the padding, plus what ceil_mode's last window reaches beyond it
        self.after = tuple(max(p, (o - 1) * s + d * (k - 1) + 1 - n - p)
                           for n, o, k, s, p, d in zip((h, w), self.out, kernel, stride, padding, dilation))
        self.in_hw = (h, w)
        # windows that never overlap: each input element is in at most one of them
        self.disjoint = all(s >= d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation))

    def pad(self, x: np.ndarray, value: float) -> np.ndarray:
        (ph, pw), (ah, aw) = self.padding, self.after
        return _pad(x, ((ph, ah), (pw, aw)), value)

    def offsets(self) -> list[tuple[int, slice, slice]]:
        """(flat offset in the window, rows, cols): the slices of the padded input under each kernel element."""
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = self.kernel, self.stride, self.dilation, self.out
        hspan, wspan = sh * (oh - 1) + 1, sw * (ow - 1) + 1
        return [(i * kw + j, slice(i * dh, i * dh + hspan, sh), slice(j * dw, j * dw + wspan, sw))
                for i in range(kh) for j in range(kw)]

    def padded_zeros(self, n: int, c: int, dtype: Any, exact: bool) -> np.ndarray:
        (ph, pw), (ah, aw), (h, w) = self.padding, self.after, self.in_hw
        shape = (n, c, ph + h + ah, pw + w + aw)
        return np.empty(shape, dtype=dtype) if exact else np.zeros(shape, dtype=dtype)

    def tiles(self) -> bool:
        """Windows without gaps, overlap, padding or dilation (stride = kernel): the input cut into tiles,
        except rows/columns past the last window."""
        return (self.kernel == self.stride and self.dilation == (1, 1) and self.padding == (0, 0)
                and self.after == (0, 0))

    def tiles_exactly(self) -> bool:
        """Windows without gaps, overlap or padding that cover the whole input (every gradient element written)."""
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = self.kernel, self.stride, self.dilation, self.out
        return (kh == sh and kw == sw and dh == dw == 1 and self.padding == (0, 0) and self.after == (0, 0)
                and oh * kh == self.in_hw[0] and ow * kw == self.in_hw[1])

    def crop(self, dxp: np.ndarray) -> np.ndarray:
        (ph, pw), (h, w) = self.padding, self.in_hw
        if dxp.shape[2:] == (h, w):
            return dxp
        return dxp[:, :, ph:ph + h, pw:pw + w]


def _as4d(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 4 else x[None]


def _pool_args(kernel_size: Any, stride: Any, padding: Any, dilation: Any, owner: str):
    kernel = _ints(kernel_size, 2, "kernel_size", owner)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _ints(stride, 2, "stride", owner)
    return kernel, stride, _ints(padding, 2, "padding", owner, minimum=0), _ints(dilation, 2, "dilation", owner)


# -------------------------------------------------------------------------------------------- max pool
def _pool_case(label: str, fn, torch_fn, shape=(2, 2, 6, 6), seed=7) -> Case:
    return Case(label, fn, [sample(shape, seed=seed)], torch_fn)


@register(cases(
    _pool_case("max 2x2", lambda x: max_pool2d(x, 2), lambda T, x: T.nn.functional.max_pool2d(x, 2)),
    _pool_case("max 2x2 odd size (cropped)", lambda x: max_pool2d(x, 2),
               lambda T, x: T.nn.functional.max_pool2d(x, 2), shape=(2, 2, 5, 7)),
    _pool_case("max 3 stride 2 pad 1", lambda x: max_pool2d(x, 3, 2, 1),
               lambda T, x: T.nn.functional.max_pool2d(x, 3, 2, 1), shape=(2, 2, 7, 6)),
    _pool_case("max (2,3) stride (1,2) overlapping", lambda x: max_pool2d(x, (2, 3), (1, 2)),
               lambda T, x: T.nn.functional.max_pool2d(x, (2, 3), (1, 2)), shape=(1, 2, 5, 7)),
    _pool_case("max 2 dilation 2 ceil_mode", lambda x: max_pool2d(x, 2, 2, dilation=2, ceil_mode=True),
               lambda T, x: T.nn.functional.max_pool2d(x, 2, 2, dilation=2, ceil_mode=True), shape=(2, 2, 6, 7)),
    _pool_case("max unbatched", lambda x: max_pool2d(x, 2), lambda T, x: T.nn.functional.max_pool2d(x, 2),
               shape=(3, 4, 4)),
))
class MaxPool2dFn(Function):
    """Max over each window; the gradient goes to the first maximal element of the window (as PyTorch)."""

    def forward(self, x, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False):
        geo = _Geometry(x.shape, *_pool_args(kernel_size, stride, padding, dilation, "max_pool2d"), ceil_mode,
                        "max_pool2d")
        x4 = _as4d(x)
        self.geo, self.shape, self.dtype = geo, x.shape, x.dtype
        if geo.tiles():  # NOTE: the separable form, see the module docstring
            compiled = _compiled(x4, geo)
            if compiled is not None:
                best, self.tiled = _tiled_max_compiled(compiled, x4, geo)
            else:
                best, self.tiled = _tiled_max(x4, geo)
            self.idx, self.compiled = None, compiled
            return best if x.ndim == 4 else best[0]
        xp = geo.pad(x4, -np.inf)
        offsets = geo.offsets()
        _, rows, cols = offsets[0]
        best = xp[:, :, rows, cols].copy()
        kk = len(offsets)
        idx = np.zeros(best.shape, dtype=np.uint8 if kk <= 256 else np.int32)
        step = np.empty(best.shape, dtype=idx.dtype)
        for off, rows, cols in offsets[1:]:
            v = xp[:, :, rows, cols]
            m = np.greater(v, best)  # strictly greater: ties keep the earlier element, as PyTorch
            np.maximum(best, v, out=best)  # (propagates NaN, as PyTorch)
            # idx < off always, so "off where m, else idx" is max(idx, m*off): no slow masked assignment
            np.multiply(m, off, out=step, dtype=idx.dtype)
            np.maximum(idx, step, out=idx)
        self.idx = idx
        return best if x.ndim == 4 else best[0]

    def backward(self, g):
        geo, idx = self.geo, self.idx
        g4 = _as4d(g)
        if idx is None:
            if self.compiled is not None and g4.dtype == self.dtype:
                dx = _tiled_max_grad_compiled(self.compiled, g4, *self.tiled, geo, self.dtype)
            else:
                dx = _tiled_max_grad(g4, *self.tiled, geo, self.dtype)
            return dx if len(self.shape) == 4 else dx[0]
        n, c = idx.shape[:2]
        exact = geo.tiles_exactly()
        dxp = geo.padded_zeros(n, c, self.dtype, exact)
        for off, rows, cols in geo.offsets():
            if geo.disjoint:  # each input element under at most one window: write, do not add
                np.multiply(g4, idx == off, out=dxp[:, :, rows, cols])
            else:
                dxp[:, :, rows, cols] += g4 * (idx == off)
        dx = geo.crop(dxp)
        return dx if len(self.shape) == 4 else dx[0]


def _windows6(a: np.ndarray, geo: _Geometry) -> np.ndarray:
    """The (N, C, OH, kh, OW, kw) view of tiling windows (rows/columns past the last window left out)."""
    (kh, kw), (oh, ow) = geo.kernel, geo.out
    n, c = a.shape[:2]
    return a[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)


def _first_max(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise max of ``parts`` and the index of the first part that reaches it (bool for two parts)."""
    best = np.maximum(parts[0], parts[1])  # (propagates NaN, as PyTorch)
    arg = np.greater(parts[1], parts[0])  # strictly: a tie keeps the earlier element, as PyTorch
    if len(parts) > 2:
        arg = arg.astype(np.uint8 if len(parts) <= 256 else np.int32)
        step = np.empty(arg.shape, dtype=arg.dtype)
        for k in range(2, len(parts)):
            m = np.greater(parts[k], best)
            np.maximum(best, parts[k], out=best)
            np.multiply(m, k, out=step, dtype=arg.dtype)  # arg < k, so "k where m" is max(arg, m*k)
            np.maximum(arg, step, out=arg)
    return best, arg


def _tiled_max(x4: np.ndarray, geo: _Geometry) -> tuple[np.ndarray, tuple[Any, Any]]:
    """Max pooling of windows that tile the input (stride = kernel, no padding or dilation), separably:
    (the maxima, (the chosen row of each window, the chosen column of each window row)), each None for a
    kernel one element long that way.

    First along each window row (kw strided reads of the whole input, each one long loop: NumPy merges
    the window rows into one stride), keeping the first maximal column of each window row; then down the
    kh row maxima (contiguous rows), keeping the first row holding the window's maximum. That row and its
    first maximal column are the window's first maximal element in row-major order: PyTorch's choice on
    ties (whole windows of 0 after a ReLU). NOTE: down the rows first would read contiguous rows, but
    would find the first maximum in column-major order; the row-major one then takes more calls than that
    saves.
    """
    (kh, kw) = geo.kernel
    xv = _windows6(x4, geo)
    if kw == 1:
        h, cols = xv[..., 0], None
    else:
        h, cols = _first_max([xv[..., j] for j in range(kw)])  # (N, C, OH, kh, OW)
    if kh == 1:
        best, rows = np.array(h[:, :, :, 0]), None
    else:
        best, rows = _first_max([h[:, :, :, i] for i in range(kh)])  # (N, C, OH, OW)
    return best, (rows, cols)


def _tiled_max_grad(g4: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None, geo: _Geometry,
                    dtype: Any) -> np.ndarray:
    """Input gradient of :func:`_tiled_max`: g to the chosen row of each window, then to its chosen column.

    Both steps write into the input gradient itself: g, masked by row, goes to column 0 of every window
    row; then column j (j > 0) is that times "column j chosen", and column 0 is masked last, in place.
    NOTE: no (N, C, OH, kh, OW) temporary for the first step (as fast in isolation, and one array less to
    go out to memory); and no window offsets (one uint8 per window, the general path's backward): making
    them from the booleans cost more than that backward saves (first layer 1.6 vs 1.4 ms for both ways).
    """
    (kh, kw), (h, w) = geo.kernel, geo.in_hw
    n, c = g4.shape[:2]
    exact = geo.tiles_exactly()
    dx = np.empty((n, c, h, w), dtype=dtype) if exact else np.zeros((n, c, h, w), dtype=dtype)
    dv = _windows6(dx, geo)  # (N, C, OH, kh, OW, kw)
    first = dv[..., 0]  # (N, C, OH, kh, OW)
    if kh == 1:
        np.copyto(first[:, :, :, 0], g4)
    elif kh == 2:
        np.multiply(g4, ~rows, out=first[:, :, :, 0])
        np.multiply(g4, rows, out=first[:, :, :, 1])
    else:
        for i in range(kh):
            np.multiply(g4, rows == i, out=first[:, :, :, i])
    if kw == 1:
        return dx
    if kw == 2:
        np.multiply(first, cols, out=dv[..., 1])
        np.multiply(first, ~cols, out=first)
        return dx
    for j in range(1, kw):
        np.multiply(first, cols == j, out=dv[..., j])
    np.multiply(first, cols == 0, out=first)
    return dx


# Fewest images in each of two parts of a compiled pooling kernel run at once (~8 us an image on LeNet-5's
# first pooling layer; a parallel region starts in ~2 us).
_PARTS_MIN_IMAGES = 4
# Fewest input elements for the compiled kernel: below, the NumPy form takes ~20 us or less, and a process
# that only pools such inputs need not import numba (~0.5 s, 60 MB).
_COMPILED_MIN_SIZE = 1 << 16


def _compiled(x4: np.ndarray, geo: _Geometry) -> Any:
    """The compiled 2x2 tiled max pooling (:mod:`backprop.nn.pooling_kernels`) where it may run: 2x2 tiles,
    float32, an input of _COMPILED_MIN_SIZE elements or more, the ``numba`` extra
    (:func:`backprop.engine.kernels.enabled`); else None (the NumPy form, whose results are the same)."""
    if geo.kernel != (2, 2) or x4.dtype != np.float32 or x4.size < _COMPILED_MIN_SIZE \
            or not _kernels.enabled(x4.dtype) or not pooling_kernels.ready():
        return None
    return pooling_kernels


def _tiled_max_compiled(compiled: Any, x4: np.ndarray, geo: _Geometry) -> tuple[np.ndarray, tuple[Any, Any]]:
    """:func:`_tiled_max` of 2x2 tiles by the compiled kernel: the same maxima, rows and columns."""
    n, c = x4.shape[:2]
    oh, ow = geo.out
    best = np.empty((n, c, oh, ow), dtype=x4.dtype)
    rows, cols = np.empty((n, c, oh, ow), dtype=bool), np.empty((n, c, oh, 2, ow), dtype=bool)
    compiled.max2x2(np.ascontiguousarray(x4), best, rows, cols, _kernels.parallel_bounds(n, _PARTS_MIN_IMAGES))
    return best, (rows, cols)


def _tiled_max_grad_compiled(compiled: Any, g4: np.ndarray, rows: np.ndarray, cols: np.ndarray, geo: _Geometry,
                             dtype: Any) -> np.ndarray:
    """:func:`_tiled_max_grad` of 2x2 tiles by the compiled kernel."""
    n, c = g4.shape[:2]
    h, w = geo.in_hw
    dx = np.empty((n, c, h, w), dtype=dtype) if geo.tiles_exactly() else np.zeros((n, c, h, w), dtype=dtype)
    compiled.max2x2_grad(np.ascontiguousarray(g4), rows, cols, dx, _kernels.parallel_bounds(n, _PARTS_MIN_IMAGES))
    return dx


# -------------------------------------------------------------------------------------------- avg pool
@register(cases(
    _pool_case("avg 2x2", lambda x: avg_pool2d(x, 2), lambda T, x: T.nn.functional.avg_pool2d(x, 2)),
    _pool_case("avg 3 stride 2 pad 1", lambda x: avg_pool2d(x, 3, 2, 1),
               lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2, 1), shape=(2, 2, 7, 6)),
    _pool_case("avg 3 stride 2 pad 1 exclude pad", lambda x: avg_pool2d(x, 3, 2, 1, count_include_pad=False),
               lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False), shape=(2, 2, 7, 6)),
    _pool_case("avg (2,3) stride 1 overlapping", lambda x: avg_pool2d(x, (2, 3), 1),
               lambda T, x: T.nn.functional.avg_pool2d(x, (2, 3), 1), shape=(1, 2, 5, 6)),
    _pool_case("avg 2 pad 1 ceil_mode", lambda x: avg_pool2d(x, 2, 2, 1, ceil_mode=True),
               lambda T, x: T.nn.functional.avg_pool2d(x, 2, 2, 1, ceil_mode=True), shape=(2, 2, 6, 7)),
    _pool_case("avg 3 pad 1 ceil_mode exclude pad", lambda x: avg_pool2d(x, 3, 2, 1, True, False),
               lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2, 1, True, False), shape=(2, 2, 6, 7)),
    _pool_case("avg divisor_override", lambda x: avg_pool2d(x, 2, divisor_override=3),
               lambda T, x: T.nn.functional.avg_pool2d(x, 2, divisor_override=3)),
))
class AvgPool2dFn(Function):
    """Mean over each window (PyTorch's divisor rules for padding, ceil_mode and count_include_pad)."""

    def forward(self, x, kernel_size=2, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
        geo = _Geometry(x.shape, *_pool_args(kernel_size, stride, padding, 1, "avg_pool2d"), ceil_mode,
                        "avg_pool2d")
        x4 = _as4d(x)
        xp = geo.pad(x4, 0.0)
        offsets = geo.offsets()
        _, rows, cols = offsets[0]
        acc = xp[:, :, rows, cols].copy()
        for _, rows, cols in offsets[1:]:
            acc += xp[:, :, rows, cols]
        self.div = _divisor(geo, count_include_pad, divisor_override, x.dtype)
        acc /= self.div
        self.geo, self.shape, self.dtype = geo, x.shape, x.dtype
        return acc if x.ndim == 4 else acc[0]

    def backward(self, g):
        geo = self.geo
        g4 = _as4d(g) / self.div
        n, c = g4.shape[:2]
        exact = geo.tiles_exactly()
        dxp = geo.padded_zeros(n, c, self.dtype, exact)
        for _, rows, cols in geo.offsets():
            if geo.disjoint:
                dxp[:, :, rows, cols] = g4
            else:
                dxp[:, :, rows, cols] += g4
        dx = geo.crop(dxp)
        return dx if len(self.shape) == 4 else dx[0]


def _divisor(geo: _Geometry, count_include_pad: bool, divisor_override: Any, dtype: Any) -> Any:
    """PyTorch's avg_pool2d divisor: a number, or an (OH, OW) array where windows differ."""
    (kh, kw) = geo.kernel
    if divisor_override is not None:
        return np.asarray(divisor_override, dtype=dtype)
    counts = []
    for o, k, s, p, n in zip(geo.out, geo.kernel, geo.stride, geo.padding, geo.in_hw):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)  # ceil_mode's last window is cut at the padding
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        counts.append(end - start)
    div = np.outer(counts[0], counts[1]).astype(dtype)
    if np.all(div == kh * kw):
        return np.asarray(kh * kw, dtype=dtype)
    return div


# ----------------------------------------------------------------------------------- adaptive avg pool
def _adaptive_matrix(n: int, o: int, dtype: Any) -> np.ndarray:
    """(o, n) averaging matrix of PyTorch's adaptive bins [floor(i*n/o), ceil((i+1)*n/o))."""
    a = np.zeros((o, n), dtype=dtype)
    for i in range(o):  # a loop over output bins (sizes of a few), building a constant
        start, end = (i * n) // o, -(-((i + 1) * n) // o)
        a[i, start:end] = 1.0 / (end - start)
    return a


@register(cases(
    _pool_case("adaptive 1", lambda x: adaptive_avg_pool2d(x, 1),
               lambda T, x: T.nn.functional.adaptive_avg_pool2d(x, 1), shape=(2, 3, 4, 5)),
    _pool_case("adaptive (2,3) divisible", lambda x: adaptive_avg_pool2d(x, (2, 3)),
               lambda T, x: T.nn.functional.adaptive_avg_pool2d(x, (2, 3))),
    _pool_case("adaptive (4,3) from 7x5", lambda x: adaptive_avg_pool2d(x, (4, 3)),
               lambda T, x: T.nn.functional.adaptive_avg_pool2d(x, (4, 3)), shape=(2, 2, 7, 5)),
    _pool_case("adaptive (None,2) unbatched", lambda x: adaptive_avg_pool2d(x, (None, 2)),
               lambda T, x: T.nn.functional.adaptive_avg_pool2d(x, (None, 2)), shape=(2, 3, 5)),
))
class AdaptiveAvgPool2dFn(Function):
    """Average over PyTorch's adaptive bins: out = A_h @ x @ A_w^T per image (a global mean for size 1)."""

    def forward(self, x, output_size=1):
        if x.ndim not in (3, 4):
            raise ValueError(f"adaptive_avg_pool2d: expected input of shape (N, C, H, W) or unbatched "
                             f"(C, H, W), got shape {x.shape}")
        h, w = x.shape[-2:]
        oh, ow = _output_size(output_size, h, w)
        self.shape, self.global_ = x.shape, (oh, ow) == (1, 1)
        if self.global_:
            return x.mean(axis=(-2, -1), keepdims=True)
        self.ah = _adaptive_matrix(h, oh, x.dtype)
        self.aw = _adaptive_matrix(w, ow, x.dtype)
        t = (x.reshape(-1, w) @ self.aw.T).reshape(*x.shape[:-1], ow)  # average along W: one product
        return np.matmul(self.ah, t)  # then along H

    def backward(self, g):
        if self.global_:
            h, w = self.shape[-2:]
            return np.broadcast_to(g / (h * w), self.shape)
        t = np.matmul(self.ah.T, g)  # (..., H, OW)
        return (t.reshape(-1, t.shape[-1]) @ self.aw).reshape(self.shape)


def _output_size(output_size: Any, h: int, w: int) -> tuple[int, int]:
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(size) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")
    out = []
    for s, n in zip(size, (h, w)):
        if s is None:
            out.append(n)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1:
            out.append(int(s))
        else:
            raise ValueError(f"adaptive_avg_pool2d: output_size must be positive ints (or None), got {output_size!r}")
    return out[0], out[1]


# ------------------------------------------------------------------------------------------ functional
def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))


def max_pool2d(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> Tensor:
    """2-D max pooling as ``torch.nn.functional.max_pool2d`` (stride defaults to kernel_size; pads with -inf)."""
    if return_indices:
        raise NotImplementedError("max_pool2d: return_indices=True is not implemented")
    return MaxPool2dFn.apply(_t(x), kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                             ceil_mode=bool(ceil_mode))


def avg_pool2d(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """2-D average pooling as ``torch.nn.functional.avg_pool2d`` (pads with 0)."""
    if divisor_override is not None and (isinstance(divisor_override, bool) or
                                         not isinstance(divisor_override, (int, np.integer)) or divisor_override < 1):
        raise ValueError(f"avg_pool2d: divisor_override must be a positive integer, got {divisor_override!r}")
    return AvgPool2dFn.apply(_t(x), kernel_size=kernel_size, stride=stride, padding=padding,
                             ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad),
                             divisor_override=divisor_override)


def adaptive_avg_pool2d(x: Tensor, output_size: Any) -> Tensor:
    """Average pooling to a fixed output size (PyTorch's bins; any size, ``None`` keeps that dimension)."""
    return AdaptiveAvgPool2dFn.apply(_t(x), output_size=output_size)


# ---------------------------------------------------------------------------------------------- Modules
_OPTIONAL_STRIDE = Arg((int, list, type(None)), check=lambda v: v is None or int_arg(1).check(v),
                       expect="an integer >= 1, a list of them or null")


def _onnx_geometry(m: Module, g: OnnxGraph, kernel: Any, stride: Any, padding: Any, dilation: Any) -> _Geometry:
    g.need_batched(4, "(N, C, H, W)")
    return _Geometry(g.in_shape, kernel, stride, padding, dilation, bool(m.ceil_mode), type(m).__name__)


# NOTE: in ONNX, ceil_mode is written as the extra padding after the input that it implies (backprop's,
# PyTorch's rule: a last window that would start in the right padding is dropped), with ceil_mode=0 in the
# graph. ONNX's ceil_mode leaves that rule to the runtime: onnx's shape inference and onnxruntime disagree on it.
@layer_type({"kernel_size": int_arg(1, required=True), "stride": _OPTIONAL_STRIDE, "padding": int_arg(0),
             "dilation": int_arg(1), "ceil_mode": bool}, examples=[
    Example(lambda: MaxPool2d(2), (2, 3, 6, 6), lambda T: T.nn.MaxPool2d(2)),
    Example(lambda: MaxPool2d(3, 2, 1, ceil_mode=True), (1, 2, 6, 7),
            lambda T: T.nn.MaxPool2d(3, 2, 1, ceil_mode=True), "pad 1 ceil_mode"),
])
class MaxPool2d(Module):
    """Max pooling, as ``torch.nn.MaxPool2d`` (no parameters)."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode
        _pool_args(kernel_size, stride, padding, dilation, "MaxPool2d")  # validate now
        if return_indices:
            raise NotImplementedError("MaxPool2d: return_indices=True is not implemented")

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        stride = self.kernel_size if self.stride is None else self.stride
        return (f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """MaxPool (pads, dilations; ceil_mode as the extra end padding it implies)."""
        kernel, stride, padding, dilation = _pool_args(self.kernel_size, self.stride, self.padding, self.dilation,
                                                       "MaxPool2d")
        geo = _onnx_geometry(self, g, kernel, stride, padding, dilation)
        begin, end = padding, geo.after
        if any(p >= k for p, k in zip((*begin, *end), (*kernel, *kernel))):  # onnxruntime wants pads < kernel
            x = g.pad(x, begin, end, -np.inf)
            begin = end = (0, 0)
        return g.node("MaxPool", [x], kernel_shape=list(kernel), strides=list(stride), pads=[*begin, *end],
                      dilations=list(dilation), ceil_mode=0)


@layer_type({"kernel_size": int_arg(1, required=True), "stride": _OPTIONAL_STRIDE, "padding": int_arg(0),
             "ceil_mode": bool, "count_include_pad": bool, "divisor_override": Arg((int, type(None)))}, examples=[
    Example(lambda: AvgPool2d(2), (2, 3, 6, 6), lambda T: T.nn.AvgPool2d(2)),
    Example(lambda: AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (1, 2, 6, 7),
            lambda T: T.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), "exclude pad ceil_mode"),
    Example(lambda: AvgPool2d(2, divisor_override=3), (1, 2, 4, 4),
            lambda T: T.nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
])
class AvgPool2d(Module):
    """Average pooling, as ``torch.nn.AvgPool2d`` (no parameters)."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override
        _pool_args(kernel_size, stride, padding, 1, "AvgPool2d")  # validate now

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                          self.divisor_override)

    def extra_repr(self) -> str:
        stride = self.kernel_size if self.stride is None else self.stride
        return f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """AveragePool (pads, ceil_mode likewise, count_include_pad; a Pad first where the divisor needs it;
        divisor_override: AveragePool * k*k/d)."""
        kernel, stride, padding, _ = _pool_args(self.kernel_size, self.stride, self.padding, 1, "AvgPool2d")
        geo = _onnx_geometry(self, g, kernel, stride, padding, (1, 1))
        after = geo.after
        extra = tuple(a - p for a, p in zip(after, padding))  # ceil_mode's windows reaching beyond the padding
        attrs: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(stride), "ceil_mode": 0}
        if self.divisor_override is not None:  # sum / d: pad with zeros, average k*k elements everywhere, * k*k/d
            if any(padding) or any(after):
                x = g.pad(x, padding, after, 0.0)
            y = g.node("AveragePool", [x], **attrs)
            return g.node("Mul", [y, g.const(kernel[0] * kernel[1] / self.divisor_override)])
        if not any(extra):
            return g.node("AveragePool", [x], pads=[*padding, *padding],
                          count_include_pad=int(bool(self.count_include_pad)), **attrs)
        if self.count_include_pad and any(padding):  # count the padding, not what lies beyond it: pad it for real
            x = g.pad(x, padding, padding, 0.0)
            padding = (0, 0)
        return g.node("AveragePool", [x], pads=[*padding, *(p + e for p, e in zip(padding, extra))],
                      count_include_pad=0, **attrs)


@layer_type({"output_size": int_arg(1, required=True)}, examples=[
    Example(lambda: AdaptiveAvgPool2d(1), (2, 3, 4, 5), lambda T: T.nn.AdaptiveAvgPool2d(1)),
    Example(lambda: AdaptiveAvgPool2d((2, 3)), (2, 2, 6, 6), lambda T: T.nn.AdaptiveAvgPool2d((2, 3)), "(2, 3)"),
])
class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling to ``output_size``, as ``torch.nn.AdaptiveAvgPool2d``."""

    def __init__(self, output_size: Any) -> None:
        _output_size(output_size, 1, 1)  # validate now
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """GlobalAveragePool for output size 1; AveragePool when the sizes divide the input's."""
        g.need_batched(4, "(N, C, H, W)")
        h, w = g.in_shape[2:]
        oh, ow = _output_size(self.output_size, h, w)
        if (oh, ow) == (1, 1):
            return g.node("GlobalAveragePool", [x])
        if h % oh or w % ow:
            raise g.error(f"output size ({oh}, {ow}) does not divide the input size ({h}, {w}) (example shape "
                          f"{g.in_shape}); only output size 1 or sizes that divide the input map to ONNX pooling")
        k = [h // oh, w // ow]
        return g.node("AveragePool", [x], kernel_shape=k, strides=k)

