"""Losses: functions of (output, target), their per-sample forms, and the named losses fit and sklearn use.

A loss measures how far a batch of outputs is from its targets. Every loss here is a function
``loss(output, target, reduction="mean")``: ``"mean"`` is the number training minimises, ``"sum"`` the
total, ``"none"`` the unreduced values. The PyTorch-named functions (``cross_entropy``, ``mse_loss``...)
keep PyTorch's semantics, so ``"none"`` of an elementwise loss has the output's shape; the others
(``quadratic_loss``, ``squared_error_loss``, ``poisson_loss``, ``binary_log_loss``) give one value per
sample.

Weighting samples (``class_weight``, ``sample_weight``) needs one value per *sample*: the per-sample form
``(output, target) -> (N,)`` of a loss, whose plain mean is its mean-reduced value. ``LOSS_REGISTRY`` names
each loss with the targets it takes, so that a name gives both forms: :func:`get_loss` the batch loss,
:func:`per_sample_loss` the per-sample one, and :func:`weighted_loss` ``sum(w_i loss_i) / sum(w_i)``.

>>> import numpy as np, backprop as bp
>>> from backprop.nn import losses
>>> logits = bp.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
>>> y = np.array([0, 1])
>>> round(losses.get_loss("cross_entropy")(logits, y).item(), 4)
0.3964
>>> per = losses.per_sample_loss("cross_entropy")(logits, y)        # one value per sample
>>> per.shape, [round(v, 4) for v in per.data.tolist()]
((2,), [0.2413, 0.5514])
>>> loss, total = losses.weighted_loss(per, np.array([3.0, 1.0]))   # (3 * 0.2413 + 1 * 0.5514) / 4
>>> round(loss.item(), 4), total
(0.3188, 4.0)
>>> losses.get_loss("mse")(logits, y).item() == losses.mse_loss(logits, np.eye(3)[y]).item()  # labels one-hot
True
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import Function, Tensor

LossFn = Callable[[Tensor, Any], Tensor]
_REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------------------- shared checks
def _check_reduction(reduction: str, name: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str, name: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _as_target(target: Any, like: Tensor, name: str) -> Tensor:
    """A dense target as a Tensor of ``like``'s dtype (float32 by default), of exactly ``like``'s shape.

    NOTE: converted by a tensor op (``astype``), not by NumPy, so that a captured step follows the targets.
    """
    t = (target if isinstance(target, Tensor) else Tensor(np.asarray(target))).astype(like.dtype)
    if t.shape != like.shape:
        raise ValueError(f"{name}: input has shape {like.shape} but target has shape {t.shape}")
    return t


def _check_target(target: np.ndarray, n: int, c: int) -> None:
    """Class indices: shape (n,), integers in [0, c)."""
    if target.shape != (n,):
        raise ValueError(f"cross_entropy: class-index target must have shape ({n},), got {target.shape}")
    if target.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: class-index target must be integers, got dtype {target.dtype}")
    if n and (target.min() < 0 or target.max() >= c):
        bad = target[(target < 0) | (target >= c)][0]
        raise ValueError(f"cross_entropy: target class {bad} is outside [0, {c - 1}] for {c} classes")


def _per_sample_mean(t: Tensor) -> Tensor:
    """(N, ...) -> (N,): the mean over every axis but the first (an (N,) tensor is already per sample)."""
    return t if t.ndim == 1 else t.reshape(t.shape[0], -1).mean(axis=1)


def _per_sample_sum(t: Tensor) -> Tensor:
    """(N, ...) -> (N,): the sum over every axis but the first."""
    return t if t.ndim == 1 else t.reshape(t.shape[0], -1).sum(axis=1)


# ------------------------------------------------------------------------------ cross-entropy, fused
_CE_TARGET = np.array([2, 0, 1, 2])
_CE_STEPS = np.array([[3, 0, 1], [2, 2, 0]])  # (N, T) classes for (N, T, C) logits
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
    Case("ce per step (N, T, C)", lambda z: cross_entropy(z, _CE_STEPS, label_smoothing=0.1),
         [sample((2, 3, 4), seed=5)],
         lambda T, z: T.nn.functional.cross_entropy(z.transpose(1, 2), T.tensor(_CE_STEPS), label_smoothing=0.1)),
    Case("ce per step none", lambda z: cross_entropy(z, _CE_STEPS, reduction="none"), [sample((2, 3, 4), seed=6)],
         lambda T, z: T.nn.functional.cross_entropy(z.transpose(1, 2), T.tensor(_CE_STEPS), reduction="none")),
))
class CrossEntropy(Function):
    """Softmax cross-entropy from logits (N, C), fused: loss_i = logsumexp(z_i) - sum_c q_ic z_ic."""

    @staticmethod
    def kernel_forward(z, target=None, reduction="mean", label_smoothing=0.0):
        shape = z.shape
        if z.ndim > 2:  # (N, ..., C): one row per position
            z = z.reshape(-1, shape[-1])
            target = target.reshape(-1) if target.ndim == len(shape) - 1 else target.reshape(-1, shape[-1])
        n, c = z.shape
        shifted = z - z.max(axis=1, keepdims=True)  # NOTE: the max shifted out: exp never overflows
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        logp = shifted - np.log(s)
        p = e / s  # softmax, the gradient's main term
        eps = label_smoothing
        rows = np.arange(n)
        if target.ndim == 1:  # class indices
            q = None
            loss = -logp[rows, target]
            if eps:
                loss = (1 - eps) * loss - (eps / c) * logp.sum(axis=1)
        else:  # class probabilities
            q = target.astype(z.dtype, copy=False)
            if eps:
                q = q * (1 - eps) + eps / c
            loss = -(q * logp).sum(axis=1)
        saved = (p, target, q, eps, reduction, shape)
        if reduction == "mean":  # NOTE: loss.mean()'s own arithmetic (a pairwise sum, then / n), without its Python
            return np.asarray(np.add.reduce(loss) / n, dtype=z.dtype), saved
        if reduction == "sum":
            return np.asarray(loss.sum(), dtype=z.dtype), saved
        return loss.astype(z.dtype, copy=False).reshape(shape[:-1]), saved

    @staticmethod
    def kernel_backward(saved, g, needs):  # d loss_i / d z_i = softmax(z_i) * sum(q_i) - q_i
        p, target, q, eps, reduction, shape = saved
        n, c = p.shape
        if q is None:
            grad = p - eps / c if eps else p.copy()
            grad[np.arange(n), target] -= 1 - eps
        else:
            grad = p * q.sum(axis=1, keepdims=True) - q
        if reduction == "none":
            return (grad * g.reshape(-1)[:, None]).reshape(shape)
        scale = g / n if reduction == "mean" else g
        grad *= scale
        return grad.reshape(shape)


def cross_entropy(logits: Tensor, target: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between softmax(logits) and a target of class indices (N,) or probabilities (N, C).

    Stable for any logits: computed from log-softmax with the row maximum subtracted. ``"none"`` gives (N,).
    Logits (N, ..., C) (a class at every step of a sequence) take class indices (N, ...) or probabilities
    (N, ..., C): each position is one term of the mean, and ``"none"`` gives (N, ...).
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
    if logits.ndim < 2:
        raise ValueError(f"cross_entropy: logits must have shape (N, C) or (N, ..., C), got {logits.shape}")
    # NOTE: (N, ..., C) logits (a class per step of a sequence) with targets (N, ...) are every position a
    # sample of its own, the class axis last (Keras's convention; PyTorch puts it second); "none" gives (N, ...)
    lead, c = logits.shape[:-1], logits.shape[-1]
    if target.shape == lead:
        _check_target(target.reshape(-1), math.prod(lead), c)
    elif target.shape != logits.shape:
        raise ValueError(
            f"cross_entropy: target must be class indices of shape {lead} or probabilities of shape "
            f"{logits.shape}, got {target.shape}"
        )
    return CrossEntropy.apply(logits, target=target, reduction=reduction, label_smoothing=label_smoothing)


# ------------------------------------------------------------------- PyTorch's losses, composed
def nll_loss(log_probs: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices given log-probabilities (N, C); ``"none"`` gives (N,)."""
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    n, c = log_probs.shape
    _check_target(target, n, c)
    return _reduce(-log_probs[np.arange(n), target], reduction, "nll_loss")


