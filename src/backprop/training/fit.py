"""``fit``: training by mini-batch gradient descent in one call, as in Keras, on the one training loop.

One iteration: a mini-batch goes forward through the model, the loss measures its error, the backward
pass carries the error back through every layer, and the optimizer moves every weight against its
gradient. With N samples and batch size B an epoch is ceil(N/B) iterations in which every sample is used
once. ``fit`` checks its arguments and data, then assembles the pieces: a :class:`~backprop.training.loop.Step`
(or ``step=`` your subclass of it; wrapped for data parallelism with ``distributed=True``), the batches,
the callbacks (History, progress, schedules, checkpoints, the divergence guard) and a
:class:`~backprop.training.loop.Loop` that runs them.

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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from backprop import optim
from backprop.engine.constraints import Interval, Options, Satisfies, check, validate
from backprop.engine.random import manual_seed
from backprop.engine.tensor import Tensor
from backprop.nn.module import Module
from backprop.training import extensions
from backprop.training.callbacks import Callback, DivergenceGuard, LearningRateScheduler
from backprop.training.evaluate import evaluate
from backprop.training.history import History
from backprop.training.inputs import (
    check_features,
    check_labels,
    check_sample_weight,
    check_xy,
    input_dtype,
    sample_weights,
    split_validation,
)
from backprop.training.jit import captured
from backprop.training.loop import CallbackList, Loop, Step, batches
from backprop.training.metrics import resolve_metrics
from backprop.training.resume import Checkpointing, check_resume, checkpoint_target, restore

__all__ = ["FIT_CONSTRAINTS", "fit"]

_POSITIVE = Interval(float, 0, closed="neither")

#: fit's hyperparameters as data (scikit-learn's ``_parameter_constraints``); None in a list allows None.
FIT_CONSTRAINTS: dict[str, list[Any]] = {
    "batch_size": [Interval(int, 1)],
    "epochs": [Interval(int, 0)],
    "validation_split": [Interval(float, 0, 1, closed="left")],
    "verbose": [Options((0, 1, 2))],
    "scheduler_interval": [Options(("epoch", "step"))],
    "clip_norm": [None, _POSITIVE],
    "clip_value": [None, _POSITIVE],
    "step": [Satisfies(lambda s: isinstance(s, type) and issubclass(s, Step), "a subclass of backprop.training.Step")],
    "jit": [Options((True, False))],
}


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
    step: type[Step] = Step,
    jit: bool = True,
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
    random generator states, counters, History) is written atomically at the end of every epoch, and
    when Ctrl-C stops training between two steps (a KeyboardInterrupt raised by a callback's
    ``on_train_batch_end``, as the command line does), at that point of the epoch, with the epoch's running
    sums, so that nothing trained is lost (not under data parallelism, nor with a metric that cannot save its
    state; a path with log-key fields keeps its last epoch's file).
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

    ``step``: the :class:`~backprop.training.loop.Step` class that makes one training step (forward, cost,
    backward, update): subclass it and override ``train_step`` to customise the step (gradient
    accumulation, a second loss...) while ``fit`` keeps everything else; it is built as
    ``step(model, optimizer, loss, weighted=..., clip_norm=..., clip_value=..., check_finite=...)``.

    ``jit`` (default True): capture the step's forward and backward once per batch shape and replay them
    (:class:`~backprop.training.jit.CapturedStep`, see :func:`backprop.jit`): the same results, bit for
    bit, with less Python per step; with the ``numba`` extra a dense network's step runs as compiled kernels
    (:mod:`backprop.training.fused`: within float32 rounding of the eager step, a resume still bit-identical
    to the uninterrupted run). A step class that overrides ``train_step`` or ``backpropagate`` runs
    eagerly; ``jit=False`` always does.
    """
    validate("fit", FIT_CONSTRAINTS, locals())
    if isinstance(optimizer, str):
        check("fit", "lr", lr, _POSITIVE)
    if sync_batchnorm and not distributed:
        raise ValueError("fit: sync_batchnorm=True needs distributed=True (it synchronises BatchNorm over MPI ranks)")
    x, y = check_xy(x, y, "fit", check_finite, input_dtype(model))
    check_features(model, x, "fit")
    y = check_labels(model, y, loss, "fit")
    sample_weight = check_sample_weight(sample_weight, len(x))
    metric_list = resolve_metrics(metrics, y)
    comm = None if distributed is True else distributed
    mpi = extensions.get("distributed") if distributed else None

    resume = _load(resume_from)
    if resume is not None:
        seed = check_resume(resume, seed, epochs, batch_size, shuffle, validation_split, len(x))
    elif mpi is not None and seed is None:  # every rank must draw the same permutations
        seed = mpi.shared_seed(comm)
    # NOTE: seed=None draws fresh entropy here, recorded in checkpoints so that a resume recomputes the split
    root = np.random.SeedSequence(int(resume.extra["fit"]["seed_entropy"]) if resume is not None
                                  and "fit" in resume.extra else seed)
    loader_seed, global_seed, split_seed = root.spawn(3)
    if seed is not None and resume is None:  # resuming restores the generator's saved state instead
        manual_seed(int(global_seed.generate_state(1)[0]))
    history = History() if resume is None else resume.to_history()
    n_samples = len(x)  # before the validation split: what a checkpoint records and a resume checks
    if validation_split:
        x, y, xv, yv, train_idx, history.validation_indices = split_validation(
            x, y, validation_split, np.random.default_rng(split_seed))
        validation_data = (xv, yv)
        sample_weight = None if sample_weight is None else sample_weight[train_idx]
    validate_epoch = _validator(model, validation_data, loss, metrics, batch_size, check_finite)
    weights = sample_weights(y, class_weight, sample_weight)

    opt = optim.build(optimizer, model.parameters(), lr)
    data = batches(x, y, weights, batch_size=batch_size, shuffle=shuffle, seed=loader_seed)
    history.params = {"epochs": epochs, "batch_size": batch_size, "steps": len(data), "samples": len(x)}
    callbacks, schedule = _callbacks(callbacks, opt, scheduler, scheduler_interval, mpi, comm,
                                     exact=checkpoint is not None or resume is not None)
    saver = checkpoint_target(checkpoint) if checkpoint is not None else None
    start_epoch, progress = restore(resume, model, opt, schedule, data.loader) if resume is not None else (0, None)
    if progress is not None and mpi is not None:
        raise ValueError("fit: resume_from holds a checkpoint written in the middle of an epoch by one process; "
                         "resume it in one process (distributed=False), or from an epoch's end")

    train_step = step(model, opt, loss, weighted=weights is not None, clip_norm=clip_norm, clip_value=clip_value,
                      check_finite=check_finite)
    train_step = captured(train_step, jit, fuse=mpi is None)  # NOTE: data parallelism needs the gradients
    if mpi is not None:  # data parallelism wraps the step: each rank a shard of every batch
        train_step = mpi.DataParallelStep(train_step, batch_size, comm=comm, sync_batchnorm=sync_batchnorm)
        train_step.start(verbose=verbose)
    after: list[Callback] = []
    if saver is not None or resume is not None:
        record = {"seed": seed, "seed_entropy": str(root.entropy), "epochs": epochs, "batch_size": batch_size,
                  "shuffle": bool(shuffle), "validation_split": float(validation_split), "samples": n_samples}
        # NOTE: mid-epoch checkpoints hold one process's metric sums: not under data parallelism
        after.append(Checkpointing(saver, resume, opt, schedule, history, data.loader, record,
                                   write=train_step.is_root, mid_epoch=mpi is None))
    after.append(DivergenceGuard(history))
    callback_list = CallbackList(callbacks, history=history, add_progbar=verbose if train_step.is_root else 0,
                                 after=after, model=model, optimizer=opt, params=history.params)
    loop = Loop(train_step, data, epochs=epochs, callbacks=callback_list, metrics=metric_list,
                validate=validate_epoch, record_lr=any(isinstance(cb, LearningRateScheduler) for cb in callbacks),
                start_epoch=start_epoch, progress=progress, verbose=verbose)
    return loop.run()


