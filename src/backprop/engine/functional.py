"""The functional API: ``backprop.exp(x)`` for ``x.exp()``, and the ops that take several tensors.

Each function accepts Tensors or anything array-like (NumPy arrays, lists, numbers), makes it a Tensor, and
calls the primitive (:mod:`backprop.engine.ops`) or, where arguments need handling, the Tensor method of the
same name, so the two spellings cannot drift apart. ``concatenate``, ``stack`` and ``where`` exist only here.

NOTE: sum, max, min, abs and pow are Python builtins. Defined here under those names they would shadow the
builtins in every line of this module, so they are defined as ``_sum``, ``_max``, ``_min``, ``_abs`` and
``_pow``, and only the package's re-export hub, ``backprop/__init__.py``, binds them to the public names
``backprop.sum``, ``backprop.max``, ... (as ``torch.sum``, ``torch.max``), in one explicit import.

>>> import backprop as bp
>>> x = bp.tensor([0.5, -1.0], requires_grad=True)
>>> exp(x).sum().backward()             # d/dx sum(exp(x)) = exp(x)
>>> bool(np.allclose(x.grad, np.exp(x.data)))
True
>>> bp.sum([1.0, 2.0]).item(), bp.max(bp.tensor([[1.0, 3.0]]), axis=1).tolist()
(3.0, [3.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backprop.engine.ops import (
    Abs,
    Add,
    Axis,
    Concatenate,
    Div,
    Exp,
    LeakyReLU,
    Log,
    LogSoftmax,
    LogSumExp,
    MatMul,
    Max,
    Maximum,
    Min,
    Minimum,
    Mul,
    Neg,
    Pow,
    ReLU,
    Sigmoid,
    Softmax,
    Sqrt,
    Stack,
    Sub,
    Sum,
    Tanh,
    Where,
)
from backprop.engine.tensor import Tensor, _lift_all

__all__ = [
    "add", "argmax", "argmin", "clip", "concatenate", "div", "exp", "gelu", "leaky_relu", "log",
    "log_softmax", "logsumexp", "matmul", "maximum", "mean", "minimum", "mul", "neg", "relu", "reshape",
    "sigmoid", "softmax", "sqrt", "stack", "sub", "tanh", "transpose", "where",
]


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


# ------------------------------------------------------------------- binary: either operand may be a number
def add(a: Any, b: Any) -> Tensor:
    a, b = _lift_all((a, b))
    return Add.apply(a, b)


def sub(a: Any, b: Any) -> Tensor:
    a, b = _lift_all((a, b))
    return Sub.apply(a, b)


def mul(a: Any, b: Any) -> Tensor:
    a, b = _lift_all((a, b))
    return Mul.apply(a, b)


def div(a: Any, b: Any) -> Tensor:
    a, b = _lift_all((a, b))
    return Div.apply(a, b)


def _pow(a: Any, b: Any) -> Tensor:
    """``a ** b`` (``backprop.pow``)."""
    a, b = _lift_all((a, b))
    return Pow.apply(a, b)


def matmul(a: Any, b: Any) -> Tensor:
    a, b = _lift_all((a, b))
    return MatMul.apply(a, b)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum with broadcasting (``np.maximum``)."""
    a, b = _lift_all((a, b))
    return Maximum.apply(a, b)


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise minimum with broadcasting (``np.minimum``)."""
    a, b = _lift_all((a, b))
    return Minimum.apply(a, b)


# --------------------------------------------------------------------------------------------------- unary
def neg(x: Any) -> Tensor:
    return Neg.apply(_t(x))


def exp(x: Any) -> Tensor:
    return Exp.apply(_t(x))


def log(x: Any) -> Tensor:
    return Log.apply(_t(x))


def sqrt(x: Any) -> Tensor:
    return Sqrt.apply(_t(x))


def _abs(x: Any) -> Tensor:
    """``|x|`` (``backprop.abs``)."""
    return Abs.apply(_t(x))


def relu(x: Any) -> Tensor:
    return ReLU.apply(_t(x))


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Tensor:
    return LeakyReLU.apply(_t(x), negative_slope=negative_slope)


def sigmoid(x: Any) -> Tensor:
    return Sigmoid.apply(_t(x))


def tanh(x: Any) -> Tensor:
    return Tanh.apply(_t(x))


def gelu(x: Any, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit, x * Phi(x) (``approximate="tanh"`` for the tanh formula)."""
    return _t(x).gelu(approximate)


def clip(x: Any, min: float | None = None, max: float | None = None) -> Tensor:
    """Limit values to [min, max]; the gradient is 0 where a value was clipped."""
    return _t(x).clip(min, max)


def softmax(x: Any, axis: int = -1) -> Tensor:
    return Softmax.apply(_t(x), axis=axis)


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    return LogSoftmax.apply(_t(x), axis=axis)


def logsumexp(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    return LogSumExp.apply(_t(x), axis=axis, keepdims=keepdims)


# ---------------------------------------------------------------------------------------------- reductions
def _sum(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (all axes by default) (``backprop.sum``)."""
    return Sum.apply(_t(x), axis=axis, keepdims=keepdims)


def mean(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """Composed: sum divided by the number of elements reduced."""
    return _t(x).mean(axis, keepdims)


def _max(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis`` (all axes by default); ties share the gradient (``backprop.max``)."""
    return Max.apply(_t(x), axis=axis, keepdims=keepdims)


def _min(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """Minimum over ``axis`` (all axes by default); ties share the gradient (``backprop.min``)."""
    return Min.apply(_t(x), axis=axis, keepdims=keepdims)


def argmax(x: Any, axis: int | None = None) -> Tensor:
    """Index of the maximum (no gradient)."""
    return _t(x).argmax(axis)


def argmin(x: Any, axis: int | None = None) -> Tensor:
    """Index of the minimum (no gradient)."""
    return _t(x).argmin(axis)


# ----------------------------------------------------------------------------------------- shape, joining
def reshape(x: Any, *shape: Any) -> Tensor:
    return _t(x).reshape(*shape)


def transpose(x: Any, *axes: Any) -> Tensor:
    return _t(x).transpose(*axes)


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis (``np.concatenate``)."""
    if len(tensors) == 0:
        raise ValueError("concatenate: need at least one tensor")
    return Concatenate.apply(*_lift_all(tensors), axis=axis)


def stack(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along a new axis (``np.stack``)."""
    if len(tensors) == 0:
        raise ValueError("stack: need at least one tensor")
    return Stack.apply(*_lift_all(tensors), axis=axis)


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """``a`` where condition is true, else ``b``; the condition itself gets no gradient."""
    cond = condition.data if isinstance(condition, Tensor) else np.asarray(condition)
    a, b = _lift_all((a, b))
    return Where.apply(a, b, condition=cond.astype(bool, copy=False))

