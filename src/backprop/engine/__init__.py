"""The autograd engine: Tensor, the primitives, gradcheck.

The modules, each importing only those before it: :mod:`~backprop.engine.function` (``Function``,
``no_grad``), :mod:`~backprop.engine.ops` (the primitives), :mod:`~backprop.engine.tensor` (``Tensor``,
whose operators and methods call the primitives), :mod:`~backprop.engine.functional` (``exp(x)`` and the
other functions). Importing the engine only defines things: nothing here changes the process (malloc
tuning is :func:`backprop.engine.memory.tune_malloc`, called when training starts).

NOTE: ``sum``, ``max``, ``min``, ``abs`` and ``pow`` are not exported here, to shadow no builtins in the
engine; ``backprop/__init__.py`` binds them as ``backprop.sum`` and so on (see
:mod:`backprop.engine.functional`).

>>> import backprop as bp
>>> from backprop.engine import Tensor, exp
>>> isinstance(exp(bp.tensor([0.0])), Tensor)
True
"""

from backprop.engine import ops
from backprop.engine.function import Function, enable_grad, is_grad_enabled, no_grad, unbroadcast
from backprop.engine.functional import (
    add,
    argmax,
    argmin,
    clip,
    concatenate,
    div,
    exp,
    gelu,
    leaky_relu,
    log,
    log_softmax,
    logsumexp,
    matmul,
    maximum,
    mean,
    minimum,
    mul,
    neg,
    relu,
    reshape,
    sigmoid,
    softmax,
    sqrt,
    stack,
    sub,
    tanh,
    transpose,
    where,
)
from backprop.engine.gradcheck import gradcheck
from backprop.engine.registry import REGISTRY, register
from backprop.engine.tensor import DEFAULT_DTYPE, Tensor, as_tensor, tensor
from backprop.engine.threads import get_num_threads, set_num_threads

__all__ = [
    "DEFAULT_DTYPE",
    "REGISTRY",
    "Function",
    "Tensor",
    "add",
    "argmax",
    "argmin",
    "as_tensor",
    "clip",
    "concatenate",
    "div",
    "enable_grad",
    "exp",
    "gelu",
    "get_num_threads",
    "gradcheck",
    "is_grad_enabled",
    "leaky_relu",
    "log",
    "log_softmax",
    "logsumexp",
    "matmul",
    "maximum",
    "mean",
    "minimum",
    "mul",
    "neg",
    "no_grad",
    "ops",
    "register",
    "relu",
    "reshape",
    "set_num_threads",
    "sigmoid",
    "softmax",
    "sqrt",
    "stack",
    "sub",
    "tanh",
    "tensor",
    "transpose",
    "unbroadcast",
    "where",
]
