"""Every layer registers here, where it is defined: the constructor arguments a model file records, and examples.

``@layer_type({...})`` on a layer class says which constructor arguments describe it (each an :class:`Arg`:
its JSON type and checks), so that :func:`backprop.io.save` can write the layer as
``{"type": "Linear", "args": {"in_features": 4, ...}}`` and :func:`backprop.io.load` can rebuild it from a
file, which is untrusted input: only the classes registered here are ever constructed, with arguments of the
registered names and types. The registration also carries small :class:`Example` instances of the layer, from
which the test suite checks every layer the same way (save/load round trip, ONNX export against onnxruntime,
PyTorch), and ``min_weights``, a lower bound on the weights a configuration allocates, so that a crafted file
cannot make ``load`` allocate gigabytes before finding out that its weights do not match.

The layer's ONNX export is its ``onnx`` method (see :mod:`backprop.nn.contract`). So adding a layer is one
file: the class, its ``@layer_type`` and its ``onnx``; a test fails for a layer of ``backprop.nn`` without them
(``tests/test_layer_registry.py``), as ``backprop.engine.registry`` does for ops.

>>> from backprop.nn.layers import LeakyReLU
>>> spec = LAYER_TYPES["LeakyReLU"]
>>> spec.cls is LeakyReLU, list(spec.args), spec.config(LeakyReLU(0.2))
(True, ['negative_slope'], {'negative_slope': 0.2})
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from backprop.nn.contract import NOT_SAVEABLE
from backprop.nn.module import Module, Sequential

__all__ = [
    "LAYER_TYPES", "SIZE", "Arg", "Example", "LayerSpec", "int_arg", "layer_type", "name_of", "register_layer",
    "save_decision", "small_int",
]

_JSON_TYPES = (bool, int, float, str, list, dict, type(None))  # NOTE: dict: a sub-layer's own arguments


# ----------------------------------------------------------------------------------------- arguments
@dataclass(frozen=True)
class Arg:
    """One constructor argument a registered layer accepts in a config.

    ``type``: ``int``, ``float``, ``bool``, ``str``, ``list``, ``dict`` or ``type(None)``, or a tuple of them (JSON
    values; a dict holds the arguments of a sub-layer, which the constructor checks; ``bool`` is never taken for an ``int``, an ``int`` is taken for a ``float``, floats must be
    finite; lists are given to the constructor as tuples). ``check``: an extra test of the value, described
    by ``expect`` in error messages. ``get``: how to read the value from a layer instance (default: the
    attribute of the same name). ``required``: the config must give it.

    >>> Arg(int, check=lambda v: v > 0, expect="an integer > 0").validate(3)
    3
    >>> Arg(float).validate(True)
    Traceback (most recent call last):
    ...
    ValueError: expected a finite number, got True
    """

    type: type | tuple[type, ...]
    check: Callable[[Any], bool] | None = None
    expect: str = ""
    get: Callable[[Module], Any] | None = None
    required: bool = False

    @property
    def types(self) -> tuple[type, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def describe(self) -> str:
        if self.expect:
            return self.expect
        words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
                 list: "a list", dict: "an object", type(None): "null"}
        return " or ".join(words[t] for t in self.types)

    def validate(self, value: Any) -> Any:
        """The value as the constructor gets it; ValueError with the expectation when it does not fit."""
        for t in self.types:
            if t is bool:
                ok = isinstance(value, bool)
            elif t is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif t is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if ok and not (isinstance(value, int) and int in self.types):
                    value = float(value)
            elif t is type(None):
                ok = value is None
            else:
                ok = isinstance(value, t)
            if ok:
                break
        else:
            raise ValueError(f"expected {self.describe()}, got {_show(value)}")
        if self.check is not None:
            try:
                passed = bool(self.check(value))
            except (TypeError, ValueError, ArithmeticError):
                passed = False
            if not passed:
                raise ValueError(f"expected {self.describe()}, got {_show(value)}")
        return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def small_int(v: Any, low: int = 0, high: int = 1 << 20) -> bool:
    """An int in [low, high]: sizes in a model file are bounded, so a crafted file cannot ask for huge arrays."""
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


# A layer size (channels, features, table rows): required, and bounded as small_int says.
SIZE = Arg(int, check=lambda v: small_int(v, 1), expect="an integer in [1, 2**20]", required=True)


def int_arg(low: int, required: bool = False, allow_str: tuple[str, ...] = ()) -> Arg:
    """An int >= ``low``, a list of up to 3 of them (a pair for 2-D layers), or one of the strings ``allow_str``."""

    def ok(v: Any) -> bool:
        if isinstance(v, str):
            return v in allow_str
        return small_int(v, low) or (isinstance(v, list) and 0 < len(v) <= 3 and all(small_int(i, low) for i in v))

    types: tuple[type, ...] = (int, list, str) if allow_str else (int, list)
    return Arg(types, check=ok, expect=f"an integer >= {low} or a list of them"
               + (f" or one of {allow_str}" if allow_str else ""), required=required)


def _plain(value: Any) -> Any:
    """A layer attribute as a JSON value: NumPy scalars to Python, tuples to lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ examples
@dataclass(frozen=True)
class Example:
    """A small instance of a layer and an input for it, from which the tests check every layer alike.

    ``make()``: a fresh layer. ``input``: the shape of a float32 standard-normal input, or a function of a
    NumPy generator returning the input (integer indices, say). ``torch``: a function of the torch module
    returning the equivalent PyTorch layer (its ``state_dict`` has the same names), or None.
    """

    make: Callable[[], Module]
    input: tuple[int, ...] | Callable[[np.random.Generator], np.ndarray]
    torch: Callable[[Any], Any] | None = None
    label: str = ""

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if callable(self.input):
            return np.asarray(self.input(rng))
        return rng.standard_normal(self.input).astype(np.float32)


