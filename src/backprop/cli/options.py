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

from backprop.engine.constraints import Interval, argtype


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
