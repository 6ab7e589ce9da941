"""``backprop train``: train a network on a data set and write the model, its metrics and a plot.

    backprop train                                   # an MLP on the bundled 8x8 digits, no download needed
    backprop train --dataset mnist --hidden 800 --epochs 30 --lr 0.05
    backprop train --model lstm --dataset adding:100   # sequences: seq-mnist, adding[:T], copy[:T], text:PATH
    backprop train --resume runs/<stamp>             # continue an interrupted run, bit-identically

>>> import argparse
>>> sub = argparse.ArgumentParser().add_subparsers(dest="command")
>>> add_parser(sub).parse_args(["--hidden", "32", "--epochs", "3"]).hidden
[32]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import io
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import backprop as bp
from backprop import distributed
from backprop import io as bio
from backprop.cli import sequences as seq
from backprop.cli import workers
from backprop.cli.options import (
    EXIT_DIVERGED,
    CLIError,
    data_options,
    fraction,
    is_csv,
    layer_sizes,
    load_data,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from backprop.extras import require
from backprop.io import TrainingCheckpoint, atomic_write
from backprop.nn import models
from backprop.optim import lr_scheduler as S
from backprop.training import callbacks as cb
from backprop.training.callbacks import Callback
from backprop.training.health import TrainingHealth

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "gelu")
CLI_LOSSES = ("cross_entropy", "nll", "mse", "quadratic")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "cosine", "exponential", "onecycle", "plateau")
DEFAULT_EPOCHS = 30
PATIENCE = 5  # early stopping's default patience, in epochs
CHECKPOINT_FILE = "checkpoint.safetensors"
EXIT_CODES = """exit codes:
  0    trained (early stopping included)
  2    bad options or data, or a missing extra (one line on stderr, before any work)
  3    training diverged (NaN or infinite loss or gradient): the last finite weights are saved
  130  interrupted by Ctrl-C: the run is checkpointed where it stopped (see --resume)
  143  stopped by SIGTERM: the same"""
RUN_FILES = ("model.safetensors", CHECKPOINT_FILE, "metrics.csv", "training.png")  # what a run writes


#: The options each model trains well with, used where the command line gives none (checked on the data
#: sets the models are for: the digits for mlp, MNIST for lenet5 and cnn; see README "Defaults that train").
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    **models.MODEL_DEFAULTS,  # mlp, lenet5, cnn: measured, and why, in backprop.nn.models
    # NOTE: the sequence models (see backprop.cli.sequences): Adam, and gradients clipped to a norm of 1, the
    # usual guard against the exploding gradients of backpropagation through time
    **{m: {"optimizer": "adam", "lr": 0.002, "momentum": 0.9, "batch_size": 64, "clip_norm": 1.0,
           "hidden": seq.DEFAULT_HIDDEN[m]} for m in ("rnn", "lstm", "gru")},
    "transformer": {"optimizer": "adam", "lr": 0.001, "momentum": 0.9, "batch_size": 64, "clip_norm": 1.0,
                    "hidden": seq.DEFAULT_HIDDEN["transformer"]},
}
MLP_HIDDEN = [128, 64]


def _defaults_of(option: str) -> str:
    values = {model: d[option] for model, d in MODEL_DEFAULTS.items()}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{v} ({m})" for m, v in values.items())


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the options not given on the command line with the model's own defaults (``MODEL_DEFAULTS``)."""
    for option, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, option) is None:
            setattr(args, option, list(value) if isinstance(value, list) else value)
    if args.hidden is None:
        args.hidden = list(MLP_HIDDEN)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` (the object ``add_subparsers`` returned)."""
    t = subparsers.add_parser("train", help="train a network and save the model, metrics and plot",
                              description="Train a network by mini-batch backpropagation: at most --epochs passes "
                              "over the training set, stopped early when the validation loss stops improving (the "
                              "best weights kept), then evaluated once on the test split.",
                              epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_options(t)
    t.add_argument("--hidden", type=layer_sizes, default=None,
                   help="hidden layer sizes of the mlp (default: 128,64); for rnn/lstm/gru the size of the hidden "
                        "state, once per stacked layer (default: 128; 256,256: two layers), for transformer d_model "
                        "once per layer (default: 64,64)"),
    t.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="hidden activation (default: relu)")
    t.add_argument("--loss", choices=CLI_LOSSES, default="cross_entropy",
                   help="cross_entropy (softmax output), nll, mse or quadratic (sigmoid outputs, Nielsen's cost)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"default: {_defaults_of('optimizer')}")
    t.add_argument("--lr", type=positive_float, default=None, help=f"learning rate (default: {_defaults_of('lr')})")
    t.add_argument("--momentum", type=fraction, default=None,
                   help=f"SGD/RMSprop momentum (default: {_defaults_of('momentum')})")
    t.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"mini-batch size (default: {_defaults_of('batch_size')})")
    t.add_argument("--epochs", type=positive_int, default=None,
                   help=f"passes over the data at most, in all (default: {DEFAULT_EPOCHS}; early stopping usually "
                        "ends sooner; with --resume: the run's own, or more to extend it)")
    t.add_argument("--validation-split", type=fraction, default=0.1,
                   help="hold out this fraction of the training set for validation, for early stopping and the "
                        "curves (default: 0.1; 0: none, and no early stopping)")
    t.add_argument("--model", choices=("mlp", "lenet5", "cnn", *seq.SEQUENCE_MODELS), default="mlp",
                   help="mlp (--hidden), lenet5 or cnn (a small CNN with batch norm; these two need 28x28 images); "
                        "for the sequence sets rnn (tanh), lstm, gru or transformer, which read a class or a number "
                        "from the whole sequence (seq-mnist, adding), a class at every step (copy) or, on text, "
                        "are character language models (see 'backprop generate')"),
    t.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="L2 weight decay (AdamW: decoupled)")
    t.add_argument("--dropout", type=fraction, default=None,
                   help="dropout probability after hidden layers (default: 0 for mlp/lenet5, 0.25 for cnn)")
    t.add_argument("--label-smoothing", type=fraction, default=0.0, help="cross-entropy label smoothing (default: 0)")
    t.add_argument("--clip-norm", type=positive_float, default=None,
                   help="clip the global gradient norm to this (default: none; 1.0 for the sequence models)")
    t.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                   help="learning-rate schedule: step (x0.1 at 1/3 and 2/3 of the epochs), cosine, exponential "
                        "(x0.95 per epoch), onecycle (per iteration, peak --lr), plateau (x0.1 after 3 flat epochs)")
    t.add_argument("--warmup", type=non_negative_int, default=0,
                   help="epochs of linear learning-rate warm-up before the schedule (default: 0)")
    t.add_argument("--early-stopping", type=non_negative_int, default=None, metavar="PATIENCE",
                   help=f"stop when the validation loss has not improved for PATIENCE epochs and restore the best "
                        f"weights (default: {PATIENCE} with a validation split; 0: train all --epochs)")
    t.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="write TensorBoard event files (default DIR: <out>/tensorboard)")
    t.add_argument("--workers", type=positive_int, default=1,
                   help="train data-parallel on N MPI processes (runs mpiexec -n N; needs the mpi extra); "
                        "under mpiexec itself the ranks are found automatically")
    t.add_argument("--sync-batchnorm", action="store_true",
                   help="with several ranks: BatchNorm uses the statistics of the whole batch over all the ranks "
                        "(as one process would) instead of each rank's shard")
    t.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise every feature to mean 0 and variance 1 on the training set, by an "
                        "nn.Normalization layer saved in the model, so evaluate, predict and export apply it too "
                        "(default: on for CSV data, off for the named data sets, which are already scaled)")
    t.add_argument("--no-jit", dest="jit", action="store_false",
                   help="run every training step eagerly (default: the step is captured once and replayed, "
                        "with the same results; see bp.jit)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="random seed for everything (default: 0)")
    t.add_argument("--out", help="output folder (default: a new runs/<timestamp>); one that holds a run is "
                                 "refused unless --overwrite")
    t.add_argument("--overwrite", action="store_true", help="let --out replace the run already in that folder")
    t.add_argument("--no-plot", dest="plot", action="store_false",
                   help="do not draw training.png (which needs matplotlib: pip install \"backprop[plot]\")")
    t.add_argument("--quiet", action="store_true", help="print only the output folder")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help=f"continue the run in RUN_DIR from its {CHECKPOINT_FILE} (written every epoch, and where "
                        "Ctrl-C stopped it) with its "
                        "saved options, to its --epochs (or a larger --epochs); the result is bit-identical to an "
                        "uninterrupted run")
    return t


def build_model(args: argparse.Namespace, n_features: int, n_outputs: int, regression: bool = False):
    """The network asked for on the command line (see ``backprop.nn.models``); for regression, linear outputs."""

    dropout = args.dropout if args.dropout is not None else (0.25 if args.model == "cnn" else 0.0)
    head = "none" if regression else args.loss  # NOTE: mse on classes has sigmoid outputs; a regression none
    if args.model == "mlp":
        return models.mlp(n_features, args.hidden, n_outputs, args.activation, dropout, head)
    return models.MODELS[args.model](n_features, n_outputs, args.activation, dropout, head)


def build_optimizer(args: argparse.Namespace, params: list):

    kw: dict[str, Any] = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.optimizer in ("sgd", "rmsprop"):
        kw["momentum"] = args.momentum
    return bp.optim.get(args.optimizer, params, **kw)


def build_scheduler(args: argparse.Namespace, opt: Any, steps_per_epoch: int) -> tuple[Any, str]:
    """The learning-rate schedule and whether it steps per "epoch" or per "step" (iteration)."""

    epochs = max(DEFAULT_EPOCHS if args.epochs is None else args.epochs, 1)
    if args.scheduler == "onecycle":
        if args.warmup:
            raise CLIError("--warmup does not combine with --scheduler onecycle, which warms up by itself")
        return S.OneCycleLR(opt, max_lr=args.lr, total_steps=epochs * steps_per_epoch), "step"
    rest = max(epochs - args.warmup, 1)
    main: Any = None
    if args.scheduler == "step":
        main = S.MultiStepLR(opt, milestones=sorted({max(rest // 3, 1), max(2 * rest // 3, 2)}), gamma=0.1)
    elif args.scheduler == "cosine":
        main = S.CosineAnnealingLR(opt, T_max=rest)
    elif args.scheduler == "exponential":
        main = S.ExponentialLR(opt, gamma=0.95)
    elif args.scheduler == "plateau":
        if args.warmup:
            raise CLIError("--warmup does not combine with --scheduler plateau")
        return S.ReduceLROnPlateau(opt, factor=0.1, patience=3), "epoch"
    if not args.warmup:
        return main, "epoch"
    warm = S.LinearLR(opt, start_factor=1.0 / (args.warmup + 1), end_factor=1.0, total_iters=args.warmup)
    if main is None:
        return warm, "epoch"
    return S.SequentialLR(opt, [warm, main], milestones=[args.warmup]), "epoch"


def _out_dir(args: argparse.Namespace) -> Path:
    """The run's folder, created: ``--out`` (never a folder that holds a run, unless ``--overwrite``) or a new
    ``runs/<timestamp>``. Checked before any work."""
    if args.out:
        path = Path(args.out)
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out {path} exists and is not a folder")
        taken = [name for name in RUN_FILES if (path / name).exists()]
        if taken and not args.overwrite and not args.resume:
            raise CLIError(f"--out {path} already holds a run ({taken[0]}): choose another folder, continue it "
                           f"with --resume {path}, or replace it with --overwrite")
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / stamp
        k = 1
        while path.exists():
            path = Path("runs") / f"{stamp}-{k}"
            k += 1
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CLIError(f"--out {path}: the folder is not writable")
    if args.overwrite and not args.resume:  # NOTE: a stale checkpoint must not be resumed into the new run
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
    return path


def _check_options(args: argparse.Namespace, world: int) -> None:
    """Everything the options alone can tell, before any work (and before ``--workers`` launches ranks)."""
    if args.label_smoothing and args.loss != "cross_entropy":
        raise CLIError("--label-smoothing applies to --loss cross_entropy only")
    if args.early_stopping and not args.validation_split:
        raise CLIError(f"--early-stopping {args.early_stopping} watches the validation loss: it needs a "
                       "--validation-split above 0")
    ranks = args.workers if world == 1 else world
    if args.batch_size % ranks:
        raise CLIError(f"--batch-size {args.batch_size} must be divisible by the {ranks} MPI ranks "
                       f"(each rank trains an equal share of every batch)")
    if args.sync_batchnorm and ranks == 1:
        raise CLIError("--sync-batchnorm needs several ranks (--workers N)")
    if args.tensorboard is not None:
        require("tensorboard", needed_by="--tensorboard")
    if args.plot:
        require("matplotlib", needed_by="training.png (or train with --no-plot)")
    if args.workers > 1 and world == 1:
        require("mpi4py", needed_by="--workers")


def _describe(model: Any, args: argparse.Namespace, n_features: int, n_classes: int) -> str:
    """The network in one line: its layer sizes (an MLP) or name, activation and parameter count."""
    if seq.is_sequence_model(args):
        return seq.describe(model, args)
    n = sum(p.data.size for p in model.parameters())
    shape = "-".join(map(str, [n_features, *args.hidden, n_classes])) if args.model == "mlp" else args.model
    return f"{shape} ({args.activation}), {n:,} parameters"


def cmd_train(args: argparse.Namespace) -> int:

    world = workers.world_size()
    resume = _resume_args(args) if args.resume else None
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    if args.early_stopping is None:
        args.early_stopping = PATIENCE if args.validation_split else 0
    resolve_defaults(args)
    _check_options(args, world)
    ds = load_data(args)  # NOTE: before launching ranks too, so that bad data is reported once
    seq.check(args, ds)
    if getattr(ds, "task", "classification") == "regression" and not seq.is_sequence_model(args):
        if args.model != "mlp":
            raise CLIError(f"--model {args.model} classifies images; a regression target needs --model mlp")
        if args.label_smoothing:
            raise CLIError("--label-smoothing applies to classes, not to a regression target")
    if args.workers > 1 and world == 1:
        _warn_oversubscribed(args.workers)
        return workers.launch(args.workers)
    root = True
    if world > 1:  # started by mpiexec: data-parallel over the ranks; rank 0 alone prints and writes files
        comm = distributed.init().comm
        root = comm.Get_rank() == 0
        table = distributed.rank_table(comm)  # fit prints it; --workers reads it to name a rank that died
        if root and os.environ.get(workers.RANK_TABLE_ENV):
            Path(os.environ[workers.RANK_TABLE_ENV]).write_text(json.dumps(table))
        if not root:
            args.quiet = True
    out_dir = _out_dir(args) if root else None
    if world > 1:
        out_dir = Path(comm.bcast(str(out_dir), root=0))
    bp.manual_seed(args.seed)
    n_features, n_classes = int(np.prod(ds.x_train.shape[1:])), len(ds.classes)
    regression = getattr(ds, "task", "classification") == "regression"
    model = seq.build(args, ds, 1 if regression else n_classes) if seq.is_sequence_model(args) else \
        build_model(args, n_features, 1 if regression else n_classes, regression)
    standardize = args.standardize if args.standardize is not None else is_csv(args.dataset)
    if standardize:  # NOTE: a layer of the model, so the saved file applies it in evaluate, predict and ONNX
        model = bp.nn.Sequential(bp.nn.Normalization(n_features).adapt(ds.x_train), *model)
    y_train, y_test, unscale = ds.y_train, ds.y_test, None
    if regression:  # the network learns a standardised target; the saved model maps it back to the units
        scale = bp.nn.Normalization(1).adapt(ds.y_train[:, None])
        y_train = scale(bp.Tensor(ds.y_train[:, None].astype(np.float32))).data
        y_test = ds.y_test[:, None].astype(np.float32)
        unscale = bp.nn.Normalization(1, mean=scale.mean, variance=scale.var, invert=True)
    opt = build_optimizer(args, list(model.parameters()))
    validation_split, validation_data = args.validation_split, None
    if getattr(ds, "kind", None) == "text":  # NOTE: a text's validation data is its last 10%, not a random split
        validation_split, validation_data = 0.0, (ds.x_test, ds.y_test)
    steps = int(np.ceil(len(ds.x_train) * (1 - validation_split) / args.batch_size))
    scheduler, interval = build_scheduler(args, opt, steps)
    loss: Any = args.loss
    if args.label_smoothing:
        def loss(out, y, reduction="mean", _ls=args.label_smoothing):
            return bp.nn.functional.cross_entropy(out, y, reduction=reduction, label_smoothing=_ls)

    callbacks: list[Any] = []
    if scheduler is not None:  # NOTE: a plateau schedule watches the validation loss when there is one
        callbacks.append(cb.LearningRateScheduler(scheduler, interval=interval,
                                                  monitor="val_loss" if validation_split or validation_data
                                                  is not None else "loss"))
    if args.early_stopping:
        callbacks.append(cb.EarlyStopping(monitor="val_loss", patience=args.early_stopping,
                                          restore_best_weights=True, verbose=0 if args.quiet else 1))
    if root:  # NOTE: training that does not learn is said in one line, with this command's options to change
        callbacks.append(TrainingHealth(n_classes=None if regression or n_classes < 2 else n_classes,
                                        advice=HEALTH_ADVICE, print_fn=_health_line))
    if args.tensorboard is not None and root:
        callbacks.append(cb.TensorBoard(args.tensorboard or str(out_dir / "tensorboard")))
    if not args.quiet:
        print(f"backprop: training on {seq.data_line(ds)}" if seq.is_sequence_model(args) else
              f"backprop: training on {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test samples, "
              f"{n_features} features, {n_classes} classes")
        print(f"network: {_describe(model, args, n_features, n_classes)}")
        extras = [f"momentum={args.momentum}"] if args.optimizer in ("sgd", "rmsprop") else []
        extras += [f"weight_decay={args.weight_decay}"] if args.weight_decay else []
        extras += [f"{args.scheduler} schedule"] if args.scheduler != "none" else []
        extras += [f"{args.warmup} warm-up epochs"] if args.warmup else []
        extras += [f"gradient norm clipped to {args.clip_norm}"] if args.clip_norm else []
        held = f", {validation_split:.0%} held out for validation" if validation_split else \
            ", the last 10% of the text for validation" if validation_data is not None else ""
        stop_rule = f", early stopping after {args.early_stopping} epochs without progress" \
            if args.early_stopping else ""
        print(f"{args.optimizer} lr={args.lr}{' ' if extras else ''}{' '.join(extras)}, batch size {args.batch_size}: "
              f"{steps} iterations per epoch, at most {args.epochs} epochs{held}{stop_rule}")

    saved_args = {k: v for k, v in vars(args).items()
                  if k not in ("debug", "quiet", "resume", "workers", "overwrite")}
    saved_args["out"] = str(out_dir)
    checkpoint = TrainingCheckpoint(out_dir / CHECKPOINT_FILE, extra={"cli_args": saved_args})
    if resume is not None and not args.quiet:
        progress = resume.extra.get("fit", {}).get("progress")
        remaining = args.epochs - resume.epoch
        where = f"in epoch {resume.epoch + 1} after iteration {resume.iteration}" if progress \
            else f"after epoch {resume.epoch}"
        print(f"backprop: resuming {out_dir} {where} of {args.epochs}: {remaining} epoch{'' if remaining == 1 else 's'}"
              f" remain{'s' if remaining == 1 else ''}")
        if args.early_stopping:
            print("backprop: note: early stopping starts its patience count over (it is not in the checkpoint)")
    stop = _StopOnSignal()
    callbacks.append(stop)
    t0 = time.perf_counter()
    diverged: bp.TrainingDiverged | None = None
    # NOTE: overflow in a diverging run is reported once, as the divergence it is, not as NumPy's warnings
    with stop.installed(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            history = bp.fit(model, ds.x_train, y_train, loss=loss, optimizer=opt, batch_size=args.batch_size,
                             epochs=args.epochs, validation_split=validation_split,
                             validation_data=validation_data, seed=args.seed,
                             metrics=() if regression else ("accuracy",), callbacks=callbacks,
                             clip_norm=args.clip_norm, verbose=0 if args.quiet else 1, checkpoint=checkpoint,
                             resume_from=resume, distributed=world > 1,
                             sync_batchnorm=world > 1 and args.sync_batchnorm, jit=args.jit)
        except bp.TrainingDiverged as e:  # the model holds the last finite weights: save them, exit non-zero
            diverged, history = e, e.history
    seconds = time.perf_counter() - t0
    if not root:
        return 0
    if unscale is not None:
        model = bp.nn.Sequential(*(model if isinstance(model, bp.nn.Sequential) else [model]), unscale)
    final = {}
    if len(ds.x_test) and diverged is None and stop.signum is None:  # the test split, once, at the end
        final = bp.evaluate(model, ds.x_test, y_test, loss=args.loss, metrics=() if regression else ("accuracy",))

    meta = {"dataset": ds.name, "classes": [c.item() if hasattr(c, "item") else c for c in ds.classes],
            "task": "regression" if regression else "classification", "standardized": bool(standardize),
            "class_names": list(ds.class_names), "n_features": n_features, "loss": args.loss,
            "test": final, "epochs": history.epochs, "iterations": history.iterations,
            "seconds": round(seconds, 2), "args": saved_args,
            **(ds.metadata() if seq.is_sequence_model(args) else {})}
    model_path = out_dir / "model.safetensors"
    bio.save(model, model_path, metadata=meta)
    written = [model_path]
    if history.epochs:  # NOTE: no complete epoch, nothing to tabulate or draw: no header-only file, no empty plot
        metrics_path = out_dir / "metrics.csv"
        _write_metrics_csv(history, metrics_path)
        written.append(metrics_path)
        if args.plot:
            plot_path = out_dir / "training.png"
            _plot(history, plot_path, title=f"{ds.name}: {_describe(model, args, n_features, n_classes)}")
            written.append(plot_path)
    if args.quiet:
        print(out_dir)
    else:
        if final:
            score = seq.final_line(ds, final) if seq.is_sequence_model(args) else \
                f"test mse {final['loss']:.6g} - test rmse {final['loss'] ** 0.5:.6g}" if regression else \
                f"test loss {final['loss']:.4f} - test accuracy {final['accuracy']:.4f}"
            print(f"{score} ({history.epochs} epochs, {history.iterations} iterations, {seconds:.1f}s)")
        print("wrote " + ", ".join(map(str, written[:-1])) + (" and " if len(written) > 1 else "") + str(written[-1]))
    if diverged is not None:
        print(f"backprop: error: training diverged: {diverged.what}. Try a lower --lr (it is {args.lr}), or clip "
              f"the gradients with --clip-norm 1.0; the last finite weights are in {model_path}", file=sys.stderr)
        return EXIT_DIVERGED
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        ckpt = out_dir / CHECKPOINT_FILE
        if ckpt.exists():
            saved = bio.load_checkpoint(ckpt)
            where = f"epoch {saved.epoch + 1}, iteration {saved.iteration}" \
                if saved.extra.get("fit", {}).get("progress") else f"the end of epoch {saved.epoch}"
            print(f"backprop: {name}: stopped after iteration {history.iterations}; the checkpoint in {out_dir} "
                  f"holds the run at {where}. Continue with: backprop train --resume {out_dir}", file=sys.stderr)
        else:
            print(f"backprop: {name}: stopped after iteration {history.iterations}, before a checkpoint could be "
                  "written: nothing to resume", file=sys.stderr)
        return 128 + stop.signum
    return 0


HEALTH_ADVICE = {"lr": "--lr {value}", "optimizer": "--optimizer {value}", "activation": "--activation {value}",
                 "init": None}


def _health_line(message: str) -> None:
    print(f"backprop: warning: {message}", file=sys.stderr, flush=True)


def _warn_oversubscribed(ranks: int) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if ranks > cores:
        print(f"backprop: warning: --workers {ranks} starts more ranks than the {cores} CPU cores available: "
              "they will share cores and train slower than fewer ranks would", file=sys.stderr)


class _StopOnSignal(Callback):
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, then stop.

    fit then returns History with ``interrupted=True``; the checkpoint of the last complete epoch stays the
    one to resume from, which gives the same result as a run that was never interrupted.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self.signum is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.signum = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt


_RESUME_FREE = ("resume", "epochs", "quiet", "debug", "data_dir", "workers")  # what --resume lets the command line change


def _defaults() -> dict[str, Any]:
    """Every ``train`` option's default, as parsed from an empty command line."""
    return {"command": "train", **vars(add_parser(argparse.ArgumentParser().add_subparsers()).parse_args([]))}


def _resume_args(args: argparse.Namespace) -> Any:
    """``--resume RUN_DIR``: load the run's checkpoint, put its saved options into ``args``; the Checkpoint."""

    run_dir = Path(args.resume)
    path = run_dir / CHECKPOINT_FILE
    if not run_dir.is_dir():
        raise CLIError(f"--resume {run_dir}: no such run folder")
    if not path.is_file():
        raise CLIError(f"--resume {run_dir}: no {CHECKPOINT_FILE} in it, nothing to resume")
    try:
        ckpt = bio.load_checkpoint(path)
    except ValueError as e:
        raise CLIError(f"--resume {run_dir}: the checkpoint is corrupt or invalid: {e}") from None
    saved = ckpt.extra.get("cli_args")
    if not isinstance(saved, dict):
        raise CLIError(f"--resume {run_dir}: {path} was not written by 'backprop train' (no saved options)")
    defaults = _defaults()
    for key, value in saved.items():
        default = defaults.get(key, ...)
        if default is ... or key in _RESUME_FREE and key not in ("epochs", "data_dir"):
            raise CLIError(f"--resume {run_dir}: the checkpoint holds an unknown option {key!r}")
        if default is not None and value is not None and type(value) is not type(default) \
                and not (isinstance(default, float) and type(value) is int):
            raise CLIError(f"--resume {run_dir}: the checkpoint's option {key!r} is {value!r}, "
                           f"expected a {type(default).__name__}")
    given = [k for k, v in vars(args).items()
             if k not in _RESUME_FREE and v != defaults.get(k) and v != saved.get(k, defaults.get(k))]
    if given:
        raise CLIError(f"--resume continues a run with its saved options; only --epochs, --data-dir, --quiet and "
                       f"--debug can be given with it (got --{given[0].replace('_', '-')})")
    epochs, data_dir = args.epochs, args.data_dir
    for key, value in saved.items():
        setattr(args, key, value)
    args.out = str(run_dir)
    if data_dir is not None:
        args.data_dir = data_dir
    saved_epochs = saved.get("epochs", DEFAULT_EPOCHS)
    if epochs is not None:
        if epochs < ckpt.epoch:
            raise CLIError(f"--epochs {epochs}: the run in {run_dir} has already trained {ckpt.epoch} epochs "
                           "(--epochs counts them all)")
        if epochs > saved_epochs and args.scheduler == "onecycle":
            raise CLIError(f"--epochs {epochs}: a onecycle schedule cannot be extended past its "
                           f"{saved_epochs} epochs")
        args.epochs = epochs
    elif ckpt.epoch > saved_epochs:
        raise CLIError(f"--resume {run_dir}: the checkpoint is after epoch {ckpt.epoch} of {saved_epochs}")
    return ckpt


def _write_metrics_csv(history: Any, path: Path) -> None:

    keys = list(history.history)
    with atomic_write(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *keys])
        for i, epoch in enumerate(history.epoch):
            w.writerow([epoch + 1, *(f"{history.history[k][i]:.6g}" for k in keys)])


def _plot(history: Any, path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, training and validation side by side (and the learning rate when it
    changed), as a PNG. Epochs are whole numbers on the axis."""
    require("matplotlib", needed_by="training.png (or train with --no-plot)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    h = history.history
    epochs = [e + 1 for e in history.epoch]
    panels = [m for m in ("loss", "accuracy") if m in h]
    lr = h.get("lr", [])
    if len(set(lr)) > 1:
        panels.append("lr")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        for prefix, style, label in (("", "-", "training"), ("val_", "--", "validation")):
            key = prefix + metric if metric != "lr" or not prefix else None
            if key in h:
                ax.plot(epochs, h[key], style, marker="o" if len(epochs) < 30 else None,
                        label="learning rate" if metric == "lr" else label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate" if metric == "lr" else metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if metric != "lr":
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


