"""backprop: neural networks that learn by backpropagation, on NumPy.

>>> import backprop as bp
>>> x = bp.tensor([[1.0, 2.0]], requires_grad=True)
>>> loss = (x ** 2).sum()
>>> loss.backward()
>>> x.grad
array([[2., 4.]], dtype=float32)
"""

from backprop.engine import *  # noqa: F403
from backprop.engine import __all__ as _engine_all
from backprop.engine.random import get_rng, manual_seed
from backprop import data, datasets, nn, optim  # noqa: E402
from backprop.data import DataLoader  # noqa: E402
from backprop.training import (  # noqa: E402
    Callback, History, LambdaCallback, TrainingDiverged, evaluate, fit, predict,
)

__version__ = "0.1.0"
__all__ = [*_engine_all, "Callback", "DataLoader", "History", "LambdaCallback", "TrainingDiverged", "__version__",
           "data", "datasets", "evaluate", "fit", "get_rng", "manual_seed", "nn", "optim", "predict"]
