"""The heart of backprop: a Tensor that remembers how it was made, and walks that record backwards.

Every differentiable operation is a small :class:`Function` with a ``forward`` (NumPy in, NumPy out) and a
``backward`` (the vector-Jacobian product: the gradient of the output in, one gradient per input out); the
primitives are in :mod:`backprop.engine.ops`. Each operator and method of :class:`Tensor` below (``a + b``,
``x.exp()``, ``x.sum(axis=1)``) is a line calling one primitive's ``Function.apply``, which runs ``forward``
and, when gradients are wanted, links the output Tensor to the Function and the Function to its input
Tensors. ``Tensor.backward`` then sorts that graph topologically (iteratively, so a chain of 100,000
operations is fine) and applies the chain rule from the output back to the leaves, summing with ``+=``
wherever a tensor was used more than once.

>>> import backprop as bp
>>> x = bp.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = (x * x).sum()          # y = x1^2 + x2^2 + x3^2
>>> y.backward()               # dy/dx = 2x
>>> x.grad
array([2., 4., 6.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backprop.engine.function import Function, enable_grad, is_grad_enabled, no_grad, replayable, unbroadcast
from backprop.engine.ops import (
    GELU,
    Abs,
    Add,
    Axis,
    Cast,
    Clip,
    Div,
    Exp,
    GetItem,
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
    Reshape,
    Sigmoid,
    Softmax,
    Sqrt,
    Sub,
    Sum,
    Tanh,
    Transpose,
)

# NOTE: Function, the grad-mode switches and unbroadcast live in backprop.engine.function (the primitives
# need them before Tensor exists); they are re-exported here, where the rest of backprop imports them from.
__all__ = [
    "DEFAULT_DTYPE", "Function", "Tensor", "as_tensor", "enable_grad", "is_grad_enabled", "no_grad", "tensor",
    "unbroadcast",
]

DEFAULT_DTYPE = np.float32


def _as_array(data: Any, dtype: Any = None) -> np.ndarray:
    """Convert array-likes to an ndarray, rejecting what cannot be a tensor (objects, strings, complex)."""
    if isinstance(data, Tensor):
        data = data.data
    try:
        # NOTE: Python floats (and lists of them) become float32, as in PyTorch; `type(...) is float`
        # because np.float64 subclasses float and must stay float64.
        if dtype is None and (type(data) is float or isinstance(data, (list, tuple))):
            arr = np.asarray(data)
            if arr.dtype == np.float64:
                arr = arr.astype(DEFAULT_DTYPE)
        else:
            arr = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot make a tensor from {type(data).__name__}: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"cannot make a tensor of dtype {arr.dtype} (from {type(data).__name__}); "
            "expected numbers: bool, integer or floating point"
        )
    return arr


class Tensor:
    """An n-dimensional array that can record the operations applied to it and differentiate them.

    ``data`` is the NumPy array, ``grad`` the gradient accumulated by ``backward`` (None until then).
    Use :func:`backprop.tensor` to build one from any array-like (it copies); ``Tensor(array)`` wraps an
    array without copying.

    >>> import backprop as bp
    >>> a = bp.tensor([[1.0, 2.0]], requires_grad=True)
    >>> (a @ a.T).item()
    5.0
    """

    __slots__ = ("__weakref__", "_ctx", "data", "grad", "requires_grad")
    _result_type: type[Tensor]  # the class of every op's result: Tensor (set below the class)
    __array_priority__ = 1000  # so ndarray + Tensor calls Tensor.__radd__ instead of broadcasting elementwise

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        arr = _as_array(data, dtype)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"only floating point tensors can require gradients, got dtype {arr.dtype}")
        self.data: np.ndarray = arr
        self.grad: np.ndarray | None = None
        self.requires_grad: bool = bool(requires_grad)
        self._ctx: Function | None = None

    # ----------------------------------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        """True for tensors made by the user (parameters, inputs), False for results of tracked ops."""
        return self._ctx is None

    @property
    def grad_fn(self) -> Function | None:
        return self._ctx

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if dtype is not None and dtype != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = ""
        if self.data.dtype != DEFAULT_DTYPE:
            extra += f", dtype={self.data.dtype}"
        if self._ctx is not None:
            extra += f", grad_fn={self._ctx!r}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        if self.grad is not None:
            extra += ",\n       grad=" + np.array2string(self.grad, separator=", ", prefix="       grad=")
        return f"tensor({body}{extra})"

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    # ------------------------------------------------------------------------------------------ utilities
    def numpy(self) -> np.ndarray:
        """The underlying array (shared, not copied)."""
        return self.data

    def item(self) -> float | int | bool:
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.data.item()

    def tolist(self) -> Any:
        return self.data.tolist()

    def detach(self) -> Tensor:
        """A tensor sharing the data but cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating point tensors can require gradients, got dtype {self.dtype}")
        self.requires_grad = requires_grad
        return self

    def zero_grad(self) -> None:
        self.grad = None

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep theirs)."""
        if self._ctx is not None:
            self._ctx.retains = True

    # ------------------------------------------------------------------------------ arithmetic operators
    # NOTE: the other operand may be a Python number or an array; _lift makes it a Tensor (numbers take
    # self's dtype, so float32 * 2.0 stays float32). Tensors are passed as they are: the common case, fast.
    def __add__(self, other: Any) -> Tensor:
        return Add.apply(self, other if isinstance(other, Tensor) else _lift(other, self))

    def __radd__(self, other: Any) -> Tensor:
        return Add.apply(_lift(other, self), self)

    def __sub__(self, other: Any) -> Tensor:
        return Sub.apply(self, other if isinstance(other, Tensor) else _lift(other, self))

    def __rsub__(self, other: Any) -> Tensor:
        return Sub.apply(_lift(other, self), self)

    def __mul__(self, other: Any) -> Tensor:
        return Mul.apply(self, other if isinstance(other, Tensor) else _lift(other, self))

    def __rmul__(self, other: Any) -> Tensor:
        return Mul.apply(_lift(other, self), self)

    def __truediv__(self, other: Any) -> Tensor:
        return Div.apply(self, other if isinstance(other, Tensor) else _lift(other, self))

    def __rtruediv__(self, other: Any) -> Tensor:
        return Div.apply(_lift(other, self), self)

    def __pow__(self, other: Any) -> Tensor:
        return Pow.apply(self, _lift(other, self))

    def __rpow__(self, other: Any) -> Tensor:
        return Pow.apply(_lift(other, self), self)

    def __matmul__(self, other: Any) -> Tensor:
        return MatMul.apply(self, other if isinstance(other, Tensor) else _lift(other, self))

    def __rmatmul__(self, other: Any) -> Tensor:
        return MatMul.apply(_lift(other, self), self)

    def __neg__(self) -> Tensor:
        return Neg.apply(self)

    def pow(self, exponent: Any) -> Tensor:
        return Pow.apply(self, _lift(exponent, self))

    def matmul(self, other: Any) -> Tensor:
        return MatMul.apply(self, _lift(other, self))

    def maximum(self, other: Any) -> Tensor:
        """Elementwise maximum with broadcasting (``np.maximum``)."""
        return Maximum.apply(self, _lift(other, self))

    def minimum(self, other: Any) -> Tensor:
        """Elementwise minimum with broadcasting (``np.minimum``)."""
        return Minimum.apply(self, _lift(other, self))

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        elif isinstance(index, list):
            index = np.asarray(index)
        return GetItem.apply(self, index=index)

    # ----------------------------------------------------------------- comparisons (no gradient, elementwise)
    def __lt__(self, other: Any) -> Tensor:
        return Tensor(np.less(self.data, _raw(other)))

    def __le__(self, other: Any) -> Tensor:
        return Tensor(np.less_equal(self.data, _raw(other)))

    def __gt__(self, other: Any) -> Tensor:
        return Tensor(np.greater(self.data, _raw(other)))

    def __ge__(self, other: Any) -> Tensor:
        return Tensor(np.greater_equal(self.data, _raw(other)))

    def __eq__(self, other: object) -> Tensor:  # type: ignore[override]
        return Tensor(np.equal(self.data, _raw(other)))

    def __ne__(self, other: object) -> Tensor:  # type: ignore[override]
        return Tensor(np.not_equal(self.data, _raw(other)))

    __hash__ = object.__hash__  # NOTE: == is elementwise (as in NumPy/PyTorch), so hashing is by identity

    # ---------------------------------------------------------------------------------------- elementwise
    def exp(self) -> Tensor:
        return Exp.apply(self)

    def log(self) -> Tensor:
        return Log.apply(self)

    def sqrt(self) -> Tensor:
        return Sqrt.apply(self)

    def abs(self) -> Tensor:
        return Abs.apply(self)

    def relu(self) -> Tensor:
        return ReLU.apply(self)

    def leaky_relu(self, negative_slope: float = 0.01) -> Tensor:
        return LeakyReLU.apply(self, negative_slope=negative_slope)

    def sigmoid(self) -> Tensor:
        return Sigmoid.apply(self)

    def tanh(self) -> Tensor:
        return Tanh.apply(self)

    def gelu(self, approximate: str = "none") -> Tensor:
        """Gaussian error linear unit, x * Phi(x) (``approximate="tanh"`` for the tanh formula)."""
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        return GELU.apply(self, approximate=approximate)

    def clip(self, min: float | None = None, max: float | None = None) -> Tensor:
        """Limit values to [min, max]; the gradient is 0 where a value was clipped."""
        # NOTE: the parameters are named min and max as in NumPy's clip and torch.clamp (callers pass them by
        # keyword); the builtins they hide are not needed in this body.
        if min is None and max is None:
            raise ValueError("clip: give at least one of min and max")
        return Clip.apply(self, lo=min, hi=max)

    clamp = clip  # PyTorch's name

    # ------------------------------------------------------------------------- softmax family (stable)
    def softmax(self, axis: int = -1) -> Tensor:
        return Softmax.apply(self, axis=axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return LogSoftmax.apply(self, axis=axis)

    def logsumexp(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return LogSumExp.apply(self, axis=axis, keepdims=keepdims)

    # ----------------------------------------------------------------------------------------- reductions
    def sum(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Composed: sum divided by the number of elements reduced."""
        s = Sum.apply(self, axis=axis, keepdims=keepdims)
        n = self.data.size / s.data.size if s.data.size else 1.0
        return s * (1.0 / n)

    def max(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return Max.apply(self, axis=axis, keepdims=keepdims)

    def min(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return Min.apply(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis: int | None = None) -> Tensor:
        """Index of the maximum (no gradient)."""
        return Tensor(np.argmax(self.data, axis=axis))

    def argmin(self, axis: int | None = None) -> Tensor:
        """Index of the minimum (no gradient)."""
        return Tensor(np.argmin(self.data, axis=axis))

    # ---------------------------------------------------------------------------------- shape and dtype
    def reshape(self, *shape: Any) -> Tensor:
        """``x.reshape(2, 3)`` or ``x.reshape((2, 3))``; -1 infers one size."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    def flatten(self, start_dim: int = 0) -> Tensor:
        return Reshape.apply(self, shape=self.data.shape[:start_dim] + (-1,))

    def transpose(self, *axes: Any) -> Tensor:
        """Reverse the axes, or permute them: ``x.transpose(1, 2, 0)`` or ``x.transpose((1, 2, 0))``."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return Transpose.apply(self, axes=axes or None)

    @property
    def T(self) -> Tensor:
        return Transpose.apply(self, axes=None)

    def astype(self, dtype: Any) -> Tensor:
        """This tensor in ``dtype`` (itself if it has that dtype already); the gradient is cast back."""
        return self if self.data.dtype == dtype else Cast.apply(self, dtype=np.dtype(dtype))

    def float(self) -> Tensor:
        return self.astype(np.float32)

    def double(self) -> Tensor:
        return self.astype(np.float64)

    # ------------------------------------------------------------------------------------------- backward
    @replayable
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Back-propagate: add d(self)/d(leaf) * grad into ``leaf.grad`` for every leaf that requires grad.

        Gradients accumulate (``+=``) across calls, as in PyTorch: call ``zero_grad`` between steps. The
        graph is released afterwards unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require grad: none of its inputs had "
                "requires_grad=True (or it was computed inside no_grad())"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a one-element tensor, this one has shape {self.shape}; "
                    "pass grad= of the same shape (or reduce it first, e.g. .sum())"
                )
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape} but the tensor has shape {self.shape}")
        if self._ctx is None:
            _accumulate_leaf(self, grad, grad)
            return

        grads: dict[int, np.ndarray] = {id(self): grad}
        for node in reversed(_toposort(self)):
            ctx = node._ctx
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if ctx.retains:  # a copy: g may be a read-only view or shared with another tensor
                node.grad = np.array(g) if node.grad is None else node.grad + g
            parent_grads = ctx.backward(g)
            parents = ctx.parents
            if len(parents) == 1:
                parent_grads = (parent_grads,)
            for p, pg in zip(parents, parent_grads):
                if pg is None or not p.requires_grad:
                    continue
                if p._ctx is None:
                    _accumulate_leaf(p, pg, g)
                else:
                    key = id(p)
                    old = grads.get(key)
                    grads[key] = pg if old is None else old + pg
            if not retain_graph:
                _release(ctx)


