"""Layers: Linear and the activations, as Modules with PyTorch's names, layouts and defaults.

Each layer is all in one place: the class, its ``@layer_type`` registration (the constructor arguments a
model file records, and examples the tests check it with) and its ``onnx`` method (its ONNX nodes).

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

import backprop.nn.functional as F
from backprop.engine import ops
from backprop.engine.functional import reshape, stack, where
from backprop.engine.tensor import DEFAULT_DTYPE, Tensor
from backprop.nn.contract import OnnxGraph
from backprop.nn.init import uniform_
from backprop.nn.module import Module, Parameter
from backprop.nn.registry import Arg, Example, layer_type, small_int

__all__ = [
    "GELU", "Dropout", "Flatten", "Hardtanh", "Identity", "LeakyReLU", "Linear", "LogSoftmax", "ReLU", "Sigmoid",
    "Softmax", "Softplus", "Tanh", "Unflatten",
]


def _positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


@layer_type({
    "in_features": Arg(int, check=lambda v: v > 0, expect="an integer > 0", required=True),
    "out_features": Arg(int, check=lambda v: v > 0, expect="an integer > 0", required=True),
    "bias": Arg(bool, get=lambda m: m.bias is not None),
}, examples=[
    Example(lambda: Linear(3, 2), (4, 3), lambda T: T.nn.Linear(3, 2)),
    Example(lambda: Linear(3, 2, bias=False), (2, 4, 3), lambda T: T.nn.Linear(3, 2, bias=False), "3-d input"),
], min_weights=lambda kw: kw["in_features"] * kw["out_features"])
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
        uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x, dtype=self.weight.data.dtype))
        if self.bias is None:
            return F.Linear.apply(x, self.weight)
        return F.Linear.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Gemm (transB=1) on (N, in) inputs; MatMul + Add on inputs of other ranks."""
        w, b = self.weight.data, None if self.bias is None else self.bias.data
        if len(g.in_shape) == 2:
            inputs = [x, g.weight(w, "weight")]
            if b is not None:
                inputs.append(g.weight(b, "bias"))
            return g.node("Gemm", inputs, transB=1)
        y = g.node("MatMul", [x, g.weight(w.T, "weight_t")])
        return y if b is None else g.node("Add", [y, g.weight(b, "bias")])


@layer_type({}, examples=[Example(lambda: Identity(), (2, 3), lambda T: T.nn.Identity())])
class Identity(Module):
    keeps_shape = True
    input_kind = "any"

    def forward(self, x: Tensor) -> Tensor:
        return x

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Nothing."""
        return x


@layer_type({}, examples=[Example(lambda: ReLU(), (3, 4), lambda T: T.nn.ReLU())])
class ReLU(Module):
    keeps_shape = True

    def forward(self, x: Tensor) -> Tensor:
        return ops.ReLU.apply(x)

    def onnx(self, g: OnnxGraph, x: str) -> str:
        return g.node("Relu", [x])


@layer_type({"negative_slope": float},
            examples=[Example(lambda: LeakyReLU(0.2), (3, 4), lambda T: T.nn.LeakyReLU(0.2))])
class LeakyReLU(Module):
    keeps_shape = True

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = float(negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        return g.node("LeakyRelu", [x], alpha=float(self.negative_slope))


@layer_type({}, examples=[Example(lambda: Sigmoid(), (3, 4), lambda T: T.nn.Sigmoid())])
class Sigmoid(Module):
    keeps_shape = True

    def forward(self, x: Tensor) -> Tensor:
        return ops.Sigmoid.apply(x)

    def onnx(self, g: OnnxGraph, x: str) -> str:
        return g.node("Sigmoid", [x])


@layer_type({}, examples=[Example(lambda: Tanh(), (3, 4), lambda T: T.nn.Tanh())])
class Tanh(Module):
    keeps_shape = True

    def forward(self, x: Tensor) -> Tensor:
        return ops.Tanh.apply(x)

    def onnx(self, g: OnnxGraph, x: str) -> str:
        return g.node("Tanh", [x])


@layer_type({"approximate": Arg(str, check=lambda v: v in ("none", "tanh"), expect="'none' or 'tanh'")},
            examples=[Example(lambda: GELU(), (3, 4), lambda T: T.nn.GELU()),
                      Example(lambda: GELU("tanh"), (3, 4), lambda T: T.nn.GELU(approximate="tanh"), "tanh")])
class GELU(Module):
    keeps_shape = True

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Gelu (opset >= 20); below: x/2 (1 + Erf(x/sqrt 2)), or its tanh formula."""
        if g.opset >= 20:
            return g.node("Gelu", [x], approximate=self.approximate)
        if self.approximate == "tanh":  # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as backprop computes it
            cube = g.node("Mul", [g.node("Mul", [x, x]), x])
            inner = g.node("Add", [x, g.node("Mul", [cube, g.const(0.044715)])])
            t = g.node("Tanh", [g.node("Mul", [inner, g.const(math.sqrt(2 / math.pi))])])
        else:  # x/2 (1 + erf(x / sqrt 2))
            t = g.node("Erf", [g.node("Mul", [x, g.const(1 / math.sqrt(2))])])
        half = g.node("Mul", [x, g.const(0.5)])
        return g.node("Mul", [half, g.node("Add", [t, g.const(1.0)])])


