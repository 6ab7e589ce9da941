"""RMSprop, with PyTorch's exact update rule.

For each parameter with gradient ``g`` (``torch.optim.RMSprop``)::

    g = -g if maximize else g
    g = g + weight_decay * p                        # if weight_decay != 0
    v = alpha * v + (1 - alpha) * g * g
    if centered:
        a = a + (1 - alpha) * (g - a)               # a.lerp_(g, 1 - alpha)
        denom = sqrt(v - a * a) + eps
    else:
        denom = sqrt(v) + eps
    if momentum > 0:
        b = momentum * b + g / denom
        p = p - lr * b
    else:
        p = p - lr * g / denom

Note that ``eps`` is added outside the square root, as in PyTorch (Keras and
TensorFlow add it inside).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .optimizer import Optimizer, check_lr, check_nonneg, check_unit, effective_grad, lerp_

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop (Hinton), optionally centered and with momentum.

    Args:
        params: iterable of parameters or of parameter-group dicts.
        lr: learning rate (finite, >= 0).
        alpha: smoothing constant of the squared-gradient average, in ``[0, 1]``.
        eps: term added to the denominator (>= 0).
        weight_decay: L2 penalty (>= 0), added to the gradient.
        momentum: momentum factor in ``[0, 1)``.
        centered: normalise by the estimated variance of the gradient instead
            of its uncentered second moment.
        maximize: maximize the objective instead of minimizing it.

    State per parameter: ``"step"`` (int), ``"square_avg"``, and
    ``"momentum_buffer"`` (momentum > 0) / ``"grad_avg"`` (centered).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, maximize: bool = False) -> None:
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay,
                    "momentum": momentum, "centered": centered, "maximize": maximize}
        super().__init__(params, defaults)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        check_lr(group["lr"])
        check_unit("alpha", "alpha value", group["alpha"], closed=True)
        check_nonneg("eps", "epsilon value", group["eps"])
        check_nonneg("weight_decay", "weight_decay value", group["weight_decay"])
        check_unit("momentum", "momentum value", group["momentum"], closed=False)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one RMSprop step; returns ``closure()`` if a closure is given."""
        loss = closure() if closure is not None else None
        state = self.state
        scratch = self._scratch
        for group in self.param_groups:
            lr = float(group["lr"])
            alpha = float(group["alpha"])
            eps = float(group["eps"])
            weight_decay = float(group["weight_decay"])
            momentum = float(group["momentum"])
            centered = bool(group["centered"])
            maximize = bool(group["maximize"])
            one_minus_alpha = 1.0 - alpha

            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                data = p.data
                st = state.get(p)
                if st is None:
                    st = state[p] = {"step": 0, "square_avg": np.zeros_like(data)}
                st["step"] += 1
                w0, w1 = scratch(p, data)
                d = effective_grad(g, data, weight_decay, maximize, w0)

                square_avg = st["square_avg"]
                np.multiply(d, one_minus_alpha, out=w1)
                w1 *= d
                square_avg *= alpha
                square_avg += w1

                if centered:
                    grad_avg = st.get("grad_avg")
                    if grad_avg is None:
                        grad_avg = st["grad_avg"] = np.zeros_like(data)
                    lerp_(grad_avg, d, one_minus_alpha, w1)
                    np.multiply(grad_avg, grad_avg, out=w1)
                    np.subtract(square_avg, w1, out=w1)
                    np.sqrt(w1, out=w1)
                else:
                    np.sqrt(square_avg, out=w1)
                w1 += eps  # w1 = denominator

                if momentum > 0.0:
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = np.zeros_like(data)
                    buf *= momentum
                    np.divide(d, w1, out=w1)
                    buf += w1
                    np.multiply(buf, lr, out=w1)
                    data -= w1
                else:
                    np.multiply(d, lr, out=w0)
                    w0 /= w1
                    data -= w0
        return loss
