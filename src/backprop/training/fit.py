"""``fit``, ``evaluate``, ``predict``: training by mini-batch gradient descent in one call, as in Keras.

One iteration: a mini-batch goes forward through the model, the loss measures its error, ``backward``
carries the error back through every layer, and the optimizer moves every weight against its gradient.
With N samples and batch size B an epoch is ceil(N/B) iterations in which every sample is used once.

>>> import numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
>>> y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)            # XOR of the signs
>>> model = bp.nn.Sequential(bp.nn.Linear(2, 16), bp.nn.Tanh(), bp.nn.Linear(16, 2))
>>> h = bp.fit(model, x, y, lr=0.5, epochs=30, batch_size=20, seed=0, verbose=0)
>>> h.iterations, h.history["accuracy"][-1] > 0.9
(300, True)
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from backprop import optim
from backprop.data.loader import DataLoader
from backprop.engine.random import get_rng, manual_seed
from backprop.engine.tensor import Tensor, no_grad
from backprop.nn import functional as F
from backprop.nn.layers import Linear
from backprop.nn.module import Module
from backprop.nn.utils import clip_grad_norm_, clip_grad_value_
from backprop.training.callbacks import Callback, LearningRateScheduler, ProgressBar, _Progress
from backprop.training.history import History
from backprop.training.metrics import Metric, _true_classes, get_metric

LossFn = Callable[[Tensor, np.ndarray], Tensor]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the model keeps the last finite weights."""


# ------------------------------------------------------------------------------------------------ losses
def quadratic_loss(output: Tensor, target: Any) -> Tensor:
    """Nielsen's quadratic cost: 1/2 ||a - y||^2 summed over outputs, averaged over the batch."""
    d = output - F._as_target(target, output, "quadratic_loss")
    return (d * d).sum() * (0.5 / output.shape[0])


_DENSE_LOSSES: dict[str, Callable[..., Tensor]] = {
    "mse": F.mse_loss,
    "quadratic": quadratic_loss,
    "l1": F.l1_loss,
    "bce": F.binary_cross_entropy_with_logits,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
}
LOSSES = ("cross_entropy", "nll", *_DENSE_LOSSES)


def _one_hot_if_labels(fn: Callable[..., Tensor]) -> LossFn:
    """Losses that compare outputs elementwise get class labels as one-hot rows (or a column for 1 output)."""

    def loss(out: Tensor, y: np.ndarray) -> Tensor:
        if y.dtype.kind in "iub" and y.ndim == 1:
            c = out.shape[-1]
            y = np.eye(c, dtype=out.dtype)[y] if c > 1 else y.reshape(-1, 1).astype(out.dtype)
        return fn(out, y)

    return loss


def get_loss(loss: str | Callable[..., Tensor]) -> LossFn:
    """A loss function ``(outputs, targets) -> scalar Tensor`` from a name or a callable."""
    if callable(loss):
        return loss
    if loss == "cross_entropy":
        return F.cross_entropy
    if loss == "nll":
        return F.nll_loss
    if loss in _DENSE_LOSSES:
        return _one_hot_if_labels(_DENSE_LOSSES[loss])
    raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)} or a callable")


# ------------------------------------------------------------------------------------------- validation
def _check_xy(x: Any, y: Any, name: str, check_finite: bool, dtype: np.dtype,
              need_y: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    x = _as_numeric(x, "x", name)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{name}: x is empty (shape {x.shape}); need at least one sample")
    x = np.ascontiguousarray(x, dtype=dtype)
    if check_finite and not np.isfinite(x).all():
        raise ValueError(f"{name}: x contains NaN or infinity (pass check_finite=False to skip this check)")
    if y is None:
        if need_y:
            raise TypeError(f"{name}: y is None; pass the targets (class labels or values), one per sample of x")
        return x, None
    y = _as_numeric(y, "y", name)
    if y.ndim == 0 or len(y) != len(x):
        raise ValueError(f"{name}: x and y have different lengths: x has {len(x)} samples, "
                         f"y has {len(y) if y.ndim else 'none (a scalar)'}")
    if check_finite and y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name}: y contains NaN or infinity")
    return x, y


def _as_numeric(a: Any, what: str, name: str) -> np.ndarray:
    """``a`` as a numeric array; a clear error for ragged lists, objects, strings and complex numbers."""
    try:
        a = np.asarray(a)
    except ValueError as e:  # NumPy refuses ragged nested lists
        raise ValueError(f"{name}: {what} is ragged (rows of different lengths): {e}") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: {what} must be numeric, got an array of dtype {a.dtype}")
    return a


def _n_outputs(model: Module) -> int | None:
    """The width of the model's last Linear layer (its number of outputs), if it has one."""
    last = [m for m in model.modules() if isinstance(m, Linear)]
    return last[-1].out_features if last else None


