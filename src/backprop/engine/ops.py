"""The primitives: each op's forward and its vector-Jacobian product side by side, so the chain rule is visible.

Every class computes ``out = f(inputs)`` in ``forward`` and, in ``backward``, turns dL/d(out) into
dL/d(input) for each input. Broadcasting is undone in one place, :func:`unbroadcast`. Everything else in
backprop (mean, losses, layers) is composed from these, so its gradient comes for free. Each class is
registered with its test cases (:mod:`backprop.engine.registry`); the Tensor methods in
:mod:`backprop.engine.tensor` (``x.exp()``, ``a + b``) call ``apply`` on these classes.

>>> import backprop as bp
>>> x = bp.tensor([0.5, -1.0], requires_grad=True)
>>> Exp.apply(x).sum().backward()       # d/dx sum(exp(x)) = exp(x)
>>> bool(np.allclose(x.grad, np.exp(x.data)))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from backprop.engine import elementwise_kernels, kernels
from backprop.engine.function import Function, unbroadcast
from backprop.engine.registry import Case, binary, cases, register, sample, unary

Axis = int | tuple[int, ...] | None


# ------------------------------------------------------------------------------------ binary, broadcasting
@register(binary(lambda a, b: a + b, lambda T, a, b: a + b, name="add"))
class Add(Function):
    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        return a + b

    def backward(self, g):  # d(a+b)/da = 1, d(a+b)/db = 1
        return unbroadcast(g, self.a_shape), unbroadcast(g, self.b_shape)


@register(binary(lambda a, b: a - b, lambda T, a, b: a - b, name="sub"))
class Sub(Function):
    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        return a - b

    def backward(self, g):  # d(a-b)/da = 1, d(a-b)/db = -1
        return unbroadcast(g, self.a_shape), (unbroadcast(-g, self.b_shape) if self.needs_grad[1] else None)


@register(binary(lambda a, b: a * b, lambda T, a, b: a * b, name="mul"))
class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):  # d(ab)/da = b, d(ab)/db = a
        ga = unbroadcast(g * self.b, self.a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(g * self.a, self.b.shape) if self.needs_grad[1] else None
        return ga, gb


@register(binary(lambda a, b: a / b, lambda T, a, b: a / b, domains=("real", "nonzero"), name="div"))
class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        a, b = self.a, self.b
        ga = unbroadcast(g / b, a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if self.needs_grad[1] else None
        return ga, gb


@register(binary(lambda a, b: a**b, lambda T, a, b: a**b, domains=("positive", "real"), name="pow"))
class Pow(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a**b
        return self.out

    def backward(self, g):  # d(a^b)/da = b a^(b-1), d(a^b)/db = a^b ln a
        a, b = self.a, self.b
        ga = unbroadcast(g * b * a ** (b - 1), a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(g * self.out * np.log(a), b.shape) if self.needs_grad[1] else None
        return ga, gb


@register(binary(lambda a, b: a.maximum(b), lambda T, a, b: T.maximum(a, b), name="maximum"))
class Maximum(Function):
    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        self.mask = a >= b  # NOTE: ties send the gradient to a (PyTorch splits it; ties have measure zero)
        return np.maximum(a, b)

    def backward(self, g):
        zero = np.zeros((), dtype=g.dtype)
        ga = unbroadcast(np.where(self.mask, g, zero), self.a_shape) if self.needs_grad[0] else None
        gb = unbroadcast(np.where(self.mask, zero, g), self.b_shape) if self.needs_grad[1] else None
        return ga, gb


@register(binary(lambda a, b: a.minimum(b), lambda T, a, b: T.minimum(a, b), name="minimum"))
class Minimum(Function):
    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        self.mask = a <= b
        return np.minimum(a, b)

    def backward(self, g):
        zero = np.zeros((), dtype=g.dtype)
        ga = unbroadcast(np.where(self.mask, g, zero), self.a_shape) if self.needs_grad[0] else None
        gb = unbroadcast(np.where(self.mask, zero, g), self.b_shape) if self.needs_grad[1] else None
        return ga, gb


def _matmul_cases() -> list[Case]:
    shapes = [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((5, 2, 3), (3, 4)), ((2, 1, 2, 3), (4, 3, 2))]
    return [
        Case(f"matmul{a}@{b}", lambda x, y: x @ y, [sample(a, seed=1), sample(b, seed=2)], lambda T, x, y: x @ y)
        for a, b in shapes
    ]


@register(cases(*_matmul_cases()))
class MatMul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        try:
            return a @ b
        except ValueError:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} are not aligned: the last dimension of the first "
                f"({a.shape[-1] if a.ndim else 'scalar'}) must equal the "
                f"{'first' if b.ndim == 1 else 'second-to-last'} dimension of the second "
                f"({(b.shape[0] if b.ndim == 1 else b.shape[-2]) if b.ndim else 'scalar'})"
            ) from None

    def backward(self, g):  # C = AB: dA = G B^T, dB = A^T G (with 1-D operands promoted to matrices)
        a, b = self.a, self.b
        if a.ndim == 2 and b.ndim == 2:
            return (g @ b.T if self.needs_grad[0] else None), (a.T @ g if self.needs_grad[1] else None)
        if a.ndim == 1 and b.ndim == 1:  # dot product: d(a.b)/da = b
            return (g * b if self.needs_grad[0] else None), (g * a if self.needs_grad[1] else None)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        ga = gb = None
        if self.needs_grad[0]:
            ga = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


# ------------------------------------------------------------------------------------------------- unary
@register(unary(lambda x: -x, lambda T, x: -x, name="neg"))
class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


@register(unary(lambda x: x.exp(), lambda T, x: x.exp(), name="exp"))
class Exp(Function):
    def forward(self, x):
        self.out = np.exp(x)
        return self.out

    def backward(self, g):  # d e^x = e^x
        return g * self.out


@register(unary(lambda x: x.log(), lambda T, x: x.log(), domain="positive", name="log"))
class Log(Function):
    def forward(self, x):
        self.x = x
        return np.log(x)

    def backward(self, g):  # d ln x = 1/x
        return g / self.x


@register(unary(lambda x: x.sqrt(), lambda T, x: x.sqrt(), domain="positive", name="sqrt"))
class Sqrt(Function):
    def forward(self, x):
        self.out = np.sqrt(x)
        return self.out

    def backward(self, g):  # d sqrt(x) = 1 / (2 sqrt(x))
        return g / (2 * self.out)


@register(unary(lambda x: x.abs(), lambda T, x: x.abs(), domain="nonzero", name="abs"))
class Abs(Function):
    def forward(self, x):
        self.x = x
        return np.abs(x)

    def backward(self, g):  # d|x| = sign(x)  (0 at 0, as PyTorch)
        return g * np.sign(self.x)


@register(unary(lambda x: x.relu(), lambda T, x: x.relu(), domain="nonzero", name="relu"))
class ReLU(Function):
    @staticmethod
    def kernel_forward(x):
        bounds = _two_parts(x)
        if bounds is not None:
            out = np.empty_like(x)
            elementwise_kernels.relu(x.reshape(-1), out.reshape(-1), bounds)
            return out, out
        out = np.maximum(x, 0)
        return out, out

    @staticmethod
    def kernel_backward(out, g, needs):  # d max(x,0) = 1 where x > 0, else 0
        bounds = _two_parts(out)  # NOTE: its size check first: the common case costs one comparison
        if bounds is not None and g.dtype == out.dtype and g.flags.c_contiguous and g.shape == out.shape:
            dx = np.empty_like(out)
            elementwise_kernels.relu_grad(out.reshape(-1), g.reshape(-1), dx.reshape(-1), bounds)
            return dx
        return g * (out > 0)


# Fewest elements in each of two parts of a compiled elementwise kernel run at once: NumPy's single thread
# takes ~20 us for 64k float32 ReLUs, a parallel region starts in ~2 us.
_PARTS_MIN_ELEMENTS = 1 << 16


def _two_parts(x: np.ndarray) -> np.ndarray | None:
    """The bounds of two halves of x for a compiled elementwise kernel (:mod:`backprop.engine.elementwise_kernels`),
    or None where NumPy's one thread does it: small, not C-contiguous float32, no budget of two threads (an
    eager step: :func:`backprop.engine.kernels.parallel_allowed`), or no ``numba`` extra."""
    if x.size < 2 * _PARTS_MIN_ELEMENTS or x.dtype != np.float32 or not x.flags.c_contiguous \
            or not kernels.parallel_allowed() or not kernels.enabled(x.dtype) or not elementwise_kernels.ready():
        return None  # NOTE: the cheap checks first: no numba import where one part would run anyway
    bounds = kernels.parallel_bounds(x.size, _PARTS_MIN_ELEMENTS)
    return bounds if bounds.size > 2 else None


@register(unary(lambda x: x.leaky_relu(0.1), lambda T, x: T.nn.functional.leaky_relu(x, 0.1), domain="nonzero",
                name="leaky_relu"))
class LeakyReLU(Function):
    def forward(self, x, negative_slope=0.01):
        self.slope = np.where(x > 0, 1.0, negative_slope).astype(x.dtype)
        return x * self.slope

    def backward(self, g):
        return g * self.slope


@register(unary(lambda x: x.sigmoid(), lambda T, x: x.sigmoid(), name="sigmoid"))
class Sigmoid(Function):
    @staticmethod
    def kernel_forward(x):
        # NOTE: exp(-|x|) is at most 1, so neither branch overflows for any x (e.g. +-1e4).
        e = np.exp(-np.abs(x))
        out = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return out, out

    @staticmethod
    def kernel_backward(s, g, needs):  # s' = s (1 - s)
        return g * s * (1 - s)


@register(unary(lambda x: x.tanh(), lambda T, x: x.tanh(), name="tanh"))
class Tanh(Function):
    @staticmethod
    def kernel_forward(x):
        out = np.tanh(x)
        return out, out

    @staticmethod
    def kernel_backward(out, g, needs):  # tanh' = 1 - tanh^2
        return g * (1 - out * out)


# NOTE: scipy.special.erf is imported by the first exact GELU, not with backprop: importing scipy.special
# takes about 150 ms (as long as the rest of `import backprop`), which every program would pay for one op.
_erf: Callable[[np.ndarray], np.ndarray] | None = None


def _import_erf() -> Callable[[np.ndarray], np.ndarray]:
    """``scipy.special.erf``, imported once and kept in ``_erf``."""
    global _erf
    from scipy.special import erf

    _erf = erf
    return erf


@register(unary(lambda x: x.gelu(), lambda T, x: T.nn.functional.gelu(x), name="gelu"))
class GELU(Function):
    def forward(self, x, approximate="none"):
        self.x, self.approximate = x, approximate
        if approximate == "tanh":
            self.t = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
            return 0.5 * x * (1 + self.t)
        erf = _erf if _erf is not None else _import_erf()
        self.cdf = 0.5 * (1 + erf(x * (1 / math.sqrt(2))))
        return x * self.cdf

    def backward(self, g):  # x Phi(x): Phi(x) + x phi(x)
        x = self.x
        if self.approximate == "tanh":
            t = self.t
            dt = (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
            return g * (0.5 * (1 + t) + 0.5 * x * dt)
        pdf = np.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return g * (self.cdf + x * pdf)


@register(cases(
    Case("clip(-0.5,0.7)", lambda x: x.clip(-0.5, 0.7), [sample((2, 3), "nonzero")],
         lambda T, x: x.clamp(-0.5, 0.7)),
    Case("clip(None,0.3)", lambda x: x.clip(None, 0.3), [sample((3,), "nonzero", seed=3)],
         lambda T, x: x.clamp(None, 0.3)),
    Case("clip scalar", lambda x: x.clip(-1.0, 1.0), [np.array(0.4)], lambda T, x: x.clamp(-1.0, 1.0)),
))
class Clip(Function):
    def forward(self, x, lo=None, hi=None):
        self.inside = np.ones(x.shape, dtype=bool)
        if lo is not None:
            self.inside &= x >= lo
        if hi is not None:
            self.inside &= x <= hi
        return np.clip(x, lo, hi)

    def backward(self, g):  # 1 inside [lo, hi], 0 where clipped
        return g * self.inside


@register(cases(
    Case("cast", lambda x: Cast.apply(x, dtype=np.dtype(np.float64)), [sample((2, 3))], lambda T, x: x.double()),
))
class Cast(Function):
    def forward(self, x, dtype=np.float32):
        self.dtype = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return g.astype(self.dtype)


# ------------------------------------------------------------------------------- softmax family (stable)
def _axis_cases(name: str, fn, torch_fn, domain: str = "real") -> list[Case]:
    out = []
    for shape, ax in [((3,), 0), ((2, 3), -1), ((2, 3), 0), ((2, 3, 4), 1)]:

        def ours(x, ax=ax):
            return fn(x, ax)

        def theirs(T, x, ax=ax):
            return torch_fn(T, x, ax)

        out.append(Case(f"{name}(axis={ax}){shape}", ours, [sample(shape, domain, seed=4)], theirs))
    return out


@register(cases(*_axis_cases("softmax", lambda x, a: x.softmax(a), lambda T, x, a: x.softmax(a))))
class Softmax(Function):
    def forward(self, x, axis=-1):
        self.axis = axis
        e = np.exp(x - x.max(axis=axis, keepdims=True))  # NOTE: shifting by the max keeps exp <= 1
        self.out = e / e.sum(axis=axis, keepdims=True)
        return self.out

    def backward(self, g):  # J^T g = s * (g - <g, s>)
        s = self.out
        return s * (g - (g * s).sum(axis=self.axis, keepdims=True))


@register(cases(*_axis_cases("log_softmax", lambda x, a: x.log_softmax(a), lambda T, x, a: x.log_softmax(a))))
class LogSoftmax(Function):
    def forward(self, x, axis=-1):
        self.axis = axis
        z = x - x.max(axis=axis, keepdims=True)
        self.out = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
        return self.out

    def backward(self, g):  # d log_softmax: g - softmax * sum(g)
        return g - np.exp(self.out) * g.sum(axis=self.axis, keepdims=True)


@register(cases(
    *_axis_cases("logsumexp", lambda x, a: x.logsumexp(a), lambda T, x, a: x.logsumexp(a)),
    Case("logsumexp(keepdims)", lambda x: x.logsumexp(1, keepdims=True), [sample((2, 3))],
         lambda T, x: x.logsumexp(1, keepdim=True)),
    Case("logsumexp(all)", lambda x: x.logsumexp(), [sample((2, 3))], lambda T, x: x.logsumexp((0, 1))),
))
class LogSumExp(Function):
    def forward(self, x, axis=None, keepdims=False):
        m = x.max(axis=axis, keepdims=True)
        if not np.all(np.isfinite(m)):
            m = np.where(np.isfinite(m), m, 0)
        e = np.exp(x - m)
        s = e.sum(axis=axis, keepdims=True)
        self.softmax = e / s
        out = np.log(s) + m
        self.axis, self.keepdims = axis, keepdims
        return out if keepdims else np.squeeze(out, axis=axis)

    def backward(self, g):  # d logsumexp = softmax
        if not self.keepdims:
            g = _expand(g, self.axis, self.softmax.ndim)
        return g * self.softmax


# ------------------------------------------------------------------------------------------- reductions
def _expand(g: np.ndarray, axis: Axis, ndim: int) -> np.ndarray:
    """Re-insert the axes a reduction without keepdims removed, so ``g`` broadcasts against the input."""
    if axis is None:
        return g.reshape((1,) * ndim)
    axes = (axis,) if isinstance(axis, int) else axis
    return np.expand_dims(g, tuple(a % ndim for a in axes))


def _reduce_cases(name: str, method: str, torch_method: str) -> list[Case]:
    out = []
    for shape, kw, tkw in [
        ((), {}, {}),
        ((3,), {}, {}),
        ((2, 3), {}, {}),
        ((2, 3), {"axis": 1}, {"dim": 1}),
        ((2, 3), {"axis": 0, "keepdims": True}, {"dim": 0, "keepdim": True}),
        ((2, 3, 4), {"axis": (0, 2)}, {"dim": (0, 2)}),
        ((2, 3, 4), {"axis": -1, "keepdims": True}, {"dim": -1, "keepdim": True}),
    ]:
        if torch_method in ("amax", "amin") and not tkw:
            tkw = {"dim": tuple(range(len(shape)))}

        def fn(x, kw=kw):
            return getattr(x, method)(**kw)

        def tfn(T, x, tkw=tkw):
            return getattr(x, torch_method)(**tkw)

        out.append(Case(f"{name}{shape}{kw}", fn, [sample(shape, seed=5)], tfn))
    return out


@register(cases(*_reduce_cases("sum", "sum", "sum"), *_reduce_cases("mean", "mean", "mean")))
class Sum(Function):
    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):  # every input element contributed once: spread g back over the reduced axes
        if not self.keepdims:
            g = _expand(g, self.axis, len(self.shape))
        return np.broadcast_to(g, self.shape)


class _Extremum(Function):
    """max/min over axes; the gradient goes to the extreme elements (shared equally between ties)."""

    reduce = staticmethod(np.max)

    def forward(self, x, axis=None, keepdims=False):
        out = self.reduce(x, axis=axis, keepdims=True)
        self.mask = x == out
        self.axis, self.keepdims = axis, keepdims
        return out if keepdims else np.squeeze(out, axis=axis)

    def backward(self, g):
        if not self.keepdims:
            g = _expand(g, self.axis, self.mask.ndim)
        count = self.mask.sum(axis=self.axis, keepdims=True)
        return self.mask * (g / count).astype(g.dtype)


@register(cases(*_reduce_cases("max", "max", "amax")))
class Max(_Extremum):
    reduce = staticmethod(np.max)


@register(cases(*_reduce_cases("min", "min", "amin")))
class Min(_Extremum):
    reduce = staticmethod(np.min)


# --------------------------------------------------------------------------------------- shape and index
@register(cases(
    Case("reshape(3,2)", lambda x: x.reshape(3, 2), [sample((2, 3))], lambda T, x: x.reshape(3, 2)),
    Case("reshape(-1)", lambda x: x.reshape(-1), [sample((2, 3))], lambda T, x: x.reshape(-1)),
    Case("reshape(()->(1,1))", lambda x: x.reshape(1, 1), [sample(())], lambda T, x: x.reshape(1, 1)),
))
class Reshape(Function):
    def forward(self, x, shape=()):
        self.in_shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return g.reshape(self.in_shape)


@register(cases(
    Case("T", lambda x: x.T, [sample((2, 3))], lambda T, x: x.T),
    Case("transpose(1,2,0)", lambda x: x.transpose(1, 2, 0), [sample((2, 3, 4))], lambda T, x: x.permute(1, 2, 0)),
    Case("transpose()", lambda x: x.transpose(), [sample(())], lambda T, x: x),
))
class Transpose(Function):
    def forward(self, x, axes=None):
        self.axes = axes
        return np.transpose(x, axes)

    def backward(self, g):
        return np.transpose(g, None if self.axes is None else np.argsort(self.axes))


@register(cases(
    Case("[1:3]", lambda x: x[1:3], [sample((4,))], lambda T, x: x[1:3]),
    Case("[:, 1]", lambda x: x[:, 1], [sample((2, 3))], lambda T, x: x[:, 1]),
    Case("[[0,2,0]]", lambda x: x[np.array([0, 2, 0])], [sample((3, 2))], lambda T, x: x[T.tensor([0, 2, 0])]),
    Case("[rows, cols]", lambda x: x[np.array([0, 1, 1]), np.array([2, 0, 2])], [sample((2, 3))],
         lambda T, x: x[T.tensor([0, 1, 1]), T.tensor([2, 0, 2])]),
    Case("[bool]", lambda x: x[np.array([True, False, True])], [sample((3,))],
         lambda T, x: x[T.tensor([True, False, True])]),
    Case("[..., None]", lambda x: x[..., None], [sample((2,))], lambda T, x: x[..., None]),
))
class GetItem(Function):
    def forward(self, x, index=None):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, g):  # scatter g back; np.add.at sums repeated integer indices
        out = np.zeros(self.shape, dtype=self.dtype)
        if _is_basic_index(self.index):
            out[self.index] = g
        else:
            np.add.at(out, self.index, g)
        return out


def _is_basic_index(index: Any) -> bool:
    """True for ints, slices, None and Ellipsis only (views, no repeated elements)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice)) for i in items)