# NOTE: Function.apply makes each result with object.__new__(first_input._result_type): function.py cannot
# import this module (which imports the primitives, which import function.py). Set here, after the class, as
# the class cannot name itself in its body; a Parameter (a Tensor subclass) inherits it, so its results are
# plain Tensors, as in PyTorch.
Tensor._result_type = Tensor


def _accumulate_leaf(leaf: Tensor, g: np.ndarray, incoming: np.ndarray | None) -> None:
    """``leaf.grad += g``, never storing an array that another tensor or op may also hold."""
    if leaf.grad is None:
        # NOTE: an op may pass its incoming gradient straight through (Add hands the same array to both
        # inputs) or return a view (Sum's read-only broadcast_to); copy those, so a later in-place +=
        # into one .grad cannot change another. Freshly computed arrays are stored as they are.
        if (type(g) is not np.ndarray or g is incoming or g.base is not None or g.dtype != leaf.data.dtype
                or g.shape != leaf.data.shape):
            g = np.array(np.broadcast_to(g, leaf.data.shape), dtype=leaf.data.dtype)
        leaf.grad = g
    else:
        leaf.grad += g


def _release(ctx: Function) -> None:
    """Free what a Function saved for backward; a second backward through it then raises a clear error."""
    retains = ctx.retains
    ctx.__dict__.clear()
    ctx.parents = None
    if retains:
        ctx.retains = True


