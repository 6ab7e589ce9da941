"""The autograd engine: Tensor, the primitives, gradcheck."""

from backprop.engine import ops
from backprop.engine.gradcheck import gradcheck
from backprop.engine.ops import (
    abs, add, argmax, argmin, clip, concatenate, div, exp, gelu, leaky_relu, log, log_softmax, logsumexp,
    matmul, max, maximum, mean, min, minimum, mul, neg, pow, relu, reshape, sigmoid, softmax, sqrt, stack,
    sub, sum, tanh, transpose, where,
)
from backprop.engine.registry import REGISTRY, register
from backprop.engine.tensor import (
    DEFAULT_DTYPE, Function, Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad, tensor, unbroadcast,
)

__all__ = [
    "DEFAULT_DTYPE", "Function", "REGISTRY", "Tensor", "abs", "add", "argmax", "argmin", "as_tensor", "clip",
    "concatenate", "div", "enable_grad", "exp", "gelu", "gradcheck", "is_grad_enabled", "leaky_relu", "log",
    "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "min", "minimum", "mul", "neg", "no_grad",
    "ops", "pow", "register", "relu", "reshape", "sigmoid", "softmax", "sqrt", "stack", "sub", "sum", "tanh",
    "tensor", "transpose", "unbroadcast", "where",
]
