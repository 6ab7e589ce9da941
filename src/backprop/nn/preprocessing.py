"""Feature standardisation as a layer, Keras-style: ``Normalization`` learns each feature's mean and variance from
data (``adapt``) and maps ``x`` to ``(x - mean) / std``; its statistics are buffers, so they are saved in the model
file and a loaded model applies the same transform with nothing else to keep.

As ``keras.layers.Normalization`` (``axis=-1``): the statistics are per feature of the last dimension, over every
other axis of the data; the variance is the population (biased) one; ``invert=True`` maps back,
``mean + x * std`` (to give a regression target scaled for training back in its own units). The layer is
fixed: training leaves its statistics alone, and before ``adapt`` (mean 0, variance 1) it is the identity.

A feature that is constant in the data (variance 0, such as a border pixel that is always 0) is divided by 1,
not by its standard deviation: scikit-learn's ``StandardScaler`` rule (``_handle_zeros_in_scale``), so it
becomes ``x - mean``: 0 on data like the data adapted to and a finite, unscaled difference on any other.
NOTE: Keras divides by ``max(std, 1e-7)`` instead, which gives 0 on the training data too, but multiplies a
value the training data never had there by 10**7. ``adapt`` counts a variance as 0 when it is within the
rounding error of its computation (scikit-learn's ``_is_constant_feature`` bound), since a constant column
does not always give exactly 0 in floating point.

>>> import numpy as np, backprop as bp
>>> x = np.array([[0.0, 10.0, 5.0], [2.0, 30.0, 5.0]], dtype=np.float32)
>>> norm = Normalization(3).adapt(x)
>>> norm.mean.tolist(), norm.var.tolist()          # the third feature is constant
([1.0, 20.0, 5.0], [1.0, 100.0, 0.0])
>>> norm(bp.tensor(x)).tolist()
[[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]
>>> norm(bp.tensor([[1.0, 20.0, 7.0]])).tolist()   # a constant feature is shifted, never blown up
[[0.0, 0.0, 2.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backprop.engine.tensor import DEFAULT_DTYPE, Tensor
from backprop.nn.contract import OnnxGraph
from backprop.nn.module import Module
from backprop.nn.registry import SIZE, Example, layer_type

__all__ = ["Normalization"]

_ADAPT_ROWS = 8192  # rows per chunk while adapting: bounded float64 temporaries for data of any size


def _statistic(name: str, value: Any, n: int) -> np.ndarray:
    """A given mean or variance as float64 of shape (n,) (a scalar is broadcast); ValueError when it is not."""
    try:
        arr = np.asarray(value, dtype=np.float64)
        arr = np.broadcast_to(arr, (n,)).copy()
    except (TypeError, ValueError):
        raise ValueError(f"Normalization: {name} must be a number or {n} numbers (one per feature), got "
                         f"{np.shape(value) if not isinstance(value, str) else repr(value)}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"Normalization: {name} must be finite, got {arr[~np.isfinite(arr)][0]}")
    return arr


@layer_type({"num_features": SIZE, "invert": bool}, examples=[
    Example(lambda: Normalization(4, mean=[0.5, -1.0, 2.0, 0.0], variance=[4.0, 0.25, 0.0, 1.0]), (3, 4),
            label="one constant feature"),
    Example(lambda: Normalization(3, mean=[1.0, 0.0, -2.0], variance=[0.5, 9.0, 2.0], invert=True), (2, 5, 3),
            label="inverted, 3-D input"),
], min_weights=lambda kw: 2 * kw["num_features"])
class Normalization(Module):
    """Standardise the last dimension: ``(x - mean) / std`` per feature (``keras.layers.Normalization``).

    Args:
        num_features: the size of the last dimension of the inputs.
        mean, variance: the statistics, if known (a number or one per feature); default 0 and 1, until
            :meth:`adapt` computes them from data.
        invert: compute the inverse, ``mean + x * std``.
        dtype: of the buffers ``mean`` and ``var`` (cast by ``Module.to`` as every buffer is).

    ``std`` is ``sqrt(var)``, or 1 where ``var`` is 0 (see the module docstring). The input must have
    ``num_features`` values in its last dimension; any number of leading dimensions.

    >>> import numpy as np
    >>> Normalization(2, mean=[1.0, 2.0], variance=[4.0, 0.0])
    Normalization(2)
    """

    keeps_shape = True

    def __init__(self, num_features: int, mean: Any = None, variance: Any = None, invert: bool = False,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"Normalization: num_features must be a positive integer, got {num_features!r}")
        self.num_features = int(num_features)
        self.invert = bool(invert)
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"Normalization: dtype must be floating point, got {dtype}")
        mean = _statistic("mean", 0.0 if mean is None else mean, self.num_features)
        var = _statistic("variance", 1.0 if variance is None else variance, self.num_features)
        if (var < 0).any():
            raise ValueError(f"Normalization: variance must be >= 0, got {var[var < 0][0]}")
        self.register_buffer("mean", mean.astype(dtype))
        self.register_buffer("var", var.astype(dtype))

    # ---------------------------------------------------------------------------------------- statistics
    def adapt(self, data: Any) -> Normalization:
        """Set ``mean`` and ``var`` to those of each feature (last dimension) of ``data``; returns self.

        ``data``: an array or Tensor of shape (samples, ..., num_features), finite. Computed in float64, two
        passes over the rows in chunks (no copy of the whole data), then stored in the buffers' dtype.
        """
        x = data.data if isinstance(data, Tensor) else np.asarray(data)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"Normalization.adapt: expected numbers, got dtype {x.dtype}")
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(f"Normalization.adapt: expected data of shape (samples, ..., {self.num_features}), "
                             f"got {x.shape}")
        rows = x.reshape(-1, self.num_features)
        n = len(rows)
        if n == 0:
            raise ValueError("Normalization.adapt: the data has no samples")
        total = np.zeros(self.num_features)
        for i in range(0, n, _ADAPT_ROWS):
            chunk = rows[i:i + _ADAPT_ROWS].astype(np.float64)
            if not np.isfinite(chunk).all():
                r, c = np.argwhere(~np.isfinite(chunk))[0]
                raise ValueError(f"Normalization.adapt: the data holds {chunk[r, c]} (row {i + r}, feature {c}); "
                                 "every value must be finite")
            total += chunk.sum(axis=0)
        mean = total / n
        squares = np.zeros(self.num_features)
        for i in range(0, n, _ADAPT_ROWS):  # NOTE: two passes: sum((x - mean)^2) loses nothing to cancellation
            squares += np.square(rows[i:i + _ADAPT_ROWS].astype(np.float64) - mean).sum(axis=0)
        var = squares / n
        # NOTE: scikit-learn's _is_constant_feature: a variance within the rounding error of the sums above is
        # that of a constant feature, whose scale must be 1 (the module docstring says why)
        eps = np.finfo(np.float64).eps
        var[var <= n * eps * var + (n * mean * eps) ** 2] = 0.0
        self.mean = mean.astype(self.mean.dtype)
        self.var = var.astype(self.var.dtype)
        return self

    def scale(self) -> np.ndarray:
        """The divisor of each feature: ``sqrt(var)``, or 1 where ``var`` is 0."""
        var = self.var
        return np.where(var > 0, np.sqrt(np.maximum(var, 0)), np.ones_like(var)).astype(var.dtype)

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x, dtype=self.mean.dtype))
        if x.ndim < 1 or x.shape[-1] != self.num_features:
            raise ValueError(f"Normalization: expected inputs with {self.num_features} features in the last "
                             f"dimension, got shape {x.shape}")
        if self.invert:
            return x * self.scale() + self.mean
        return (x - self.mean) / self.scale()

    def extra_repr(self) -> str:
        return f"{self.num_features}" + (", invert=True" if self.invert else "")

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Sub and Div (``invert``: Mul and Add) with the mean and the scale as initializers."""
        mean, scale = g.weight(self.mean, "mean"), g.weight(self.scale(), "scale")
        if self.invert:
            return g.node("Add", [g.node("Mul", [x, scale]), mean])
        return g.node("Div", [g.node("Sub", [x, mean]), scale])
