"""Batch and layer normalisation: fused primitives with hand-written backward passes, and their Modules.

Batch norm (Ioffe & Szegedy, 2015) normalises each channel with the statistics of the batch while
training, and with running averages of them in evaluation (``model.eval()``), exactly as PyTorch does:
the batch variance used to normalise is the biased one, the running variance is updated with the
unbiased one (times n/(n-1)), and ``momentum=None`` gives a cumulative average. Layer norm (Ba et al.,
2016) normalises each sample over its last dimensions and behaves the same in both modes.

Each normalisation is one :class:`~backprop.engine.tensor.Function` whose backward is the closed-form
vector-Jacobian product, instead of a composition of a dozen ops: with x^ = (x - mean) / std over n
values, dL/dx = (1/n) * gamma / std * (n*g - sum(g) - x^ * sum(g * x^)).

>>> import backprop as bp
>>> bn = BatchNorm1d(2)
>>> y = bn(bp.tensor([[1.0, 10.0], [3.0, 30.0]]))
>>> y.data.round(3).tolist()          # each column to mean 0, variance 1
[[-1.0, -1.0], [1.0, 1.0]]
>>> bn.running_mean.astype(float).round(3).tolist(), int(bn.num_batches_tracked)
([0.2, 2.0], 1)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import DEFAULT_DTYPE, Function, Tensor
from backprop.nn.contract import OnnxGraph
from backprop.nn.init import ones_, zeros_
from backprop.nn.module import Module, Parameter
from backprop.nn.registry import SIZE, Arg, Example, int_arg, layer_type

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNormEval", "BatchNormTrain", "LayerNorm", "LayerNormFused",
    "batch_norm", "layer_norm",
]


def _channel_view(p: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector (C,) shaped to broadcast against (N, C, *spatial)."""
    return p.reshape((1, -1) + (1,) * (ndim - 2)) if ndim > 2 else p


def _stat_axes(ndim: int) -> tuple[int, ...]:
    """The axes batch norm reduces over: all but the channel axis 1."""
    return (0,) + tuple(range(2, ndim))


def _unpack_affine(params: tuple[np.ndarray, ...], has_weight: bool, has_bias: bool):
    it = iter(params)
    w = next(it) if has_weight else None
    b = next(it) if has_bias else None
    return w, b


def _affine_grads(needs: tuple[bool, ...], has_weight: bool, has_bias: bool, gw_fn, gb_fn) -> tuple:
    """The gradients of the optional weight and bias parents, computed only where needed."""
    out = []
    i = 1
    if has_weight:
        out.append(gw_fn() if needs[i] else None)
        i += 1
    if has_bias:
        out.append(gb_fn() if needs[i] else None)
    return tuple(out)


# ------------------------------------------------------------------------------------------- batch norm
_RM = sample((3,), seed=11)
_RV = sample((3,), "positive", seed=12)


def _bn_train_case(label: str, shape: tuple[int, ...], affine: str) -> Case:
    c = shape[1]
    x = sample(shape, seed=1)
    w, b = sample((c,), seed=2), sample((c,), seed=3)
    if affine == "wb":
        return Case(label, lambda x, w, b: batch_norm(x, None, None, w, b, training=True), [x, w, b],
                    lambda T, x, w, b: T.nn.functional.batch_norm(x, None, None, w, b, training=True))
    if affine == "w":
        return Case(label, lambda x, w: batch_norm(x, None, None, w, training=True, eps=1e-3), [x, w],
                    lambda T, x, w: T.nn.functional.batch_norm(x, None, None, w, training=True, eps=1e-3))
    if affine == "b":
        return Case(label, lambda x, b: batch_norm(x, None, None, None, b, training=True), [x, b],
                    lambda T, x, b: T.nn.functional.batch_norm(x, None, None, None, b, training=True))
    return Case(label, lambda x: batch_norm(x, None, None, training=True), [x],
                lambda T, x: T.nn.functional.batch_norm(x, None, None, training=True))