def _softmax_onnx(m: Softmax | LogSoftmax, g: OnnxGraph, x: str, op: str) -> str:
    dim = m.dim
    if dim is None or isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise g.error(f"dim must be an integer, got {dim!r}")
    return g.node(op, [x], axis=int(dim))


@layer_type({"dim": int}, examples=[Example(lambda: Softmax(1), (3, 4), lambda T: T.nn.Softmax(dim=1))])
class Softmax(Module):
    keeps_shape = True

    def __init__(self, dim: int = -1) -> None:
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        return _softmax_onnx(self, g, x, "Softmax")


@layer_type({"dim": int}, examples=[Example(lambda: LogSoftmax(), (2, 3, 4), lambda T: T.nn.LogSoftmax(dim=-1))])
class LogSoftmax(Module):
    keeps_shape = True

    def __init__(self, dim: int = -1) -> None:
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        return _softmax_onnx(self, g, x, "LogSoftmax")


@layer_type({"start_dim": int}, examples=[
    Example(lambda: Flatten(), (2, 3, 4), lambda T: T.nn.Flatten()),
    Example(lambda: Flatten(2), (2, 3, 4, 5), lambda T: T.nn.Flatten(2), "start_dim 2"),
])
class Flatten(Module):
    """Flatten all dimensions from ``start_dim`` on: (N, 28, 28) -> (N, 784)."""

    def __init__(self, start_dim: int = 1) -> None:
        self.start_dim = start_dim

    def forward(self, x: Tensor) -> Tensor:
        # NOTE: the size, not -1: NumPy cannot infer -1 for an empty batch (0 rows on some MPI rank)
        return reshape(x, x.shape[: self.start_dim] + (int(np.prod(x.shape[self.start_dim:])),))

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Flatten from dimension 1; other start dimensions Reshape to the example's output shape."""
        rank = len(g.in_shape)
        start = self.start_dim % rank if rank else 0
        if start == 1:
            return g.node("Flatten", [x], axis=1)
        return g.reshape_to_output(x, keeps_batch=start >= 1)


@layer_type({"dim": Arg(int, required=True), "unflattened_size": Arg(
    list, check=lambda v: 0 < len(v) <= 8 and all(small_int(i, -1) for i in v), expect="a list of sizes",
    required=True)}, examples=[
    Example(lambda: Unflatten(1, (2, 3)), (4, 6), lambda T: T.nn.Unflatten(1, (2, 3))),
    Example(lambda: Unflatten(-1, (2, -1)), (3, 2, 8), lambda T: T.nn.Unflatten(-1, (2, -1)), "inferred size"),
])
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

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Reshape to a constant shape (a dynamic batch dimension written 0: kept)."""
        rank = len(g.in_shape)
        return g.reshape_to_output(x, keeps_batch=rank > 0 and self.dim % rank != 0)


@layer_type({"p": Arg(float, check=lambda v: 0.0 <= v < 1.0, expect="a number in [0, 1)")},
            examples=[Example(lambda: Dropout(0.3), (3, 4), lambda T: T.nn.Dropout(0.3))])
class Dropout(Module):
    """Inverted dropout with probability ``p``, active only in training mode (``model.train()``)."""

    keeps_shape = True
    input_kind = "any"

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Nothing: the graph is the eval-mode model."""
        return x