def _check_labels(model: Module, y: np.ndarray, loss: Any, name: str) -> np.ndarray:
    """Class labels must be integers in [0, n_outputs); one-hot or probability rows need n_outputs columns."""
    if not isinstance(loss, str):
        return y
    n_out = _n_outputs(model)
    if y.ndim == 2 and n_out is not None and y.shape[1] != n_out and not (loss in _DENSE_LOSSES and n_out == 1):
        raise ValueError(f"{name}: y has shape {y.shape}: target rows need {n_out} columns, one per model "
                         f"output (or pass class labels of shape ({len(y)},))")
    classes = loss in ("cross_entropy", "nll") or (loss in _DENSE_LOSSES and y.dtype.kind in "iub")
    if not classes or y.ndim != 1:
        return y
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            raise ValueError(f"{name}: y must hold integer class labels, got non-integer values such as "
                             f"{y[y != np.round(y)][0]}")
        y = y.astype(np.int64)
    y = y.astype(np.int64, copy=False)
    high = n_out if n_out is None or n_out > 1 else 2  # one output: binary labels 0/1
    if y.min() < 0 or (high is not None and y.max() >= high):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise ValueError(
            f"{name}: y holds class label {bad}, outside [0, {high - 1 if high else '...'}]"
            + (f": the model has {n_out} outputs" if n_out else "")
        )
    return y


def _check_features(model: Module, x: np.ndarray, name: str) -> None:
    """If the first layer with weights is a Linear layer, it must see as many features as x has."""
    for mod_name, m in model.named_modules():
        if not any(True for _ in m.children()) and any(True for _ in m.parameters()) and not isinstance(m, Linear):
            return  # the first weighted layer is something else (a convolution...): it checks its own input
        if isinstance(m, Linear) and x.ndim == 1:
            raise ValueError(f"{name}: x has shape {x.shape}, one number per sample, but the model's first layer "
                             f"'{mod_name or type(m).__name__}' (Linear) expects {m.in_features} features: pass "
                             f"x of shape (samples, {m.in_features})")
        if isinstance(m, Linear):
            n_features = int(np.prod(x.shape[1:]))
            if x.ndim == 2 and x.shape[1] != m.in_features or x.ndim > 2 and n_features != m.in_features:
                raise ValueError(
                    f"{name}: x has {x.shape[1:]} features per sample but the model's first layer "
                    f"'{mod_name or type(m).__name__}' (Linear) expects {m.in_features}"
                )
            return


def _positive(name: str, value: Any, kind: type = int, allow_zero: bool = False, where: str = "fit") -> None:
    ok = isinstance(value, (int, np.integer) if kind is int else (int, float, np.number)) and not isinstance(value, bool)
    if ok and kind is float:
        ok = math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        need = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{where}: {name} must be {need} {'integer' if kind is int else 'finite number'}, "
                         f"got {value!r}")


def _split_validation(x, y, fraction, rng) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_val, y_val, train_indices, val_indices): a random held-out fraction."""
    n_val = round(len(x) * fraction)
    if n_val < 1 or n_val >= len(x):
        raise ValueError(f"fit: validation_split={fraction} leaves {len(x) - n_val} training and {n_val} validation samples")
    order = rng.permutation(len(x))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx], train_idx, val_idx


# -------------------------------------------------------------------------------------- sample weights
def _per_sample_loss(loss: str | Callable[..., Tensor]) -> Callable[[Tensor, np.ndarray], Tensor]:
    """``(outputs, targets) -> (N,)`` losses per sample, whose plain mean is the loss ``get_loss`` gives."""

    def per_sample(t: Tensor) -> Tensor:  # mean over every axis but the first
        return t if t.ndim == 1 else t.reshape(t.shape[0], -1).mean(axis=1)

    if loss == "cross_entropy":
        return lambda out, y: F.cross_entropy(out, y, reduction="none")
    if loss == "nll":
        return lambda out, y: F.nll_loss(out, y, reduction="none")
    if loss == "quadratic":
        def quadratic(out: Tensor, y: Any) -> Tensor:
            d = out - F._as_target(y, out, "quadratic_loss")
            d2 = d * d
            return (d2 if d2.ndim == 1 else d2.reshape(d2.shape[0], -1).sum(axis=1)) * 0.5

        return _one_hot_if_labels(quadratic)
    if isinstance(loss, str) and loss in _DENSE_LOSSES:
        fn = _DENSE_LOSSES[loss]
        return _one_hot_if_labels(lambda out, y: per_sample(fn(out, y, reduction="none")))
    if callable(loss):
        try:
            takes = "reduction" in inspect.signature(loss).parameters
        except (TypeError, ValueError):
            takes = False
        if takes:
            return lambda out, y: per_sample(loss(out, y, reduction="none"))
    raise ValueError("fit: class_weight and sample_weight need a loss per sample: use a loss name "
                     f"({', '.join(LOSSES)}) or a callable that accepts reduction='none'")


def _sample_weights(y: np.ndarray, class_weight: Any, sample_weight: np.ndarray | None) -> np.ndarray | None:
    """One weight per training sample: sample_weight times the weight of the sample's class."""
    if class_weight is None and sample_weight is None:
        return None
    w = np.ones(len(y), dtype=np.float64) if sample_weight is None else sample_weight.astype(np.float64)
    if class_weight is not None:
        labels = _true_classes(y)
        if labels.min(initial=0) < 0:
            raise ValueError("fit: class_weight needs class labels >= 0")
        counts = np.bincount(labels)
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(f"fit: class_weight must be a dict or 'balanced', got {class_weight!r}")
            # sklearn's compute_class_weight("balanced"): n_samples / (n_classes * count of the class)
            present = np.count_nonzero(counts)
            table = np.where(counts > 0, len(labels) / (present * np.maximum(counts, 1)), 0.0)
        elif isinstance(class_weight, Mapping):
            top = max([len(counts) - 1, *[int(k) for k in class_weight if _is_class(k)]])
            table = np.ones(top + 1, dtype=np.float64)  # classes left out keep weight 1
            for k, v in class_weight.items():
                if not _is_class(k):
                    raise ValueError(f"fit: class_weight keys must be class indices (integers >= 0), got {k!r}")
                if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not v >= 0 \
                        or not math.isfinite(v):
                    raise ValueError(f"fit: class_weight[{k}] must be a finite number >= 0, got {v!r}")
                table[int(k)] = float(v)
        else:
            raise TypeError(f"fit: class_weight must be a dict {{class: weight}} or 'balanced', "
                            f"got {type(class_weight).__name__}")
        w *= table[labels]
    return w


