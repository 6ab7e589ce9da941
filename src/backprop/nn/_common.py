"""Helpers that several layer files share (convolution and pooling): argument parsing and padding.

They live here, below the layer files, so that no layer file imports another one's private functions.

>>> int_tuple(3, 2, "kernel_size", "Conv2d")
(3, 3)
>>> pad_images(np.ones((1, 1, 1, 2)), ((1, 0), (0, 1))).tolist()
[[[[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["int_tuple", "pad_images"]


def int_tuple(value: Any, n: int, name: str, owner: str, minimum: int = 1) -> tuple[int, ...]:
    """An int, or a tuple/list of ``n`` ints, as an ``n``-tuple of ints >= ``minimum``; ValueError naming ``owner``."""

    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        vals = (int(value),) * n
    elif isinstance(value, (tuple, list)) and len(value) == n and all(is_int(v) for v in value):
        vals = tuple(int(v) for v in value)
    else:
        raise ValueError(f"{owner}: {name} must be an int or a tuple of {n} ints, got {value!r}")
    if min(vals) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    return vals


def pad_images(x: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]], value: float = 0.0) -> np.ndarray:
    """``x`` (N, C, H, W) with ``pads`` ((top, bottom), (left, right)) of ``value`` around each image."""
    (pt, pb), (pl, pr) = pads
    if not (pt or pb or pl or pr):
        return x
    n, c, h, w = x.shape
    out = np.full((n, c, h + pt + pb, w + pl + pr), value, dtype=x.dtype)
    out[:, :, pt:pt + h, pl:pl + w] = x
    return out
