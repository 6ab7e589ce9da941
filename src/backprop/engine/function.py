"""The base of every primitive: :class:`Function`, and the switch that says whether to record the graph.

A primitive is a small :class:`Function` with a ``forward`` (NumPy in, NumPy out) and a ``backward`` (the
vector-Jacobian product: the gradient of the output in, one gradient per input out). ``Function.apply``
runs ``forward`` and, when gradients are wanted, links the output Tensor to the Function and the Function
to its input Tensors; ``Tensor.backward`` walks those links back (see :mod:`backprop.engine.tensor`).

The engine's modules import each other in one direction only: this module (no backprop imports) <-
:mod:`~backprop.engine.ops` (the primitives) <- :mod:`~backprop.engine.tensor` (``Tensor``, whose methods
call the primitives) <- :mod:`~backprop.engine.functional` (``backprop.exp(x)`` and the others).

>>> import backprop as bp
>>> x = bp.tensor([1.0, 2.0], requires_grad=True)
>>> with no_grad():
...     y = x * 3
>>> y.requires_grad, is_grad_enabled()
(False, True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Function", "enable_grad", "is_grad_enabled", "no_grad", "replayable", "unbroadcast"]

_new_object = object.__new__  # NOTE: a module global: cheaper than looking up Tensor.__new__ on every op

# NOTE: a module global, not a thread-local or an attribute lookup: Function.apply reads it on every op and
# this is the cheapest read Python offers. `no_grad` flips it.
_grad_enabled = True

# NOTE: the recorder of a step being captured (backprop.engine.capture), else None. Like _grad_enabled a
# module global, read once per op; nothing else of capturing costs anything when no step is being captured.
_recorder: Any = None


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


def replayable(fn: Callable) -> Callable:
    """Mark ``fn`` as one event of a captured step: ``Tensor.backward``, an optimizer's ``step`` and
    ``zero_grad``, gradient clipping. While a step is being captured (:mod:`backprop.engine.capture`)
    the call is recorded, with its arguments, and replayed as a whole; otherwise it runs as it is.

    >>> @replayable
    ... def double(x):
    ...     return 2 * x
    >>> double(3)
    6
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _recorder is None:
            return fn(*args, **kwargs)
        return _recorder.call(fn, args, kwargs)

    wrapper.__replayable__ = fn  # type: ignore[attr-defined]
    return wrapper


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

    parents: tuple[Any, ...] | None  # the input Tensors (None once backward has released this Function)
    needs_grad: tuple[bool, ...]
    retains: bool = False  # set by Tensor.retain_grad on the Function that made that tensor

    # NOTE: an op may instead be written as two plain functions (staticmethods), which a captured step
    # (backprop.engine.capture) calls directly, without making an instance or setting attributes:
    #   kernel_forward(*arrays, **kwargs) -> (out, saved)      kernel_backward(saved, g, needs_grad) -> grads
    # forward and backward below then use them, so the eager and the captured step share one arithmetic.
    kernel_forward: Callable[..., tuple[np.ndarray, Any]] | None = None
    kernel_backward: Callable[[Any, np.ndarray, tuple[bool, ...]], Any] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> np.ndarray:
        if self.kernel_forward is None:
            raise NotImplementedError
        out, self.saved = self.kernel_forward(*args, **kwargs)
        return out

    def backward(self, grad: np.ndarray) -> Any:
        if self.kernel_backward is None:
            raise NotImplementedError
        return self.kernel_backward(self.saved, grad, self.needs_grad)

    @classmethod
    def apply(cls, *parents: Any, **kwargs: Any) -> Any:
        """Run forward on the parents' (Tensors') data; link the result into the graph if any parent needs a gradient."""
        ctx = cls()
        # NOTE: the result's class is read from the first input (Tensor._result_type, which is Tensor, also
        # for a Parameter) instead of importing Tensor: tensor.py imports the primitives, which import this.
        out = _new_object(parents[0]._result_type)
        data = ctx.forward(*[p.data for p in parents], **kwargs)
        # NOTE: NumPy returns scalars (np.float32) from operations on 0-d arrays; keep .data an ndarray
        out.data = data if type(data) is np.ndarray else np.asarray(data)
        out.grad = None
        out.requires_grad = False
        out._ctx = None
        if _grad_enabled:
            needs = tuple([p.requires_grad for p in parents])
            if True in needs:
                ctx.parents = parents
                ctx.needs_grad = needs
                out.requires_grad = True
                out._ctx = ctx
        if _recorder is not None:
            _recorder.op(ctx, parents, kwargs, out)
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
