"""The ``backprop`` command: train, evaluate and predict from the shell.

    backprop train                                   # an MLP on the 8x8 digits, no download needed
    backprop train --dataset mnist --hidden 800 --epochs 30 --lr 0.05
    backprop evaluate runs/<stamp>/model.safetensors --dataset digits
    backprop predict runs/<stamp>/model.safetensors samples.csv

Bad options and bad data print one line on stderr and exit with code 2 (``--debug`` shows the traceback).
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
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import backprop as bp
from backprop import __version__, distributed
from backprop import io as bio
from backprop.cli import export, trace
from backprop.cli.options import (
    CLIError,
    fraction,
    layer_sizes,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from backprop.data import load_dataset
from backprop.data.datasets import _is_number
from backprop.io import TrainingCheckpoint, atomic_write
from backprop.nn import models
from backprop.optim import lr_scheduler as S
from backprop.training import callbacks as cb
from backprop.training import metrics as M
from backprop.training.callbacks import Callback

EXIT_USAGE = 2
EXIT_DIVERGED = 3

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "gelu")
CLI_LOSSES = ("cross_entropy", "nll", "mse", "quadratic")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "cosine", "exponential", "onecycle", "plateau")
DEFAULT_EPOCHS = 100
CHECKPOINT_FILE = "checkpoint.safetensors"


# --------------------------------------------------------------------------------------------- parsing
class _Parser(argparse.ArgumentParser):
    """argparse that reports an error in one line, with a pointer to --help, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backprop", description="Train neural networks by backpropagation.")
    parser.add_argument("--version", action="version", version=f"backprop {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="digits",
                       help="digits (bundled), mnist, fashion-mnist or csv:PATH (default: digits)")
        p.add_argument("--data-dir", help="folder with the MNIST/Fashion-MNIST files (or set BACKPROP_DATA)")
        p.add_argument("--label-column", help="CSV label column: a name or a 0-based index (default: 'label' or last)")
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    t = sub.add_parser("train", help="train a network and save the model, metrics and plot",
                       description="Train a network by mini-batch backpropagation.")
    data_options(t)
    t.add_argument("--hidden", type=layer_sizes, default=[128, 64], help="hidden layer sizes (default: 128,64)")
    t.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="hidden activation (default: relu)")
    t.add_argument("--loss", choices=CLI_LOSSES, default="cross_entropy",
                   help="cross_entropy (softmax output), nll, mse or quadratic (sigmoid outputs, Nielsen's cost)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="default: sgd")
    t.add_argument("--lr", type=positive_float, default=0.05, help="learning rate (default: 0.05)")
    t.add_argument("--momentum", type=fraction, default=0.9, help="SGD/RMSprop momentum (default: 0.9)")
    t.add_argument("--batch-size", type=positive_int, default=16, help="mini-batch size (default: 16)")
    t.add_argument("--epochs", type=non_negative_int, default=None,
                   help=f"passes over the data, in all (default: {DEFAULT_EPOCHS}; with --resume: the run's own, "
                        "or more to extend it)")
    t.add_argument("--validation-split", type=fraction, default=0.0,
                   help="hold out this fraction of the training set for validation (default: 0)")
    t.add_argument("--model", choices=("mlp", "lenet5", "cnn"), default="mlp",
                   help="mlp (--hidden), lenet5 or cnn (a small CNN with batch norm); the last two need 28x28 images")
    t.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="L2 weight decay (AdamW: decoupled)")
    t.add_argument("--dropout", type=fraction, default=None,
                   help="dropout probability after hidden layers (default: 0 for mlp/lenet5, 0.25 for cnn)")
    t.add_argument("--label-smoothing", type=fraction, default=0.0, help="cross-entropy label smoothing (default: 0)")
    t.add_argument("--clip-norm", type=positive_float, default=None, help="clip the global gradient norm to this")
    t.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                   help="learning-rate schedule: step (x0.1 at 1/3 and 2/3 of the epochs), cosine, exponential "
                        "(x0.95 per epoch), onecycle (per iteration, peak --lr), plateau (x0.1 after 3 flat epochs)")
    t.add_argument("--warmup", type=non_negative_int, default=0,
                   help="epochs of linear learning-rate warm-up before the schedule (default: 0)")
    t.add_argument("--early-stopping", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs and restore the best "
                        "weights (uses --validation-split, 0.1 if not given)")
    t.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="write TensorBoard event files (default DIR: <out>/tensorboard)")
    t.add_argument("--workers", type=positive_int, default=1,
                   help="train data-parallel on N MPI processes (runs mpiexec -n N; needs the mpi extra); "
                        "under mpiexec itself the ranks are found automatically")
    t.add_argument("--sync-batchnorm", action="store_true",
                   help="with several ranks: BatchNorm uses the statistics of the whole batch over all the ranks "
                        "(as one process would) instead of each rank's shard")
    t.add_argument("--no-jit", dest="jit", action="store_false",
                   help="run every training step eagerly (default: the step is captured once and replayed, "
                        "with the same results; see bp.jit)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="random seed for everything (default: 0)")
    t.add_argument("--out", help="output folder (default: runs/<timestamp>)")
    t.add_argument("--quiet", action="store_true", help="print only the output folder")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help=f"continue the run in RUN_DIR from its {CHECKPOINT_FILE} (written every epoch) with its "
                        "saved options, to its --epochs (or a larger --epochs); the result is bit-identical to an "
                        "uninterrupted run")

    e = sub.add_parser("evaluate", help="loss, accuracy, per-class precision/recall/F1 and a confusion matrix "
                                        "of a saved model on a data set's test split")
    e.add_argument("model", help="a model file written by 'backprop train'")
    data_options(e)
    e.add_argument("--out", help="confusion-matrix PNG to write (default: confusion_matrix.png beside the model)")

    p = sub.add_parser("predict", help="print one predicted class per row of a CSV file")
    p.add_argument("model", help="a model file written by 'backprop train'")
    p.add_argument("file", help="CSV of feature rows (a header row is allowed)")
    p.add_argument("--label-column", help="drop this column if the file also holds labels")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    trace.add_parser(sub)
    export.add_parser(sub)
    return parser