def _is_class(k: Any) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0


def _check_sample_weight(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight)
    if sw.dtype.kind not in "biuf" or sw.shape != (n,):
        raise ValueError(f"fit: sample_weight must be {n} numbers (one per sample), got an array of shape "
                         f"{sw.shape} and dtype {sw.dtype}")
    sw = sw.astype(np.float64)
    if not np.isfinite(sw).all() or (sw < 0).any():
        raise ValueError("fit: sample_weight must be finite and >= 0")
    return sw


def _weighted(per_sample: Callable[[Tensor, np.ndarray], Tensor]) -> Callable[[Tensor, np.ndarray, np.ndarray],
                                                                                tuple[Tensor, float]]:
    """sum(w_i * loss_i) / sum(w_i) over the batch, and sum(w_i)."""

    def loss(out: Tensor, y: np.ndarray, w: np.ndarray) -> tuple[Tensor, float]:
        per = per_sample(out, y)
        if per.shape != (len(w),):
            raise ValueError(f"fit: the per-sample loss has shape {per.shape}, expected ({len(w)},)")
        total = float(w.sum())
        return (per * Tensor(w.astype(per.dtype))).sum() * (1.0 / total if total > 0 else 0.0), total

    return loss


# -------------------------------------------------------------------------------------------------- fit
def fit(
    model: Module,
    x: Any,
    y: Any,
    *,
    loss: str | Callable[..., Tensor] = "cross_entropy",
    optimizer: str | optim.Optimizer | Callable[..., optim.Optimizer] = "sgd",
    lr: float = 0.1,
    batch_size: int = 32,
    epochs: int = 10,
    validation_data: tuple[Any, Any] | None = None,
    validation_split: float = 0.0,
    shuffle: bool = True,
    seed: int | None = None,
    metrics: Sequence[str | Callable] = ("accuracy",),
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    check_finite: bool = True,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    clip_norm: float | None = None,
    clip_value: float | None = None,
    class_weight: Mapping[int, float] | str | None = None,
    sample_weight: Any = None,
    resume_from: Any = None,
    checkpoint: Any = None,
    distributed: Any = False,
    sync_batchnorm: bool = False,
) -> History:
    """Train ``model`` on (x, y) by mini-batch backpropagation; return the History of every epoch.

    ``optimizer`` is a name ("sgd", "adam", "adamw", "rmsprop", built with ``lr``), an Optimizer, or a
    callable ``params -> Optimizer``. ``loss`` is a name (cross_entropy, nll, mse, quadratic, l1, bce) or
    ``callable(outputs, targets) -> Tensor``. ``metrics``: names (``"accuracy"``, ``"top_5_accuracy"``,
    ``"macro_f1"``... see :mod:`backprop.training.metrics`) or functions ``(outputs, y) -> float``, computed
    over each epoch. ``validation_split`` holds out that fraction of the samples, drawn at random with
    ``seed`` (``history.validation_indices`` says which), never the last rows.
    ``seed`` seeds the shuffling, the split and backprop's global generator (dropout): with the same
    initial model (``bp.manual_seed`` before building it) a run is reproducible to the bit.
    ``verbose``: 0 silent, 1 a progress bar per epoch in a terminal (one line per epoch otherwise),
    2 one line per epoch. Ctrl-C stops after the current step and returns History with ``interrupted``.
    ``check_finite`` (default True): x and y must be finite, and a NaN or infinite loss or gradient stops
    training at that step with :class:`TrainingDiverged` (naming the step and the parameter) before the
    update, so the model keeps the last finite weights.

    ``callbacks``: :mod:`backprop.training.callbacks` (EarlyStopping, ModelCheckpoint, CSVLogger,
    LearningRateScheduler, TerminateOnNaN, ProgressBar, TensorBoard...). Their ``on_train_end`` runs however
    training ends. ``scheduler``: a learning-rate scheduler built on the optimizer (then pass that optimizer
    too), or a factory ``optimizer -> scheduler``; stepped every epoch or, with ``scheduler_interval="step"``,
    after every optimizer step; ``lr`` is then recorded in the History.

    ``clip_value`` clamps every gradient entry to [-clip_value, clip_value], then ``clip_norm`` rescales all
    gradients together so that their global L2 norm is at most ``clip_norm`` (PyTorch's
    ``clip_grad_norm_``, Keras's ``global_clipnorm``), between ``backward`` and the optimizer step.

    ``sample_weight`` (one number >= 0 per sample) and ``class_weight`` (``{class: weight}``, classes left
    out weigh 1, or ``"balanced"``: n_samples / (n_classes * count), as sklearn, counted on the training
    samples left after ``validation_split``) weight each sample's loss (their product when both are
    given). A batch's loss is ``sum(w_i * loss_i) / sum(w_i)``: PyTorch's ``CrossEntropyLoss(weight=...)``
    convention (Keras divides by the batch size instead), so the weights' scale does not change the
    learning rate. The History's ``loss`` is the weighted loss; metrics and the
    validation loss are unweighted. A NaN or infinite loss raises :class:`TrainingDiverged` (with the
    History so far as ``err.history``) unless a callback such as ``TerminateOnNaN`` stops training.

    ``checkpoint``: a path (``str.format`` fields ``{epoch}`` and log keys allowed) or a
    :class:`~backprop.io.TrainingCheckpoint` (or any object with a ``filepath``, e.g. a ``ModelCheckpoint``)
    where a training checkpoint (:mod:`backprop.io.checkpoint`: weights, optimizer and scheduler states,
    random generator states, counters, History) is written atomically at the end of every epoch.
    ``resume_from``: such a checkpoint (a path or a loaded :class:`~backprop.io.Checkpoint`) to continue
    from; ``epochs`` stays the TOTAL number of epochs (Keras's ``initial_epoch``): resuming a run saved
    after 2 of 4 epochs trains epochs 3 and 4, and the weights, History and everything else are then
    bit-identical to those of the uninterrupted run, given the same data, model, optimizer and scheduler
    (built the same way), the same ``batch_size``, ``shuffle``, ``validation_split`` and ``seed`` (checked;
    ``seed`` may be left out) and the same BLAS library and thread count. Callbacks keep no state across a
    resume (an EarlyStopping's patience count starts over).

    ``distributed=True`` (or an mpi4py communicator): data-parallel training under ``mpiexec -n P`` (see
    :mod:`backprop.distributed`; every rank calls ``fit`` with the same data and arguments). Rank 0's
    weights and optimizer state are broadcast; each batch (``batch_size`` divisible by P) is split over the
    ranks, each rank's loss scaled by its share of the batch (its sample count, or its sum of class/sample
    weights), and the gradients summed with bucketed Allreduce, so the weights and History are the
    single-process ones to rounding. Metrics are reduced over the ranks; only rank 0 prints and writes
    checkpoints; a rank that raises aborts the job. ``sync_batchnorm=True``: BatchNorm layers normalise with
    the statistics of the whole batch over all the ranks (as in one process) instead of each rank's shard.
    """
    _positive("batch_size", batch_size)
    _positive("epochs", epochs, allow_zero=True)
    if isinstance(optimizer, str):
        _positive("lr", lr, float)
    if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    for name, value in (("clip_norm", clip_norm), ("clip_value", clip_value)):
        if value is not None:
            _positive(name, value, float)
    x, y = _check_xy(x, y, "fit", check_finite, model.dtype)
    _check_features(model, x, "fit")
    y = _check_labels(model, y, loss, "fit")
    sample_weight = _check_sample_weight(sample_weight, len(x))
    weighted = class_weight is not None or sample_weight is not None
    loss_fn = get_loss(loss)
    weighted_loss = _weighted(_per_sample_loss(loss)) if weighted else None
    metric_list = _resolve_metrics(metrics, y)

    resume, fit_record = None, None
    if resume_from is not None:
        from backprop.io.checkpoint import Checkpoint, load_checkpoint

        resume = resume_from if isinstance(resume_from, Checkpoint) else load_checkpoint(resume_from)
        seed = _check_resume(resume, seed, epochs, batch_size, shuffle, validation_split, len(x))
    if sync_batchnorm and not distributed:
        raise ValueError("fit: sync_batchnorm=True needs distributed=True (it synchronises BatchNorm over MPI ranks)")
    if distributed and seed is None and resume is None:  # every rank must draw the same permutations
        from backprop.distributed import shared_seed
        seed = shared_seed(None if distributed is True else distributed)
    # NOTE: seed=None draws fresh entropy here, recorded in checkpoints so that a resume recomputes the split
    root = np.random.SeedSequence(int(resume.extra["fit"]["seed_entropy"]) if resume is not None
                                  and "fit" in resume.extra else seed)
    seeds = root.spawn(3)
    if seed is not None and resume is None:  # resuming restores the generator's saved state instead
        manual_seed(int(seeds[1].generate_state(1)[0]))
    history = History() if resume is None else resume.to_history()
    if checkpoint is not None or resume is not None:
        fit_record = {"seed": seed, "seed_entropy": str(root.entropy), "epochs": epochs, "batch_size": batch_size,
                      "shuffle": bool(shuffle), "validation_split": float(validation_split), "samples": len(x)}
    if validation_split:
        x, y, xv, yv, train_idx, history.validation_indices = _split_validation(
            x, y, validation_split, np.random.default_rng(seeds[2]))
        validation_data = (xv, yv)
        if sample_weight is not None:
            sample_weight = sample_weight[train_idx]
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError(f"fit: validation_data must be a pair (x, y), got {type(validation_data).__name__}"
                            + (f" of length {len(validation_data)}" if hasattr(validation_data, "__len__") else ""))
        xv, yv = _check_xy(validation_data[0], validation_data[1], "fit (validation_data)", check_finite, model.dtype)
        _check_features(model, xv, "fit (validation_data)")
        yv = _check_labels(model, yv, loss, "fit (validation_data)")
    weights = _sample_weights(y, class_weight, sample_weight) if weighted else None

    # NOTE: lr goes to names and Optimizer classes; an Optimizer instance or a factory carries its own
    if isinstance(optimizer, str) or (isinstance(optimizer, type) and issubclass(optimizer, optim.Optimizer)):
        opt = optim.get(optimizer, model.parameters(), lr=lr)
    else:
        opt = optim.get(optimizer, model.parameters())
    callbacks = list(callbacks)
    if distributed:  # files and printing are rank 0's (ModelCheckpoint, CSVLogger, ProgressBar, TensorBoard...)
        from backprop.distributed import init as _mpi_init

        rank = _mpi_init(None if distributed is True else distributed).rank
        if rank != 0:
            callbacks = [cb for cb in callbacks if not getattr(cb, "root_only", False)]
        for cb in callbacks:
            cb.rank = rank
    if scheduler is not None:
        if isinstance(scheduler, type) or (not callable(getattr(scheduler, "step", None)) and callable(scheduler)):
            scheduler = scheduler(opt)
        callbacks.insert(0, LearningRateScheduler(scheduler, interval=scheduler_interval))
    # ProgressBars print the epoch line with every log: after the callbacks that add logs
    callbacks.sort(key=lambda cb: isinstance(cb, ProgressBar))
    has_bar = bool(callbacks) and isinstance(callbacks[-1], ProgressBar)
    record_lr = any(isinstance(cb, LearningRateScheduler) for cb in callbacks)
    # the weighted path draws sample indices, to gather targets and weights alike (same shuffling)
    loader = DataLoader(x, np.arange(len(x)) if weighted else y, batch_size=batch_size, shuffle=shuffle,
                        seed=seeds[0])
    n_batches = len(loader)
    history.params = {"epochs": epochs, "batch_size": batch_size, "steps": n_batches, "samples": len(x)}
    saver = _checkpoint_target(checkpoint) if checkpoint is not None else None
    lr_schedules = [cb.schedule for cb in callbacks if isinstance(cb, LearningRateScheduler) and cb.is_scheduler]
    if len(lr_schedules) > 1 and (saver is not None or resume is not None):
        raise ValueError("fit: checkpoints hold one learning-rate scheduler; got several LearningRateScheduler "
                         "callbacks with scheduler objects")
    schedule = lr_schedules[0] if lr_schedules else None
    start_epoch = 0
    if resume is not None:
        start_epoch = _restore(resume, model, opt, schedule, loader)
    model.stop_training = False
    for cb in callbacks:
        cb.set_model(model)
        cb.set_params(history.params)
        set_optimizer = getattr(cb, "set_optimizer", None)
        if set_optimizer is not None:
            set_optimizer(opt)
    params = list(model.parameters())
    named_params = list(model.named_parameters())
    dist = None
    if distributed:  # True (MPI.COMM_WORLD) or a communicator; see backprop.distributed.Trainer
        from backprop.distributed import Trainer
        dist = Trainer(model, opt, batch_size, comm=None if distributed is True else distributed,
                       sync_batchnorm=sync_batchnorm)
        if verbose and dist.is_root:
            print(dist.describe(), file=sys.stderr, flush=True)
        dist.seed_ranks()
        dist.broadcast()
    batch_hooks = [cb for cb in callbacks if _overrides(cb, "on_train_batch_begin") or _overrides(cb, "on_train_batch_end")]
    clipping = clip_norm is not None or clip_value is not None
    progress = _Progress(0 if has_bar or (dist is not None and not dist.is_root) else verbose, epochs, n_batches)
    logs: dict[str, float] = {}
    begun: list[Callback] = []
    stack = contextlib.ExitStack()

    try:
        try:
            if dist is not None:
                stack.enter_context(dist.synchronised())  # BatchNorm over all the ranks, with sync_batchnorm
            for cb in callbacks:
                cb.on_train_begin({})
                begun.append(cb)
            if resume is not None:  # last, as the uninterrupted run went straight from the epoch's end to the next
                get_rng().bit_generator.state = resume.rng_states["global"]
                loader.rng.bit_generator.state = resume.rng_states["loader"]
            for epoch in range(start_epoch, epochs):
                for cb in callbacks:
                    cb.on_epoch_begin(epoch, {})
                model.train()
                progress.start_epoch(epoch)
                total_loss, loss_weight, seen, nan_loss = 0.0, 0.0, 0, None
                snapshot = [p.data.copy() for p in params]  # finite weights to fall back on if a step overflows
                for m in metric_list:
                    m.reset()
                for batch, (xb, yb) in enumerate(loader):
                    if dist is not None:
                        xb, yb = dist.shard(xb, yb, weights[yb] if weighted else None)
                    n = len(xb)
                    if weighted:
                        wb, yb = weights[yb], y[yb]
                    for cb in batch_hooks:
                        cb.on_train_batch_begin(batch, {})
                    opt.zero_grad()
                    if n or dist is None:
                        out = model(Tensor(xb))
                        if weighted:
                            loss_t, batch_weight = weighted_loss(out, yb, wb)
                        else:
                            loss_t, batch_weight = loss_fn(out, yb), n
                        loss_value = float(loss_t.data)
                    else:  # this rank's shard of a last batch smaller than the number of ranks is empty
                        out, loss_t, batch_weight, loss_value = None, None, 0, 0.0
                    batch_loss = loss_value
                    if dist is not None:  # every rank: its share of the batch's gradient and loss, summed
                        dist.backward(loss_t, xb)
                        # NOTE: the GLOBAL batch's loss, the same on every rank: they all stop at the same step
                        batch_loss = dist.allreduce_gradients(loss_value)
                    size = n if dist is None else dist.n_global
                    if not math.isfinite(batch_loss):
                        bad = _restore_if_overflowed(model, snapshot)
                        for cb in batch_hooks:
                            cb.on_train_batch_end(batch, {"loss": batch_loss, "size": size})
                        if not model.stop_training:
                            err = _diverged(batch_loss, epoch, batch, history.iterations, bad)
                            err.history = history
                            raise err
                        history.terminated_on_nan, nan_loss = True, batch_loss
                        break
                    if dist is None:
                        loss_t.backward()
                    if check_finite:
                        bad_grad = _nonfinite_gradient(named_params)
                        if bad_grad is not None:  # stop before the update: the weights stay the last finite ones
                            err = _diverged_gradient(bad_grad, batch_loss, epoch, batch, history.iterations)
                            err.history = history
                            raise err
                    if clipping:
                        if clip_value is not None:
                            clip_grad_value_(params, clip_value)
                        if clip_norm is not None:
                            clip_grad_norm_(params, clip_norm)
                    opt.step()
                    seen += n
                    total_loss += loss_value * batch_weight
                    loss_weight += batch_weight
                    if n:
                        for m in metric_list:
                            m.update(out.data, yb)
                    history.iterations += 1
                    history.samples_seen += size
                    progress.step(size, batch_loss)
                    for cb in batch_hooks:
                        cb.on_train_batch_end(batch, {"loss": batch_loss, "size": size})
                    if model.stop_training:
                        break
                if dist is not None:
                    total_loss, loss_weight, seen = dist.reduce_sums(total_loss, loss_weight, seen)
                    dist.reduce_metrics(metric_list)
                if nan_loss is not None:
                    logs = {"loss": nan_loss}
                else:
                    logs = {"loss": total_loss / loss_weight if loss_weight else (0.0 if seen else math.nan)}
                for m in metric_list:
                    logs[m.name] = m.result()
                if validation_data is not None:
                    val = evaluate(model, xv, yv, loss=loss, metrics=metrics, batch_size=max(batch_size, 512),
                                   check_finite=False)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                if record_lr:
                    logs["lr"] = float(opt.param_groups[0]["lr"])
                history.epochs += 1
                for cb in callbacks:  # first, so metrics a callback adds to logs are recorded and printed
                    cb.on_epoch_end(epoch, logs)
                history.record(epoch, logs)
                progress.end_epoch(logs)
                if saver is not None and (dist is None or dist.is_root):
                    _write_checkpoint(saver, model, opt, schedule, epoch, logs, history, loader, fit_record)
                if model.stop_training:
                    history.stopped_early = True
                    break
        except KeyboardInterrupt:
            history.interrupted = True
            progress.close()
            if verbose:
                print("training interrupted: returning the history so far", file=sys.stderr)
        except TrainingDiverged:
            raise  # NOTE: decided on the reduced loss and gradients: every rank raises it at the same step
        except Exception as e:
            if dist is not None:  # a failing rank must not leave the others waiting in an Allreduce
                dist.abort(e)
            raise
    finally:  # whatever ended training (epochs, a callback, Ctrl-C, divergence, an error)
        stack.close()
        progress.close()
        model.eval()
        for cb in begun:
            cb.on_train_end(logs)
    return history


