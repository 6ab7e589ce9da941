"""Adam and AdamW, with PyTorch's exact update rules.

For each parameter with gradient ``g``, at its step ``t = 1, 2, ...``
(``torch.optim.Adam`` / ``torch.optim.AdamW``, non-fused, non-capturable)::

    g = -g if maximize else g
    Adam : g = g + weight_decay * p                 # L2 penalty through the gradient
    AdamW: p = p * (1 - lr * weight_decay)          # decoupled decay, before the update
    m = m + (1 - beta1) * (g - m)                   # m.lerp_(g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    v_max = max(v_max, v); use v_max for v          # amsgrad only
    denom = sqrt(v) / sqrt(1 - beta2**t) + eps
    p = p - (lr / (1 - beta1**t)) * m / denom
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .optimizer import Optimizer, check_lr, check_nonneg, check_unit, effective_grad, lerp_

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2014), optionally AMSGrad.

    Args:
        params: iterable of parameters or of parameter-group dicts.
        lr: learning rate (finite, >= 0).
        betas: coefficients ``(beta1, beta2)`` of the running averages, each in ``[0, 1)``.
        eps: term added to the denominator (>= 0).
        weight_decay: L2 penalty (>= 0), added to the gradient (see :class:`AdamW`
            for decoupled weight decay).
        amsgrad: use the AMSGrad variant (maximum of past second moments).
        maximize: maximize the objective instead of minimizing it.

    State per parameter: ``"step"`` (int), ``"exp_avg"``, ``"exp_avg_sq"`` and,
    with amsgrad, ``"max_exp_avg_sq"``.
    """

    _decoupled_weight_decay = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, maximize: bool = False) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize}
        super().__init__(params, defaults)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        check_lr(group["lr"])
        check_nonneg("eps", "epsilon value", group["eps"])
        betas = group["betas"]
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Invalid betas: {betas!r} (betas must be a pair (beta1, beta2))") from None
        check_unit("betas[0]", "beta parameter at index 0", beta1, closed=False)
        check_unit("betas[1]", "beta parameter at index 1", beta2, closed=False)
        check_nonneg("weight_decay", "weight_decay value", group["weight_decay"])

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one Adam step; returns ``closure()`` if a closure is given."""
        loss = closure() if closure is not None else None
        state = self.state
        scratch = self._scratch
        decoupled = self._decoupled_weight_decay
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = (float(b) for b in group["betas"])
            eps = float(group["eps"])
            weight_decay = float(group["weight_decay"])
            amsgrad = bool(group["amsgrad"])
            maximize = bool(group["maximize"])
            one_minus_beta1 = 1.0 - beta1
            one_minus_beta2 = 1.0 - beta2
            decay = 1.0 - lr * weight_decay  # decoupled (AdamW) factor
            l2 = 0.0 if decoupled else weight_decay

            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                data = p.data
                st = state.get(p)
                if st is None:
                    st = state[p] = {
                        "step": 0,
                        "exp_avg": np.zeros_like(data),
                        "exp_avg_sq": np.zeros_like(data),
                    }
                w0, w1 = scratch(p, data)
                step = st["step"] + 1
                st["step"] = step

                if decoupled and weight_decay:
                    data *= decay
                d = effective_grad(g, data, l2, maximize, w0)

                exp_avg = st["exp_avg"]
                exp_avg_sq = st["exp_avg_sq"]
                lerp_(exp_avg, d, one_minus_beta1, w1)
                np.multiply(d, one_minus_beta2, out=w1)
                w1 *= d
                exp_avg_sq *= beta2
                exp_avg_sq += w1

                step_size = lr / (1.0 - beta1 ** step)
                bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
                if amsgrad:
                    v = st.get("max_exp_avg_sq")
                    if v is None:
                        v = st["max_exp_avg_sq"] = np.zeros_like(data)
                    np.maximum(v, exp_avg_sq, out=v)
                else:
                    v = exp_avg_sq
                # denom = sqrt(v) / sqrt(bc2) + eps ; p += (-step_size * m) / denom
                np.sqrt(v, out=w1)
                w1 /= bias_correction2_sqrt
                w1 += eps
                np.multiply(exp_avg, step_size, out=w0)
                w0 /= w1
                data -= w0
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam update, instead of adding ``weight_decay * p`` to the gradient.

    Same arguments as :class:`Adam`; ``weight_decay`` defaults to ``1e-2``.
    """

    _decoupled_weight_decay = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
