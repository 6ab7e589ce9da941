"""The ``backprop`` command: train, evaluate and predict from the shell.

    backprop train                                   # an MLP on the 8x8 digits, no download needed
    backprop train --dataset mnist --hidden 800 --epochs 30 --lr 0.05
    backprop evaluate runs/<stamp>/model.safetensors --dataset digits
    backprop predict runs/<stamp>/model.safetensors samples.csv

Bad options and bad data print one line on stderr and exit with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backprop.cli import trace
from backprop.data.datasets import _is_number

EXIT_USAGE = 2

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "gelu")
CLI_LOSSES = ("cross_entropy", "nll", "mse", "quadratic")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


class CLIError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


# --------------------------------------------------------------------------------------------- parsing
def _number(kind: type, ok: Any, expected: str) -> Any:
    """An argparse type: parse ``text`` as ``kind`` and accept it if ``ok(value)``, else say what was expected."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(float, lambda v: np.isfinite(v) and v > 0, "a positive finite number")
_fraction = _number(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _hidden(text: str) -> list[int]:
    if text.strip() in ("", "none", "0"):
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes such as 128,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (plus the usage) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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

    t = sub.add_parser("train", help="train an MLP and save the model, metrics and plot",
                       description="Train an MLP by mini-batch backpropagation.")
    data_options(t)
    t.add_argument("--hidden", type=_hidden, default=[128, 64], help="hidden layer sizes (default: 128,64)")
    t.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="hidden activation (default: relu)")
    t.add_argument("--loss", choices=CLI_LOSSES, default="cross_entropy",
                   help="cross_entropy (softmax output), nll, mse or quadratic (sigmoid outputs, Nielsen's cost)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="default: sgd")
    t.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate (default: 0.05)")
    t.add_argument("--momentum", type=_fraction, default=0.9, help="SGD/RMSprop momentum (default: 0.9)")
    t.add_argument("--batch-size", type=_positive_int, default=16, help="mini-batch size (default: 16)")
    t.add_argument("--epochs", type=_non_negative_int, default=100, help="passes over the data (default: 100)")
    t.add_argument("--validation-split", type=_fraction, default=0.0,
                   help="hold out this fraction of the training set for validation (default: 0)")
    t.add_argument("--seed", type=_non_negative_int, default=0, help="random seed for everything (default: 0)")
    t.add_argument("--out", help="output folder (default: runs/<timestamp>)")
    t.add_argument("--quiet", action="store_true", help="print only the output folder")

    e = sub.add_parser("evaluate", help="loss and accuracy of a saved model on a data set's test split")
    e.add_argument("model", help="a model file written by 'backprop train'")
    data_options(e)

    p = sub.add_parser("predict", help="print one predicted class per row of a CSV file")
    p.add_argument("model", help="a model file written by 'backprop train'")
    p.add_argument("file", help="CSV of feature rows (a header row is allowed)")
    p.add_argument("--label-column", help="drop this column if the file also holds labels")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    trace.add_parser(sub)
    return parser


def _version() -> str:
    from backprop import __version__

    return __version__


# ------------------------------------------------------------------------------------------------ train
def build_mlp(n_features: int, hidden: Sequence[int], n_classes: int, activation: str, loss: str):
    """Linear layers with the activation between them; the output layer suits the loss.

    cross_entropy: raw logits (the loss applies softmax); nll: log-softmax outputs; mse/quadratic: sigmoid
    outputs compared with one-hot targets (Nielsen's network).
    """
    from backprop import nn

    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}[activation]
    layers: list[Any] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    if loss == "nll":
        layers.append(nn.LogSoftmax(dim=1))
    elif loss in ("mse", "quadratic"):
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def _load_data(args: argparse.Namespace):
    from backprop.data import load_dataset

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
    import backprop as bp
    from backprop.training.callbacks import Callback

    ds = _load_data(args)
    out_dir = _out_dir(args.out)
    bp.manual_seed(args.seed)
    model = build_mlp(ds.x_train.shape[1], args.hidden, len(ds.classes), args.activation, args.loss)
    params = list(model.parameters())
    if args.optimizer == "sgd":
        opt = bp.optim.SGD(params, lr=args.lr, momentum=args.momentum)
    elif args.optimizer == "rmsprop":
        opt = bp.optim.RMSprop(params, lr=args.lr, momentum=args.momentum)
    else:
        opt = bp.optim.get(args.optimizer, params, lr=args.lr)
    verbose = 0 if args.quiet else 1
    if not args.quiet:
        print(f"backprop: training on {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test samples, "
              f"{ds.x_train.shape[1]} features, {len(ds.classes)} classes")
        print(model)
        print(f"{args.optimizer} lr={args.lr}" + (f" momentum={args.momentum}" if args.optimizer in ("sgd", "rmsprop") else "")
              + f", batch size {args.batch_size}: {int(np.ceil(len(ds.x_train) * (1 - args.validation_split) / args.batch_size))} "
              f"iterations per epoch, {args.epochs} epochs")

    class TestMetrics(Callback):
        """Loss and accuracy on the test split after every epoch, for the metrics file and the plot."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            res = bp.evaluate(model, ds.x_test, ds.y_test, loss=args.loss, check_finite=False)
            logs["test_loss"], logs["test_accuracy"] = res["loss"], res["accuracy"]

    t0 = time.perf_counter()
    history = bp.fit(model, ds.x_train, ds.y_train, loss=args.loss, optimizer=opt, batch_size=args.batch_size,
                     epochs=args.epochs, validation_split=args.validation_split, seed=args.seed,
                     callbacks=[TestMetrics()] if len(ds.x_test) else [], verbose=verbose)
    seconds = time.perf_counter() - t0
    final = bp.evaluate(model, ds.x_test, ds.y_test, loss=args.loss) if len(ds.x_test) else {}

    from backprop import io as bio

    meta = {"dataset": ds.name, "classes": [c.item() if hasattr(c, "item") else c for c in ds.classes],
            "class_names": list(ds.class_names), "n_features": int(ds.x_train.shape[1]), "loss": args.loss,
            "test": final, "epochs": history.epochs, "iterations": history.iterations,
            "seconds": round(seconds, 2), "args": {k: v for k, v in vars(args).items() if k != "debug"}}
    model_path = out_dir / "model.safetensors"
    bio.save(model, model_path, metadata=meta)
    metrics_path = out_dir / "metrics.csv"
    _write_metrics_csv(history, metrics_path)
    plot_path = out_dir / "training.png"
    _plot(history, plot_path, title=f"{ds.name}: {'-'.join(map(str, [ds.x_train.shape[1], *args.hidden, len(ds.classes)]))}")
    if args.quiet:
        print(out_dir)
    else:
        if final:
            print(f"test loss {final['loss']:.4f} - test accuracy {final['accuracy']:.4f} "
                  f"({history.epochs} epochs, {history.iterations} iterations, {seconds:.1f}s)")
        print(f"wrote {model_path}, {metrics_path} and {plot_path}")
    return 0


def _write_metrics_csv(history: Any, path: Path) -> None:
    from backprop.io import atomic_write

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

    from backprop.io import atomic_write

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
    from backprop import io as bio

    if not os.path.exists(path):
        raise CLIError(f"model file {path} does not exist")
    return bio.load(path), bio.load_metadata(path) or {}


def cmd_evaluate(args: argparse.Namespace) -> int:
    import backprop as bp

    model, meta = _load_model(args.model)
    ds = _load_data(args)
    loss = meta.get("loss", "cross_entropy")
    result = bp.evaluate(model, ds.x_test, ds.y_test, loss=loss)
    print(f"{ds.name} test split: {len(ds.x_test)} samples")
    print(f"loss {result['loss']:.4f}")
    print(f"accuracy {result['accuracy']:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import backprop as bp

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
    rows: list[list[float]] = []
    header: list[str] | None = None
    with open(path, newline="") as f:
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
COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "trace": trace.cmd_trace}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("backprop: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, KeyError, OSError) as e:
        if getattr(args, "debug", False):
            raise
        message = str(e).strip().replace("\n", " ") or type(e).__name__
        print(f"backprop: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
