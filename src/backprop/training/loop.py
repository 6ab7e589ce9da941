"""The one training loop: epochs of mini-batches, each through a :class:`Step`, with callbacks around it.

A **Step** is the training step of one mini-batch: the inputs flow forward through the model to a
prediction, the cost measures its error, the error flows backward through every layer (the chain rule),
and the optimizer moves every weight against its gradient. :meth:`Step.train_step` is the override point
(Keras 3's ``Model.train_step``): subclass Step to change what one step does, and the loop, ``fit``, the
callbacks, checkpoints and data parallelism still work. This module is the only place in the library,
outside the engine and the learner's tools, that starts a backward pass.

A **Loop** runs ``epochs`` passes over an iterable of :class:`Batch` objects. Everything else is a
callback on it (:mod:`backprop.training.callbacks`): the :class:`~backprop.training.history.History`,
the progress display, learning-rate schedules, early stopping, checkpoints, TensorBoard, and what happens
when the loss stops being finite (:class:`~backprop.training.callbacks.DivergenceGuard`). Data
parallelism plugs in from outside as a wrapper around a Step (``backprop.distributed.DataParallelStep``),
as Horovod's DistributedOptimizer wraps an optimizer; a captured, replayed step can replace the eager one
the same way, without touching the loop.

With N samples and batch size B an epoch is ceil(N/B) iterations, and every sample is used once.

>>> import numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
>>> y = (x[:, 0] > 0).astype(np.int64)
>>> model = bp.nn.Sequential(bp.nn.Linear(2, 8), bp.nn.Tanh(), bp.nn.Linear(8, 2))
>>> step = Step(model, bp.optim.SGD(model.parameters(), lr=0.5), "cross_entropy")
>>> history = Loop(step, batches(x, y, batch_size=16, seed=0), epochs=5).run()
>>> history.iterations, history.samples_seen, history.history["loss"][-1] < history.history["loss"][0]
(20, 320, True)
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from backprop.data.loader import DataLoader
from backprop.engine.memory import tune_malloc
from backprop.engine.tensor import Tensor
from backprop.nn.losses import get_loss, per_sample_loss, weighted_loss
from backprop.nn.module import LazyGrad, Module, raw_grad
from backprop.nn.utils import clip_grad_norm_, clip_grad_value_
from backprop.training.callbacks import Callback, ProgressBar, TrainingDiverged
from backprop.training.history import History
from backprop.training.inputs import all_finite

__all__ = ["Batch", "CallbackList", "Loop", "NonFiniteGradient", "Step", "StepResult", "TrainingDiverged", "batches",
           "register_loop_callback"]


class NonFiniteGradient(TrainingDiverged):
    """A gradient holds NaN or infinity (found before the update): ``parameter`` names it."""

    def __init__(self, parameter: str, loss: float) -> None:
        super().__init__(f"the gradient of parameter '{parameter}' is NaN or infinite")
        self.parameter, self.loss = parameter, loss


# ------------------------------------------------------------------------------------------------ data
class Batch(NamedTuple):
    """One mini-batch: inputs, targets, per-sample loss weights (or None) and the samples' indices.

    ``n`` and ``total`` describe the WHOLE batch even when a data-parallel rank holds a shard of it: its
    number of samples and the sum of its loss weights (``n`` without weights).
    """

    x: np.ndarray
    y: Any
    w: np.ndarray | None
    index: np.ndarray
    n: int
    total: float


class Batches:
    """Re-iterable mini-batches of in-memory arrays: each ``iter()`` is one epoch drawn by ``loader``.

    NOTE: the loader shuffles sample INDICES and the rows are gathered here, so targets, weights and
    indices stay together whatever the arrays are; the permutation is the one ``DataLoader(x, y)`` draws.
    """

    def __init__(self, x: np.ndarray, y: Any, w: np.ndarray | None, loader: DataLoader,
                 keep: Callable[[Batch], bool] | None = None) -> None:
        self.x, self.y, self.w, self.loader, self.keep = x, y, w, loader, keep

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        x, y, w, keep = self.x, self.y, self.w, self.keep
        in_order = not self.loader.shuffle
        for idx in self.loader:
            # NOTE: without shuffling a batch is a run of rows: a slice gathers it as a view, without a copy
            sel = slice(int(idx[0]), int(idx[-1]) + 1) if in_order and len(idx) else idx
            wb = None if w is None else w[sel]
            batch = Batch(x[sel], None if y is None else y[sel], wb, idx, len(idx),
                          float(len(idx)) if wb is None else float(wb.sum()))
            if keep is None or keep(batch):
                yield batch


def batches(x: Any, y: Any = None, w: Any = None, *, batch_size: int = 32, shuffle: bool = True,
            seed: Any = None, keep: Callable[[Batch], bool] | None = None) -> Batches:
    """The mini-batches of (x, y[, w]) for a :class:`Loop`: a fresh permutation every epoch from ``seed``.

    ``keep(batch)`` may drop a batch (scikit-learn skips those whose sample weights sum to 0: ``batch.total``).
    """
    loader = DataLoader(np.arange(len(x)), batch_size=batch_size, shuffle=shuffle, seed=seed)
    return Batches(np.asarray(x), y, None if w is None else np.asarray(w), loader, keep)


# ------------------------------------------------------------------------------------------------ step
class StepResult(NamedTuple):
    """What a step tells the loop: the WHOLE batch's loss (the same on every data-parallel rank), its
    number of samples and the weight of its loss in the epoch's mean; this process's outputs and targets
    (for the metrics; None when it had no rows); ``applied`` is False when the loss was not finite and
    no update was made."""

    loss: float
    size: int
    weight: float
    outputs: np.ndarray | None
    targets: Any
    applied: bool = True


class Step:
    """The training step of one mini-batch (forward, cost, backward, update), in overridable pieces.

    Args:
        model: the network.
        optimizer: its optimizer.
        loss: a loss name of :mod:`backprop.nn.losses` or ``callable(outputs, targets) -> Tensor``; with
            per-sample weights in the batch, the loss is ``sum(w_i loss_i) / sum(w_i)`` (``weighted=True``
            checks at once that the loss has a per-sample form).
        clip_norm, clip_value: gradient clipping between backward and the update (PyTorch's
            ``clip_grad_value_`` first, then ``clip_grad_norm_``).
        check_finite: a NaN or infinite gradient raises :class:`NonFiniteGradient` before the update.

    :meth:`train_step` composes :meth:`compute_loss`, :meth:`backpropagate` and :meth:`apply_gradients`;
    override any of them. A step whose loss is not finite makes no update and reports ``applied=False``:
    the loop then hands the decision to the callbacks (stop with TerminateOnNaN, or raise).
    """

    #: Skip the update when the loss is not finite (False: update anyway, as scikit-learn does).
    skip_nonfinite: bool = True
    #: May ``fit`` capture this step and replay it (:class:`~backprop.training.jit.CapturedStep`)? A replay
    #: runs the ops, not the Python around them. None: only when nothing but ops can happen, i.e. the loss
    #: is a name and ``compute_loss``, ``backpropagate`` and ``train_step`` are Step's own. A subclass
    #: whose ``compute_loss`` has no Python that must run every step may set True.
    capturable: bool | None = None

    def __init__(self, model: Module, optimizer: Any, loss: Any = "cross_entropy", *, weighted: bool = False,
                 clip_norm: float | None = None, clip_value: float | None = None, check_finite: bool = True) -> None:
        self.model, self.optimizer = model, optimizer
        self.loss = loss
        self.loss_fn = None if loss is None else get_loss(loss)  # None: a subclass computes its own loss
        if getattr(self.loss_fn, "targets", None) == "labels":  # NOTE: labels need no conversion: skip a call
            self.loss_fn = self.loss_fn.fn
        # NOTE: built now, so that a loss without a per-sample form fails before training, not at the first batch
        self.per_sample_fn = per_sample_loss(loss) if weighted else None
        self.clip_norm, self.clip_value, self.check_finite = clip_norm, clip_value, check_finite
        self.params = list(model.parameters())
        self.named_params = list(model.named_parameters())

    # ---------------------------------------------------------------------------------- the pieces
    def compute_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Forward and cost: the model's outputs for ``batch.x`` and the (weighted) mean loss."""
        out = self.model(Tensor(batch.x))
        if batch.w is None:
            return out, self.loss_fn(out, batch.y)
        if self.per_sample_fn is None:
            self.per_sample_fn = per_sample_loss(self.loss)
        return out, weighted_loss(self.per_sample_fn(out, batch.y), batch.w)[0]

    def backpropagate(self, loss: Tensor | None, scale: float | None = None, x: np.ndarray | None = None) -> None:
        """The backward pass: ``d(scale * loss)/d(weight)`` added into every parameter's ``.grad``.

        ``loss=None`` with ``x`` (a data-parallel rank whose shard of the batch is empty): the model still
        runs forward and backward on the zero-row ``x``, so that layers that communicate (synchronised
        BatchNorm) join every collective.
        """
        if loss is None:
            if x is not None:
                self.model(Tensor(x)).sum().backward(np.zeros((), dtype=self.model.dtype))
        elif scale is None:
            loss.backward()
        else:
            loss.backward(np.asarray(scale, dtype=loss.dtype))

    def apply_gradients(self, loss_value: float = math.nan) -> None:
        """Check the gradients are finite, clip them, and let the optimizer move every weight."""
        if self.check_finite:
            bad = _nonfinite_gradient(self.named_params)
            if bad is not None:  # stop before the update: the weights stay the last finite ones
                raise NonFiniteGradient(bad, loss_value)
        if self.clip_value is not None:
            clip_grad_value_(self.params, self.clip_value)
        if self.clip_norm is not None:
            clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()

    # ---------------------------------------------------------------------------- the override point
    def train_step(self, batch: Batch) -> StepResult:
        """One iteration: zero the gradients, forward, cost, backward, update."""
        self.optimizer.zero_grad()
        out, loss = self.compute_loss(batch)
        value = float(loss.data)
        applied = math.isfinite(value) or not self.skip_nonfinite
        if applied:
            self.backpropagate(loss)
            self.apply_gradients(value)
        return StepResult(value, batch.n, self.epoch_weight(batch), out.data, batch.y, applied)

    def epoch_weight(self, batch: Batch) -> float:
        """The weight of this batch's loss in the epoch's mean loss: its sum of loss weights (its size without)."""
        return batch.total

    # -------------------------------------------------------------- hooks for wrappers (data parallelism)
    def reduce_metrics(self, metrics: Sequence[Any]) -> None:
        """Merge the epoch's metric states over the processes that share the batches (none here)."""

    def context(self) -> contextlib.AbstractContextManager:
        """Entered for the whole run (synchronised BatchNorm under data parallelism)."""
        return contextlib.nullcontext()

    def on_exception(self, error: BaseException) -> None:
        """An error escaped a step: a data-parallel wrapper ends every rank here instead of leaving them waiting."""

    @property
    def is_root(self) -> bool:
        """True on the process that prints and writes files (the only one, without data parallelism)."""
        return True