@register(cases(
    _bn_train_case("(N,C)", (4, 3), "wb"),
    _bn_train_case("(N,C,L)", (3, 2, 2), "wb"),
    _bn_train_case("(N,C,H,W)", (2, 2, 2, 2), "wb"),
    _bn_train_case("weight only", (3, 2), "w"),
    _bn_train_case("bias only", (3, 2), "b"),
    _bn_train_case("no affine", (2, 2, 3), ""),
))
class BatchNormTrain(Function):
    """Training-mode batch norm over axis 1: normalise with the batch mean and biased variance.

    Parents: ``x`` and, as flagged by ``has_weight``/``has_bias``, the per-channel ``weight`` and ``bias``.
    When ``running_mean``/``running_var`` arrays are given they are updated in place with ``momentum``
    (the variance unbiased), as PyTorch's kernel does. ``counter`` (the module's ``num_batches_tracked``)
    is incremented in place, and ``momentum=None`` then means the cumulative average ``1 / counter``.
    NOTE: the counter lives in the op, not in the module's Python, so a captured step replays it.
    """

    def forward(self, x, *params, has_weight=True, has_bias=True, eps=1e-5, running_mean=None, running_var=None,
                momentum=0.1, counter=None):
        w, b = _unpack_affine(params, has_weight, has_bias)
        axes = _stat_axes(x.ndim)
        n = x.size // x.shape[1]
        mean = x.mean(axis=axes, keepdims=True)
        xhat = x - mean
        var = np.square(xhat).mean(axis=axes, keepdims=True)  # biased: normalises the batch
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat *= inv_std
        _update_running(running_mean, running_var, mean, var, n, momentum, counter)
        self.xhat, self.inv_std, self.n, self.axes = xhat, inv_std, n, axes
        self.w, self.has_weight, self.has_bias = w, has_weight, has_bias
        return _scale_shift(xhat, w, b)

    def backward(self, g):
        # dx = gamma * inv_std / n * (n*g - sum(g) - x^ * sum(g*x^)), sums over all but the channel axis
        xhat, axes = self.xhat, self.axes
        g_sum = g.sum(axis=axes, keepdims=True)
        gx_sum = (g * xhat).sum(axis=axes, keepdims=True)
        gx = _input_grad(g, xhat, g_sum, gx_sum, self.n, self.inv_std, self.w) if self.needs_grad[0] else None
        rest = _affine_grads(self.needs_grad, self.has_weight, self.has_bias,
                             lambda: gx_sum.reshape(-1), lambda: g_sum.reshape(-1))
        return (gx, *rest) if rest else gx


# What training-mode batch norm does once it has the batch's statistics (shared with the synchronised one).
def _update_running(running_mean: np.ndarray | None, running_var: np.ndarray | None, mean: np.ndarray,
                    var: np.ndarray, n: int, momentum: float | None, counter: np.ndarray | None = None) -> None:
    """running = (1 - momentum) * running + momentum * batch statistic, in place; the variance unbiased.

    ``counter`` (num_batches_tracked) counts this batch; ``momentum=None`` is the cumulative average."""
    if counter is not None:
        counter += 1
    if momentum is None:
        momentum = 1.0 / float(counter)
    if running_mean is not None:
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean.reshape(-1)
    if running_var is not None:
        running_var *= 1.0 - momentum
        running_var += (momentum * n / (n - 1)) * var.reshape(-1)  # unbiased, as in PyTorch


