"""The classic training step, written once for the tests that capture it (``bp.jit``) or compare with it.

>>> import numpy as np, backprop as bp
>>> model = bp.nn.Linear(3, 2)
>>> step = classic_step(model, bp.optim.SGD(model.parameters(), lr=0.1), returns="out, loss")
>>> out, loss = step(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]))
>>> out.shape
(4, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import backprop as bp

RETURNS = ("loss", "out, loss", "loss, out")


def classic_step(model: Any, opt: Any, returns: str = "loss") -> Callable[[Any, Any], Any]:
    """``zero_grad``, forward, cross-entropy, ``backward``, ``step`` as one function of (x, y), returning the
    loss, or the output and the loss in the order ``returns`` names (what the compiled dense step accepts)."""
    if returns not in RETURNS:
        raise ValueError(f"returns must be one of {RETURNS}, got {returns!r}")

    def train_step(x: Any, y: Any) -> Any:
        opt.zero_grad()
        out = model(bp.Tensor(x))
        loss = bp.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        return {"loss": loss, "out, loss": (out, loss), "loss, out": (loss, out)}[returns]

    return train_step
