"""Training: fit / evaluate / predict, History, callbacks and metrics."""

from backprop.training.callbacks import Callback, LambdaCallback
from backprop.training.fit import LOSSES, TrainingDiverged, evaluate, fit, get_loss, predict, quadratic_loss
from backprop.training.history import History
from backprop.training.metrics import accuracy

__all__ = ["LOSSES", "Callback", "History", "LambdaCallback", "TrainingDiverged", "accuracy", "evaluate", "fit",
           "get_loss", "predict", "quadratic_loss"]