# ---------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class LayerSpec:
    """A registered layer: its config name, its class, the constructor arguments a config may give, examples."""

    name: str
    cls: type
    args: Mapping[str, Arg] = field(default_factory=dict)
    examples: tuple[Example, ...] = ()
    min_weights: Callable[[Mapping[str, Any]], int] | None = None

    def config(self, module: Module) -> dict[str, Any]:
        """The arguments that rebuild ``module`` (JSON values); TypeError naming the argument that does not fit."""
        args: dict[str, Any] = {}
        for arg_name, arg in self.args.items():
            try:
                value = arg.get(module) if arg.get is not None else getattr(module, arg_name)
            except AttributeError:
                raise TypeError(f"it has no attribute {arg_name!r} to read that constructor argument from") from None
            value = _plain(value)
            try:
                arg.validate(value)
            except ValueError as e:
                raise TypeError(f"argument {arg_name!r}: {e}") from None
            args[arg_name] = value
        return args

    def weights_needed(self, kwargs: Mapping[str, Any]) -> int:
        """A lower bound on the weights the layer built with ``kwargs`` (checked arguments) holds; 0 if unknown."""
        if self.min_weights is None:
            return 0
        try:
            return int(self.min_weights(kwargs))
        except (KeyError, TypeError, ValueError):  # arguments the constructor itself will refuse
            return 0


LAYER_TYPES: dict[str, LayerSpec] = {}


def name_of(cls: type) -> str | None:
    """The registered name of exactly this class (a subclass may behave differently, so it is not taken)."""
    for name, spec in LAYER_TYPES.items():
        if spec.cls is cls:
            return name
    return None


def register_layer(
    cls: type, args_spec: Mapping[str, Arg | type | tuple[type, ...]] | None = None, *, name: str | None = None,
    replace: bool = False, examples: Sequence[Example] = (),
    min_weights: Callable[[Mapping[str, Any]], int] | None = None,
) -> type:
    """Add ``cls`` to the layers a model file may contain; returns ``cls``.

    ``args_spec`` maps each constructor argument to save to an :class:`Arg` (or just its JSON type); the
    value is read from the layer's attribute of the same name unless ``Arg.get`` says otherwise. A
    config naming any other argument is refused. ``examples`` and ``min_weights``: see :class:`LayerSpec`.
    (``@layer_type(args_spec, ...)`` on the class does the same where the class is defined.)

    >>> class Scale(Module):
    ...     def __init__(self, factor: float = 2.0):
    ...         self.factor = factor
    ...     def forward(self, x):
    ...         return x * self.factor
    >>> _ = register_layer(Scale, {"factor": float})
    >>> LAYER_TYPES["Scale"].config(Scale(3))
    {'factor': 3}
    >>> _ = LAYER_TYPES.pop("Scale")
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"register_layer: expected a Module subclass, got {cls!r}")
    if cls is Sequential or issubclass(cls, Sequential):
        raise ValueError("register_layer: Sequential is built in (a config with 'layers'), it cannot be registered")
    name = cls.__name__ if name is None else name
    if not isinstance(name, str) or not name.isidentifier() or name == "Sequential":
        raise ValueError(f"register_layer: the name must be a Python identifier other than 'Sequential', got {name!r}")
    current = name_of(cls)
    if not replace:
        if name in LAYER_TYPES and LAYER_TYPES[name].cls is not cls:
            raise ValueError(f"register_layer: {name!r} is already {LAYER_TYPES[name].cls!r} (pass replace=True)")
        if current is not None and current != name:
            raise ValueError(f"register_layer: {cls.__name__} is already registered as {current!r}")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args: dict[str, Arg] = {}
    for arg_name, spec in (args_spec or {}).items():
        if not isinstance(arg_name, str) or not arg_name.isidentifier():
            raise ValueError(f"register_layer({name}): argument names must be identifiers, got {arg_name!r}")
        if params and not takes_any and arg_name not in params:
            raise ValueError(f"register_layer({name}): {cls.__name__}() takes no argument {arg_name!r}")
        if not isinstance(spec, Arg):
            spec = Arg(spec)
        if not all(t in _JSON_TYPES for t in spec.types):
            raise ValueError(f"register_layer({name}): argument {arg_name!r} must be of JSON types "
                             f"(int, float, bool, str, list, dict, NoneType), got {spec.type!r}")
        args[arg_name] = spec
    if not all(isinstance(e, Example) for e in examples):
        raise TypeError(f"register_layer({name}): examples must be Example objects")
    if current is not None and current != name:
        del LAYER_TYPES[current]
    LAYER_TYPES[name] = LayerSpec(name, cls, MappingProxyType(args), tuple(examples), min_weights)
    return cls


def layer_type(
    args_spec: Mapping[str, Arg | type | tuple[type, ...]] | None = None, *, name: str | None = None,
    examples: Sequence[Example] = (), min_weights: Callable[[Mapping[str, Any]], int] | None = None,
) -> Callable[[type], type]:
    """Class decorator: :func:`register_layer` the class being defined, with these arguments and examples."""

    def deco(cls: type) -> type:
        return register_layer(cls, args_spec, name=name, examples=examples, min_weights=min_weights)

    return deco


def save_decision(cls: type) -> LayerSpec | str | None:
    """How ``cls`` is saved: its :class:`LayerSpec`, the reason it cannot be (a string), or None: undecided."""
    if cls is Sequential:
        return "built in: a Sequential is saved as the list of its layers"
    name = name_of(cls)
    if name is not None:
        return LAYER_TYPES[name]
    return NOT_SAVEABLE.get(cls)