def _scale_shift(xhat: np.ndarray, w: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    """y = gamma * x^ + beta per channel (either may be absent)."""
    if w is None:
        return xhat.copy() if b is None else xhat + _channel_view(b, xhat.ndim)
    y = xhat * _channel_view(w, xhat.ndim)
    if b is not None:
        y += _channel_view(b, xhat.ndim)
    return y


def _input_grad(g: np.ndarray, xhat: np.ndarray, g_sum: np.ndarray, gx_sum: np.ndarray, n: int,
                inv_std: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """dL/dx = gamma * inv_std * (g - sum(g)/n - x^ * sum(g*x^)/n), the sums over the n values of a channel."""
    scale = inv_std if w is None else inv_std * _channel_view(w, g.ndim)
    gx = xhat * (gx_sum / n)
    np.subtract(g, gx, out=gx)
    gx -= g_sum / n
    gx *= scale
    return gx


def _bn_eval_case(label: str, shape: tuple[int, ...], affine: bool) -> Case:
    x = sample(shape, seed=4)
    if affine:
        w, b = sample((3,), seed=5), sample((3,), seed=6)
        return Case(label, lambda x, w, b: batch_norm(x, _RM, _RV, w, b, training=False), [x, w, b],
                    lambda T, x, w, b: T.nn.functional.batch_norm(x, T.tensor(_RM), T.tensor(_RV), w, b))
    return Case(label, lambda x: batch_norm(x, _RM, _RV, training=False, eps=0.1), [x],
                lambda T, x: T.nn.functional.batch_norm(x, T.tensor(_RM), T.tensor(_RV), eps=0.1))


@register(cases(
    _bn_eval_case("(N,C)", (2, 3), True),
    _bn_eval_case("(N,C,H,W)", (2, 3, 1, 2), True),
    _bn_eval_case("no affine (N,C,L)", (2, 3, 2), False),
))
class BatchNormEval(Function):
    """Evaluation-mode batch norm: with fixed statistics it is the affine map y = x * scale + shift."""

    def forward(self, x, *params, has_weight=True, has_bias=True, eps=1e-5, running_mean=None, running_var=None):
        w, b = _unpack_affine(params, has_weight, has_bias)
        inv_std = 1.0 / np.sqrt(running_var.astype(x.dtype, copy=False) + eps)
        mean = running_mean.astype(x.dtype, copy=False)
        scale = inv_std if w is None else w * inv_std
        shift = -mean * scale
        if b is not None:
            shift = shift + b
        self.x, self.mean, self.inv_std, self.scale = x, mean, inv_std, scale
        self.has_weight, self.has_bias = has_weight, has_bias
        y = x * _channel_view(scale, x.ndim)
        y += _channel_view(shift, x.ndim)
        return y

    def backward(self, g):
        axes = _stat_axes(g.ndim)
        needs = self.needs_grad
        gx = g * _channel_view(self.scale, g.ndim) if needs[0] else None
        g_sum = g.sum(axis=axes) if self.has_bias and needs[-1] else None

        def gw():  # sum(g * (x - mean)) * inv_std; centred first, so a large mean cancels nothing
            xc = self.x - _channel_view(self.mean, g.ndim)
            xc *= g
            return xc.sum(axis=axes) * self.inv_std

        rest = _affine_grads(needs, self.has_weight, self.has_bias, gw, lambda: g_sum)
        return (gx, *rest) if rest else gx


def _array_of(t: Any, what: str) -> np.ndarray | None:
    if t is None:
        return None
    if isinstance(t, Tensor):
        return t.data
    if isinstance(t, np.ndarray):
        return t
    raise TypeError(f"batch_norm: {what} must be a NumPy array or a Tensor (updated in place), got {type(t).__name__}")


def _check_param(p: Any, c: int, what: str, owner: str) -> Tensor | None:
    if p is None:
        return None
    p = p if isinstance(p, Tensor) else Tensor(np.asarray(p))
    if p.shape != (c,):
        raise ValueError(f"{owner}: {what} has shape {p.shape}, expected ({c},) for {c} channels")
    return p


def _bn_arguments(who: str, input: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any,
                  eps: float) -> tuple[Tensor, np.ndarray | None, np.ndarray | None, tuple[Tensor, ...], dict]:
    """Checked arguments of a batch norm: (x, running_mean, running_var, affine parents, Function flags)."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    if x.ndim < 2:
        raise ValueError(f"{who}: expected an input of shape (N, C, *), got shape {x.shape}")
    c = x.shape[1]
    rm, rv = _array_of(running_mean, "running_mean"), _array_of(running_var, "running_var")
    for name, r in (("running_mean", rm), ("running_var", rv)):
        if r is not None and r.shape != (c,):
            raise ValueError(f"{who}: {name} has shape {r.shape}, expected ({c},) for input of shape {x.shape}")
    w, b = _check_param(weight, c, "weight", who), _check_param(bias, c, "bias", who)
    params = tuple(p for p in (w, b) if p is not None)
    return x, rm, rv, params, {"has_weight": w is not None, "has_bias": b is not None, "eps": eps}


def batch_norm(input: Tensor, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation over axis 1 of (N, C, *), like ``torch.nn.functional.batch_norm``.

    ``training=True``: normalise with the batch's mean and biased variance; if ``running_mean`` and
    ``running_var`` are given (NumPy arrays or Tensors of shape (C,)) they are updated in place,
    ``running = (1 - momentum) * running + momentum * batch_stat``, with the unbiased batch variance.
    ``training=False``: normalise with ``running_mean`` and ``running_var``.
    """
    x, rm, rv, params, flags = _bn_arguments("batch_norm", input, running_mean, running_var, weight, bias, eps)
    if training:
        if x.size // x.shape[1] == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        if momentum is None or not isinstance(momentum, numbers.Real):
            raise TypeError(f"batch_norm: momentum must be a number, got {momentum!r}")
        return BatchNormTrain.apply(x, *params, running_mean=rm, running_var=rv, momentum=float(momentum), **flags)
    if rm is None or rv is None:
        raise ValueError("batch_norm: running_mean and running_var are needed when training=False")
    return BatchNormEval.apply(x, *params, running_mean=rm, running_var=rv, **flags)


# The training-mode forward of every BatchNorm1d/2d while ``backprop.distributed.sync_batchnorm`` is active
# (the statistics of the global batch over the MPI ranks); None: each process uses its own batch.
_sync_forward: Callable[[_BatchNorm, Tensor], Tensor] | None = None


class _BatchNorm(Module):
    """What BatchNorm1d and BatchNorm2d share: parameters, buffers, and PyTorch's train/eval logic."""

    _expected_dims: tuple[int, ...] = ()
    keeps_shape = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: Any = DEFAULT_DTYPE) -> None:
        name = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive integer, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps!r}")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"{name}: dtype must be floating point, got {dtype}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype=dtype))
        else:
            self.weight = self.bias = None
        # Buffers: saved and loaded by state_dict under PyTorch's names, cast by .to()/.double(); None (in
        # use nowhere) without running statistics, as in PyTorch.
        track = self.track_running_stats
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dtype) if track else None)
        self.register_buffer("running_var", np.ones(self.num_features, dtype=dtype) if track else None)
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64) if track else None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            ones_(self.weight)
            zeros_(self.bias)

    def _check_input_dim(self, x: Tensor) -> None:
        if x.ndim not in self._expected_dims:
            want = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(f"{type(self).__name__}: expected {want} input, got {x.ndim}D input of shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[1]} channels (shape {x.shape}) but the layer "
                             f"has num_features={self.num_features}")

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            like = self.weight if self.affine else self.running_mean
            x = Tensor(np.asarray(x, dtype=like.dtype if like is not None else DEFAULT_DTYPE))
        self._check_input_dim(x)
        if self.training and _sync_forward is not None:
            return _sync_forward(self, x)
        if self.training and self.track_running_stats:
            # NOTE: checked before counting the batch; PyTorch counts it in num_batches_tracked and then raises
            if x.size // x.shape[1] == 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
            x, rm, rv, params, flags = _bn_arguments(type(self).__name__, x, self.running_mean, self.running_var,
                                                     self.weight, self.bias, self.eps)
            return BatchNormTrain.apply(x, *params, running_mean=rm, running_var=rv, momentum=self.momentum,
                                        counter=self.num_batches_tracked, **flags)
        factor = 0.0 if self.momentum is None else self.momentum
        # Batch statistics in training, and always when no running statistics are kept.
        use_batch_stats = self.training or not self.track_running_stats
        track = not self.training or self.track_running_stats
        return batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                          self.weight, self.bias, use_batch_stats, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """BatchNormalization with the running statistics (the eval-mode layer)."""
        if not self.track_running_stats:
            raise g.error("track_running_stats=False normalises with the batch's own statistics even in eval mode; "
                          "ONNX's BatchNormalization needs running statistics")
        c = self.num_features
        scale = self.weight.data if self.affine else np.ones(c)
        bias = self.bias.data if self.affine else np.zeros(c)
        inputs = [x, g.weight(scale, "weight"), g.weight(bias, "bias"), g.weight(self.running_mean, "running_mean"),
                  g.weight(self.running_var, "running_var")]
        return g.node("BatchNormalization", inputs, epsilon=self.eps)


