"""Training: fit / evaluate / predict, History, callbacks and metrics."""

from backprop.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgressBar,
    TensorBoard,
    TerminateOnNaN,
)
from backprop.training.fit import LOSSES, TrainingDiverged, evaluate, fit, get_loss, predict, quadratic_loss
from backprop.training.history import History
from backprop.training.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    plot_confusion_matrix,
    precision_recall_f1,
    top_k_accuracy,
)

__all__ = [
    "LOSSES", "CSVLogger", "Callback", "EarlyStopping", "History", "LambdaCallback", "LearningRateScheduler",
    "ModelCheckpoint", "ProgressBar", "TensorBoard", "TerminateOnNaN", "TrainingDiverged", "accuracy",
    "classification_report", "confusion_matrix", "evaluate", "fit", "get_loss", "plot_confusion_matrix",
    "precision_recall_f1", "predict", "quadratic_loss", "top_k_accuracy",
]
