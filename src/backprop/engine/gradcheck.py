"""Check an analytic gradient against central finite differences, in float64.

>>> import backprop as bp
>>> bp.gradcheck(lambda x: (x * x).sum(), [np.array([1.0, -2.0])])
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backprop.engine.function import enable_grad
from backprop.engine.tensor import Tensor


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    wrt: Sequence[int] | None = None,
    seed: int = 0,
) -> bool:
    """True if ``fn``'s backward agrees with (f(x+eps) - f(x-eps)) / 2eps for every input element.

    Inputs are converted to float64 tensors. A non-scalar output is reduced with fixed random weights
    ``w`` (checking the vector-Jacobian product ``w^T J``, which is what backward computes). On a mismatch
    raises AssertionError naming the input, the worst element and both values.
    """
    arrays = [np.array(x.data if isinstance(x, Tensor) else x, dtype=np.float64) for x in inputs]
    wrt = list(range(len(arrays))) if wrt is None else list(wrt)
    tensors = [Tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    with enable_grad():
        out = fn(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if not wrt:  # an op without a gradient (one-hot labels): its forward ran, there is nothing to compare
        return True
    w = np.random.default_rng(seed).uniform(0.5, 1.5, size=out.shape)

    def f(*xs: np.ndarray) -> float:
        return float(np.sum(fn(*[Tensor(x) for x in xs]).data.astype(np.float64) * w))

    with enable_grad():
        out.backward(w.astype(out.dtype))
    for i in wrt:
        analytic = tensors[i].grad if tensors[i].grad is not None else np.zeros_like(arrays[i])
        numeric = np.zeros_like(arrays[i])
        flat = arrays[i].reshape(-1)  # a view: perturbing it perturbs arrays[i]
        num_flat = numeric.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            plus = f(*arrays)
            flat[j] = old - eps
            minus = f(*arrays)
            flat[j] = old
            num_flat[j] = (plus - minus) / (2 * eps)
        err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if np.any(err > 0) or not np.all(np.isfinite(analytic)):
            k = int(np.nanargmax(np.where(np.isfinite(analytic), err, np.inf).reshape(-1))) if err.size else 0
            idx = np.unravel_index(k, arrays[i].shape) if arrays[i].ndim else ()
            raise AssertionError(
                f"gradcheck failed for input {i} (shape {arrays[i].shape}) at element {idx}: "
                f"analytic {analytic.reshape(-1)[k]!r} vs numeric {numeric.reshape(-1)[k]!r} "
                f"(atol={atol}, rtol={rtol})"
            )
    return True