def _nonfinite_gradient(named_params: list[tuple[str, Any]]) -> str | None:
    """The name of the first parameter whose gradient holds NaN or infinity, else None (one sum each:
    :func:`~backprop.training.inputs.all_finite`)."""
    for name, p in named_params:
        g = raw_grad(p)
        if type(g) is LazyGrad:  # NOTE: folded into the update by a captured step, which checked its factors
            continue
        if g is not None and not all_finite(np.asarray(g)):
            return name
    return None


# ------------------------------------------------------------------------------------------- callbacks
_GLOBAL_CALLBACKS: dict[int, Callable[[], Callback]] = {}


class RemovableHandle:
    """What :func:`register_loop_callback` returns: ``handle.remove()`` unregisters (as PyTorch's hooks)."""

    def __init__(self, key: int) -> None:
        self.key = key

    def remove(self) -> None:
        _GLOBAL_CALLBACKS.pop(self.key, None)


def register_loop_callback(make: Callable[[], Callback]) -> RemovableHandle:
    """Add a callback to EVERY training loop from now on, whichever front end runs it: ``fit``, the
    scikit-learn estimators, data-parallel training, the command line (PyTorch's global module hooks).

    ``make()`` is called once per loop and returns the Callback instance for it (a Callback class works).
    It runs after the loop's own callbacks and before the History. For tools that watch training (a
    learner's dashboard, a profiler); remove it with the returned handle.

    >>> events = []
    >>> handle = register_loop_callback(lambda: LambdaCallback(on_epoch_end=lambda e, logs: events.append(e)))
    >>> handle.remove()
    """
    key = max(_GLOBAL_CALLBACKS, default=0) + 1
    _GLOBAL_CALLBACKS[key] = make
    return RemovableHandle(key)


