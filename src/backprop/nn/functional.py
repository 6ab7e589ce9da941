"""Layers and losses as functions: the fused primitives (linear, cross-entropy, dropout) and composed losses.

The fused primitives exist for speed and stability: ``linear`` is one op instead of matmul + add, and
``cross_entropy`` works from logits with the maximum shifted out, so logits of 1e8 give the right finite
loss. Everything else here is composed from the engine's ops and differentiated for free.

>>> import backprop as bp
>>> logits = bp.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
>>> loss = bp.nn.functional.cross_entropy(logits, np.array([0]))
>>> round(loss.item(), 4)
0.2413
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backprop.engine.blas import linear_forward, weight_grad
from backprop.engine.ops import (
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

_REDUCTIONS = ("mean", "sum", "none")


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

    def forward(self, x, w, b=None):
        self.x, self.w = x, w
        try:
            y = linear_forward(x, w)
        except ValueError:
            raise ValueError(
                f"linear: input has {x.shape[-1] if x.ndim else 0} features (shape {x.shape}) but the weight "
                f"expects {w.shape[1]} (weight shape {w.shape})"
            ) from None
        if b is not None:
            y += b
        return y

    def backward(self, g):  # dL/dx = G W,  dL/dW = G^T x,  dL/db = sum of G over the batch
        x, w, needs = self.x, self.w, self.needs_grad
        gx = g @ w if needs[0] else None
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


def _check_target(target: np.ndarray, n: int, c: int) -> None:
    if target.shape != (n,):
        raise ValueError(f"cross_entropy: class-index target must have shape ({n},), got {target.shape}")
    if target.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: class-index target must be integers, got dtype {target.dtype}")
    if n and (target.min() < 0 or target.max() >= c):
        bad = target[(target < 0) | (target >= c)][0]
        raise ValueError(f"cross_entropy: target class {bad} is outside [0, {c - 1}] for {c} classes")


_CE_TARGET = np.array([2, 0, 1, 2])
_CE_PROBS = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])


@register(cases(
    Case("ce indices", lambda z: cross_entropy(z, _CE_TARGET), [sample((4, 3))],
         lambda T, z: T.nn.functional.cross_entropy(z, T.tensor(_CE_TARGET))),
    Case("ce sum smoothing", lambda z: cross_entropy(z, _CE_TARGET, reduction="sum", label_smoothing=0.1),
         [sample((4, 3), seed=1)],
         lambda T, z: T.nn.functional.cross_entropy(z, T.tensor(_CE_TARGET), reduction="sum", label_smoothing=0.1)),
    Case("ce none", lambda z: cross_entropy(z, _CE_TARGET, reduction="none"), [sample((4, 3), seed=2)],
         lambda T, z: T.nn.functional.cross_entropy(z, T.tensor(_CE_TARGET), reduction="none")),
    Case("ce probs", lambda z: cross_entropy(z, _CE_PROBS, label_smoothing=0.2), [sample((4, 3), seed=3)],
         lambda T, z: T.nn.functional.cross_entropy(z, T.tensor(_CE_PROBS), label_smoothing=0.2)),
    Case("ce one sample", lambda z: cross_entropy(z, np.array(1)), [sample((3,), seed=4)],
         lambda T, z: T.nn.functional.cross_entropy(z, T.tensor(1))),
))
class CrossEntropy(Function):
    """Softmax cross-entropy from logits (N, C), fused: loss_i = logsumexp(z_i) - sum_c q_ic z_ic."""

    def forward(self, z, target=None, reduction="mean", label_smoothing=0.0):
        n, c = z.shape
        shifted = z - z.max(axis=1, keepdims=True)  # NOTE: the max shifted out: exp never overflows
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        logp = shifted - np.log(s)
        self.p = e / s  # softmax, the gradient's main term
        eps = label_smoothing
        rows = np.arange(n)
        if target.ndim == 1:  # class indices
            self.target_idx, self.q = target, None
            loss = -logp[rows, target]
            if eps:
                loss = (1 - eps) * loss - (eps / c) * logp.sum(axis=1)
        else:  # class probabilities
            q = target.astype(z.dtype, copy=False)
            if eps:
                q = q * (1 - eps) + eps / c
            self.q = q
            loss = -(q * logp).sum(axis=1)
        self.eps, self.reduction, self.n = eps, reduction, n
        if reduction == "mean":
            return np.asarray(loss.mean(), dtype=z.dtype)
        if reduction == "sum":
            return np.asarray(loss.sum(), dtype=z.dtype)
        return loss.astype(z.dtype, copy=False)

    def backward(self, g):  # d loss_i / d z_i = softmax(z_i) * sum(q_i) - q_i
        n, c = self.p.shape
        if self.q is None:
            grad = self.p - self.eps / c if self.eps else self.p.copy()
            grad[np.arange(n), self.target_idx] -= 1 - self.eps
        else:
            grad = self.p * self.q.sum(axis=1, keepdims=True) - self.q
        if self.reduction == "none":
            return grad * g[:, None]
        scale = g / n if self.reduction == "mean" else g
        grad *= scale
        return grad


def cross_entropy(logits: Tensor, target: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between softmax(logits) and a target of class indices (N,) or probabilities (N, C).

    Stable for any logits: computed from log-softmax with the row maximum subtracted.
    """
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if logits.ndim == 1:  # one sample: (C,) logits and a scalar class
        out = cross_entropy(logits.reshape(1, -1), target.reshape(-1 if target.ndim == 0 else (1, -1)),
                            reduction, label_smoothing)
        return out.reshape(()) if reduction == "none" else out
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must have shape (N, C), got {logits.shape}")
    n, c = logits.shape
    if target.ndim == 1:
        _check_target(target, n, c)
    elif target.shape != (n, c):
        raise ValueError(
            f"cross_entropy: target must be class indices of shape ({n},) or probabilities of shape ({n}, {c}), "
            f"got {target.shape}"
        )
    return CrossEntropy.apply(logits, target=target, reduction=reduction, label_smoothing=label_smoothing)


