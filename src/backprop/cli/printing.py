"""How ``backprop trace`` writes numbers: fixed decimals, vectors as (v0, v1), matrices as aligned [ rows ],
large ones shortened with "...", prose wrapped. One printer for the MLP trace and the RNN trace.

>>> P = Printer(3)
>>> P.show("W", [[1.0, -0.5], [0.0, 2.0]]); P.show("b", [[0.25], [-0.0]]); P.lines
['    W = [  1.000  -0.500 ]', '        [  0.000   2.000 ]', '    b = (0.250, 0.000)']
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import numpy as np

SHOW_MAX = 10  # matrices with more rows or columns than this are shown with "..."
WIDTH = 110  # prose is wrapped at this many columns; numbers and formulas are not


class Printer:
    """Collects the lines of a trace (``lines``) at ``precision`` decimals; ``columns``: whether ``show``
    writes an (n, 1) column as a vector by default (the MLP trace's activations are columns)."""

    def __init__(self, precision: int, columns: bool = True) -> None:
        self.p, self.columns = precision, columns
        self.lines: list[str] = []
        enc = getattr(sys.stdout, "encoding", None) or "ascii"
        try:
            "\u2299".encode(enc)
            self.had = "\u2299"  # the Hadamard (elementwise) product, as the textbook writes it
        except (UnicodeEncodeError, LookupError):
            self.had = "(*)"

    def num(self, v: float) -> str:
        s = f"{float(v):.{self.p}f}"
        if s.startswith("-") and float(s) == 0.0:
            s = s[1:]
        return s

    def norm(self, v: float) -> str:
        """A non-negative size that may span orders of magnitude (a vanishing norm): fixed point from 0.001 to
        100000, else scientific with the same number of digits."""
        v = float(v)
        return self.num(v) if v == 0.0 or 1e-3 <= abs(v) < 1e5 else f"{v:.{self.p}e}"

    def term(self, v: float) -> str:
        """A number inside a product or sum: negative numbers in parentheses."""
        s = self.num(v)
        return f"({s})" if s.startswith("-") else s

    def vec(self, v: Any) -> str:
        v = np.asarray(v).reshape(-1)
        return "(" + ", ".join("..." if i is None else self.num(v[i]) for i in _pick(len(v))) + ")"

    def matrix(self, m: Any) -> list[str]:
        m = np.atleast_2d(m)
        rows, cols = _pick(m.shape[0]), _pick(m.shape[1])
        cells = [["..." if i is None or j is None else self.num(m[i, j]) for j in cols] for i in rows]
        width = max(len(c) for row in cells for c in row)
        return ["[ " + "  ".join(c.rjust(width) for c in row) + " ]" for row in cells]

    def say(self, text: str = "", indent: int = 0) -> None:
        self.lines.append(" " * indent + text if text else "")

    def para(self, text: str, indent: int = 0) -> None:
        """Prose, wrapped at WIDTH columns; continuation lines indented two more spaces."""
        self.lines += textwrap.wrap(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2),
                                    break_long_words=False, break_on_hyphens=False)

    def show(self, name: str, value: Any, indent: int = 4, column: bool | None = None, note: str = "") -> None:
        """``name = value``: a vector inline, a matrix on aligned lines (``note`` after the first line);
        with ``column`` (default: the printer's ``columns``), an (n, 1) column counts as a vector."""
        value = np.asarray(value)
        if value.ndim == 2 and value.shape[1] == 1 and (self.columns if column is None else column):
            value = value[:, 0]
        tail = f"   {note}" if note else ""
        if value.ndim <= 1:
            self.say(f"{name} = {self.vec(value)}{tail}", indent)
            return
        lines = self.matrix(value)
        prefix = f"{name} = "
        self.say(prefix + lines[0] + tail, indent)
        for line in lines[1:]:
            self.say(" " * len(prefix) + line, indent)


def _pick(n: int) -> list[int | None]:
    """The indices shown of n: all of them, or the first and last four around a "..." (None)."""
    if n <= SHOW_MAX:
        return list(range(n))
    return [0, 1, 2, 3, None, n - 4, n - 3, n - 2, n - 1]