def _toposort(root: Tensor) -> list[Tensor]:
    """Non-leaf tensors reachable from ``root``, each after all the tensors it was computed from.

    An explicit stack replaces recursion, so depth is limited by memory, not by Python's recursion limit.
    """
    if root._ctx.parents is None:
        raise _second_backward_error()
    order: list[Tensor] = []
    seen = {id(root)}
    stack = [(root, iter(root._ctx.parents))]
    while stack:
        node, it = stack[-1]
        for p in it:
            ctx = p._ctx
            if ctx is not None and id(p) not in seen:
                if ctx.parents is None:
                    raise _second_backward_error()
                seen.add(id(p))
                stack.append((p, iter(ctx.parents)))
                break
        else:
            stack.pop()
            order.append(node)
    return order


def _second_backward_error() -> RuntimeError:
    return RuntimeError(
        "trying to backward through the graph a second time: its saved values were freed by the first "
        "backward(); recompute the forward pass, or call backward(retain_graph=True) the first time"
    )


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Build a Tensor from any array-like, copying the data (as ``torch.tensor`` does).

    Python floats become float32 (the default dtype); NumPy arrays keep their dtype.

    >>> import backprop as bp
    >>> bp.tensor([1.0, 2.0]).dtype
    dtype('float32')
    """
    arr = _as_array(data, dtype)
    if arr is data or (isinstance(data, Tensor) and arr is data.data) or arr.base is not None:
        arr = arr.copy()
    return Tensor(arr, requires_grad=requires_grad)


def as_tensor(x: Any, dtype: Any = None) -> Tensor:
    """``x`` itself if it is a Tensor, otherwise a Tensor sharing x's memory where possible (no copy)."""
    if isinstance(x, Tensor) and (dtype is None or x.dtype == dtype):
        return x
    return Tensor(x, dtype=dtype)


def _lift(x: Any, like: Tensor) -> Tensor:
    """Turn the other operand of ``like <op> x`` into a Tensor: Python numbers take ``like``'s dtype."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float, bool)) and like.data.dtype.kind == "f":
        return Tensor(np.asarray(x, dtype=like.data.dtype))
    return Tensor(x)


def _raw(x: Any) -> Any:
    """The other operand of a comparison: a Tensor's array, anything else as it is."""
    return x.data if isinstance(x, Tensor) else x


def _lift_all(xs: Sequence[Any]) -> list[Tensor]:
    first = next((x for x in xs if isinstance(x, Tensor)), None)
    if first is None:
        return [Tensor(x) for x in xs]
    return [_lift(x, first) for x in xs]
