"""Callbacks: hooks into ``fit`` at the begin and end of training, epochs and batches (Keras names).

Set ``model.stop_training = True`` in a hook to end training after the current batch.

>>> class PrintLoss(Callback):
...     def on_epoch_end(self, epoch, logs=None):
...         print(epoch, round(logs["loss"], 2))
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class: override any hook. ``self.model`` and ``self.params`` are set by ``fit``."""

    model: Any = None
    params: dict[str, Any] | None = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None: ...

    def on_train_end(self, logs: dict[str, float] | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None: ...


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, **hooks: Any) -> None:
        for name, fn in hooks.items():
            if not name.startswith("on_") or not hasattr(Callback, name):
                raise ValueError(f"LambdaCallback: unknown hook {name!r}")
            setattr(self, name, fn)