def _finite(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


@layer_type({"min_val": float, "max_val": float}, examples=[
    Example(lambda: Hardtanh(), (4, 5), lambda T: T.nn.Hardtanh()),
    Example(lambda: Hardtanh(-0.5, 2.0), (3, 6), lambda T: T.nn.Hardtanh(-0.5, 2.0), "(-0.5, 2)"),
])
class Hardtanh(Module):
    """min(max(x, min_val), max_val), as ``torch.nn.Hardtanh``; the gradient is 1 strictly between the bounds, else 0.

    >>> import backprop as bp
    >>> Hardtanh()(bp.tensor([-2.0, -1.0, 0.5, 3.0])).tolist()
    [-1.0, -1.0, 0.5, 1.0]
    """

    keeps_shape = True

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0) -> None:
        self.min_val = _finite("Hardtanh", "min_val", min_val)
        self.max_val = _finite("Hardtanh", "max_val", max_val)
        if not self.max_val > self.min_val:
            raise ValueError(f"Hardtanh: max_val ({self.max_val}) must be greater than min_val ({self.min_val})")

    def forward(self, x: Tensor) -> Tensor:
        # NOTE: a Where rather than a Clip: PyTorch's gradient is 0 at the bounds themselves (Clip's is 1 there)
        inside = (x.data > self.min_val) & (x.data < self.max_val)
        return where(inside, x, np.clip(x.data, self.min_val, self.max_val))

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Clip, the bounds as inputs of the model's dtype."""
        return g.node("Clip", [x, g.const(self.min_val), g.const(self.max_val)])


@layer_type({"beta": Arg(float, check=lambda v: v != 0, expect="a non-zero number"), "threshold": float},
            examples=[
                Example(lambda: Softplus(), (4, 5), lambda T: T.nn.Softplus()),
                Example(lambda: Softplus(2.0, 1.0), lambda rng: (3 * rng.standard_normal((3, 6))).astype(np.float32),
                        lambda T: T.nn.Softplus(2.0, 1.0), "beta 2 threshold 1"),
            ])
class Softplus(Module):
    """1/beta * log(1 + exp(beta * x)), and x itself where beta * x > threshold, as ``torch.nn.Softplus``.

    Stable for any x: log(1 + e^z) is computed as logsumexp(0, z), whose largest term is shifted out, so no
    exp overflows, and its gradient is sigmoid(z) everywhere (0.5 at 0).

    >>> import backprop as bp
    >>> Softplus()(bp.tensor([-1000.0, 0.0, 1000.0])).tolist()
    [0.0, 0.6931471824645996, 1000.0]
    """

    keeps_shape = True

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta = _finite("Softplus", "beta", beta)
        if self.beta == 0:
            raise ValueError("Softplus: beta must not be 0")
        self.threshold = _finite("Softplus", "threshold", threshold)

    def forward(self, x: Tensor) -> Tensor:
        z = x if self.beta == 1.0 else x * self.beta
        # NOTE: z is clipped at the threshold first: where the identity is taken, the unused branch then stays
        # finite (z = inf would otherwise give a NaN gradient through it) and its gradient is 0 there
        lse = stack([np.zeros_like(z.data), z.clip(max=self.threshold)]).logsumexp(axis=0)
        soft = lse if self.beta == 1.0 else lse / self.beta
        return where(z.data > self.threshold, x, soft)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Softplus, scaled as Mul, Softplus, Div for beta != 1; then Where(Greater) for the threshold.

        ONNX's Softplus has neither beta nor threshold. The Where is left out when the threshold is so large
        that softplus(z) rounds to z beyond it in the model's dtype (20 in float32: e^-20 / 20 < eps/2).
        """
        z = x if self.beta == 1.0 else g.node("Mul", [x, g.const(self.beta)])
        y = g.node("Softplus", [z])
        if self.beta != 1.0:
            y = g.node("Div", [y, g.const(self.beta)])
        if self.threshold >= -math.log(float(np.finfo(g.dtype).eps)):
            return y
        return g.node("Where", [g.node("Greater", [z, g.const(self.threshold)]), x, y])
