"""Padding as in PyTorch: ``pad`` (``torch.nn.functional.pad``) and the padding layers (``nn.ZeroPad2d``...).

``pad(x, pad, mode, value)`` takes ``pad`` as (left, right) pairs starting from the **last** dimension:
``(1, 2)`` pads the last dimension with 1 before and 2 after, ``(1, 2, 3, 4)`` also the one before it with
3 and 4. A negative amount crops instead. The modes:

* ``"constant"``: ``value`` around the input; any number of dimensions, of any input;
* ``"reflect"``: the input mirrored at its edges without repeating them (``[1, 2, 3]`` padded by 2 on the
  left: ``[3, 2, 1, 2, 3]``); each amount must be smaller than the dimension it pads;
* ``"replicate"``: the edge element repeated (``[1, 1, 1, 2, 3]``);
* ``"circular"``: the input wrapped around (``[2, 3, 1, 2, 3]``); at most one whole turn.

As in PyTorch, the last three pad the last 1, 2 or 3 dimensions of a batched or unbatched input: a
(C, W) or (N, C, W) input for one (left, right) pair, (C, H, W) or (N, C, H, W) for two, (C, D, H, W) or
(N, C, D, H, W) for three.

Each padded dimension is an index map from output positions to input positions, which is a few
contiguous runs: the copy of the input itself, a mirrored run on each side (reflect), one repeated edge
element (replicate), a wrapped run (circular). Forward copies run by run and backward adds the gradient
of each run back onto the positions it was read from, so positions read several times (edges, mirrored
elements) accumulate every gradient that reaches them. The work is a few slice copies per dimension,
however large the input: Python loops over runs, never over elements.

The layers (``ZeroPad1d/2d/3d``, ``ConstantPad1d/2d/3d``, ``ReflectionPad1d/2d/3d``,
``ReplicationPad1d/2d/3d``) keep PyTorch's names and their ``padding`` attribute; they export to ONNX
as ``Pad`` (modes constant, reflect, edge) and save and load like every layer. PyTorch's ``CircularPad``
layers are not provided: ``pad(x, p, mode="circular")`` covers them.

>>> import backprop as bp
>>> x = bp.tensor([[1.0, 2.0, 3.0]])
>>> pad(x, (2, 1), mode="reflect").tolist()
[[3.0, 2.0, 1.0, 2.0, 3.0, 2.0]]
>>> pad(x, (2, -1), value=9.0).tolist()       # a negative amount crops
[[9.0, 9.0, 1.0, 2.0]]
>>> ZeroPad2d(1)(bp.tensor(np.ones((1, 1, 1, 1)))).shape
(1, 1, 3, 3)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import Function, Tensor, as_tensor
from backprop.nn.contract import OnnxGraph
from backprop.nn.module import Module
from backprop.nn.registry import Arg, Example, layer_type, small_int

__all__ = [
    "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "Pad", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
    "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "pad",
]

MODES = ("constant", "reflect", "replicate", "circular")

# One run of an index map along one axis: output positions [dst, dst + length) read input positions
# src, src + step, ... (step 1: a copy, -1: a mirrored copy, 0: one element repeated).
_Run = tuple[int, int, int, int]  # (dst, length, src, step)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _as_pad(pad: Any) -> tuple[int, ...]:
    """``pad`` as a tuple of Python ints; TypeError for anything else (PyTorch: a tuple of ints)."""
    if not isinstance(pad, (tuple, list)):
        raise TypeError(f"pad: pad must be a tuple of ints ((left, right) pairs from the last dimension), got "
                        f"{type(pad).__name__}")
    for i, v in enumerate(pad):
        if not _is_int(v):
            raise TypeError(f"pad: pad must be a tuple of ints, got {type(v).__name__} {v!r} at position {i}")
    return tuple(int(v) for v in pad)


def _runs(mode: str, n: int, left: int, right: int) -> tuple[_Run, ...]:
    """The runs of one axis of size ``n`` padded by (``left``, ``right``), validated amounts.

    reflect and replicate: output position i reads the input at j = i - left mapped into [0, n) (mirrored
    or clamped), PyTorch's rule, which also defines negative amounts (pad, then crop). circular: the crop
    comes first, then the cropped input wraps around (PyTorch's rule too).
    """
    if mode == "circular":
        c0 = max(-left, 0)
        m = n + min(left, 0) + min(right, 0)
        lo, hi = max(left, 0), max(right, 0)
        return tuple(r for r in ((0, lo, c0 + m - lo, 1), (lo, m, c0, 1), (lo + m, hi, c0, 1)) if r[1] > 0)
    a, b = -left, n - 1 + right  # the first and last j
    runs: list[_Run] = []
    if a <= -1:  # j < 0
        length = min(b, -1) - a + 1
        runs.append((0, length, -a, -1) if mode == "reflect" else (0, length, 0, 0))
    lo, hi = max(a, 0), min(b, n - 1)
    if lo <= hi:  # the input itself
        runs.append((lo - a, hi - lo + 1, lo, 1))
    if b >= n:  # j > n - 1
        lo = max(a, n)
        length = b - lo + 1
        runs.append((lo - a, length, 2 * (n - 1) - lo, -1) if mode == "reflect" else (lo - a, length, n - 1, 0))
    return tuple(runs)


@functools.lru_cache(maxsize=512)
def _geometry(shape: tuple[int, ...], pad: tuple[int, ...], mode: str, has_value: bool) -> tuple[Any, ...]:
    """Check ``pad`` against the input ``shape`` (PyTorch's rules, clearer errors) and return the output
    shape and, per padded axis, either the (source, destination) slices of a constant pad or the runs.

    NOTE: cached: a captured step (or any training loop) pads the same shapes every step.
    """
    if mode not in MODES:
        raise ValueError(f"pad: mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if len(pad) % 2:
        raise ValueError(f"pad: pad must hold (left, right) pairs from the last dimension, so an even number of "
                         f"values; got {len(pad)}: {pad}")
    k, ndim = len(pad) // 2, len(shape)
    if k > ndim:
        raise ValueError(f"pad: {len(pad)} values pad {k} dimensions, but the input has only {ndim} (shape {shape}); "
                         f"pad may hold at most 2 * ndim = {2 * ndim} values")
    if mode != "constant":
        if has_value:
            raise ValueError(f"pad: mode {mode!r} takes no fill value (value is for mode 'constant')")
        if not 1 <= k <= 3:
            raise ValueError(f"pad: mode {mode!r} pads the last 1, 2 or 3 dimensions (2, 4 or 6 values), got "
                             f"{len(pad)} values (only mode 'constant' pads any number of dimensions)")
        if ndim not in (k + 1, k + 2):
            raise ValueError(f"pad: mode {mode!r} with {len(pad)} values pads the last {k} dimension"
                             f"{'s' if k > 1 else ''} of a batched or unbatched input, so it needs a {k + 1}-D or "
                             f"{k + 2}-D input; got a {ndim}-D input (shape {shape})")
        first = 1 if ndim == k + 2 else 0  # NOTE: only a batch dimension may be empty (PyTorch's rule)
        if mode != "circular" and 0 in shape[first:]:
            raise ValueError(f"pad: mode {mode!r} needs non-empty dimensions (only the batch dimension may be 0), "
                             f"got shape {shape}")
    out = list(shape)
    axes: list[tuple[int, Any]] = []
    for i in range(k):
        axis = ndim - 1 - i
        n, left, right = shape[axis], pad[2 * i], pad[2 * i + 1]
        where = f"padding ({left}, {right}) of dimension {axis} (size {n}, shape {shape})"
        kept = n + min(left, 0) + min(right, 0)  # what is left of the input after cropping
        size = n + left + right
        if mode in ("constant", "circular") and kept < 0:
            raise ValueError(f"pad: {where} crops {-min(left, 0) - min(right, 0)} elements, more than the {n} there are")
        if size < 0:
            raise ValueError(f"pad: {where} gives a negative size {size}")
        if size == 0 and mode in ("reflect", "replicate"):  # NOTE: PyTorch's "input is too small" error
            raise ValueError(f"pad: {where} leaves nothing, and mode {mode!r} needs an output size of at least 1")
        if mode == "reflect" and max(left, right) >= n:
            raise ValueError(f"pad: reflect padding must be smaller than the dimension it pads: {where}")
        if mode == "circular" and max(left, right) > kept:
            raise ValueError(f"pad: circular padding may wrap around at most once, so at most the size of the "
                             f"dimension it pads (after cropping: {kept}): {where}")
        out[axis] = size
        if mode == "constant":
            src = slice(max(-left, 0), max(-left, 0) + kept)
            dst = slice(max(left, 0), max(left, 0) + kept)
            axes.append((axis, n, (src, dst)))
        else:
            axes.append((axis, n, _runs(mode, n, left, right)))
    return tuple(out), tuple(axes)


def _take(x: np.ndarray, axis: int, start: int, length: int, step: int) -> np.ndarray:
    """``x``'s run along ``axis``: ``length`` elements from ``start`` by ``step`` (0: repeated), a view."""
    index: list[Any] = [slice(None)] * x.ndim
    if step == 0:
        index[axis] = slice(start, start + 1)  # broadcasts over the run
    elif step == 1:
        index[axis] = slice(start, start + length)
    else:  # NOTE: stop None when the mirrored run ends at element 0 (stop -1 would mean the end)
        index[axis] = slice(start, start - length if start - length >= 0 else None, -1)
    return x[tuple(index)]


def _span(ndim: int, axis: int, s: slice) -> tuple[Any, ...]:
    return (slice(None),) * axis + (s,)


def _pad_forward(x: np.ndarray, pad: tuple[int, ...] = (), mode: str = "constant",
                 value: float = 0.0) -> tuple[np.ndarray, Any]:
    in_shape = x.shape
    out_shape, axes = _geometry(in_shape, _as_pad(pad), mode, bool(value))
    if mode == "constant":
        out = np.full(out_shape, value, dtype=x.dtype)
        src = [slice(None)] * x.ndim
        dst = [slice(None)] * x.ndim
        for axis, _, (s, d) in axes:
            src[axis], dst[axis] = s, d
        out[tuple(dst)] = x[tuple(src)]
        return out, (in_shape, mode, axes)
    for axis, _, runs in axes:  # one axis at a time: a few slice copies each
        shape = list(x.shape)
        shape[axis] = out_shape[axis]
        y = np.empty(shape, dtype=x.dtype)
        for dst, length, src, step in runs:
            y[_span(y.ndim, axis, slice(dst, dst + length))] = _take(x, axis, src, length, step)
        x = y
    return x, (in_shape, mode, axes)


def _pad_backward(saved: Any, g: np.ndarray, needs: tuple[bool, ...]) -> np.ndarray:
    shape, mode, axes = saved
    if mode == "constant":  # the gradient of the copied part; the fill and the cropped part get none
        dx = np.zeros(shape, dtype=g.dtype)
        src = [slice(None)] * g.ndim
        dst = [slice(None)] * g.ndim
        for axis, _, (s, d) in axes:
            src[axis], dst[axis] = s, d
        dx[tuple(src)] = g[tuple(dst)]
        return dx
    for axis, n, runs in reversed(axes):  # each axis undone, in the reverse order of the forward
        gshape = list(g.shape)
        gshape[axis] = n
        dx = np.zeros(gshape, dtype=g.dtype)
        for dst, length, src, step in runs:
            part = g[_span(g.ndim, axis, slice(dst, dst + length))]
            if step == 0:  # one element read `length` times: it receives the sum
                dx[_span(g.ndim, axis, slice(src, src + 1))] += part.sum(axis=axis, keepdims=True)
            else:  # distinct positions within a run, so += adds each gradient once
                _take(dx, axis, src, length, step)[...] += part
        g = dx
    return g


def _pad_case(mode: str, shape: tuple[int, ...], p: tuple[int, ...], value: float = 0.0, seed: int = 0) -> Case:
    def ours(x: Tensor) -> Tensor:
        return pad(x, p, mode, value)

    def theirs(T: Any, x: Any) -> Any:
        return T.nn.functional.pad(x, p, mode=mode, value=value if mode == "constant" else None)

    return Case(f"{mode} {shape} {p}" + (f" value={value}" if value else ""), ours, [sample(shape, seed=seed)], theirs)


@register(cases(
    _pad_case("constant", (2, 3, 4), (1, 2)),
    _pad_case("constant", (5,), (2, 0), value=0.5),
    _pad_case("constant", (2, 3, 4), (1, -1, -2, 2, 0, 1), value=-1.5, seed=1),
    _pad_case("constant", (2, 3), (-1, -1, 1, 0), seed=2),
    _pad_case("reflect", (2, 3, 5), (2, 1)),
    _pad_case("reflect", (1, 2, 4, 5), (2, 1, -1, 3), seed=3),
    _pad_case("reflect", (1, 2, 3, 4, 4), (1, 2, 2, 1, 1, 0), seed=4),
    _pad_case("reflect", (3, 4), (-2, 3), seed=5),
    _pad_case("replicate", (2, 3, 4), (3, -1)),
    _pad_case("replicate", (2, 3, 4), (1, 2, 5, 1), seed=6),
    _pad_case("replicate", (1, 2, 3, 3, 3), (1, 1, 0, 2, -1, 4), seed=7),
    _pad_case("circular", (2, 3, 5), (2, 3)),
    _pad_case("circular", (1, 2, 4, 5), (-1, 2, 1, 1), seed=8),
    _pad_case("circular", (1, 1, 3, 3, 4), (1, 1, 1, 1, 1, 1), seed=9),
))
class Pad(Function):
    """``pad``'s primitive: the input padded (or cropped); backward sums each output's gradient back onto
    the input position it was read from."""

    kernel_forward = staticmethod(_pad_forward)
    kernel_backward = staticmethod(_pad_backward)


def pad(input: Any, pad: Sequence[int], mode: str = "constant", value: float | None = 0.0) -> Tensor:
    """``input`` padded as ``torch.nn.functional.pad``: ``pad`` holds (left, right) pairs from the last dimension.

    ``mode``: ``"constant"`` (``value``; any number of dimensions), ``"reflect"``, ``"replicate"`` or
    ``"circular"`` (the last 1-3 dimensions of a batched or unbatched input, no ``value``). Negative amounts
    crop. Differentiable with respect to ``input``. Arguments PyTorch refuses raise ValueError (TypeError
    for a ``pad`` that is not a tuple of ints) saying what is wrong.

    >>> import backprop as bp
    >>> x = bp.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    >>> y = pad(x, (2, 2), mode="replicate")
    >>> y.tolist()
    [[1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]]
    >>> y.sum().backward(); x.grad.tolist()       # the edges were read three times each
    [[3.0, 1.0, 3.0]]
    >>> pad(x, (3, 0), mode="reflect")
    Traceback (most recent call last):
    ...
    ValueError: pad: reflect padding must be smaller than the dimension it pads: padding (3, 0) of dimension 1 (size 3, shape (1, 3))
    """
    if not isinstance(mode, str):
        raise TypeError(f"pad: mode must be a string, one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return Pad.apply(as_tensor(input), pad=_as_pad(pad), mode=str(mode), value=0.0 if value is None else value)


# ------------------------------------------------------------------------------------------------ layers
def _padding(padding: Any, dims: int, owner: str) -> tuple[int, ...]:
    """PyTorch's ``padding`` argument: an int (every side) or ``2 * dims`` ints, (left, right) from the last dimension."""
    if _is_int(padding):
        return (int(padding),) * (2 * dims)
    if isinstance(padding, (tuple, list)) and len(padding) == 2 * dims and all(_is_int(v) for v in padding):
        return tuple(int(v) for v in padding)
    raise ValueError(f"{owner}: padding must be an int or a tuple of {2 * dims} ints ((left, right) pairs from the "
                     f"last dimension), got {padding!r}")


def _padding_arg(dims: int) -> Arg:
    """The saved form of ``padding``: always the list of ``2 * dims`` ints (an int given is expanded)."""
    n = 2 * dims
    return Arg(list, check=lambda v: len(v) == n and all(small_int(i, -(1 << 20)) for i in v),
               expect=f"a list of {n} integers in [-2**20, 2**20]", get=lambda m: list(m.padding), required=True)


# NOTE: ONNX Pad's mode for each of ours; PyTorch's "replicate" is ONNX's "edge"
_ONNX_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}
_INT64_MAX = np.iinfo(np.int64).max


class _PadNd(Module):
    """A padding layer: ``pad(x, self.padding, mode, value)`` over the last ``dims`` dimensions."""

    mode: ClassVar[str] = "constant"
    dims: ClassVar[int] = 1

    def __init__(self, padding: Any, value: float = 0.0) -> None:
        self.padding = _padding(padding, self.dims, type(self).__name__)
        self.value = float(value)

    def forward(self, x: Tensor) -> Tensor:
        return pad(x, self.padding, self.mode, self.value)

    def extra_repr(self) -> str:
        return f"{self.padding}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Pad (mode constant, reflect or edge) by the positive amounts, then Slice off the negative ones
        (PyTorch's order: reflect and replicate read the input as padded before cropping)."""
        rank = len(g.in_shape)
        if rank < self.dims + 1:
            raise g.error(f"it pads {self.dims} dimension(s), which needs a batched input of at least "
                          f"{self.dims + 1} dimensions; got example shape {g.in_shape}")
        begin, end = [0] * rank, [0] * rank
        for i in range(self.dims):
            begin[rank - 1 - i], end[rank - 1 - i] = self.padding[2 * i], self.padding[2 * i + 1]
        if any(v > 0 for v in (*begin, *end)):
            pads = [max(v, 0) for v in (*begin, *end)]
            inputs = [x, g.const(pads, dtype=np.int64)]
            if self.mode == "constant":
                inputs.append(g.const(self.value))
            x = g.node("Pad", inputs, mode=_ONNX_MODES[self.mode])
        axes = [a for a in range(rank) if begin[a] < 0 or end[a] < 0]
        if axes:
            starts = [max(-begin[a], 0) for a in axes]
            stops = [end[a] if end[a] < 0 else _INT64_MAX for a in axes]
            x = g.node("Slice", [x, g.const(starts, dtype=np.int64), g.const(stops, dtype=np.int64),
                                 g.const(axes, dtype=np.int64)])
        return x


class _ConstantPadNd(_PadNd):
    def __init__(self, padding: Any, value: float) -> None:
        super().__init__(padding, value)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class _ZeroPadNd(_PadNd):
    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)


class _ReflectionPadNd(_PadNd):
    mode = "reflect"

    def __init__(self, padding: Any) -> None:
        super().__init__(padding)


class _ReplicationPadNd(_PadNd):
    mode = "replicate"

    def __init__(self, padding: Any) -> None:
        super().__init__(padding)


def _example(make: Any, shape: tuple[int, ...], torch_name: str, *args: Any, label: str = "") -> Example:
    return Example(make, shape, lambda T: getattr(T.nn, torch_name)(*args), label)


_VALUE = Arg(float, required=True)


@layer_type({"padding": _padding_arg(1)}, examples=[
    _example(lambda: ZeroPad1d((1, 2)), (2, 3, 4), "ZeroPad1d", (1, 2)),
])
class ZeroPad1d(_ZeroPadNd):
    """Zeros around the last dimension, as ``torch.nn.ZeroPad1d``: ``padding`` int or (left, right)."""

    dims = 1


@layer_type({"padding": _padding_arg(2)}, examples=[
    _example(lambda: ZeroPad2d(1), (2, 3, 4, 4), "ZeroPad2d", 1),
    _example(lambda: ZeroPad2d((1, -1, 2, 0)), (2, 2, 3, 4), "ZeroPad2d", (1, -1, 2, 0), label="crop"),
])
class ZeroPad2d(_ZeroPadNd):
    """Zeros around the last two dimensions, as ``torch.nn.ZeroPad2d``: int or (left, right, top, bottom)."""

    dims = 2


@layer_type({"padding": _padding_arg(3)}, examples=[
    _example(lambda: ZeroPad3d((1, 0, 0, 2, 1, 1)), (1, 2, 2, 3, 3), "ZeroPad3d", (1, 0, 0, 2, 1, 1)),
])
class ZeroPad3d(_ZeroPadNd):
    """Zeros around the last three dimensions, as ``torch.nn.ZeroPad3d``: int or 6 ints from the last dimension."""

    dims = 3


@layer_type({"padding": _padding_arg(1), "value": _VALUE}, examples=[
    _example(lambda: ConstantPad1d(2, 3.5), (2, 3, 4), "ConstantPad1d", 2, 3.5),
])
class ConstantPad1d(_ConstantPadNd):
    """``value`` around the last dimension, as ``torch.nn.ConstantPad1d``."""

    dims = 1


@layer_type({"padding": _padding_arg(2), "value": _VALUE}, examples=[
    _example(lambda: ConstantPad2d((1, -1, 2, 0), 1.5), (2, 2, 4, 4), "ConstantPad2d", (1, -1, 2, 0), 1.5),
])
class ConstantPad2d(_ConstantPadNd):
    """``value`` around the last two dimensions, as ``torch.nn.ConstantPad2d``."""

    dims = 2


@layer_type({"padding": _padding_arg(3), "value": _VALUE}, examples=[
    _example(lambda: ConstantPad3d(1, -0.5), (1, 2, 2, 3, 3), "ConstantPad3d", 1, -0.5),
])
class ConstantPad3d(_ConstantPadNd):
    """``value`` around the last three dimensions, as ``torch.nn.ConstantPad3d``."""

    dims = 3


@layer_type({"padding": _padding_arg(1)}, examples=[
    _example(lambda: ReflectionPad1d(2), (2, 3, 5), "ReflectionPad1d", 2),
    _example(lambda: ReflectionPad1d((3, -1)), (2, 3, 5), "ReflectionPad1d", (3, -1), label="crop"),
])
class ReflectionPad1d(_ReflectionPadNd):
    """The input mirrored at the ends of its last dimension, as ``torch.nn.ReflectionPad1d`` ((C, W) or (N, C, W))."""

    dims = 1


@layer_type({"padding": _padding_arg(2)}, examples=[
    _example(lambda: ReflectionPad2d((1, 2, 2, 1)), (2, 2, 4, 5), "ReflectionPad2d", (1, 2, 2, 1)),
    _example(lambda: ReflectionPad2d((-1, 2, 1, -2)), (1, 2, 4, 5), "ReflectionPad2d", (-1, 2, 1, -2), label="crop"),
])
class ReflectionPad2d(_ReflectionPadNd):
    """The input mirrored at its edges, as ``torch.nn.ReflectionPad2d`` ((C, H, W) or (N, C, H, W))."""

    dims = 2


@layer_type({"padding": _padding_arg(3)}, examples=[
    _example(lambda: ReflectionPad3d(1), (1, 2, 3, 3, 3), "ReflectionPad3d", 1),
])
class ReflectionPad3d(_ReflectionPadNd):
    """The input mirrored at its edges, as ``torch.nn.ReflectionPad3d`` ((C, D, H, W) or (N, C, D, H, W))."""

    dims = 3


@layer_type({"padding": _padding_arg(1)}, examples=[
    _example(lambda: ReplicationPad1d((3, 1)), (2, 3, 4), "ReplicationPad1d", (3, 1)),
])
class ReplicationPad1d(_ReplicationPadNd):
    """The edge elements repeated, as ``torch.nn.ReplicationPad1d`` ((C, W) or (N, C, W))."""

    dims = 1


@layer_type({"padding": _padding_arg(2)}, examples=[
    _example(lambda: ReplicationPad2d(2), (2, 2, 3, 3), "ReplicationPad2d", 2),
    _example(lambda: ReplicationPad2d((1, -1, 3, 0)), (1, 2, 3, 4), "ReplicationPad2d", (1, -1, 3, 0), label="crop"),
])
class ReplicationPad2d(_ReplicationPadNd):
    """The edge elements repeated, as ``torch.nn.ReplicationPad2d`` ((C, H, W) or (N, C, H, W))."""

    dims = 2


@layer_type({"padding": _padding_arg(3)}, examples=[
    _example(lambda: ReplicationPad3d((1, 2, 0, 1, 2, 0)), (1, 2, 2, 3, 3), "ReplicationPad3d", (1, 2, 0, 1, 2, 0)),
])
class ReplicationPad3d(_ReplicationPadNd):
    """The edge elements repeated, as ``torch.nn.ReplicationPad3d`` ((C, D, H, W) or (N, C, D, H, W))."""

    dims = 3
