"""Layers: Linear and the activations, as Modules with PyTorch's names, layouts and defaults.

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> layer = bp.nn.Linear(784, 10)
>>> layer.weight.shape, layer.bias.shape        # (out_features, in_features), as in PyTorch
((10, 784), (10,))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backprop.engine import ops
from backprop.engine.functional import reshape
from backprop.engine.tensor import DEFAULT_DTYPE, Tensor
from backprop.nn import functional as F
from backprop.nn import init
from backprop.nn.module import Module, Parameter


def _positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class Linear(Module):
    """y = x W^T + b. Initialised like PyTorch: W, b ~ U(-1/sqrt(in), 1/sqrt(in)).

    Re-initialise with ``backprop.nn.init`` (e.g. ``init.kaiming_normal_(layer.weight, nonlinearity="relu")``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = DEFAULT_DTYPE) -> None:
        self.in_features = _positive_int("in_features", in_features, "Linear")
        self.out_features = _positive_int("out_features", out_features, "Linear")
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        self.bias = Parameter(np.empty(out_features, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # NOTE: PyTorch's kaiming_uniform_(a=sqrt(5)) is exactly U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(self.in_features)
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x, dtype=self.weight.data.dtype))
        if self.bias is None:
            return F.Linear.apply(x, self.weight)
        return F.Linear.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.ReLU.apply(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = float(negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.Sigmoid.apply(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.Tanh.apply(x)


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)


class Softmax(Module):
    def __init__(self, dim: int = -1) -> None:
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim: int = -1) -> None:
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Flatten(Module):
    """Flatten all dimensions from ``start_dim`` on: (N, 28, 28) -> (N, 784)."""

    def __init__(self, start_dim: int = 1) -> None:
        self.start_dim = start_dim

    def forward(self, x: Tensor) -> Tensor:
        # NOTE: the size, not -1: NumPy cannot infer -1 for an empty batch (0 rows on some MPI rank)
        return reshape(x, x.shape[: self.start_dim] + (int(np.prod(x.shape[self.start_dim:])),))


class Unflatten(Module):
    """Split dimension ``dim`` into ``unflattened_size``: (N, 784) -> (N, 1, 28, 28) with Unflatten(1, (1, 28, 28))."""

    def __init__(self, dim: int, unflattened_size: Any) -> None:
        self.dim = int(dim)
        self.unflattened_size = tuple(int(s) for s in unflattened_size)
        if (not self.unflattened_size or any(s < 1 and s != -1 for s in self.unflattened_size)
                or self.unflattened_size.count(-1) > 1):
            raise ValueError(f"Unflatten: unflattened_size must be positive sizes (one may be -1), got "
                             f"{unflattened_size!r}")

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = Tensor(x)
        d = self.dim % x.ndim
        n = x.shape[d]
        sizes = self.unflattened_size
        if -1 in sizes:  # NOTE: inferred here, not by NumPy, which cannot when another axis is 0 (empty batch)
            known = int(np.prod([s for s in sizes if s != -1]))
            sizes = tuple(n // known if s == -1 else s for s in sizes)
        if int(np.prod(sizes)) != n:
            raise ValueError(f"Unflatten: dimension {self.dim} has size {n}, which is not {self.unflattened_size}")
        return reshape(x, x.shape[:d] + sizes + x.shape[d + 1:])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class Dropout(Module):
    """Inverted dropout with probability ``p``, active only in training mode (``model.train()``)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
