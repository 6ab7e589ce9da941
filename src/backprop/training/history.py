"""History: what ``fit`` returns, Keras-style, with the textbook's counters; a callback of the training loop.

>>> h = History()
>>> h.record(0, {"loss": 0.5, "accuracy": 0.9}); h.history
{'loss': [0.5], 'accuracy': [0.9]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backprop.training.callbacks import Callback


@dataclass
class History(Callback):
    """Per-epoch metrics (``history["loss"]``, ``history["val_accuracy"]``...) and training counters.

    ``epochs`` completed epochs, ``iterations`` optimizer steps (mini-batches), ``samples_seen`` samples
    that went through a training step; with N samples and batch size B one epoch adds ceil(N/B) iterations
    and N samples. ``interrupted`` is True when Ctrl-C ended training early, ``stopped_early`` when a
    callback set ``model.stop_training`` (EarlyStopping, TerminateOnNaN...), ``terminated_on_nan`` when
    training stopped at a NaN/infinite loss (:class:`~backprop.training.callbacks.TerminateOnNaN`).

    As a callback (Keras's ``History``) it records every epoch's logs at ``on_epoch_end``, after the
    callbacks before it added theirs; the loop counts the epochs, iterations and samples.
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    iterations: int = 0
    samples_seen: int = 0
    interrupted: bool = False
    stopped_early: bool = False
    terminated_on_nan: bool = False

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.record(epoch, logs or {})

    def record(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return (f"History(epochs={self.epochs}, iterations={self.iterations}, samples_seen={self.samples_seen}, "
                f"metrics=[{keys}]{', interrupted=True' if self.interrupted else ''}"
                f"{', terminated_on_nan=True' if self.terminated_on_nan else ''})")