_BN_ARGS = {"num_features": SIZE, "eps": Arg(float, check=lambda v: v > 0, expect="a number > 0"),
            "momentum": Arg((float, type(None)), check=lambda v: v is None or 0 <= v <= 1,
                            expect="a number in [0, 1] or null"),
            "affine": bool, "track_running_stats": bool}


@layer_type(_BN_ARGS, examples=[
    Example(lambda: BatchNorm1d(3), (4, 3), lambda T: T.nn.BatchNorm1d(3)),
    Example(lambda: BatchNorm1d(2, momentum=None, affine=False), (3, 2, 5),
            lambda T: T.nn.BatchNorm1d(2, momentum=None, affine=False), "(N, C, L) cumulative"),
])
class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, C) or (N, C, L) inputs, per channel C (``torch.nn.BatchNorm1d``).

    >>> import backprop as bp
    >>> bn = BatchNorm1d(4)
    >>> [name for name in bn.state_dict()]
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    _expected_dims = (2, 3)


@layer_type(_BN_ARGS, examples=[
    Example(lambda: BatchNorm2d(2, eps=1e-3), (3, 2, 4, 4), lambda T: T.nn.BatchNorm2d(2, eps=1e-3)),
])
class BatchNorm2d(_BatchNorm):
    """Batch norm of (N, C, H, W) inputs, per channel C (``torch.nn.BatchNorm2d``)."""

    _expected_dims = (4,)


