"""Argument types shared by the subcommands: each parses one option and says what it expected.

>>> positive_int("3"), fraction("0.25"), layer_sizes("128,64")
(3, 0.25, [128, 64])
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np


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


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = number(float, lambda v: np.isfinite(v) and v > 0, "a positive finite number")
non_negative_float = number(float, lambda v: np.isfinite(v) and v >= 0, "a non-negative number")
fraction = number(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
any_int = number(int, lambda v: True, "an integer")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    return number(int, lambda v: lo <= v <= hi, f"an integer from {lo} to {hi}")


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