def _reduce(loss: Tensor, reduction: str, name: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _as_target(target: Any, like: Tensor, name: str) -> Tensor:
    t = target if isinstance(target, Tensor) else Tensor(np.asarray(target, dtype=like.dtype))
    if t.shape != like.shape:
        raise ValueError(f"{name}: input has shape {like.shape} but target has shape {t.shape}")
    return t


def nll_loss(log_probs: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices given log-probabilities (N, C). Composed."""
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    n, c = log_probs.shape
    _check_target(target, n, c)
    return _reduce(-log_probs[np.arange(n), target], reduction, "nll_loss")


def mse_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error (the quadratic cost). Composed."""
    d = input - _as_target(target, input, "mse_loss")
    return _reduce(d * d, reduction, "mse_loss")


def l1_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean absolute error. Composed."""
    return _reduce((input - _as_target(target, input, "l1_loss")).abs(), reduction, "l1_loss")


def binary_cross_entropy_with_logits(logits: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Sigmoid + binary cross-entropy, stable: max(x,0) - x*y + log(1 + exp(-|x|)). Composed."""
    y = _as_target(target, logits, "binary_cross_entropy_with_logits")
    loss = logits.relu() - logits * y + (1 + (-logits.abs()).exp()).log()
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def binary_cross_entropy(probs: Tensor, target: Any, reduction: str = "mean", eps: float = 1e-7) -> Tensor:
    """Binary cross-entropy of probabilities, clipped to [eps, 1-eps] so log never sees 0. Composed."""
    y = _as_target(target, probs, "binary_cross_entropy")
    p = probs.clip(eps, 1 - eps)
    return _reduce(-(y * p.log() + (1 - y) * (1 - p).log()), reduction, "binary_cross_entropy")


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


# The other layer families as functions, so ``F.conv2d``, ``F.batch_norm``... work as in PyTorch.
from backprop.nn.conv import conv1d, conv2d
from backprop.nn.embedding import embedding
from backprop.nn.normalization import batch_norm, layer_norm
from backprop.nn.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

__all__ = [
    "adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "conv1d", "conv2d", "cross_entropy", "dropout", "embedding", "gelu", "l1_loss", "layer_norm", "leaky_relu",
    "linear", "log_softmax", "logsumexp", "max_pool2d", "mse_loss", "nll_loss", "relu", "sigmoid", "softmax", "tanh",
]