# ------------------------------------------------------------------------------------------ checkpoints
def _check_resume(resume: Any, seed: int | None, epochs: int, batch_size: int, shuffle: bool,
                  validation_split: float, n_samples: int) -> int | None:
    """The seed to use when resuming from ``resume``; ValueError if this fit cannot continue that run exactly."""
    where = f"fit: resume_from={resume.path or 'the checkpoint'}"
    if resume.epoch > epochs:
        raise ValueError(f"{where} has already trained {resume.epoch} epochs, more than epochs={epochs} (epochs "
                         "is the total number of epochs, counting those already trained)")
    for name in ("global", "loader"):
        if name not in resume.rng_states:
            raise ValueError(f"{where} holds no state for the {name!r} random generator")
    record = resume.extra.get("fit")
    if record is None:
        if validation_split and seed is None:
            raise ValueError(f"{where} was not written by fit: pass the seed used, to recompute the validation split")
        return seed
    if not isinstance(record, dict) or not {"seed", "seed_entropy", "batch_size", "shuffle", "validation_split",
                                            "samples"} <= set(record):
        raise ValueError(f"{where}: its extra['fit'] record is incomplete")
    if not isinstance(record["seed_entropy"], str) or not record["seed_entropy"].isdigit():
        raise ValueError(f"{where}: its extra['fit']['seed_entropy'] is not an integer")
    given = {"seed": seed, "batch_size": batch_size, "shuffle": bool(shuffle),
             "validation_split": float(validation_split), "samples": n_samples}
    if seed is None:
        given["seed"] = record["seed"]
    wrong = [f"{k}={record[k]!r} (got {v!r})" for k, v in given.items() if record[k] != v]
    if wrong:
        what = "samples" if any(w.startswith("samples") for w in wrong) else "settings"
        raise ValueError(f"{where} was trained with other {what}: " + ", ".join(wrong)
                         + "; resuming exactly needs the same data, batch_size, shuffle, validation_split and seed")
    env = record.get("environment")
    if env is not None and env != _environment():
        warnings.warn(f"{where} was written with another NumPy/BLAS configuration ({env}); the resumed run "
                      "may differ from an uninterrupted one in the last bits", RuntimeWarning, stacklevel=3)
    return given["seed"]


