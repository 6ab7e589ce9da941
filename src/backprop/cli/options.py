"""What the subcommands share: their error (:class:`CLIError`) and the argument types, each of which parses
one option and says what it expected, in the library's one vocabulary of constraints
(:mod:`backprop.engine.constraints`).

>>> positive_int("3"), fraction("0.25"), layer_sizes("128,64")
(3, 0.25, [128, 64])
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from backprop.data import load_dataset
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


def data_options(p: argparse.ArgumentParser) -> None:
    """The options that name a data set, shared by ``train`` and ``evaluate``."""
    p.add_argument("--dataset", default="digits",
                   help="digits (bundled), mnist, fashion-mnist or csv:PATH (default: digits)")
    p.add_argument("--data-dir", help="folder with the MNIST/Fashion-MNIST files (or set BACKPROP_DATA)")
    p.add_argument("--label-column", help="CSV label column: a name or a 0-based index (default: 'label' or last)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def load_data(args: argparse.Namespace) -> Any:
    """The data set the options name (a :class:`backprop.data.datasets.Dataset`)."""
    kw: dict[str, Any] = {}
    if args.label_column is not None:
        if not args.dataset.startswith("csv:") and not args.dataset.endswith(".csv"):
            raise CLIError("--label-column only applies to --dataset csv:PATH")
        kw["label_column"] = int(args.label_column) if args.label_column.lstrip("-").isdigit() else args.label_column
    try:
        return load_dataset(args.dataset, data_dir=args.data_dir, **kw)
    except FileNotFoundError as e:
        raise CLIError(str(e).strip()) from e