def _version() -> str:

    return __version__


# ------------------------------------------------------------------------------------------------ train
def build_model(args: argparse.Namespace, n_features: int, n_classes: int):
    """The network asked for on the command line (see ``backprop.nn.models``)."""

    dropout = args.dropout if args.dropout is not None else (0.25 if args.model == "cnn" else 0.0)
    if args.model == "mlp":
        return models.mlp(n_features, args.hidden, n_classes, args.activation, dropout, args.loss)
    return models.MODELS[args.model](n_features, n_classes, args.activation, dropout, args.loss)


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


def _load_data(args: argparse.Namespace):

    kw: dict[str, Any] = {}
    if args.label_column is not None:
        if not args.dataset.startswith("csv:") and not args.dataset.endswith(".csv"):
            raise CLIError("--label-column only applies to --dataset csv:PATH")
        kw["label_column"] = int(args.label_column) if args.label_column.lstrip("-").isdigit() else args.label_column
    try:
        return load_dataset(args.dataset, data_dir=args.data_dir, **kw)
    except FileNotFoundError as e:
        raise CLIError(str(e).strip()) from e


def _out_dir(out: str | None) -> Path:
    if out:
        path = Path(out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / stamp
        k = 1
        while path.exists():
            path = Path("runs") / f"{stamp}-{k}"
            k += 1
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cmd_train(args: argparse.Namespace) -> int:

    world = _mpi_world_size()
    if args.workers > 1 and world == 1:
        return _launch_workers(args.workers)
    resume = _resume_args(args) if args.resume else None
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    if args.label_smoothing and args.loss != "cross_entropy":
        raise CLIError("--label-smoothing applies to --loss cross_entropy only")
    root = True
    if world > 1:  # started by mpiexec: data-parallel over the ranks; rank 0 alone prints and writes files

        if args.batch_size % world:
            raise CLIError(f"--batch-size {args.batch_size} must be divisible by the {world} MPI ranks")
        comm = distributed.init().comm
        root = comm.Get_rank() == 0
        table = distributed.rank_table(comm)  # fit prints it; --workers reads it to name a rank that died
        if root and os.environ.get(RANK_TABLE_ENV):
            Path(os.environ[RANK_TABLE_ENV]).write_text(json.dumps(table))
        if not root:
            args.quiet = True
    ds = _load_data(args)
    out_dir = _out_dir(args.out) if root else None
    if world > 1:
        out_dir = Path(comm.bcast(str(out_dir), root=0))
    bp.manual_seed(args.seed)
    n_features, n_classes = int(np.prod(ds.x_train.shape[1:])), len(ds.classes)
    model = build_model(args, n_features, n_classes)
    opt = build_optimizer(args, list(model.parameters()))
    validation_split = args.validation_split
    if args.early_stopping and not validation_split:
        validation_split = 0.1
    steps = int(np.ceil(len(ds.x_train) * (1 - validation_split) / args.batch_size))
    scheduler, interval = build_scheduler(args, opt, steps)
    loss: Any = args.loss
    if args.label_smoothing:
        def loss(out, y, reduction="mean", _ls=args.label_smoothing):
            return bp.nn.functional.cross_entropy(out, y, reduction=reduction, label_smoothing=_ls)

    class TestMetrics(Callback):
        """Loss and accuracy on the test split after every epoch, for the metrics file and the plot."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            res = bp.evaluate(model, ds.x_test, ds.y_test, loss=args.loss, check_finite=False)
            logs["test_loss"], logs["test_accuracy"] = res["loss"], res["accuracy"]

    callbacks: list[Any] = [TestMetrics()] if len(ds.x_test) else []
    if args.early_stopping:
        callbacks.insert(0, cb.EarlyStopping(monitor="val_loss", patience=args.early_stopping,
                                             restore_best_weights=True, verbose=0 if args.quiet else 1))
    if args.tensorboard is not None and root:
        callbacks.append(cb.TensorBoard(args.tensorboard or str(out_dir / "tensorboard")))
    if not args.quiet:
        print(f"backprop: training on {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test samples, "
              f"{n_features} features, {n_classes} classes")
        print(model)
        extras = [f"momentum={args.momentum}"] if args.optimizer in ("sgd", "rmsprop") else []
        extras += [f"weight_decay={args.weight_decay}"] if args.weight_decay else []
        extras += [f"{args.scheduler} schedule"] if args.scheduler != "none" else []
        extras += [f"{args.warmup} warm-up epochs"] if args.warmup else []
        print(f"{args.optimizer} lr={args.lr}{' ' if extras else ''}{' '.join(extras)}, batch size {args.batch_size}: "
              f"{steps} iterations per epoch, {args.epochs} epochs"
              + (f", {validation_split:.0%} held out for validation" if validation_split else ""))


    saved_args = {k: v for k, v in vars(args).items() if k not in ("debug", "quiet", "resume", "workers")}
    saved_args["out"] = str(out_dir)
    checkpoint = TrainingCheckpoint(out_dir / CHECKPOINT_FILE, extra={"cli_args": saved_args})
    if resume is not None and not args.quiet:
        remaining = args.epochs - resume.epoch
        print(f"backprop: resuming {out_dir} after epoch {resume.epoch} of {args.epochs}: "
              f"{remaining} epoch{'' if remaining == 1 else 's'} remain{'s' if remaining == 1 else ''}")
        if args.early_stopping:
            print("backprop: note: early stopping starts its patience count over (it is not in the checkpoint)")
    stop = _StopOnSignal()
    callbacks.append(stop)
    t0 = time.perf_counter()
    diverged: Exception | None = None
    with stop.installed():
        try:
            history = bp.fit(model, ds.x_train, ds.y_train, loss=loss, optimizer=opt, batch_size=args.batch_size,
                             epochs=args.epochs, validation_split=validation_split, seed=args.seed,
                             callbacks=callbacks, scheduler=scheduler, scheduler_interval=interval,
                             clip_norm=args.clip_norm, verbose=0 if args.quiet else 1, checkpoint=checkpoint,
                             resume_from=resume, distributed=world > 1,
                             sync_batchnorm=world > 1 and args.sync_batchnorm, jit=args.jit)
        except bp.TrainingDiverged as e:  # the model holds the last finite weights: save them, exit non-zero
            diverged, history = e, e.history
    seconds = time.perf_counter() - t0
    if not root:
        return 0
    final = {}
    if len(ds.x_test) and diverged is None:
        final = bp.evaluate(model, ds.x_test, ds.y_test, loss=args.loss)


    meta = {"dataset": ds.name, "classes": [c.item() if hasattr(c, "item") else c for c in ds.classes],
            "class_names": list(ds.class_names), "n_features": n_features, "loss": args.loss,
            "test": final, "epochs": history.epochs, "iterations": history.iterations,
            "seconds": round(seconds, 2), "args": saved_args}
    model_path = out_dir / "model.safetensors"
    bio.save(model, model_path, metadata=meta)
    metrics_path = out_dir / "metrics.csv"
    _write_metrics_csv(history, metrics_path)
    plot_path = out_dir / "training.png"
    shape = "-".join(map(str, [n_features, *args.hidden, n_classes])) if args.model == "mlp" else args.model
    _plot(history, plot_path, title=f"{ds.name}: {shape}")
    if args.quiet:
        print(out_dir)
    else:
        if final:
            print(f"test loss {final['loss']:.4f} - test accuracy {final['accuracy']:.4f} "
                  f"({history.epochs} epochs, {history.iterations} iterations, {seconds:.1f}s)")
        print(f"wrote {model_path}, {metrics_path} and {plot_path}")
    if diverged is not None:
        print(f"backprop: error: training diverged: {diverged}; the last finite weights are in {model_path}",
              file=sys.stderr)
        return EXIT_DIVERGED
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        done = f"{history.epochs} complete epochs" if history.epochs != 1 else "1 complete epoch"
        print(f"backprop: {name}: stopped after iteration {history.iterations}; the checkpoint in {out_dir} holds "
              f"{done}. Continue with: backprop train --resume {out_dir}", file=sys.stderr)
        return 128 + stop.signum
    return 0


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


def _mpi_world_size() -> int:
    """The number of ranks when started by mpiexec (MPICH, Open MPI or PMIx set these), else 1."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def _launch_workers(n: int) -> int:
    """``--workers N``: run this same command under ``mpiexec -n N`` (the MPI extra) and return its exit code."""
    import shutil
    import subprocess
    import sysconfig

    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise CLIError("--workers needs MPI: pip install 'backprop[mpi]' (mpi4py and an MPI library)") from None
    beside = Path(sysconfig.get_path("scripts")) / "mpiexec"
    mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise CLIError("--workers needs an mpiexec launcher: pip install mpich (or install MPI) and retry")
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            argv.append(a)
    with tempfile.TemporaryDirectory(prefix="backprop-workers-") as tmp:
        table_file = Path(tmp) / "ranks.json"
        env = {**os.environ, RANK_TABLE_ENV: str(table_file)}
        proc = subprocess.Popen([mpiexec, "-n", str(n), sys.executable, "-m", "backprop", *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tails = [_Tail(), _Tail()]
        pumps = [threading.Thread(target=_pump, args=(stream, out, tail), daemon=True)
                 for stream, out, tail in ((proc.stdout, sys.stdout, tails[0]), (proc.stderr, sys.stderr, tails[1]))]
        for t in pumps:
            t.start()
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))  # pass it on
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached mpiexec too (same process group): let it stop the ranks
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        for t in pumps:
            t.join()
        if code != 0 and table_file.exists():
            why = distributed.explain_failure(tails[0].text() + tails[1].text(), json.loads(table_file.read_text()))
            if why is not None:
                print(f"backprop: {why}", file=sys.stderr, flush=True)
    return code


RANK_TABLE_ENV = "BACKPROP_RANK_TABLE"  # where rank 0 writes [(rank, pid, host)] for --workers


class _Tail:
    """The last bytes written to a stream (mpiexec's failure report is at the end)."""

    def __init__(self, keep: int = 1 << 16) -> None:
        self.keep, self.data = keep, b""

    def add(self, chunk: bytes) -> None:
        self.data = (self.data + chunk)[-self.keep:]

    def text(self) -> str:
        return self.data.decode(errors="replace")


def _pump(stream: Any, out: Any, tail: _Tail) -> None:
    """Copy a child's output to ours as it comes (progress lines stay live), keeping its tail."""
    while chunk := os.read(stream.fileno(), 1 << 14):
        tail.add(chunk)
        out.buffer.write(chunk) if hasattr(out, "buffer") else out.write(chunk.decode(errors="replace"))
        out.flush()


_RESUME_FREE = ("resume", "epochs", "quiet", "debug", "data_dir", "workers")  # what --resume lets the command line change


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
    defaults = vars(build_parser().parse_args(["train"]))
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
    """Loss and accuracy per epoch, train and test side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    h = history.history
    epochs = [e + 1 for e in history.epoch]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--"), ("test_", ":")):
            key = prefix + metric
            if key in h:
                ax.plot(epochs, h[key], style, marker="o" if len(epochs) < 30 else None, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


# ------------------------------------------------------------------------------------ evaluate, predict
def _load_model(path: str):

    if not os.path.exists(path):
        raise CLIError(f"model file {path} does not exist")
    return bio.load(path), bio.load_metadata(path) or {}


def cmd_evaluate(args: argparse.Namespace) -> int:

    model, meta = _load_model(args.model)
    ds = _load_data(args)
    loss = meta.get("loss", "cross_entropy")
    n_classes = len(ds.classes)
    result = bp.evaluate(model, ds.x_test, ds.y_test, loss=loss)
    outputs = bp.predict(model, ds.x_test)
    p, r, f1 = M.precision_recall_f1(outputs, ds.y_test, average="macro", n_classes=n_classes)
    print(f"{ds.name} test split: {len(ds.x_test)} samples, {n_classes} classes")
    print(f"loss {result['loss']:.4f}")
    print(f"accuracy {result['accuracy']:.4f}")
    if n_classes > 5 and outputs.shape[1] > 5:
        print(f"top-5 accuracy {M.top_k_accuracy(outputs, ds.y_test, k=5):.4f}")
    print(f"macro precision {p:.4f} - macro recall {r:.4f} - macro F1 {f1:.4f}")
    names = [str(n) for n in ds.class_names]
    print()
    print(M.classification_report(ds.y_test, outputs, class_names=names, digits=4, n_classes=n_classes))
    cm = M.confusion_matrix(ds.y_test, outputs, n_classes=n_classes)
    png = Path(args.out) if args.out else Path(args.model).with_name("confusion_matrix.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    M.plot_confusion_matrix(cm, png, class_names=names, title=f"{ds.name} test split")
    print(f"wrote {png}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:

    model, meta = _load_model(args.model)
    label_column = args.label_column
    if label_column is not None and label_column.lstrip("-").isdigit():
        label_column = int(label_column)
    x = _read_feature_csv(args.file, label_column)
    n_features = meta.get("n_features")
    if n_features is not None and x.shape[1] != n_features:
        raise CLIError(f"{args.file}: rows have {x.shape[1]} values but the model expects {n_features} features")
    classes = meta.get("classes")
    pred = bp.training.metrics.predicted_classes(bp.predict(model, x))
    out = sys.stdout
    for k in pred:
        out.write(f"{classes[k] if classes else k}\n")
    return 0


def _read_feature_csv(path: str, label_column: int | str | None) -> np.ndarray:
    """Numeric rows of a CSV (an optional header row is skipped); errors name the line and column."""
    if not os.path.exists(path):
        raise CLIError(f"{path} does not exist")
    try:
        return _parse_feature_csv(path, label_column)
    except UnicodeDecodeError as e:
        raise CLIError(f"{path} is not a UTF-8 text CSV file (byte {e.start}: {e.reason})") from None


def _parse_feature_csv(path: str, label_column: int | str | None) -> np.ndarray:
    rows: list[list[float]] = []
    header: list[str] | None = None
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if not rows and header is None and not any(_is_number(c.strip()) for c in row):
                header = [c.strip() for c in row]
                continue
            if label_column is not None:
                idx = header.index(label_column) if isinstance(label_column, str) and header else label_column
                if not isinstance(idx, int):
                    raise CLIError(f"{path}: no column named {label_column!r}")
                row = row[:idx] + row[idx + 1:] if idx != -1 else row[:-1]
            values = []
            for col, cell in enumerate(row, start=1):
                try:
                    values.append(float(cell))
                except ValueError:
                    raise CLIError(f"{path}, line {line_no}, column {col}: {cell!r} is not a number") from None
            if rows and len(values) != len(rows[0]):
                raise CLIError(f"{path}, line {line_no}: {len(values)} values, but earlier rows have {len(rows[0])}")
            rows.append(values)
    if not rows:
        raise CLIError(f"{path} holds no data rows")
    return np.asarray(rows, dtype=np.float32)


# ------------------------------------------------------------------------------------------------- main
COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "trace": trace.cmd_trace,
            "export": export.cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("backprop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `backprop predict ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, TypeError, FileNotFoundError, KeyError, OSError) as e:
        if getattr(args, "debug", False):
            raise
        message = str(e).strip().replace("\n", " ") or type(e).__name__
        print(f"backprop: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