def _restore(resume: Any, model: Module, opt: optim.Optimizer, schedule: Any, loader: DataLoader) -> int:
    """Load the checkpoint's states (all checked before any is changed); the epoch to continue with."""
    for name, gen in (("global", get_rng()), ("loader", loader.rng)):
        kind = type(gen.bit_generator).__name__
        if resume.rng_states[name]["bit_generator"] != kind:
            raise ValueError(f"fit: resume_from: the saved {name!r} generator is a "
                             f"{resume.rng_states[name]['bit_generator']}, this one a {kind}")
    resume.restore(model, opt, schedule)
    return resume.epoch


_env_cache: dict[str, Any] = {}


def _environment() -> dict[str, Any]:
    """NumPy's version and the BLAS libraries with their thread counts: what bit-exact results depend on."""
    if "env" not in _env_cache:
        env: dict[str, Any] = {"numpy": np.__version__}
        with contextlib.suppress(Exception):  # threadpoolctl missing or failing: record what is known
            from threadpoolctl import threadpool_info

            env["blas"] = sorted(f"{d.get('internal_api')} {d.get('version')} {d.get('num_threads')} threads"
                                 for d in threadpool_info() if d.get("user_api") == "blas")
        _env_cache["env"] = env
    return _env_cache["env"]


def _checkpoint_target(checkpoint: Any) -> Any:
    from backprop.io.checkpoint import TrainingCheckpoint

    if isinstance(checkpoint, (str, os.PathLike)):
        return TrainingCheckpoint(checkpoint)
    if isinstance(getattr(checkpoint, "filepath", None), (str, os.PathLike)):
        return checkpoint
    raise TypeError(f"fit: checkpoint must be a path or a TrainingCheckpoint, got {type(checkpoint).__name__}")