def mse_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error over every element; ``"none"`` is elementwise, as in PyTorch."""
    d = input - _as_target(target, input, "mse_loss")
    return _reduce(d * d, reduction, "mse_loss")


def l1_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean absolute error over every element; ``"none"`` is elementwise, as in PyTorch."""
    return _reduce((input - _as_target(target, input, "l1_loss")).abs(), reduction, "l1_loss")


def binary_cross_entropy_with_logits(logits: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Sigmoid + binary cross-entropy, elementwise: max(x, 0) - x y + log(1 + exp(-|x|)).

    NOTE: exp(-|x|) <= 1, so nothing overflows for any logit. log(1 + e) rounds e below float epsilon to 0
    (the engine has no log1p): an absolute error under epsilon, on a loss that is that small.
    """
    y = _as_target(target, logits, "binary_cross_entropy_with_logits")
    loss = logits.relu() - logits * y + (1 + (-logits.abs()).exp()).log()
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def binary_cross_entropy(probs: Tensor, target: Any, reduction: str = "mean", eps: float = 1e-7) -> Tensor:
    """Binary cross-entropy of probabilities, elementwise, clipped to [eps, 1-eps] so log never sees 0.

    Prefer :func:`binary_cross_entropy_with_logits`: from logits, no clipping is needed.
    """
    y = _as_target(target, probs, "binary_cross_entropy")
    p = probs.clip(eps, 1 - eps)
    return _reduce(-(y * p.log() + (1 - y) * (1 - p).log()), reduction, "binary_cross_entropy")


# ------------------------------------------------------------------------- losses per sample
def quadratic_loss(output: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Nielsen's quadratic cost: 1/2 ||a - y||^2 summed over outputs, averaged over the batch.

    ``"none"`` gives 1/2 ||a_i - y_i||^2 per sample, ``"sum"`` their sum.
    """
    _check_reduction(reduction, "quadratic_loss")
    d = output - _as_target(target, output, "quadratic_loss")
    d2 = d * d
    if reduction == "none":
        return _per_sample_sum(d2) * 0.5
    n = output.shape[0] if output.ndim else 1
    # NOTE: one sum over every element, scaled once: the number fit has always reported for "quadratic"
    return d2.sum() * (0.5 if reduction == "sum" else 0.5 / n if n else float("nan"))


def squared_error_loss(output: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Half the squared error averaged over outputs: scikit-learn's MLPRegressor loss (``squared_error``).

    Per sample 1/2 mean_j (a_ij - y_ij)^2; the mean over the batch is 1/2 the mean squared error.
    """
    _check_reduction(reduction, "squared_error_loss")
    d = output - _as_target(target, output, "squared_error_loss")
    return _reduce(_per_sample_mean(d * d) * 0.5, reduction, "squared_error_loss")


def poisson_loss(log_mean: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Half the Poisson deviance with a log link, averaged over outputs: MLPRegressor's ``loss="poisson"``.

    The output is the log of the predicted mean mu = exp(z): per element mu - y z + (y log y - y), which is
    y log(y / mu) - y + mu, zero where mu = y. Targets must be >= 0.
    """
    _check_reduction(reduction, "poisson_loss")
    t = _as_target(target, log_mean, "poisson_loss")
    y = t.data
    if (y < 0).any():
        raise ValueError(f"poisson_loss: target must be >= 0, got {y[y < 0].flat[0]}")
    # NOTE: y log y - y does not depend on z: a constant that makes the loss 0 at a perfect fit (0 log 0 = 0)
    const = np.where(y > 0, y * np.log(np.where(y > 0, y, 1)), 0) - y
    return _reduce(_per_sample_mean(log_mean.exp() - log_mean * t + Tensor(const)), reduction, "poisson_loss")


def binary_log_loss(logits: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy from logits summed over outputs: MLPClassifier's loss for binary and multilabel y.

    Per sample sum_j bce(z_ij, y_ij) (one logistic unit per label); the mean over the batch is sklearn's
    ``binary_log_loss`` of sigmoid(z).
    """
    _check_reduction(reduction, "binary_log_loss")
    y = _as_target(target, logits, "binary_log_loss")
    return _reduce(_per_sample_sum(binary_cross_entropy_with_logits(logits, y, reduction="none")), reduction,
                   "binary_log_loss")


# ------------------------------------------------------------------------------- named losses
def one_hot_labels(output: Tensor, target: Any) -> Any:
    """Class labels (N,) as one-hot rows (N, C) for a loss comparing C outputs elementwise (a 0/1 column
    for one output), in the output's dtype; any other target is returned unchanged."""
    y = target.data if isinstance(target, Tensor) else np.asarray(target)
    if y.dtype.kind not in "iub" or y.ndim != 1:
        return target
    c = output.shape[-1]
    high = c if c > 1 else 2  # one output: binary labels 0/1
    if y.size and (y.min() < 0 or y.max() >= high):
        bad = y.min() if y.min() < 0 else y.max()
        raise ValueError(f"class label {int(bad)} is outside [0, {high - 1}] for a model with {c} output"
                         f"{'s' if c > 1 else ''}")
    return OneHot.apply(target if isinstance(target, Tensor) else Tensor(y), classes=c, dtype=output.dtype)


@register(cases(
    Case("one-hot", lambda y: OneHot.apply(y, classes=3, dtype=np.dtype(np.float32)), [np.array([2, 0, 1, 2])],
         lambda T, y: T.nn.functional.one_hot(y, 3).float(), wrt=()),
    Case("0/1 column", lambda y: OneHot.apply(y, classes=1, dtype=np.dtype(np.float64)), [np.array([1, 0, 1])],
         lambda T, y: y.reshape(-1, 1).double(), wrt=()),
))
class OneHot(Function):
    """Class labels (N,) as one-hot rows (N, C) in ``dtype``; ``classes=1``: the labels as a 0/1 column.

    An op (with no gradient: labels are integers) rather than NumPy in the loss, so that a captured step
    recomputes the targets of every batch.
    """

    def forward(self, y, classes=2, dtype=None):
        dtype = np.dtype(np.float32) if dtype is None else dtype
        if classes > 1:
            return np.eye(classes, dtype=dtype)[y.astype(np.intp, copy=False)]
        return y.reshape(-1, 1).astype(dtype)

    def backward(self, g):
        return None


Targets = Literal["labels", "one_hot", "values"]


@dataclass(frozen=True)
class Loss:
    """A named loss: its function and the targets it takes.

    ``targets`` is ``"labels"`` (class indices (N,), given to ``fn`` as they are), ``"one_hot"`` (values of
    the output's shape; class labels (N,) become one-hot rows, see :func:`one_hot_labels`) or ``"values"``
    (values of the output's shape only). Calling the record is the batch loss; :meth:`per_sample` gives
    (N,) values whose plain mean is that loss.
    """

    name: str
    fn: Callable[..., Tensor]  # (output, target, reduction="mean"|"sum"|"none") -> Tensor
    targets: Targets

    def target(self, output: Tensor, target: Any) -> Any:
        """The target ``fn`` receives."""
        return one_hot_labels(output, target) if self.targets == "one_hot" else target

    def __call__(self, output: Tensor, target: Any, reduction: str = "mean") -> Tensor:
        return self.fn(output, self.target(output, target), reduction=reduction)

    def per_sample(self, output: Tensor, target: Any) -> Tensor:
        """(N,): one value per sample, averaged over the outputs of a loss PyTorch keeps elementwise."""
        return _per_sample_mean(self(output, target, reduction="none"))


#: Every loss with a name: the names fit's ``loss=`` takes and sklearn's estimators use.
LOSS_REGISTRY: dict[str, Loss] = {spec.name: spec for spec in (
    Loss("cross_entropy", cross_entropy, "labels"),
    Loss("nll", nll_loss, "labels"),
    Loss("mse", mse_loss, "one_hot"),
    Loss("quadratic", quadratic_loss, "one_hot"),
    Loss("l1", l1_loss, "one_hot"),
    Loss("bce", binary_cross_entropy_with_logits, "one_hot"),
    Loss("binary_cross_entropy_with_logits", binary_cross_entropy_with_logits, "one_hot"),
    Loss("binary_cross_entropy", binary_cross_entropy, "one_hot"),
    # scikit-learn's names for its MLP losses (sklearn.neural_network._base.LOSS_FUNCTIONS), from logits
    Loss("log_loss", cross_entropy, "labels"),
    Loss("binary_log_loss", binary_log_loss, "one_hot"),
    Loss("squared_error", squared_error_loss, "values"),
    Loss("poisson", poisson_loss, "values"),
)}
LOSSES = tuple(LOSS_REGISTRY)


def _named(loss: str) -> Loss:
    spec = LOSS_REGISTRY.get(loss) if isinstance(loss, str) else None
    if spec is None:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)} or a callable")
    return spec


def get_loss(loss: str | Callable[..., Tensor]) -> LossFn:
    """The batch loss ``(outputs, targets) -> scalar Tensor`` for a name (its :class:`Loss`) or a callable."""
    if callable(loss):
        return loss
    return _named(loss)


def per_sample_loss(loss: str | Callable[..., Tensor]) -> LossFn:
    """``(outputs, targets) -> (N,)`` losses per sample, whose plain mean is the loss :func:`get_loss` gives.

    A name, or a callable that accepts ``reduction="none"`` (its values averaged over every axis but the
    first).
    """
    if not callable(loss):
        return _named(loss).per_sample
    try:
        takes = "reduction" in inspect.signature(loss).parameters
    except (TypeError, ValueError):  # NOTE: some builtins and C callables have no signature to read
        takes = False
    if not takes:
        raise ValueError("class_weight and sample_weight need a loss per sample: use a loss name "
                         f"({', '.join(LOSSES)}) or a callable that accepts reduction='none'")
    return lambda out, y: _per_sample_mean(loss(out, y, reduction="none"))


def weighted_loss(per_sample: Tensor, weight: np.ndarray) -> tuple[Tensor, float]:
    """``sum(w_i * loss_i) / sum(w_i)`` over the batch, and ``sum(w_i)``.

    A batch whose weights sum to 0 has loss 0 (and a zero gradient), not 0/0.
    """
    weight = np.asarray(weight)
    if per_sample.shape != (len(weight),):
        raise ValueError(f"the per-sample loss has shape {per_sample.shape}, expected ({len(weight)},)")
    # NOTE: the weights enter as a tensor and 1/sum(w) is computed by ops (in float64, as float(w.sum())
    # would be), so a captured step follows the weights of every batch. A zero-weight batch: the sum is
    # floored at the tiniest float64 and the scale capped at the dtype's largest value, so 0 * scale = 0.
    w = Tensor(weight)
    dtype = per_sample.dtype
    scale = (1.0 / w.sum().astype(np.float64).maximum(np.finfo(np.float64).tiny)).minimum(float(np.finfo(dtype).max))
    return (per_sample * w.astype(dtype)).sum() * scale.astype(dtype), float(weight.sum())


__all__ = [
    "LOSSES", "LOSS_REGISTRY", "CrossEntropy", "Loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "binary_log_loss", "cross_entropy", "get_loss", "l1_loss", "mse_loss",
    "nll_loss", "one_hot_labels", "per_sample_loss", "poisson_loss", "quadratic_loss", "squared_error_loss",
    "weighted_loss",
]
