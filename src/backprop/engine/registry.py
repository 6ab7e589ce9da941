"""Every primitive registers here with example inputs, so the tests check each one without being told.

``@register(cases)`` attaches a generator of :class:`Case` objects to a Function subclass. The test suite
iterates over ``REGISTRY``: a float64 finite-difference gradient check of every case, and a comparison
with PyTorch (values and gradients) where torch is installed. A Function subclass that is not registered
fails a test, so no op can be added without its checks.

>>> from backprop.engine.ops import Exp
>>> Exp in REGISTRY
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The shape grid of the gradient checks: scalars, vectors, matrices, and broadcasting pairs.
UNARY_SHAPES: list[tuple[int, ...]] = [(), (3,), (2, 3)]
BINARY_SHAPES: list[tuple[tuple[int, ...], tuple[int, ...]]] = [
    ((), ()),
    ((3,), (3,)),
    ((2, 3), (2, 3)),
    ((1, 3), (2, 3)),
    ((2, 1), (1, 3)),
    ((2, 3), ()),
    ((), (2, 3)),
    ((3,), (2, 3)),
    ((4, 2, 3), (2, 1)),
]


@dataclass
class Case:
    """One check: ``fn(*tensors)`` on ``inputs`` (float64 arrays) and the same thing in PyTorch.

    ``torch_fn(torch, *torch_tensors)`` receives the torch module, so the library never imports torch.
    ``wrt`` lists the inputs that are differentiated (default: all).
    """

    label: str
    fn: Callable[..., Any]
    inputs: list[np.ndarray]
    torch_fn: Callable[..., Any] | None
    wrt: tuple[int, ...] | None = None
    atol: float = 1e-5
    extra: dict[str, Any] = field(default_factory=dict)


CaseMaker = Callable[[np.random.Generator], list[Case]]
REGISTRY: dict[type, CaseMaker] = {}


def register(cases: CaseMaker) -> Callable[[type], type]:
    """Class decorator: register a Function subclass with the maker of its test cases."""

    def deco(cls: type) -> type:
        REGISTRY[cls] = cases
        return cls

    return deco


def _sample(rng: np.random.Generator, shape: tuple[int, ...], domain: str) -> np.ndarray:
    """Random float64 inputs away from the points where an op is not differentiable."""
    x = rng.uniform(-2.0, 2.0, size=shape)
    if domain == "positive":
        x = rng.uniform(0.5, 2.0, size=shape)
    elif domain == "nonzero":  # kinks at 0 (abs, relu): keep finite differences on one side
        x = np.sign(x + (x == 0)) * rng.uniform(0.2, 2.0, size=shape)
    elif domain == "unit":  # strictly inside (0, 1)
        x = rng.uniform(0.1, 0.9, size=shape)
    return np.asarray(x, dtype=np.float64)


def unary(fn: Callable, torch_fn: Callable | None, domain: str = "real", name: str = "") -> CaseMaker:
    """Cases for an elementwise op of one tensor over ``UNARY_SHAPES``."""

    def make(rng: np.random.Generator) -> list[Case]:
        return [Case(f"{name}{s}", fn, [_sample(rng, s, domain)], torch_fn) for s in UNARY_SHAPES]

    return make


def binary(fn: Callable, torch_fn: Callable | None, domains: tuple[str, str] = ("real", "real"),
           name: str = "") -> CaseMaker:
    """Cases for a broadcasting op of two tensors over ``BINARY_SHAPES``."""

    def make(rng: np.random.Generator) -> list[Case]:
        return [
            Case(f"{name}{a}x{b}", fn, [_sample(rng, a, domains[0]), _sample(rng, b, domains[1])], torch_fn)
            for a, b in BINARY_SHAPES
        ]

    return make


def cases(*made: Case) -> CaseMaker:
    """Fixed cases (for ops with extra arguments: axes, indices, shapes)."""

    def make(rng: np.random.Generator) -> list[Case]:
        return list(made)

    return make


def sample(shape: tuple[int, ...], domain: str = "real", seed: int = 0) -> np.ndarray:
    """A fixed random float64 array, for writing ``cases(...)``."""
    return _sample(np.random.default_rng(seed), shape, domain)


def all_cases(seed: int = 0) -> list[tuple[type, Case]]:
    """Every registered op with each of its test cases, drawn from one generator: what the generated tests
    (gradient checks, PyTorch comparisons, captured steps) run over."""
    rng = np.random.default_rng(seed)
    return [(cls, case) for cls, make in REGISTRY.items() for case in make(rng)]
