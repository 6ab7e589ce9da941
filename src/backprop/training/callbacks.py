"""Callbacks: hooks into ``fit`` at the begin and end of training, epochs and batches (Keras names).

Set ``model.stop_training = True`` in a hook to end training after the current batch. ``fit`` calls
``on_train_end`` however training ends: epochs run out, a callback stops it, Ctrl-C, a diverging loss
(:class:`~backprop.training.callbacks.TrainingDiverged`, re-raised after the callbacks ran) or any other error.

Built in, with Keras's names and meanings: :class:`EarlyStopping`, :class:`ModelCheckpoint`,
:class:`CSVLogger`, :class:`LearningRateScheduler`, :class:`TerminateOnNaN`, :class:`ProgressBar`,
:class:`TensorBoard` and :class:`LambdaCallback`.

Hooks get ``logs``: ``on_epoch_end`` the epoch's metrics (``loss``, ``accuracy``, ``val_loss``, ``lr`` when
a learning-rate schedule is in use...), ``on_train_batch_end`` ``{"loss": batch loss, "size": batch size}``.
``fit`` calls the batch hooks only of callbacks that define them (class or instance attribute), so
epoch-level callbacks cost nothing per step. In data-parallel ``fit(..., distributed=True)`` every rank runs
the callbacks (so that EarlyStopping stops them all together) except those with ``root_only = True``
(ModelCheckpoint, CSVLogger, ProgressBar, TensorBoard: they write files or print), which run on rank 0 only;
``fit`` sets each callback's ``rank``, and the others print their messages on rank 0 only.

>>> class PrintLoss(Callback):
...     def on_epoch_end(self, epoch, logs=None):
...         print(epoch, round(logs["loss"], 2))
"""

from __future__ import annotations

import csv
import inspect
import io as _io
import math
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

from backprop.training import extensions
from backprop.training.tensorboard import SummaryWriter, require_tensorboard

__all__ = [
    "CSVLogger",
    "Callback",
    "DivergenceGuard",
    "EarlyStopping",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgressBar",
    "TensorBoard",
    "TerminateOnNaN",
    "TrainingDiverged",
]


