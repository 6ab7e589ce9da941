"""The heart of backprop: a Tensor that remembers how it was made, and walks that record backwards.

Every differentiable operation is a small :class:`Function` with a ``forward`` (NumPy in, NumPy out) and a
``backward`` (the vector-Jacobian product: the gradient of the output in, one gradient per input out).
``Function.apply`` runs ``forward`` and, when gradients are wanted, links the output Tensor to the Function
and the Function to its input Tensors. ``Tensor.backward`` then sorts that graph topologically (iteratively,
so a chain of 100,000 operations is fine) and applies the chain rule from the output back to the leaves,
summing with ``+=`` wherever a tensor was used more than once.

>>> import backprop as bp
>>> x = bp.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = (x * x).sum()          # y = x1^2 + x2^2 + x3^2
>>> y.backward()               # dy/dx = 2x
>>> x.grad
array([2., 4., 6.], dtype=float32)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_DTYPE = np.float32

# NOTE: a module global, not a thread-local or an attribute lookup: Function.apply reads it on every op and
# this is the cheapest read Python offers. `no_grad` flips it.
_grad_enabled = True


def is_grad_enabled() -> bool:
    """True unless inside a ``no_grad()`` block."""
    return _grad_enabled


class no_grad:
    """Context manager (and decorator) that records no graph: for evaluation and for weight updates.

    >>> import backprop as bp
    >>> w = bp.tensor([1.0], requires_grad=True)
    >>> with bp.no_grad():
    ...     y = w * 2
    >>> y.requires_grad
    False
    """

    def __enter__(self) -> None:
        global _grad_enabled
        self._prev = _grad_enabled
        _grad_enabled = False

    def __exit__(self, *exc: object) -> None:
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper


class enable_grad(no_grad):
    """The opposite of ``no_grad``: record the graph even inside a ``no_grad`` block."""

    def __enter__(self) -> None:
        global _grad_enabled
        self._prev = _grad_enabled
        _grad_enabled = True


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Undo NumPy broadcasting: sum ``grad`` down to ``shape``.

    If ``x`` of shape (1, 3) was broadcast against (2, 3), every element of ``x`` was used twice, so its
    gradient is the sum over the broadcast axis. This is the one place every binary op undoes broadcasting.

    >>> unbroadcast(np.ones((2, 3)), (1, 3))
    array([[2., 2., 2.]])
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Function:
    """One differentiable primitive: ``forward`` on NumPy arrays and its vector-Jacobian product ``backward``.

    Subclasses save what backward needs as attributes of ``self`` in ``forward``. ``backward(grad)``
    returns one gradient per input (a tuple, or a single array for one input); ``None`` where an input
    needs no gradient (``self.needs_grad[i]`` is False). It may return the incoming ``grad`` itself or a
    view of it, but never one freshly made array for two inputs. Register a subclass with
    ``backprop.engine.registry.register`` so the test suite gradient-checks it automatically.

    >>> class Square(Function):
    ...     def forward(self, x):
    ...         self.x = x
    ...         return x * x
    ...     def backward(self, grad):
    ...         return 2 * self.x * grad
    >>> import backprop as bp
    >>> x = bp.tensor(3.0, requires_grad=True)
    >>> Square.apply(x).backward(); x.grad
    array(6., dtype=float32)
    """

    parents: tuple[Tensor, ...] | None
    needs_grad: tuple[bool, ...]
    retains: bool = False  # set by Tensor.retain_grad on the Function that made that tensor

    def forward(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *parents: Tensor, **kwargs: Any) -> Tensor:
        """Run forward on the parents' data; link the result into the graph if any parent needs a gradient."""
        ctx = cls()
        out = Tensor.__new__(Tensor)
        data = ctx.forward(*[p.data for p in parents], **kwargs)
        # NOTE: NumPy returns scalars (np.float32) from operations on 0-d arrays; keep .data an ndarray
        out.data = data if type(data) is np.ndarray else np.asarray(data)
        out.grad = None
        if _grad_enabled:
            needs = tuple([p.requires_grad for p in parents])
            if True in needs:
                ctx.parents = parents
                ctx.needs_grad = needs
                out.requires_grad = True
                out._ctx = ctx
                return out
        out.requires_grad = False
        out._ctx = None
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


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

    __hash__ = object.__hash__  # NOTE: == is elementwise (as in NumPy/PyTorch), so hashing is by identity

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

    # ------------------------------------------------------------------------------------------- backward
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


def _lift_all(xs: Sequence[Any]) -> list[Tensor]:
    first = next((x for x in xs if isinstance(x, Tensor)), None)
    if first is None:
        return [Tensor(x) for x in xs]
    return [_lift(x, first) for x in xs]
