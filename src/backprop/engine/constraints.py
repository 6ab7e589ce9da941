"""Argument validation as data: one vocabulary for every check of a hyperparameter (scikit-learn's
``_parameter_constraints``), whatever reads it: ``fit``, the layers, the command line's option types.

A constraint knows when a value satisfies it and how to describe what it expects; :func:`check` and
:func:`validate` turn a failure into one ``ValueError`` that names the function, the argument, what was
expected and what was given, before any work is done.

>>> BATCH = Interval(int, 1)
>>> BATCH.describe()
'a positive integer'
>>> check("fit", "batch_size", 0, BATCH)
Traceback (most recent call last):
...
ValueError: fit: batch_size must be a positive integer, got 0
>>> validate("fit", {"lr": [Interval(float, 0, closed="neither")], "clip_norm": [None, Interval(float, 0, closed="neither")]},
...          {"lr": 0.1, "clip_norm": None})
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Constraint", "Interval", "Options", "Satisfies", "argtype", "check", "validate"]


class Constraint:
    """What an argument may be: :meth:`accepts` a value, :meth:`describe` says what it expects."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Interval(Constraint):
    """A real number (``float``: any finite int or float) or an integer (``int``, not bool) in a range.

    ``closed``: "both" (default), "left", "right" or "neither" says which of the bounds are included;
    a bound of None is open (infinite). Floats must be finite.

    >>> Interval(float, 0, 1, closed="left").describe(), Interval(int, 0).describe()
    ('a number in [0, 1)', 'a non-negative integer')
    """

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 closed: str = "both") -> None:
        if kind not in (int, float):
            raise TypeError(f"Interval: kind must be int or float, got {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"Interval: closed must be 'both', 'left', 'right' or 'neither', got {closed!r}")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):  # NOTE: bool is an int subclass, and batch_size=True is surely a mistake
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not right)))

    def describe(self) -> str:
        noun = "integer" if self.kind is int else "finite number"
        if self.high is None and self.low == 0:
            if self.closed in ("both", "left"):
                return f"a non-negative {'integer' if self.kind is int else 'number'}"
            return f"a positive {noun}"
        if self.high is None and self.low == 1 and self.kind is int and self.closed in ("both", "left"):
            return "a positive integer"
        if self.kind is int and self.low is not None and self.high is not None and self.closed == "both":
            return f"an integer from {self.low} to {self.high}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        brackets = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}[self.closed]
        return f"{'an integer' if self.kind is int else 'a number'} in {brackets[0]}{lo}, {hi}{brackets[1]}"


class Options(Constraint):
    """One of a fixed set of values (strings, numbers).

    >>> Options(("epoch", "step")).describe(), Options((0, 1, 2)).describe()
    ("'epoch' or 'step'", '0, 1 or 2')
    """

    def __init__(self, values: Iterable[Any]) -> None:
        self.values = tuple(values)

    def accepts(self, value: Any) -> bool:
        for v in self.values:  # NOTE: "1" is not 1, and True is not 1 (bool is an int subclass)
            if isinstance(v, str) != isinstance(value, str) or isinstance(v, bool) != isinstance(value, bool):
                continue
            try:
                if value == v:
                    return True
            except Exception:  # noqa: BLE001 - arrays and odd objects compare badly: not an option
                continue
        return False

    def describe(self) -> str:
        shown = [repr(v) for v in self.values]
        return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


class Satisfies(Constraint):
    """Any value for which ``test(value)`` is true, described by ``description``."""

    def __init__(self, test: Callable[[Any], bool], description: str) -> None:
        self.test, self.description = test, description

    def accepts(self, value: Any) -> bool:
        return bool(self.test(value))

    def describe(self) -> str:
        return self.description


def _describe(constraints: Iterable[Constraint | None]) -> str:
    parts = ["None" if c is None else c.describe() for c in constraints]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def check(where: str, name: str, value: Any, *constraints: Constraint | None) -> None:
    """ValueError unless ``value`` satisfies one of ``constraints`` (None in them allows None)."""
    for c in constraints:
        if (value is None) if c is None else (value is not None and c.accepts(value)):
            return
    raise ValueError(f"{where}: {name} must be {_describe(constraints)}, got {value!r}")


def validate(where: str, constraints: Mapping[str, Iterable[Constraint | None]], values: Mapping[str, Any]) -> None:
    """:func:`check` every argument named in ``constraints`` (scikit-learn's ``_parameter_constraints``)."""
    for name, allowed in constraints.items():
        check(where, name, values[name], *allowed)


def argtype(constraint: Constraint, parse: Callable[[str], Any] | None = None) -> Callable[[str], Any]:
    """An ``argparse`` type: parse the option's text, then hold it to ``constraint`` (the CLI's vocabulary).

    >>> argtype(Interval(int, 1))("3")
    3
    """
    import argparse  # NOTE: the standard library's; imported here so the library proper does not load it

    convert = parse or (int if isinstance(constraint, Interval) and constraint.kind is int else float)

    def parsed(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not constraint.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {constraint.describe()}, got {text!r}")
        return value

    return parsed
