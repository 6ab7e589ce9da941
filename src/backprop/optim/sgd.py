"""Stochastic gradient descent, with PyTorch's exact update rule.

For each parameter with gradient ``g`` (``torch.optim.SGD``)::

    g = -g if maximize else g
    g = g + weight_decay * p                       # if weight_decay != 0
    if momentum != 0:
        b = g                     on the first step
        b = momentum * b + (1 - dampening) * g     afterwards
        g = g + momentum * b  if nesterov  else  b
    p = p - lr * g

Plain SGD (no momentum, weight decay or maximize) is exactly
``p.data -= lr * p.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from backprop.nn.module import LazyGrad, raw_grad

from .optimizer import Optimizer, check_lr, check_nonneg, check_unit, effective_grad

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent (optionally with momentum / Nesterov momentum).

    Args:
        params: iterable of parameters or of parameter-group dicts.
        lr: learning rate (finite, >= 0).
        momentum: momentum factor in ``[0, 1)``.
        dampening: dampening for momentum, in ``[0, 1]``.
        nesterov: use Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        weight_decay: L2 penalty (>= 0), added to the gradient.
        maximize: maximize the objective instead of minimizing it.

    State per parameter: ``"momentum_buffer"`` (only when momentum is used).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0,
                 dampening: float = 0, nesterov: bool = False, weight_decay: float = 0,
                 maximize: bool = False) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "nesterov": nesterov,
                    "weight_decay": weight_decay, "maximize": maximize}
        super().__init__(params, defaults)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        check_lr(group["lr"])
        check_unit("momentum", "momentum value", group["momentum"], closed=False)
        check_unit("dampening", "dampening value", group["dampening"], closed=True)
        check_nonneg("weight_decay", "weight_decay value", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening "
                f"(got nesterov=True, momentum={group['momentum']!r}, dampening={group['dampening']!r})"
            )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one SGD step; returns ``closure()`` if a closure is given."""
        loss = closure() if closure is not None else None
        state = self.state
        scratch = self._scratch
        for group in self.param_groups:
            lr = float(group["lr"])
            momentum = float(group["momentum"])
            weight_decay = float(group["weight_decay"])
            maximize = bool(group["maximize"])

            if momentum == 0.0:
                if weight_decay == 0.0 and not maximize:
                    for p in group["params"]:
                        g = raw_grad(p)
                        # NOTE: a LazyGrad: a captured step already made this update (backprop.jit)
                        if g is not None and type(g) is not LazyGrad:
                            data = p.data
                            data -= lr * g
                else:
                    for p in group["params"]:
                        g = p.grad
                        if g is None:
                            continue
                        data = p.data
                        w0, _ = scratch(p, data)
                        d = effective_grad(g, data, weight_decay, maximize, w0)
                        np.multiply(d, lr, out=w0)
                        data -= w0
                continue

            damp = 1.0 - float(group["dampening"])
            nesterov = bool(group["nesterov"])
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                data = p.data
                w0, w1 = scratch(p, data)
                d = effective_grad(g, data, weight_decay, maximize, w0)
                st = state.get(p)
                buf = None if st is None else st.get("momentum_buffer")
                if buf is None:
                    buf = np.array(d, dtype=data.dtype, copy=True)
                    if st is None:
                        state[p] = {"momentum_buffer": buf}
                    else:
                        st["momentum_buffer"] = buf
                else:
                    buf *= momentum
                    if damp == 1.0:
                        buf += d
                    else:
                        np.multiply(d, damp, out=w1)
                        buf += w1
                if nesterov:
                    np.multiply(buf, momentum, out=w1)
                    w1 += d
                    w1 *= lr
                else:
                    np.multiply(buf, lr, out=w1)
                data -= w1
        return loss