# ------------------------------------------------------------------------------------------- layer norm
def _ln_case(label: str, shape: tuple[int, ...], k: int, affine: str) -> Case:
    ns = shape[-k:]
    x = sample(shape, seed=7)
    w, b = sample(ns, seed=8), sample(ns, seed=9)
    if affine == "wb":
        return Case(label, lambda x, w, b: layer_norm(x, ns, w, b), [x, w, b],
                    lambda T, x, w, b: T.nn.functional.layer_norm(x, ns, w, b))
    if affine == "w":
        return Case(label, lambda x, w: layer_norm(x, ns, w, eps=1e-3), [x, w],
                    lambda T, x, w: T.nn.functional.layer_norm(x, ns, w, eps=1e-3))
    return Case(label, lambda x: layer_norm(x, ns), [x], lambda T, x: T.nn.functional.layer_norm(x, ns))


@register(cases(
    _ln_case("last dim", (4, 3), 1, "wb"),
    _ln_case("last 2 dims", (2, 2, 3), 2, "wb"),
    _ln_case("1-d input", (4,), 1, "wb"),
    _ln_case("weight only", (3, 3), 1, "w"),
    _ln_case("no affine", (2, 3, 2), 1, ""),
))
class LayerNormFused(Function):
    """Layer norm over the last ``k`` axes, with optional elementwise weight and bias of those axes' shape."""

    def forward(self, x, *params, k=1, has_weight=True, has_bias=True, eps=1e-5):
        w, b = _unpack_affine(params, has_weight, has_bias)
        axes = tuple(range(x.ndim - k, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        xhat = x - mean
        var = np.square(xhat).mean(axis=axes, keepdims=True)
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat *= inv_std
        self.xhat, self.inv_std, self.axes, self.k = xhat, inv_std, axes, k
        self.w, self.has_weight, self.has_bias = w, has_weight, has_bias
        if w is None:
            return xhat.copy() if b is None else xhat + b
        y = xhat * w
        if b is not None:
            y += b
        return y

    def backward(self, g):
        # with h = g * gamma: dx = inv_std * (h - mean(h) - x^ * mean(h * x^)), means over the normalised axes
        xhat, axes, w = self.xhat, self.axes, self.w
        gx = None
        if self.needs_grad[0]:
            h = g if w is None else g * w
            gx = xhat * (h * xhat).mean(axis=axes, keepdims=True)
            np.subtract(h, gx, out=gx)
            gx -= h.mean(axis=axes, keepdims=True)
            gx *= self.inv_std
        lead = tuple(range(g.ndim - self.k))

        def gw():
            return (g * xhat).sum(axis=lead)

        def gb():
            return g.sum(axis=lead) if lead else g  # NOTE: g itself is fine: the engine copies shared grads

        rest = _affine_grads(self.needs_grad, self.has_weight, self.has_bias, gw, gb)
        return (gx, *rest) if rest else gx


def _normalized_shape(normalized_shape: Any, owner: str) -> tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(int(s) for s in normalized_shape)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{owner}: normalized_shape must be a non-empty tuple of positive ints, got {normalized_shape!r}")
    return shape


def layer_norm(input: Tensor, normalized_shape: Any, weight: Any = None, bias: Any = None,
               eps: float = 1e-5) -> Tensor:
    """Normalise over the last ``len(normalized_shape)`` dims, like ``torch.nn.functional.layer_norm``."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    shape = _normalized_shape(normalized_shape, "layer_norm")
    k = len(shape)
    if x.shape[x.ndim - k:] != shape or x.ndim < k:
        raise ValueError(f"layer_norm: input of shape {x.shape} does not end with normalized_shape {shape}")
    params = []
    for what, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            p = p if isinstance(p, Tensor) else Tensor(np.asarray(p))
            if p.shape != shape:
                raise ValueError(f"layer_norm: {what} has shape {p.shape}, expected normalized_shape {shape}")
            params.append(p)
    return LayerNormFused.apply(x, *params, k=k, has_weight=weight is not None, has_bias=bias is not None, eps=eps)


def _prod(v: Any) -> int:
    return math.prod(v if isinstance(v, (tuple, list)) else (v,))


@layer_type({
    "normalized_shape": int_arg(1, required=True),
    "eps": Arg(float, check=lambda v: v > 0, expect="a number > 0"), "elementwise_affine": bool,
    "bias": Arg(bool, get=lambda m: getattr(m, "bias", None) is not None),
}, examples=[
    Example(lambda: LayerNorm(4), (3, 4), lambda T: T.nn.LayerNorm(4)),
    Example(lambda: LayerNorm((3, 4), eps=1e-3, bias=False), (2, 3, 4),
            lambda T: T.nn.LayerNorm((3, 4), eps=1e-3, bias=False), "2 dims no bias"),
    Example(lambda: LayerNorm(4, elementwise_affine=False), (2, 4), lambda T: T.nn.LayerNorm(4, elementwise_affine=False),
            "no affine"),
], min_weights=lambda kw: _prod(kw["normalized_shape"]) if kw.get("elementwise_affine", True) else 0)
class LayerNorm(Module):
    """Layer norm over the last dims (``torch.nn.LayerNorm``): weight (ones) and bias (zeros) of that shape.

    >>> import backprop as bp
    >>> ln = LayerNorm(3)
    >>> ln(bp.tensor([[1.0, 2.0, 3.0]])).data.astype(float).round(4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    """

    keeps_shape = True

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        self.normalized_shape = _normalized_shape(normalized_shape, "LayerNorm")
        if not eps > 0:
            raise ValueError(f"LayerNorm: eps must be positive, got {eps!r}")
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        dtype = np.dtype(dtype)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))
            self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype)) if bias else None
        else:
            self.weight = self.bias = None

    def reset_parameters(self) -> None:
        if self.weight is not None:
            ones_(self.weight)
        if self.bias is not None:
            zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x, dtype=self.weight.dtype if self.weight is not None else DEFAULT_DTYPE))
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """LayerNormalization (opset >= 17); below: ReduceMean, Sub, Sqrt, Div..."""
        k = len(self.normalized_shape)
        if g.dynamic_batch and k >= len(g.in_shape):
            raise g.error(f"normalized_shape {self.normalized_shape} includes the batch dimension of the example "
                          f"shape {g.in_shape}; export with dynamic_batch=False")
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        if g.opset >= 17:
            # NOTE: the optional bias is given (zeros) too: onnxruntime 1.16's Gelu fusion crashes without it
            inputs = [x, g.weight(np.ones(self.normalized_shape) if w is None else w, "weight"),
                      g.weight(np.zeros(self.normalized_shape) if b is None else b, "bias")]
            return g.node("LayerNormalization", inputs, axis=-k, epsilon=self.eps)
        axes = list(range(-k, 0))  # opset < 17: (x - mean) / sqrt(var + eps), means over the last k axes
        mean = g.node("ReduceMean", [x], axes=axes, keepdims=1)
        xc = g.node("Sub", [x, mean])
        var = g.node("ReduceMean", [g.node("Mul", [xc, xc])], axes=axes, keepdims=1)
        std = g.node("Sqrt", [g.node("Add", [var, g.const(self.eps)])])
        y = g.node("Div", [xc, std])
        if w is not None:
            y = g.node("Mul", [y, g.weight(w, "weight")])
        if b is not None:
            y = g.node("Add", [y, g.weight(b, "bias")])
        return y
