"""What the subcommands share: their error (:class:`CLIError`) and the argument types, each of which parses
one option and says what it expected, in the library's one vocabulary of constraints
(:mod:`backprop.engine.constraints`).

>>> positive_int("3"), fraction("0.25"), layer_sizes("128,64"), delimiter("tab")
(3, 0.25, [128, 64], '\\t')
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from backprop.data import load_dataset
from backprop.data.sequences import DEFAULT_SEQ_LEN
from backprop.engine.constraints import Interval, argtype

EXIT_USAGE = 2  # bad options or bad data: one line on stderr
EXIT_DIVERGED = 3  # training diverged: the last finite weights were saved


class CLIError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


def number(kind: type, ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: parse the text as ``kind`` and accept it if ``ok(value)``, else say what was expected."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = argtype(Interval(int, 1))
non_negative_int = argtype(Interval(int, 0))
positive_float = argtype(Interval(float, 0, closed="neither"))
non_negative_float = argtype(Interval(float, 0))
fraction = argtype(Interval(float, 0, 1, closed="left"))
any_int = number(int, lambda v: True, "an integer")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    return argtype(Interval(int, lo, hi))


def layer_sizes(text: str) -> list[int]:
    """'128,64' -> [128, 64]; '', 'none' or '0' -> no hidden layer."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes such as 128,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "space": " ", "pipe": "|"}


def delimiter(text: str) -> str:
    """A CSV field separator: one character, or tab (``tab``, ``\\t`` or a tab itself), comma, semicolon,
    space, pipe by name; not a quote, a line break, or a character of numbers (digits, ``.``, ``-``...)."""
    sep = _DELIMITER_NAMES.get(text.lower(), text)
    if len(sep) != 1 or sep in '"\r\n' or sep.isalnum() or sep in ".-+_":
        raise argparse.ArgumentTypeError(f"expected one separator character (such as ',' or ';') or tab, got "
                                         f"{text!r}")
    return sep


TASKS = ("auto", "classification", "regression")


def data_options(p: argparse.ArgumentParser, *, for_model: bool = False) -> None:
    """The options that name a data set, shared by ``train`` and ``evaluate``.

    ``for_model``: the options of a command given a trained model (``evaluate``), whose defaults are the
    model's own: ``--dataset`` defaults to the named data set it was trained on, ``--label-column`` and
    ``--delimiter`` to the ones it was trained with, ``--task`` to its task.
    """
    if for_model:
        p.add_argument("--dataset", default=None,
                       help="digits, mnist, fashion-mnist, seq-mnist, adding[:T], copy[:T] (their test split), "
                            "text:PATH (its last 10%%) or csv:PATH (the whole file) (default: the named data set "
                            "the model was trained on)")
    else:
        p.add_argument("--dataset", default="digits",
                       help="digits (bundled), mnist, fashion-mnist or csv:PATH; for the sequence models "
                            "seq-mnist (MNIST row by row), adding[:T] (the adding problem, T=100), copy[:T] (the "
                            "copy task, delay T=100) or text:PATH (characters of a text file) (default: digits)")
    p.add_argument("--seq-len", type=positive_int, default=None, metavar="N",
                   help="text:PATH: characters per training window (default: "
                   + ("the model's" if for_model else f"{DEFAULT_SEQ_LEN}") + ")")
    p.add_argument("--data-dir", help="folder with the MNIST/Fashion-MNIST files (or set BACKPROP_DATA)")
    p.add_argument("--label-column", help="CSV label column: a name or a 0-based index (default: "
                   + ("the one the model was trained with, else " if for_model else "") + "'label' or last)")
    p.add_argument("--delimiter", type=delimiter, default=None, metavar="CHAR",
                   help="CSV field separator: one character, or 'tab' (default: "
                   + ("the one the model was trained with, else " if for_model else "") + ",)")
    p.add_argument("--task", choices=TASKS, default="auto",
                   help="what the CSV label column holds: classes, or a number to predict (regression, needs "
                        "--loss mse). auto: regression if --loss is mse and some label is not an integer, else "
                        "classification (default: auto)" if not for_model else
                   "classification or regression; must be the model's (default: auto, the model's)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def is_csv(spec: str) -> bool:
    """Whether the --dataset value names a CSV file (``csv:PATH`` or a path ending in .csv)."""
    return spec.startswith("csv:") or spec.lower().endswith(".csv") and not is_text(spec)


def is_text(spec: str) -> bool:
    """Whether the --dataset value names a text file for a character model (``text:PATH``)."""
    return spec.lower().startswith("text:")


def csv_task(args: argparse.Namespace) -> str:
    """The ``task`` for :func:`backprop.data.load_csv` from ``--task`` and ``--loss`` (when the command has it).

    auto is ``"auto"`` (regression iff some label is a number but not an integer) with ``--loss mse`` and
    ``"classification"`` otherwise, so a float label column is never regressed on by accident.
    """
    task, loss = getattr(args, "task", "auto"), getattr(args, "loss", None)
    if task == "regression" and loss is not None and loss != "mse":
        raise CLIError(f"--task regression needs --loss mse (got --loss {loss})")
    if task == "auto":
        return "auto" if loss == "mse" else "classification"
    return task


def load_data(args: argparse.Namespace, **csv_kw: Any) -> Any:
    """The data set the options name (a :class:`backprop.data.datasets.Dataset`).

    ``csv_kw``: more keywords for :func:`backprop.data.load_csv` (``test_size``, ``classes``, ``task``...)
    when the data set is a CSV file (for a text, :func:`backprop.data.load_text`'s ``vocabulary``). Options that apply to CSV files only are refused for the others.
    """
    kw: dict[str, Any] = {}
    csv = is_csv(args.dataset)
    if is_text(args.dataset):
        kw["seq_len"] = getattr(args, "seq_len", None) or DEFAULT_SEQ_LEN
        kw.update(csv_kw)  # NOTE: a model's vocabulary, when evaluate reads a text
    elif getattr(args, "seq_len", None) is not None:
        raise CLIError("--seq-len only applies to --dataset text:PATH")
    task = getattr(args, "task", "auto")
    if not csv:
        for flag, given in (("--label-column", args.label_column is not None),
                            ("--delimiter", getattr(args, "delimiter", None) is not None),
                            (f"--task {task}", task == "regression")):
            if given:
                raise CLIError(f"{flag} only applies to --dataset csv:PATH")
    else:
        if args.label_column is not None:
            kw["label_column"] = (int(args.label_column) if args.label_column.lstrip("-").isdigit()
                                  else args.label_column)
        if getattr(args, "delimiter", None) is not None:
            kw["delimiter"] = args.delimiter
        kw["task"] = csv_task(args)
        kw.update(csv_kw)
    try:
        return load_dataset(args.dataset, data_dir=args.data_dir, **kw)
    except FileNotFoundError as e:
        raise CLIError(str(e).strip()) from e


def model_file(path: str) -> str:
    """``path`` checked as a model file before anything reads it: it exists and is not a folder (a run folder
    gets a hint at the model file in it)."""
    if os.path.isdir(path):
        inside = os.path.join(path, "model.safetensors")
        hint = f" (did you mean {inside}?)" if os.path.isfile(inside) else ""
        raise CLIError(f"{path} is a folder, not a model file{hint}")
    if not os.path.exists(path):
        raise CLIError(f"model file {path} does not exist")
    return path