def _write_checkpoint(saver: Any, model: Module, opt: optim.Optimizer, schedule: Any, epoch: int,
                      logs: dict[str, float], history: History, loader: DataLoader, record: dict[str, Any]) -> None:
    """The end-of-epoch checkpoint: the state the next epoch starts from (its permutation not drawn yet)."""
    from backprop.io.checkpoint import save_checkpoint

    path = os.fspath(saver.filepath)
    if "{" in path:
        try:
            path = path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError) as e:
            raise ValueError(f"fit: checkpoint path {path!r} uses the field {e}, which is not among epoch, "
                             f"{', '.join(logs)}") from None
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    extra = {**dict(getattr(saver, "extra", None) or {}), "fit": {**record, "environment": _environment()}}
    save_checkpoint(path, model, opt, schedule, epoch=epoch + 1, iteration=history.iterations,
                    rng_states={"global": get_rng(), "loader": loader.rng}, history=history, extra=extra)
    if hasattr(saver, "last_saved"):
        saver.last_saved = path


def _restore_if_overflowed(model: Module, snapshot: list[np.ndarray]) -> str | None:
    """If the last update made a weight non-finite, restore the epoch's first weights; the bad parameter's name."""
    bad = [name for name, p in model.named_parameters() if not np.isfinite(p.data).all()]
    if not bad:
        return None
    for p, saved in zip(model.parameters(), snapshot):
        p.data[...] = saved
    return bad[0]