def _cat_case(label, fn, shapes, torch_fn):
    return Case(label, fn, [sample(s, seed=i) for i, s in enumerate(shapes)], torch_fn)


@register(cases(
    _cat_case("concatenate(axis=0)", lambda a, b: Concatenate.apply(a, b), [(2, 3), (1, 3)],
              lambda T, a, b: T.cat([a, b])),
    _cat_case("concatenate(axis=1)", lambda a, b, c: Concatenate.apply(a, b, c, axis=1), [(2, 1), (2, 3), (2, 2)],
              lambda T, a, b, c: T.cat([a, b, c], 1)),
))
class Concatenate(Function):
    def forward(self, *xs, axis=0):
        self.axis = axis
        self.splits = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return np.concatenate(xs, axis=axis)

    def backward(self, g):
        return tuple(np.split(g, self.splits, axis=self.axis))


@register(cases(
    _cat_case("stack(axis=0)", lambda a, b: Stack.apply(a, b), [(2, 3), (2, 3)], lambda T, a, b: T.stack([a, b])),
    _cat_case("stack(axis=-1)", lambda a, b, c: Stack.apply(a, b, c, axis=-1), [(3,), (3,), (3,)],
              lambda T, a, b, c: T.stack([a, b, c], -1)),
    _cat_case("stack scalars", lambda a, b: Stack.apply(a, b), [(), ()], lambda T, a, b: T.stack([a, b])),
))
class Stack(Function):
    def forward(self, *xs, axis=0):
        self.axis = axis
        return np.stack(xs, axis=axis)

    def backward(self, g):
        return tuple(np.moveaxis(g, self.axis, 0))


_COND = np.array([[True, False, True], [False, False, True]])


@register(cases(
    Case("where", lambda a, b: Where.apply(a, b, condition=_COND), [sample((2, 3)), sample((2, 3), seed=1)],
         lambda T, a, b: T.where(T.tensor(_COND), a, b)),
    Case("where broadcast", lambda a, b: Where.apply(a, b, condition=_COND), [sample((1, 3)), sample((), seed=1)],
         lambda T, a, b: T.where(T.tensor(_COND), a, b)),
))
class Where(Function):
    def forward(self, a, b, condition=None):
        self.cond, self.a_shape, self.b_shape = condition, a.shape, b.shape
        return np.where(condition, a, b)

    def backward(self, g):
        zero = np.zeros((), dtype=g.dtype)
        ga = unbroadcast(np.where(self.cond, g, zero), self.a_shape) if self.needs_grad[0] else None
        gb = unbroadcast(np.where(self.cond, zero, g), self.b_shape) if self.needs_grad[1] else None
        return ga, gb
