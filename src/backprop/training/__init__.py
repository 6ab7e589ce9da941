"""Training: the one loop (``Step``, ``Loop``), ``fit`` / ``evaluate`` / ``predict``, History, callbacks, metrics.

>>> from backprop.training import Loop, Step, fit
>>> Step.train_step.__doc__.split(":")[0]
'One iteration'
"""

from backprop.nn.losses import LOSSES, get_loss, quadratic_loss
from backprop.training.callbacks import (
    Callback,
    CSVLogger,
    DivergenceGuard,
    EarlyStopping,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgressBar,
    TensorBoard,
    TerminateOnNaN,
    TrainingDiverged,
)
from backprop.training.evaluate import evaluate, predict
from backprop.training.fit import fit
from backprop.training.health import HealthIssue, TrainingHealth, TrainingHealthWarning
from backprop.training.history import History
from backprop.training.jit import CapturedStep, jit
from backprop.training.loop import (
    Batch,
    CallbackList,
    Loop,
    Step,
    StepResult,
    batches,
    register_loop_callback,
)
from backprop.training.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    plot_confusion_matrix,
    precision_recall_f1,
    top_k_accuracy,
)

__all__ = [
    "Batch", "CSVLogger", "Callback", "CallbackList", "CapturedStep", "DivergenceGuard", "EarlyStopping",
    "HealthIssue", "History", "LOSSES", "LambdaCallback", "LearningRateScheduler", "Loop", "ModelCheckpoint",
    "ProgressBar", "Step", "StepResult", "TensorBoard", "TerminateOnNaN", "TrainingDiverged", "TrainingHealth",
    "TrainingHealthWarning", "accuracy", "batches", "classification_report", "confusion_matrix", "evaluate", "fit",
    "get_loss", "jit", "plot_confusion_matrix", "precision_recall_f1", "predict", "quadratic_loss",
    "register_loop_callback", "top_k_accuracy",
]