class Callback:
    """Base class: override any hook. ``self.model``, ``self.params`` and ``self.optimizer`` are set by ``fit``."""

    model: Any = None
    params: dict[str, Any] | None = None
    optimizer: Any = None
    #: In data-parallel ``fit(distributed=True)`` only rank 0 runs it (it writes files or prints).
    root_only: bool = False
    #: This process's MPI rank, set by ``fit(distributed=True)``: the built-in callbacks print on rank 0 only.
    rank: int = 0

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def set_optimizer(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None: ...

    def on_train_end(self, logs: dict[str, float] | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_train_interrupted(self, progress: Any) -> None:
        """Ctrl-C stopped training; ``progress`` is where the epoch stood (a
        :class:`~backprop.training.loop.EpochProgress`), or None when it stopped inside a step or an epoch's end."""


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, **hooks: Any) -> None:
        for name, fn in hooks.items():
            if not name.startswith("on_") or not hasattr(Callback, name):
                raise ValueError(f"LambdaCallback: unknown hook {name!r}")
            setattr(self, name, fn)


# ------------------------------------------------------------------------------------------------ helpers
_MAX_WORDS = ("acc", "accuracy", "auc", "f1", "precision", "recall")


def _infer_mode(monitor: str) -> str:
    """"max" for accuracy-like metrics (accuracy, top_5_accuracy, macro_f1, precision...), else "min"."""
    name = monitor.removeprefix("val_")
    if "loss" in name or "error" in name:
        return "min"
    return "max" if any(name == w or name.endswith("_" + w) for w in _MAX_WORDS) else "min"


def _check_mode(cls: str, mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{cls}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    return _infer_mode(monitor) if mode == "auto" else mode


class _Monitor:
    """Reads the monitored value from the logs; ``val_X`` falls back to ``X`` (with a warning) without validation."""

    def __init__(self, owner: str, monitor: str) -> None:
        self.owner, self.monitor, self.requested = owner, monitor, monitor
        self.warned = False

    def reset(self) -> None:
        self.monitor, self.warned = self.requested, False

    def value(self, logs: dict[str, float] | None) -> float | None:
        logs = logs or {}
        if self.monitor in logs:
            return float(logs[self.monitor])
        if self.monitor.startswith("val_") and self.monitor[4:] in logs:
            warnings.warn(f"{self.owner}: {self.monitor!r} is not in the logs (no validation data); "
                          f"monitoring {self.monitor[4:]!r} instead", UserWarning, stacklevel=4)
            self.monitor = self.monitor[4:]
            return float(logs[self.monitor])
        if not self.warned:
            self.warned = True
            warnings.warn(f"{self.owner}: the monitored metric {self.monitor!r} is not in the logs "
                          f"(available: {', '.join(logs)}); it does nothing", UserWarning, stacklevel=4)
        return None


# --------------------------------------------------------------------------------------- EarlyStopping
class EarlyStopping(Callback):
    """Stop training when the monitored metric stops improving (Keras's ``EarlyStopping``).

    An epoch improves on the best so far when ``current < best - min_delta`` (mode "min") or
    ``current > best + min_delta`` ("max"); "auto" picks "max" for accuracy-like names (accuracy, f1,
    precision, recall, auc) and "min" otherwise. Training stops once ``patience`` epochs in a row have not
    improved (and epoch > 0). With ``baseline``, the patience counter is reset only by values that also
    beat the baseline. Epochs before ``start_from_epoch`` are ignored. ``monitor="val_loss"`` (or any
    ``val_*``) falls back to ``loss`` with a warning when there is no validation data.

    ``restore_best_weights=True`` keeps an in-memory copy of the best epoch's ``state_dict`` and loads it
    back in ``on_train_end``, whatever ends training: patience, the epochs running out, another callback,
    Ctrl-C or a diverging loss. ``best``, ``best_epoch`` and ``stopped_epoch`` (0 when it did not stop
    training) are left on the callback.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0, patience: int = 0, mode: str = "auto",
                 baseline: float | None = None, restore_best_weights: bool = False, start_from_epoch: int = 0,
                 verbose: int = 0) -> None:
        self._monitor = _Monitor("EarlyStopping", monitor)
        self.monitor = monitor
        self.mode = _check_mode("EarlyStopping", mode, monitor)
        self.min_delta = abs(float(min_delta))
        self.patience, self.baseline, self.start_from_epoch = int(patience), baseline, int(start_from_epoch)
        self.restore_best_weights, self.verbose = bool(restore_best_weights), verbose
        self._reset()

    def _reset(self) -> None:
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best: float | None = None
        self.best_weights: dict[str, np.ndarray] | None = None

    def _improves(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._monitor.reset()
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        current = self._monitor.value(logs)
        self.monitor = self._monitor.monitor
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.state_dict(), epoch
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose and self.rank == 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", flush=True)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose and self.rank == 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.", flush=True)
            self.model.load_state_dict(self.best_weights)


# -------------------------------------------------------------------------------------- ModelCheckpoint
class ModelCheckpoint(Callback):
    """Save the model (or its weights) at the end of epochs (Keras's ``ModelCheckpoint``).

    ``filepath`` may contain ``str.format`` fields: ``{epoch}`` (1-based, as in Keras) and any log key,
    e.g. ``"ckpt/model-{epoch:02d}-{val_loss:.4f}.safetensors"``. Missing folders are created. The file is
    written atomically with :func:`backprop.io.save` (architecture + weights; load it with
    ``backprop.io.load``) or, with ``save_weights_only``, :func:`backprop.io.save_weights`. Its metadata
    (``backprop.io.load_metadata``) holds the epoch and the epoch's logs.

    ``save_best_only``: save only when ``monitor`` improves on the best value so far (``mode`` as in
    :class:`EarlyStopping`); ``val_*`` falls back to the training metric without validation data.
    ``best`` and ``last_saved`` (a path or None) are left on the callback.
    """

    root_only = True

    def __init__(self, filepath: str | os.PathLike[str], monitor: str = "val_loss", save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto", verbose: int = 0) -> None:
        self.filepath = os.fspath(filepath)
        self._monitor = _Monitor("ModelCheckpoint", monitor)
        self.monitor = monitor
        self.mode = _check_mode("ModelCheckpoint", mode, monitor)
        self.save_best_only, self.save_weights_only, self.verbose = save_best_only, save_weights_only, verbose
        self.best: float | None = None
        self.last_saved: str | None = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._monitor.reset()
        self.best, self.last_saved = None, None

    def _path(self, epoch: int, logs: dict[str, float]) -> str:
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError) as e:
            raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} uses the field {e} which is not among "
                             f"epoch, {', '.join(logs)}") from None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        if self.save_best_only:
            current = self._monitor.value(logs)
            self.monitor = self._monitor.monitor
            if current is None or math.isnan(current):
                return
            better = self.best is None or (current < self.best if self.mode == "min" else current > self.best)
            if not better:
                if self.verbose:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}", flush=True)
                return
            if self.verbose:
                was = "inf" if self.best is None else f"{self.best:.5f}"
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {was} to {current:.5f}", flush=True)
            self.best = current
        self._save(epoch, logs)

    def _save(self, epoch: int, logs: dict[str, float]) -> None:
        bio = extensions.get("io")
        path = self._path(epoch, logs)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        metadata = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        if self.save_weights_only:
            bio.save_weights(self.model, path, metadata=metadata)
        else:
            try:
                bio.save(self.model, path, metadata=metadata)
            except TypeError as e:
                raise TypeError(f"ModelCheckpoint: {e} (or pass save_weights_only=True)") from None
        self.last_saved = path
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved {'weights' if self.save_weights_only else 'model'} to {path}", flush=True)


# -------------------------------------------------------------------------------------------- CSVLogger
class CSVLogger(Callback):
    """Write the epoch logs to a CSV file: a header ``epoch,loss,...`` and one row per epoch (Keras's ``CSVLogger``).

    The file is rewritten in full, atomically, at the end of every epoch from the rows kept in memory, so
    it is always complete and readable. ``append=True`` keeps the rows already in the file (read at the
    start of training); columns are the union of all keys in order of first appearance (an empty cell where
    a row lacks one). Numbers are written with full precision (``repr``), so they read back exactly.
    """

    root_only = True

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False) -> None:
        self.filename, self.sep, self.append = os.fspath(filename), separator, append
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.rows, self.columns = [], ["epoch"]
        if self.append and os.path.isfile(self.filename):
            with open(self.filename, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter=self.sep)
                for name in reader.fieldnames or ():
                    if name not in self.columns:
                        self.columns.append(name)
                self.rows = [dict(r) for r in reader]

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        write_text_atomic = extensions.get("io").write_text_atomic
        row: dict[str, Any] = {"epoch": epoch}
        for k, v in (logs or {}).items():
            if k not in self.columns:
                self.columns.append(k)
            row[k] = repr(float(v)) if isinstance(v, (int, float, np.number)) else v
        self.rows.append(row)
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, delimiter=self.sep, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        folder = os.path.dirname(os.path.abspath(self.filename))
        os.makedirs(folder, exist_ok=True)
        write_text_atomic(self.filename, buf.getvalue())


# ---------------------------------------------------------------------------------- LearningRateScheduler
def _is_plateau(scheduler: Any) -> bool:
    return any(c.__name__ == "ReduceLROnPlateau" for c in type(scheduler).__mro__)


def _current_lr(optimizer: Any) -> float:
    return float(optimizer.param_groups[0]["lr"])


class LearningRateScheduler(Callback):
    """Change the learning rate during training (Keras's ``LearningRateScheduler``, and PyTorch schedulers).

    ``schedule`` is either

    * a function ``(epoch, lr) -> new lr`` (or ``epoch -> lr``), called at the start of every epoch
      (0-based) with the current learning rate, as in Keras; the result is set on every parameter group;
    * a scheduler object of ``backprop.optim.lr_scheduler`` (or anything with PyTorch's API) built on the
      optimizer ``fit`` uses: ``scheduler.step()`` is called at the end of every epoch, or after every
      optimizer step with ``interval="step"`` (OneCycleLR, per-iteration warm-up...);
      ``ReduceLROnPlateau`` gets ``step(logs[monitor])`` at the end of every epoch (``val_*`` falls back to
      the training metric without validation data).

    ``fit(..., scheduler=s, scheduler_interval=...)`` is the same as adding ``LearningRateScheduler(s,
    interval=...)``. With a schedule in use, ``fit`` records ``lr`` in the epoch logs and History: the
    optimizer's learning rate at the end of the epoch, before an epoch-end scheduler step (so the rate the
    epoch trained with for per-epoch schedules).
    """

    def __init__(self, schedule: Any, verbose: int = 0, *, interval: str = "epoch", monitor: str = "val_loss") -> None:
        if interval not in ("epoch", "step"):
            raise ValueError(f"LearningRateScheduler: interval must be 'epoch' or 'step', got {interval!r}")
        self.schedule, self.verbose, self.interval = schedule, verbose, interval
        self.is_scheduler = hasattr(schedule, "step") and callable(schedule.step)
        if not self.is_scheduler and not callable(schedule):
            raise TypeError("LearningRateScheduler: schedule must be a function (epoch, lr) -> lr or a scheduler "
                            f"object with .step(), got {type(schedule).__name__}")
        if not self.is_scheduler and interval == "step":
            raise ValueError("LearningRateScheduler: a function schedule is per epoch; interval='step' needs a "
                             "scheduler object")
        self.plateau = self.is_scheduler and _is_plateau(schedule)
        if self.plateau and interval == "step":
            raise ValueError("LearningRateScheduler: ReduceLROnPlateau steps once per epoch (interval='epoch')")
        self._monitor = _Monitor("LearningRateScheduler", monitor)
        self._n_args = 2
        if not self.is_scheduler:
            try:
                params = inspect.signature(schedule).parameters.values()
                positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                if len(positional) == 1 and not any(p.kind is p.VAR_POSITIONAL for p in params):
                    self._n_args = 1
            except (TypeError, ValueError):
                pass
        if interval == "step":  # an instance attribute: fit calls batch hooks only where they are defined
            self.on_train_batch_end = self._step_batch

    def set_optimizer(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        own = getattr(self.schedule, "optimizer", None) if self.is_scheduler else None
        if own is not None and optimizer is not None and own is not optimizer:
            raise ValueError("LearningRateScheduler: the scheduler was built on another optimizer than the one fit "
                             "trains with; pass optimizer=<that optimizer> to fit, or give fit a factory "
                             "scheduler=lambda opt: ...")

    def _announce(self, epoch: int) -> None:
        if self.verbose and self.rank == 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {_current_lr(self.optimizer)}.",
                  flush=True)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._monitor.reset()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.is_scheduler:
            return
        lr = _current_lr(self.optimizer)
        new = self.schedule(epoch, lr) if self._n_args == 2 else self.schedule(epoch)
        if isinstance(new, bool) or not isinstance(new, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(new)) or new < 0:
            raise ValueError(f"LearningRateScheduler: the schedule returned {new!r} for epoch {epoch}; expected a "
                             "finite number >= 0")
        for group in self.optimizer.param_groups:
            group["lr"] = float(new)
        self._announce(epoch)

    def _step_batch(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.schedule.step()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if not self.is_scheduler or self.interval != "epoch":
            return
        if self.plateau:
            value = self._monitor.value(logs)
            if value is None:
                return
            self.schedule.step(value)
        else:
            self.schedule.step()
        self._announce(epoch + 1)


# ----------------------------------------------------------------------------------------- TerminateOnNaN
class TerminateOnNaN(Callback):
    """Stop training at the batch whose loss is NaN or infinite, instead of raising (Keras's ``TerminateOnNaN``).

    Without it ``fit`` raises :class:`~backprop.training.callbacks.TrainingDiverged`. With it ``fit`` skips that
    batch's update (the weights stay those of the last finite step; if that step's update itself
    overflowed, those of the epoch's start), records the epoch with ``loss`` NaN and returns the History
    with ``terminated_on_nan`` and ``stopped_early`` set.
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            if self.rank == 0:
                print(f"Batch {batch}: Invalid loss, terminating training", file=sys.stderr, flush=True)
            self.model.stop_training = True


# -------------------------------------------------------------------------------------- DivergenceGuard
class TrainingDiverged(FloatingPointError):
    """The loss or a gradient became NaN or infinite; the model keeps the last finite weights.

    ``what`` says what happened and what was kept; ``remedies`` names what to change, in ``fit``'s
    vocabulary (a front end such as the command line words its own advice from ``what``).
    """

    def __init__(self, what: str, remedies: str = "") -> None:
        super().__init__(f"{what}. {remedies}" if remedies else what)
        self.what, self.remedies = what, remedies


class DivergenceGuard(Callback):
    """What happens when a batch's loss is NaN or infinite: the loop made no update for it; this decides.

    ``fit`` puts it after every other callback. At the start of each epoch it keeps a copy of the weights;
    at a non-finite loss it restores that copy if the previous update overflowed a weight, then raises
    :class:`~backprop.training.loop.TrainingDiverged` (naming the step and what was kept) unless another
    callback, such as :class:`TerminateOnNaN`, has set ``model.stop_training``.
    """

    def __init__(self, history: Any) -> None:
        self.history = history
        self.epoch, self.snapshot = 0, []

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch = epoch
        self.snapshot = [p.data.copy() for p in self.model.parameters()]  # finite weights to fall back on

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        loss = (logs or {}).get("loss", 0.0)
        if math.isfinite(loss):
            return
        bad = self._restore_if_overflowed()
        if self.model.stop_training:
            return
        where = f"epoch {self.epoch + 1}, iteration {batch + 1} (step {self.history.iterations + 1})"
        if bad:
            kept = (f"the previous update overflowed parameter '{bad}', so the weights from the start of "
                    f"epoch {self.epoch + 1} were restored")
        else:
            kept = "the model keeps the weights of the last finite step"
        raise TrainingDiverged(f"the loss became {loss} at {where}; {kept}",
                               "Try a lower learning rate or gradient clipping (clip_norm=...), or add the "
                               "TerminateOnNaN callback to stop without an error.")

    def _restore_if_overflowed(self) -> str | None:
        """If the last update made a weight non-finite, restore the epoch's first weights; the bad one's name."""
        bad = [name for name, p in self.model.named_parameters() if not np.isfinite(p.data).all()]
        if not bad:
            return None
        for p, saved in zip(self.model.parameters(), self.snapshot):
            p.data[...] = saved
        return bad[0]


# --------------------------------------------------------------------------------------------- progress
class _Progress:
    """A tqdm bar per epoch (in a terminal, or always with ``bar=True``) and one summary line per epoch."""

    def __init__(self, verbose: int, epochs: int, steps: int, bar: bool | None = None) -> None:
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.use_bar = verbose == 1 and (sys.stderr.isatty() if bar is None else bool(bar))
        self.bar = None

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.t0, self.samples, self.loss_sum, self.last = epoch, time.perf_counter(), 0, 0.0, 0.0
        if self.use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}", unit="it", leave=False,
                            dynamic_ncols=True, mininterval=0.1)

    def step(self, n: int, loss: float) -> None:
        if self.bar is None:
            return
        self.samples += n
        self.loss_sum += loss * n
        self.bar.update(1)
        now = time.perf_counter()
        if now - self.last > 0.2:
            self.last = now
            rate = self.samples / max(now - self.t0, 1e-9)
            self.bar.set_postfix_str(f"loss={self.loss_sum / self.samples:.4f}, {rate:,.0f} samples/s", refresh=False)

    def end_epoch(self, logs: dict[str, float]) -> None:
        seconds = time.perf_counter() - self.t0
        self.close()
        if self.verbose:
            parts = " - ".join(f"{k} {v:.4f}" for k, v in logs.items())
            print(f"Epoch {self.epoch + 1}/{self.epochs} - {seconds:.2f}s - {parts}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ProgressBar(Callback):
    """The progress display of ``fit(verbose=1)`` as a callback: ``fit(..., verbose=0, callbacks=[ProgressBar()])``.

    A tqdm bar per epoch (loss and samples/s) when stderr is a terminal (``bar=True``: always,
    ``bar=False``: never), and one summary line per epoch with every log, including those other callbacks
    add (``fit`` runs ProgressBars after the other callbacks). With a ProgressBar, ``fit`` prints nothing
    of its own.
    """

    root_only = True

    def __init__(self, bar: bool | None = None) -> None:
        self.bar = bar
        self._progress: _Progress | None = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        params = self.params or {}
        self._progress = _Progress(1, params.get("epochs", 0), params.get("steps", 0), bar=self.bar)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._progress.start_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self._progress.bar is not None and math.isfinite(logs.get("loss", 0.0)):
            self._progress.step(logs.get("size", 0), logs.get("loss", 0.0))

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._progress.end_epoch(logs or {})

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- TensorBoard
class TensorBoard(Callback):
    """Write TensorBoard event files to ``log_dir`` (``tensorboard --logdir <log_dir>`` shows them).

    Every epoch: a scalar per log key (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``...)
    at step = epoch (0-based). With ``update_freq=N`` (an int) also ``batch/loss``, the mean training loss
    of the last N iterations, every N iterations at step = the iteration count. Every ``histogram_freq``
    epochs (0: never) histograms of each parameter's values ``weights/<name>`` and of its gradient from
    the epoch's last batch ``grads/<name>``. One event file per ``fit``, flushed every epoch and closed
    when training ends. Steps restart at 0 with every ``fit``: give each run its own ``log_dir``
    (e.g. ``logs/run-1``), as TensorBoard drops points whose steps go back within one folder.
    Needs the ``tensorboard`` package (``pip install tensorboard``), not TensorFlow.
    """

    root_only = True

    def __init__(self, log_dir: str | os.PathLike[str] = "logs", update_freq: str | int = "epoch",
                 histogram_freq: int = 1) -> None:
        require_tensorboard()
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(update_freq, int)
                                       or update_freq < 1):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch' or a positive int, got {update_freq!r}")
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ValueError(f"TensorBoard: histogram_freq must be an int >= 0, got {histogram_freq!r}")
        self.log_dir, self.update_freq, self.histogram_freq = os.fspath(log_dir), update_freq, histogram_freq
        self.writer: Any = None
        if isinstance(update_freq, int):  # batch hooks only when needed (fit skips them otherwise)
            self.on_train_batch_end = self._batch_end

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.close()
        self.writer = SummaryWriter(self.log_dir)
        self._step, self._window = 0, []

    def _batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._step += 1
        self._window.append((logs or {}).get("loss", float("nan")))
        if self._step % self.update_freq == 0:
            self.writer.add_scalar("batch/loss", float(np.mean(self._window)), self._step)
            self._window = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for k, v in (logs or {}).items():
            self.writer.add_scalar(k, float(v), epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            for name, p in self.model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", p.data, epoch)
                if p.grad is not None:
                    self.writer.add_histogram(f"grads/{name}", p.grad, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.close()
