"""Metrics computed from model outputs and targets (NumPy in, Python float out).

>>> import numpy as np
>>> accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([0, 0]))
0.5
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    """The predicted class of each row: argmax for several outputs, threshold at 0 (logit) for one."""
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).astype(np.int64)
    return outputs.argmax(axis=-1)


def correct(outputs: np.ndarray, y: np.ndarray) -> int:
    """Number of correctly classified samples; ``y`` holds class indices or one-hot rows."""
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    elif y.ndim == 2:
        y = y[:, 0]
    return int(np.count_nonzero(predicted_classes(outputs) == y))


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correctly classified samples."""
    return correct(outputs, y) / max(len(y), 1)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"accuracy": accuracy}
