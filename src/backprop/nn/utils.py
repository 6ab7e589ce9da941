"""Gradient clipping, as ``torch.nn.utils``: call once the gradients are computed, before ``optimizer.step()``.

>>> import numpy as np, backprop as bp
>>> w = bp.nn.Parameter(np.zeros(2, dtype=np.float32))
>>> w.grad = np.array([3.0, 4.0], dtype=np.float32)
>>> round(clip_grad_norm_([w], max_norm=1.0), 4)        # the norm before clipping
5.0
>>> [round(float(g), 4) for g in w.grad]
[0.6, 0.8]
>>> clip_grad_value_([w], 0.7); [round(float(g), 4) for g in w.grad]
[0.6, 0.7]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from backprop.engine.function import replayable

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _with_grads(parameters: Any) -> list[Any]:
    """The parameters (one, or an iterable of them) that have a gradient."""
    if hasattr(parameters, "data") and hasattr(parameters, "grad"):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def _scale_(p: Any, factor: float) -> None:
    g = p.grad
    if isinstance(g, np.ndarray) and g.flags.writeable:
        g *= g.dtype.type(factor)
    else:  # a read-only or foreign array: replace it rather than write into it
        p.grad = np.asarray(g) * np.asarray(factor, dtype=np.asarray(g).dtype)


@replayable
def clip_grad_norm_(parameters: Iterable[Any] | Any, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale the gradients in place so that their total norm is at most ``max_norm``; return the total norm.

    PyTorch's formula: the total norm is the ``norm_type``-norm of the vector of every gradient's
    ``norm_type``-norm (``inf``: the largest absolute entry); every gradient is multiplied by
    ``clip_coef = max_norm / (total_norm + 1e-6)`` when that is below 1 (otherwise nothing changes).
    Parameters whose ``grad`` is None are skipped. A NaN or infinite total norm raises RuntimeError when
    ``error_if_nonfinite``; otherwise the gradients are left as they are (PyTorch would scale them by
    NaN or 0). Returns the norm before clipping as a Python float (PyTorch returns a 0-d tensor).
    """
    params = _with_grads(parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not params:
        return 0.0
    grads = [np.asarray(p.grad) for p in params]
    if norm_type == math.inf:
        norms = [float(np.max(np.abs(g))) if g.size else 0.0 for g in grads]
        total = max(norms)
    else:
        norms = [float(np.linalg.norm(g.ravel(), ord=norm_type)) if g.size else 0.0 for g in grads]
        total = float(np.linalg.norm(np.asarray(norms, dtype=np.float64), ord=norm_type))
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot "
                "be clipped. To disable this error and leave the gradients unclipped, set error_if_nonfinite=False"
            )
        return total
    clip_coef = max_norm / (total + 1e-6)
    if clip_coef < 1.0:
        for p in params:
            _scale_(p, clip_coef)
    return total


@replayable
def clip_grad_value_(parameters: Iterable[Any] | Any, clip_value: float) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]`` in place (``torch.nn.utils.clip_grad_value_``)."""
    c = float(clip_value)
    if not c >= 0:
        raise ValueError(f"clip_grad_value_: clip_value must be >= 0, got {clip_value!r}")
    for p in _with_grads(parameters):
        g = p.grad
        if isinstance(g, np.ndarray) and g.flags.writeable:
            np.clip(g, -c, c, out=g)
        else:
            p.grad = np.clip(np.asarray(g), -c, c)