def _nonfinite_gradient(named_params: list[tuple[str, Any]]) -> str | None:
    """The name of the first parameter whose gradient holds NaN or infinity, else None.

    NOTE: one sum per gradient (a single pass, no temporary): NaN or inf anywhere makes the sum non-finite;
    a sum that overflows from finite values is told apart by the exact (and rarer) isfinite check.
    """
    for name, p in named_params:
        g = p.grad
        if g is not None and not math.isfinite(float(g.sum())) and not np.isfinite(g).all():
            return name
    return None


def _diverged_gradient(name: str, loss_value: float, epoch: int, batch: int, steps: int) -> TrainingDiverged:
    """The error for a NaN or infinite gradient, found before the update was applied."""
    return TrainingDiverged(
        f"the gradient of parameter '{name}' became NaN or infinite at epoch {epoch + 1}, iteration {batch + 1} "
        f"(step {steps + 1}), with a finite loss of {loss_value:.6g}; the model keeps the weights of the last "
        "finite step. Try a lower learning rate (or gradient clipping: clip_norm=...)."
    )


def _diverged(loss_value: float, epoch: int, batch: int, steps: int, bad: str | None) -> TrainingDiverged:
    """The error for a non-finite loss (after :func:`_restore_if_overflowed`)."""
    where = f"epoch {epoch + 1}, iteration {batch + 1} (step {steps + 1})"
    if bad:
        kept = (f"the previous update overflowed parameter '{bad}', so the weights from the start of "
                f"epoch {epoch + 1} were restored")
    else:
        kept = "the model keeps the weights of the last finite step"
    return TrainingDiverged(
        f"the loss became {loss_value} at {where}; {kept}. Try a lower learning rate (or gradient clipping: "
        "clip_norm=...), or add the TerminateOnNaN callback to stop without an error."
    )