def _load(resume_from: Any) -> Any:
    """The checkpoint to resume from (a path is read with :func:`backprop.io.load_checkpoint`), or None."""
    if resume_from is None:
        return None
    bio = extensions.get("io")
    return resume_from if isinstance(resume_from, bio.Checkpoint) else bio.load_checkpoint(resume_from)


def _validator(model: Module, validation_data: Any, loss: Any, metrics: Any, batch_size: int,
               check_finite: bool) -> Callable[[], dict[str, float]] | None:
    """The epoch-end evaluation of the validation data (checked now), or None without validation data."""
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError(f"fit: validation_data must be a pair (x, y), got {type(validation_data).__name__}"
                        + (f" of length {len(validation_data)}" if hasattr(validation_data, "__len__") else ""))
    xv, yv = check_xy(validation_data[0], validation_data[1], "fit (validation_data)", check_finite,
                      input_dtype(model))
    check_features(model, xv, "fit (validation_data)")
    yv = check_labels(model, yv, loss, "fit (validation_data)")
    return lambda: evaluate(model, xv, yv, loss=loss, metrics=metrics, batch_size=max(batch_size, 512),
                            check_finite=False)


def _callbacks(callbacks: Sequence[Callback], opt: Any, scheduler: Any, interval: str, mpi: Any, comm: Any,
               exact: bool) -> tuple[list[Callback], Any]:
    """The user's callbacks for this process, a scheduler's callback first; and the scheduler to checkpoint.

    Under data parallelism the callbacks that write files or print (``root_only``) run on rank 0 only,
    and every callback knows its rank.
    """
    callbacks = list(callbacks)
    if mpi is not None:
        rank = mpi.init(comm).rank
        callbacks = [cb for cb in callbacks if rank == 0 or not getattr(cb, "root_only", False)]
        for cb in callbacks:
            cb.rank = rank
    if scheduler is not None:
        if isinstance(scheduler, type) or (not callable(getattr(scheduler, "step", None)) and callable(scheduler)):
            scheduler = scheduler(opt)
        callbacks.insert(0, LearningRateScheduler(scheduler, interval=interval))
    schedules = [cb.schedule for cb in callbacks if isinstance(cb, LearningRateScheduler) and cb.is_scheduler]
    if len(schedules) > 1 and exact:
        raise ValueError("fit: checkpoints hold one learning-rate scheduler; got several LearningRateScheduler "
                         "callbacks with scheduler objects")
    return callbacks, schedules[0] if schedules else None
