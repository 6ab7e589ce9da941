"""Layers and losses as functions: the fused primitives (linear, dropout) and the losses of ``nn.losses``.

``linear`` is one fused op instead of matmul + add, for speed. The losses (``cross_entropy``, ``mse_loss``...)
live in :mod:`backprop.nn.losses` with their per-sample forms and are re-exported here under PyTorch's
names; ``cross_entropy`` works from logits with the maximum shifted out, so logits of 1e8 give the right
finite loss.

>>> import backprop as bp
>>> logits = bp.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
>>> loss = bp.nn.functional.cross_entropy(logits, np.array([0]))
>>> round(loss.item(), 4)
0.2413
"""

from __future__ import annotations

import numpy as np

from backprop.engine.blas import input_grad, linear_forward, weight_grad
from backprop.engine.functional import (
    gelu,
    leaky_relu,
    log_softmax,
    logsumexp,
    relu,
    sigmoid,
    softmax,
    tanh,
)
from backprop.engine.random import get_rng
from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import Function, Tensor

# The other layer families as functions, so ``F.conv2d``, ``F.batch_norm``... work as in PyTorch. NOTE: at the
# top, one way only: those files import neither this module nor the layers, so nn's imports form no cycle.
from backprop.nn.conv import conv1d, conv2d
from backprop.nn.embedding import embedding

# NOTE: the losses live in nn.losses (which imports only the engine); the private helpers are re-exported
# for code that still reaches them here (training/fit.py uses _as_target)
from backprop.nn.losses import (  # noqa: F401
    CrossEntropy,
    _as_target,
    _check_target,
    _reduce,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    l1_loss,
    mse_loss,
    nll_loss,
)
from backprop.nn.normalization import batch_norm, layer_norm
from backprop.nn.padding import pad
from backprop.nn.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d


@register(cases(
    Case("linear", lambda x, w, b: linear(x, w, b), [sample((4, 3)), sample((2, 3), seed=1), sample((2,), seed=2)],
         lambda T, x, w, b: T.nn.functional.linear(x, w, b)),
    Case("linear no bias", lambda x, w: linear(x, w), [sample((4, 3)), sample((2, 3), seed=1)],
         lambda T, x, w: T.nn.functional.linear(x, w)),
    Case("linear 3-d", lambda x, w, b: linear(x, w, b), [sample((2, 4, 3)), sample((2, 3), seed=1), sample((2,))],
         lambda T, x, w, b: T.nn.functional.linear(x, w, b)),
    Case("linear 1-d", lambda x, w, b: linear(x, w, b), [sample((3,)), sample((2, 3), seed=1), sample((2,))],
         lambda T, x, w, b: T.nn.functional.linear(x, w, b)),
))
class Linear(Function):
    """y = x W^T + b, with W of shape (out_features, in_features) as in PyTorch."""

    @staticmethod
    def kernel_forward(x, w, b=None):
        try:
            y = linear_forward(x, w)
        except ValueError:
            raise ValueError(
                f"linear: input has {x.shape[-1] if x.ndim else 0} features (shape {x.shape}) but the weight "
                f"expects {w.shape[1]} (weight shape {w.shape})"
            ) from None
        if b is not None:
            y += b
        return y, (x, w)

    @staticmethod
    def kernel_backward(saved, g, needs):  # dL/dx = G W,  dL/dW = G^T x,  dL/db = sum of G over the batch
        x, w = saved
        gx = input_grad(g, w) if needs[0] else None
        if x.ndim != 2:
            x, g = x.reshape(-1, x.shape[-1]), g.reshape(-1, w.shape[0])
        gw = weight_grad(g, x) if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        return gx, gw, (g.sum(axis=0) if needs[2] else None)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` as one fused op."""
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


class _DropoutCase:
    """Gradient checks call fn many times: the same seed each call gives the same mask."""

    def __call__(self, x: Tensor) -> Tensor:
        return Dropout.apply(x, p=0.4, rng=np.random.default_rng(0))


@register(cases(Case("dropout", _DropoutCase(), [sample((4, 5))], None)))
class Dropout(Function):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout)."""

    def forward(self, x, p=0.5, rng=None):
        keep = (rng or get_rng()).random(x.shape, dtype=np.float32) >= p
        self.mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
        return x * self.mask

    def backward(self, g):
        return g * self.mask


def dropout(x: Tensor, p: float = 0.5, training: bool = True, rng: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout; the identity when not training or p == 0."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=p, rng=rng)


__all__ = [
    "adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "conv1d", "conv2d", "cross_entropy", "dropout", "embedding", "gelu", "l1_loss", "layer_norm", "leaky_relu",
    "linear", "log_softmax", "logsumexp", "max_pool2d", "mse_loss", "nll_loss", "pad", "relu", "sigmoid", "softmax",
    "tanh",
]