def _overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook, None) is not getattr(Callback, hook) or hook in vars(cb)


def _resolve_metrics(metrics: Sequence[str | Callable], y: np.ndarray | None) -> list[Metric]:
    out: list[Metric] = []
    for spec in metrics:
        m = get_metric(spec)
        # NOTE: built-in metrics need classes: integer labels or probability rows; regression targets skip them
        if isinstance(spec, str) and y is not None and y.dtype.kind == "f" and y.ndim == 1:
            continue
        out.append(m)
    return out


# ------------------------------------------------------------------------------------ evaluate, predict
def predict(model: Module, x: Any, batch_size: int = 1024, check_finite: bool = True,
            _name: str = "predict") -> np.ndarray:
    """The model's outputs for x (eval mode, no graph), computed in batches."""
    _positive("batch_size", batch_size, where=_name)
    x, _ = _check_xy(x, None, _name, check_finite, model.dtype, need_y=False)
    _check_features(model, x, _name)
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
    _positive("batch_size", batch_size, where="evaluate")
    x, y = _check_xy(x, y, "evaluate", check_finite, model.dtype)
    y = _check_labels(model, y, loss, "evaluate")
    out = predict(model, x, batch_size, check_finite=False, _name="evaluate")
    loss_fn = get_loss(loss)
    with no_grad():
        total = sum(float(loss_fn(Tensor(out[i:i + batch_size]), y[i:i + batch_size]).data) * len(y[i:i + batch_size])
                    for i in range(0, len(y), batch_size))
    result = {"loss": total / len(y)}
    for m in _resolve_metrics(metrics, y):
        m.reset()
        m.update(out, y)
        result[m.name] = float(m.result())
    return result