class CallbackList:
    """The loop's callbacks in order, with a :class:`History` (added unless given), as Keras builds it.

    The order: the loop's callbacks, those registered with :func:`register_loop_callback`, the History,
    the progress display, then ``after``.

    ``CallbackList(callbacks, add_history=True, add_progbar=verbose)``: the progress display (a
    :class:`~backprop.training.callbacks.ProgressBar`, which prints every log) comes after the History, so
    it shows what the callbacks added; ``after`` (checkpoint writers, the divergence guard) run last. Batch
    hooks are called only on the callbacks that define them, so epoch-level callbacks cost nothing per step.
    """

    def __init__(self, callbacks: Sequence[Callback] = (), *, history: History | None = None, add_progbar: int = 0,
                 after: Sequence[Callback] = (), model: Any = None, optimizer: Any = None,
                 params: dict[str, Any] | None = None) -> None:
        own = [cb for cb in callbacks if not isinstance(cb, ProgressBar)] + [make() for make in _GLOBAL_CALLBACKS.values()]
        bars = [cb for cb in callbacks if isinstance(cb, ProgressBar)]
        if add_progbar and not bars:
            bars = [ProgressBar(bar=None if add_progbar == 1 else False)]
        self.history = History() if history is None else history
        self.callbacks: list[Callback] = [*own, self.history, *bars, *after]
        for cb in self.callbacks:
            if model is not None:
                cb.set_model(model)
            if params is not None:
                cb.set_params(params)
            if optimizer is not None:
                cb.set_optimizer(optimizer)
        self.batch_begin = [cb for cb in self.callbacks if _overrides(cb, "on_train_batch_begin")]
        self.batch_end = [cb for cb in self.callbacks if _overrides(cb, "on_train_batch_end")]
        self._begun: list[Callback] = []

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def on_train_begin(self, logs: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(logs)
            self._begun.append(cb)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict[str, float]) -> None:
        """Only the callbacks whose ``on_train_begin`` ran; every one of them, even if one raises."""
        begun, self._begun = self._begun, []
        errors = []
        for cb in begun:
            try:
                cb.on_train_end(logs)
            except Exception as e:  # noqa: BLE001 - the others still end; the first error is raised below
                errors.append(e)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Close progress bars (before a message is printed on Ctrl-C)."""
        for cb in self.callbacks:
            if isinstance(cb, ProgressBar):
                cb.close()


def _overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook, None) is not getattr(Callback, hook) or hook in vars(cb)


# ------------------------------------------------------------------------------------------------ loop
@dataclass
class EpochProgress:
    """Where an interrupted epoch stood, at a batch boundary: what a mid-epoch checkpoint adds to an epoch's.

    ``epoch``: the 0-based epoch in progress; ``batches``: how many of its batches were trained (their
    updates applied); the running sums of the epoch's loss (``total_loss``, ``loss_weight``, ``seen``) and
    each metric's :meth:`~backprop.training.metrics.Metric.state_dict`. With the loader's generator as it was
    at the epoch's start, the same permutation is drawn again and the first ``batches`` batches are skipped.
    """

    epoch: int
    batches: int
    total_loss: float
    loss_weight: float
    seen: int
    metrics: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpochProgress:
        return cls(**data)


class Loop:
    """Run ``epochs`` epochs of ``step`` over ``data`` with ``callbacks``; return the History.

    Args:
        step: a :class:`Step` (or anything with its ``train_step``, ``reduce_metrics``, ``context``,
            ``on_exception`` and ``model``).
        data: an iterable of :class:`Batch`, iterated once per epoch (:func:`batches`).
        epochs: the TOTAL number of epochs; ``start_epoch`` (a resumed run) skips the first ones.
        callbacks: a :class:`~backprop.training.callbacks.CallbackList`. Its History (added if it has
            none) is what :meth:`run` returns.
        metrics: Metric objects updated with every step's outputs, reset every epoch.
        validate: ``() -> {"loss": ..., ...}``, called at every epoch's end; logged as ``val_*``.
        record_lr: log the optimizer's learning rate at every epoch's end (as ``lr``).
        start_epoch, progress: a resumed run starts at epoch ``start_epoch``; with an :class:`EpochProgress`
            of that epoch, in its middle (the batches it trained are skipped, its running sums restored).
        verbose: say so on stderr when Ctrl-C interrupts training.

    Ctrl-C (a KeyboardInterrupt) stops training (``history.interrupted``); raised by a callback's
    ``on_train_batch_end`` (as the command line's signal handler does), it stops at a batch boundary, and
    the callbacks' ``on_train_interrupted`` get the :class:`EpochProgress` to checkpoint. A diverging loss
    raises :class:`TrainingDiverged` with ``err.history``; ``on_train_end`` runs however training ends.
    """

    def __init__(self, step: Any, data: Iterable[Batch], *, epochs: int, callbacks: CallbackList | None = None,
                 metrics: Sequence[Any] = (), validate: Callable[[], dict[str, float]] | None = None,
                 record_lr: bool = False, start_epoch: int = 0, progress: EpochProgress | None = None,
                 verbose: int = 0) -> None:
        self.step, self.data, self.epochs, self.start_epoch = step, data, epochs, start_epoch
        if progress is not None and progress.epoch != start_epoch:
            raise ValueError(f"Loop: the progress is in epoch {progress.epoch + 1}, but training starts with "
                             f"epoch {start_epoch + 1}")
        self.resume_progress, self.progress = progress, None
        if callbacks is None:
            callbacks = CallbackList(model=step.model, optimizer=getattr(step, "optimizer", None))
        self.callbacks, self.metrics, self.validate = callbacks, list(metrics), validate
        self.record_lr, self.verbose = record_lr, verbose
        self.history: History = callbacks.history
        self.model: Module = step.model
        self.logs: dict[str, float] = {}

    def run(self) -> History:
        model, callbacks, history = self.model, self.callbacks, self.history
        model.stop_training = False
        tune_malloc()  # NOTE: training is where large arrays churn: see backprop.engine.memory
        try:
            try:
                with self.step.context():
                    callbacks.on_train_begin({})
                    for epoch in range(self.start_epoch, self.epochs):
                        self.logs = self.run_epoch(epoch)
                        if model.stop_training:
                            history.stopped_early = True
                            break
            except KeyboardInterrupt:
                history.interrupted = True
                callbacks.close()
                for cb in callbacks:
                    cb.on_train_interrupted(self.progress)
                if self.verbose and self.step.is_root:
                    print("training interrupted: returning the history so far", file=sys.stderr)
            except TrainingDiverged as err:
                err.history = history  # NOTE: decided on the whole batch's loss: every rank raises it alike
                raise
            except Exception as err:
                self.step.on_exception(err)
                raise
        finally:  # whatever ended training (epochs, a callback, Ctrl-C, divergence, an error)
            callbacks.close()
            model.eval()
            callbacks.on_train_end(self.logs)
        return history

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the data; the epoch's logs (loss, metrics, validation, lr)."""
        step, model, callbacks, metrics = self.step, self.model, self.callbacks, self.metrics
        callbacks.on_epoch_begin(epoch, {})
        model.train()
        total_loss, loss_weight, seen, nan_loss = 0.0, 0.0, 0, None
        for m in metrics:
            m.reset()
        begin, end = callbacks.batch_begin, callbacks.batch_end
        history, train_step = self.history, step.train_step
        skip, resumed = 0, self.resume_progress
        if resumed is not None:  # a run resumed mid-epoch: this epoch's first batches are trained already
            self.resume_progress = None
            skip, total_loss, loss_weight, seen = resumed.batches, resumed.total_loss, resumed.loss_weight, resumed.seen
            for m, state in zip(metrics, resumed.metrics, strict=True):
                m.load_state_dict(state)
        # NOTE: `done` batches are complete (update and bookkeeping); only a stop between steps (`between`)
        # leaves the weights, the optimizer and the counters consistent with it
        done, between = 0, True
        try:
            for i, batch in enumerate(self.data):
                if i < skip:  # NOTE: the permutation is drawn again from the saved state, then walked past
                    done = i + 1
                    continue
                for cb in begin:
                    cb.on_train_batch_begin(i, {})
                between = False
                try:
                    loss, size, weight, outputs, targets, applied = train_step(batch)
                except NonFiniteGradient as err:
                    raise self._diverged_gradient(err, epoch, i) from None
                logs = {"loss": loss, "size": size}
                if not applied:  # a NaN/inf loss: no update was made; the callbacks decide (DivergenceGuard)
                    for cb in end:
                        cb.on_train_batch_end(i, logs)
                    history.terminated_on_nan, nan_loss = True, loss
                    break
                total_loss += loss * weight
                loss_weight += weight
                seen += size
                history.iterations += 1
                history.samples_seen += size
                if metrics and outputs is not None and len(outputs):
                    for m in metrics:
                        m.update(outputs, targets)
                done, between = i + 1, True
                for cb in end:
                    cb.on_train_batch_end(i, logs)
                if model.stop_training:
                    break
        except KeyboardInterrupt:
            states = [m.state_dict() for m in metrics]
            if between and all(state is not None for state in states):
                self.progress = EpochProgress(epoch, done, total_loss, loss_weight, seen, states)
            raise
        step.reduce_metrics(metrics)
        if nan_loss is not None:
            logs = {"loss": nan_loss}
        else:
            logs = {"loss": total_loss / loss_weight if loss_weight else (0.0 if seen else math.nan)}
        for m in metrics:
            logs[m.name] = m.result()
        if self.validate is not None:
            logs.update({f"val_{k}": v for k, v in self.validate().items()})
        if self.record_lr:
            logs["lr"] = float(step.optimizer.param_groups[0]["lr"])
        self.history.epochs += 1
        callbacks.on_epoch_end(epoch, logs)  # the History records the logs after the callbacks that add to them
        return logs

    def _diverged_gradient(self, err: NonFiniteGradient, epoch: int, batch: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"the gradient of parameter '{err.parameter}' became NaN or infinite at epoch {epoch + 1}, iteration "
            f"{batch + 1} (step {self.history.iterations + 1}), with a finite loss of {err.loss:.6g}; the model "
            "keeps the weights of the last finite step",
            "Try a lower learning rate or gradient clipping (clip_norm=...).")
