"""``evaluate`` and ``predict``: the trained model on new data, in eval mode, in batches, without a graph.

>>> import numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> model = bp.nn.Sequential(bp.nn.Linear(2, 3))
>>> predict(model, np.zeros((5, 2))).shape
(5, 3)
>>> sorted(evaluate(model, np.zeros((4, 2)), [0, 1, 2, 0]))
['accuracy', 'loss']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backprop.engine.constraints import Interval, check
from backprop.engine.tensor import Tensor, no_grad
from backprop.nn.losses import get_loss
from backprop.nn.module import Module
from backprop.training.inputs import check_features, check_labels, check_xy, input_dtype
from backprop.training.metrics import resolve_metrics

__all__ = ["evaluate", "predict"]

BATCH_SIZE = Interval(int, 1)


def predict(model: Module, x: Any, batch_size: int = 1024, check_finite: bool = True,
            _name: str = "predict") -> np.ndarray:
    """The model's outputs for x (eval mode, no graph), computed in batches."""
    check(_name, "batch_size", batch_size, BATCH_SIZE)
    x, _ = check_xy(x, None, _name, check_finite, input_dtype(model), need_y=False)
    check_features(model, x, _name)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            outs = [model(Tensor(x[i:i + batch_size])).data for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs)


def evaluate(model: Module, x: Any, y: Any, *, loss: str | Callable[..., Tensor] = "cross_entropy",
             metrics: Sequence[str | Callable] = ("accuracy",), batch_size: int = 1024,
             check_finite: bool = True) -> dict[str, float]:
    """Mean loss and metrics over (x, y): ``{"loss": ..., "accuracy": ...}``."""
    check("evaluate", "batch_size", batch_size, BATCH_SIZE)
    x, y = check_xy(x, y, "evaluate", check_finite, input_dtype(model))
    y = check_labels(model, y, loss, "evaluate")
    out = predict(model, x, batch_size, check_finite=False, _name="evaluate")
    loss_fn = get_loss(loss)
    with no_grad():
        total = sum(float(loss_fn(Tensor(out[i:i + batch_size]), y[i:i + batch_size]).data) * len(y[i:i + batch_size])
                    for i in range(0, len(y), batch_size))
    result = {"loss": total / len(y)}
    for m in resolve_metrics(metrics, y):
        m.reset()
        m.update(out, y)
        result[m.name] = float(m.result())
    return result
