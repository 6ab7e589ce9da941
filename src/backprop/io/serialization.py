"""Saving and loading models: safetensors for the weights, JSON for the architecture, in one file.

A model file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its tensors are the model's
``state_dict()`` under PyTorch's names (``0.weight``, ``0.bias``, ...), so the ``load_file`` functions of
``safetensors.torch`` and ``safetensors.numpy`` read it as they read any other. Its header's ``__metadata__`` (text
only) holds::

    {"format": "backprop", "version": "1",
     "architecture": "{\\"type\\": \\"Sequential\\", \\"dtype\\": \\"float32\\", \\"layers\\": [...]}",
     "user": "<the metadata given to save(), as JSON>"}

Loading never runs code from the file and never unpickles: the architecture is plain JSON, and each layer
in it must be one of the whitelisted :data:`LAYER_TYPES` with arguments of the whitelisted names and types.
Nothing is looked up by name anywhere else. :func:`register_layer` adds a layer type to the whitelist.

>>> import os, tempfile, numpy as np, backprop as bp
>>> net = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 2))
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save(net, path, metadata={"epoch": 3})
>>> same = load(path)
>>> x = np.ones((1, 4), dtype=np.float32)
>>> bool((same(bp.tensor(x)).data == net(bp.tensor(x)).data).all()), load_metadata(path)
(True, {'epoch': 3})
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import safetensors.numpy

from backprop.engine.random import get_rng
from backprop.engine.tensor import Tensor
from backprop.io.atomic import write_bytes_atomic
from backprop.nn import layers as L
from backprop.nn.module import Module, Sequential

__all__ = [
    "FORMAT", "FORMAT_VERSION", "LAYER_TYPES", "Arg", "LayerSpec", "load", "load_metadata", "load_weights",
    "model_from_config", "model_to_config", "register_layer", "save", "save_weights",
]

FORMAT = "backprop"
FORMAT_VERSION = "1"

PathLike = str | os.PathLike[str]

# safetensors dtypes that NumPy reads and that make sense as weights: floats and integers
_TENSOR_DTYPES = {"F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"}
_SAVE_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64"}
_MODEL_DTYPES = ("float16", "float32", "float64")
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_MAX_DEPTH = 64  # nested Sequentials
_JSON_TYPES = (bool, int, float, str, list, type(None))


# ------------------------------------------------------------------------------------------ the whitelist
@dataclass(frozen=True)
class Arg:
    """One constructor argument a whitelisted layer accepts in a config.

    ``type``: ``int``, ``float``, ``bool``, ``str``, ``list`` or ``type(None)``, or a tuple of them (JSON
    values; ``bool`` is never taken for an ``int``, an ``int`` is taken for a ``float``, floats must be
    finite; lists are given to the constructor as tuples). ``check``: an extra test of the value, described
    by ``expect`` in error messages. ``get``: how to read the value from a layer instance (default: the
    attribute of the same name). ``required``: the config must give it.
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
                 list: "a list", type(None): "null"}
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


@dataclass(frozen=True)
class LayerSpec:
    """A whitelisted layer: its config name, its class and the constructor arguments a config may give."""

    name: str
    cls: type
    args: Mapping[str, Arg] = field(default_factory=dict)


LAYER_TYPES: dict[str, LayerSpec] = {}


def register_layer(
    cls: type, args_spec: Mapping[str, Arg | type | tuple[type, ...]] | None = None, *, name: str | None = None,
    replace: bool = False,
) -> type:
    """Add ``cls`` to the layers a model file may contain; returns ``cls``.

    ``args_spec`` maps each constructor argument to save to an :class:`Arg` (or just its JSON type); the
    value is read from the layer's attribute of the same name unless ``Arg.get`` says otherwise. A
    config naming any other argument is refused.

    >>> class Scale(Module):
    ...     def __init__(self, factor: float = 2.0):
    ...         self.factor = factor
    ...     def forward(self, x):
    ...         return x * self.factor
    >>> _ = register_layer(Scale, {"factor": float})
    >>> model_to_config(Sequential(Scale(3.0)))["layers"]
    [{'type': 'Scale', 'args': {'factor': 3.0}}]
    >>> _ = LAYER_TYPES.pop("Scale")
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"register_layer: expected a Module subclass, got {cls!r}")
    if cls is Sequential or issubclass(cls, Sequential):
        raise ValueError("register_layer: Sequential is built in (a config with 'layers'), it cannot be registered")
    name = cls.__name__ if name is None else name
    if not isinstance(name, str) or not name.isidentifier() or name == "Sequential":
        raise ValueError(f"register_layer: the name must be a Python identifier other than 'Sequential', got {name!r}")
    current = _name_of(cls)
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
                             f"(int, float, bool, str, list, NoneType), got {spec.type!r}")
        args[arg_name] = spec
    if current is not None and current != name:
        del LAYER_TYPES[current]
    LAYER_TYPES[name] = LayerSpec(name, cls, MappingProxyType(args))
    return cls


def _name_of(cls: type) -> str | None:
    """The whitelist name of exactly this class (a subclass may behave differently, so it is not taken)."""
    for name, spec in LAYER_TYPES.items():
        if spec.cls is cls:
            return name
    return None


def _register_builtin_layers() -> None:
    positive = Arg(int, check=lambda v: v > 0, expect="an integer > 0", required=True)
    register_layer(L.Linear, {
        "in_features": positive,
        "out_features": positive,
        "bias": Arg(bool, get=lambda m: m.bias is not None),
    })
    for cls in (L.Identity, L.ReLU, L.Sigmoid, L.Tanh):
        register_layer(cls, {})
    register_layer(L.LeakyReLU, {"negative_slope": float})
    register_layer(L.GELU, {"approximate": Arg(str, check=lambda v: v in ("none", "tanh"),
                                               expect="'none' or 'tanh'")})
    register_layer(L.Softmax, {"dim": int})
    register_layer(L.LogSoftmax, {"dim": int})
    register_layer(L.Flatten, {"start_dim": int})
    register_layer(L.Dropout, {"p": Arg(float, check=lambda v: 0.0 <= v < 1.0, expect="a number in [0, 1)")})
    register_layer(L.Unflatten, {"dim": Arg(int, required=True), "unflattened_size": Arg(
        list, check=lambda v: 0 < len(v) <= 8 and all(_small_int(i, -1) for i in v), expect="a list of sizes",
        required=True)})
    _register_layer_families()


def _small_int(v: Any, low: int = 0, high: int = 1 << 20) -> bool:
    """An int in [low, high]: sizes in a model file are bounded, so a crafted file cannot ask for huge arrays."""
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _ints_or_int(low: int, required: bool = False, allow_str: tuple[str, ...] = ()) -> Arg:
    """An int, a list of ints (a pair for 2-D layers), or one of the strings ``allow_str``."""

    def ok(v: Any) -> bool:
        if isinstance(v, str):
            return v in allow_str
        return _small_int(v, low) or (isinstance(v, list) and 0 < len(v) <= 3 and all(_small_int(i, low) for i in v))

    types: tuple[type, ...] = (int, list, str) if allow_str else (int, list)
    return Arg(types, check=ok, expect=f"an integer >= {low} or a list of them"
               + (f" or one of {allow_str}" if allow_str else ""), required=required)


def _register_layer_families() -> None:
    """Convolution, pooling, normalisation and embedding layers (their own modules in backprop.nn)."""
    from backprop.nn import conv, embedding, normalization, pooling

    size = Arg(int, check=lambda v: _small_int(v, 1), expect="an integer in [1, 2**20]", required=True)
    conv_args = {
        "in_channels": size, "out_channels": size, "kernel_size": _ints_or_int(1, required=True),
        "stride": _ints_or_int(1), "padding": _ints_or_int(0, allow_str=("same", "valid")),
        "dilation": _ints_or_int(1), "groups": Arg(int, check=lambda v: _small_int(v, 1), expect="an integer >= 1"),
        "bias": Arg(bool, get=lambda m: m.bias is not None),
    }
    register_layer(conv.Conv2d, conv_args)
    register_layer(conv.Conv1d, conv_args)
    optional = Arg((int, list, type(None)), check=lambda v: v is None or _ints_or_int(1).check(v),
                   expect="an integer >= 1, a list of them or null")
    register_layer(pooling.MaxPool2d, {"kernel_size": _ints_or_int(1, required=True), "stride": optional,
                                       "padding": _ints_or_int(0), "dilation": _ints_or_int(1), "ceil_mode": bool})
    register_layer(pooling.AvgPool2d, {"kernel_size": _ints_or_int(1, required=True), "stride": optional,
                                       "padding": _ints_or_int(0), "ceil_mode": bool, "count_include_pad": bool,
                                       "divisor_override": Arg((int, type(None)))})
    register_layer(pooling.AdaptiveAvgPool2d, {"output_size": _ints_or_int(1, required=True)})
    norm_args = {"num_features": size, "eps": Arg(float, check=lambda v: v > 0, expect="a number > 0"),
                 "momentum": Arg((float, type(None)), check=lambda v: v is None or 0 <= v <= 1,
                                 expect="a number in [0, 1] or null"),
                 "affine": bool, "track_running_stats": bool}
    register_layer(normalization.BatchNorm1d, norm_args)
    register_layer(normalization.BatchNorm2d, norm_args)
    register_layer(normalization.LayerNorm, {
        "normalized_shape": _ints_or_int(1, required=True),
        "eps": Arg(float, check=lambda v: v > 0, expect="a number > 0"), "elementwise_affine": bool,
        "bias": Arg(bool, get=lambda m: getattr(m, "bias", None) is not None)})
    register_layer(embedding.Embedding, {"num_embeddings": size, "embedding_dim": size,
                                         "padding_idx": Arg((int, type(None)))})


_register_builtin_layers()


# ------------------------------------------------------------------------------------------ model <-> config
def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    """A layer attribute as a JSON value: NumPy scalars to Python, tuples to lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _as_constructor_value(value: Any) -> Any:
    return tuple(_as_constructor_value(v) for v in value) if isinstance(value, list) else value


def _known_layers() -> str:
    return ", ".join(["Sequential", *sorted(LAYER_TYPES)])


def _not_saveable(cls: type, where: str) -> TypeError:
    return TypeError(
        f"cannot save the architecture of {cls.__qualname__} (at {where}): only Sequential models of known "
        f"layers ({_known_layers()}) can be saved with their architecture (register_layer adds a layer type); "
        "use backprop.io.save_weights(model, path) for other models"
    )


def _layer_to_config(module: Module, where: str, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise TypeError(f"cannot save the architecture: Sequentials nested deeper than {_MAX_DEPTH} at {where}")
    cls = type(module)
    if cls is Sequential:
        children = list(module.named_children())
        names = [n for n, _ in children]
        if names != [str(i) for i in range(len(children))]:
            raise TypeError(f"cannot save the architecture: the Sequential at {where} has sub-modules {names}, "
                            "expected only its numbered layers; use save_weights for such models")
        if any(isinstance(v, Tensor) for v in vars(module).values()) or getattr(module, "_buffers", ()):
            raise TypeError(f"cannot save the architecture: the Sequential at {where} holds tensors of its own; "
                            "use save_weights for such models")
        return {"type": "Sequential",
                "layers": [_layer_to_config(m, f"{where}.layers[{i}]", depth + 1) for i, (_, m) in enumerate(children)]}
    name = _name_of(cls)
    if name is None:
        raise _not_saveable(cls, where)
    spec = LAYER_TYPES[name]
    args: dict[str, Any] = {}
    for arg_name, arg in spec.args.items():
        try:
            value = arg.get(module) if arg.get is not None else getattr(module, arg_name)
        except AttributeError:
            raise TypeError(f"cannot save {where} ({name}): it has no attribute {arg_name!r} to read that "
                            "constructor argument from") from None
        value = _plain(value)
        try:
            arg.validate(value)
        except ValueError as e:
            raise TypeError(f"cannot save {where} ({name}): argument {arg_name!r}: {e}") from None
        args[arg_name] = value
    return {"type": name, "args": args}


def model_to_config(model: Module) -> dict[str, Any]:
    """The architecture of ``model`` as a JSON-able dict: ``{"type": "Sequential", "dtype": ..., "layers": [...]}``.

    TypeError if a part of it is not a whitelisted layer (see :data:`LAYER_TYPES`) or a plain Sequential of
    them, or if its parameters have different dtypes.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model_to_config: expected a backprop Module, got {type(model).__name__}")
    config = _layer_to_config(model, "model", 0)
    dtypes = sorted({p.data.dtype.name for p in model.parameters()})
    if len(dtypes) > 1:
        raise TypeError(f"cannot save the architecture: the parameters have different dtypes {dtypes}; "
                        "cast the model with model.to(dtype) first")
    dtype = dtypes[0] if dtypes else np.dtype(np.float32).name
    if dtype not in _MODEL_DTYPES:
        raise TypeError(f"cannot save the architecture: parameters of dtype {dtype}, expected one of {_MODEL_DTYPES}")
    return {"type": config.pop("type"), "dtype": dtype, **config}


def _check_keys(cfg: Mapping[str, Any], allowed: tuple[str, ...], where: str, what: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise ValueError(f"model config: {where}{what}: unexpected key {key!r} (allowed keys: {', '.join(allowed)})")


def _min_weights(cls: type, kw: Mapping[str, Any]) -> int:
    """A lower bound on the number of weights a built-in layer with these arguments holds (0 if unknown).

    ``load`` compares it with the number of values in the file *before* building the layer, so that a small
    crafted file cannot make it allocate and randomly initialise gigabytes (Linear(100000, 100000)) only to
    find that the weights do not match.
    """
    from backprop.nn import conv, embedding, normalization

    def sizes(v: Any, n: int) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n

    try:
        if cls is L.Linear:
            return kw["in_features"] * kw["out_features"]
        if cls in (conv.Conv1d, conv.Conv2d):
            kernel = sizes(kw["kernel_size"], 1 if cls is conv.Conv1d else 2)
            return kw["out_channels"] * (kw["in_channels"] // max(kw.get("groups", 1), 1)) * math.prod(kernel)
        if cls is embedding.Embedding:
            return kw["num_embeddings"] * kw["embedding_dim"]
        if cls is normalization.LayerNorm and kw.get("elementwise_affine", True):
            return math.prod(sizes(kw["normalized_shape"], 1))
    except (KeyError, TypeError):  # arguments the constructor itself will refuse
        return 0
    return 0


def _build(cfg: Any, where: str, depth: int, root: bool, budget: list[int] | None = None) -> Module:
    if depth > _MAX_DEPTH:
        raise ValueError(f"model config: {where}: Sequentials nested deeper than {_MAX_DEPTH}")
    if not isinstance(cfg, Mapping):
        # NOTE: ValueError, not TypeError, throughout: this is bad data in a file, not a bad argument type
        msg = f"model config: {where}: expected an object like {{\"type\": ..., \"args\": {{...}}}}, got {_show(cfg)}"
        raise ValueError(msg)  # noqa: TRY004
    kind = cfg.get("type")
    if not isinstance(kind, str):
        msg = f"model config: {where}: 'type' must be a layer name (a string), got {_show(kind)}"
        raise ValueError(msg)  # noqa: TRY004
    extra = ("dtype",) if root else ()
    if kind == "Sequential":
        _check_keys(cfg, ("type", "layers", *extra), where, " (Sequential)")
        layers = cfg.get("layers")
        if not isinstance(layers, list):
            raise ValueError(f"model config: {where} (Sequential): 'layers' must be a list, got {_show(layers)}")
        return Sequential(*[_build(c, f"{where}.layers[{i}]", depth + 1, False, budget) for i, c in enumerate(layers)])
    spec = LAYER_TYPES.get(kind)
    if spec is None:
        raise ValueError(f"model config: {where}: unknown layer type {_show(kind)}; known types: {_known_layers()}")
    _check_keys(cfg, ("type", "args", *extra), where, f" ({kind})")
    args = cfg.get("args", {})
    if not isinstance(args, Mapping):
        msg = f"model config: {where} ({kind}): 'args' must be an object, got {_show(args)}"
        raise ValueError(msg)  # noqa: TRY004
    kwargs: dict[str, Any] = {}
    for key, value in args.items():
        arg = spec.args.get(key)
        if arg is None:
            takes = ", ".join(spec.args) or "no arguments"
            raise ValueError(f"model config: {where} ({kind}): unexpected argument {_show(key)} ({kind} takes {takes})")
        try:
            kwargs[key] = _as_constructor_value(arg.validate(value))
        except ValueError as e:
            raise ValueError(f"model config: {where} ({kind}): argument {key!r}: {e}") from None
    for key, arg in spec.args.items():
        if arg.required and key not in kwargs:
            raise ValueError(f"model config: {where} ({kind}): argument {key!r} is missing ({arg.describe()})")
    if budget is not None:
        need = _min_weights(spec.cls, kwargs)
        if need > budget[0]:
            raise ValueError(f"model config: {where} ({kind}): {kind}(**{kwargs}) needs at least {need} weights, "
                             f"more than the {budget[1]} values the file holds in all")
        budget[0] -= need
    try:
        return spec.cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model config: {where} ({kind}): {kind}(**{kwargs}) failed: {e}") from None


def model_from_config(config: Mapping[str, Any], *, keep_rng: bool = False, max_weights: int | None = None) -> Module:
    """Build the model a config describes (freshly initialised); ValueError naming the layer at fault.

    ``keep_rng=True`` leaves backprop's random generator as it was (the initial weights still use it).
    ``max_weights``: refuse, before allocating it, a layer that would take the built-in layers' weights
    past this many values in all (:func:`load` passes the number of values in the file).
    """
    rng = get_rng()
    state = rng.bit_generator.state if keep_rng else None
    try:
        budget = None if max_weights is None else [int(max_weights), int(max_weights)]
        model = _build(config, "model", 0, True, budget)
        dtype = config.get("dtype", "float32")
        if dtype not in _MODEL_DTYPES:
            raise ValueError(f"model config: model: 'dtype' must be one of {_MODEL_DTYPES}, got {_show(dtype)}")
        if any(p.data.dtype != np.dtype(dtype) for p in model.parameters()):
            model.to(dtype)
        return model
    finally:
        if state is not None:
            rng.bit_generator.state = state


# ------------------------------------------------------------------------------------------------- files
def _invalid(path: str, reason: str) -> ValueError:
    return ValueError(f"{path} is not a valid backprop model file: {reason}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_bytes(path: PathLike) -> tuple[str, bytes]:
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            return p, f.read()
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such model file", p) from None


def _parse_header(p: str, data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """The safetensors header (tensor entries) and its ``__metadata__``, checked."""
    if len(data) < 8:
        raise _invalid(p, f"it is {len(data)} bytes long, too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise _invalid(p, f"its header length field says {n} bytes but {len(data) - 8} follow "
                          "(truncated, or not a safetensors file)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _invalid(p, f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _invalid(p, "its header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _invalid(p, "its __metadata__ is not an object of strings")
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _invalid(p, f"the header entry of tensor {name!r} is not an object")
        dtype = info.get("dtype")
        if dtype not in _TENSOR_DTYPES:
            raise ValueError(f"{p}: tensor {name!r} has dtype {dtype}, which backprop cannot load (only float and "
                             "integer tensors: F16, F32, F64, I8-I64, U8-U64); convert it to float32 first")
    return header, meta


def _read_file(path: PathLike) -> tuple[str, dict[str, str], dict[str, np.ndarray]]:
    """Read and check a whole safetensors file: its path, its metadata and its tensors (read-only arrays)."""
    p, data = _read_bytes(path)
    _, meta = _parse_header(p, data)
    try:
        tensors = safetensors.numpy.load(data)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError and others on bad input
        raise _invalid(p, f"{type(e).__name__}: {e}") from None
    for name, arr in tensors.items():
        if arr.dtype.kind not in "iuf":  # never expected after _parse_header: belt and braces
            raise ValueError(f"{p}: tensor {name!r} has dtype {arr.dtype}, expected float or integer numbers")
    return p, meta, tensors


def _state_shapes(model: Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of everything ``state_dict`` holds, without copying it."""
    shapes = {name: p.data.shape for name, p in model.named_parameters()}
    for mod_name, mod in model.named_modules():
        for name in getattr(mod, "_buffers", ()):
            shapes[f"{mod_name}.{name}" if mod_name else name] = np.shape(getattr(mod, name))
    return shapes


def _mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, Any], strict: bool = True) -> str:
    """'' when ``found`` (name -> array) fits ``expected`` (name -> shape), else what is wrong."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = sorted(k for k in found if k not in expected)

    def listing(keys: list[str]) -> str:
        return ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")

    if strict and missing:
        problems.append(f"missing tensors {listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected tensors {listing(unexpected)}")
    wrong = [f"{k} is {tuple(np.shape(found[k]))} in the file but {tuple(shape)} in the model"
             for k, shape in expected.items() if k in found and tuple(np.shape(found[k])) != tuple(shape)]
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:10]) + (f" and {len(wrong) - 10} more" if len(wrong) > 10 else ""))
    return "; ".join(problems)


def _user_json(metadata: Mapping[str, Any] | None) -> str:
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"metadata must be a dict with string keys, got {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-serialisable: {e}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def _tensors_of(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
        arr = np.asarray(value.data if isinstance(value, Tensor) else value, order="C")  # NOTE: keeps 0-d shape
        if arr.dtype.name not in _SAVE_DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {arr.dtype}; only float and integer tensors can be saved")
        out[name] = arr
    return out


def _write(path: PathLike, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    blob = safetensors.numpy.save(tensors, metadata=meta)  # made in full before the file is touched
    write_bytes_atomic(path, blob)


def save(model: Module, path: PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``model`` (architecture and weights) to the safetensors file ``path``, atomically.

    ``metadata``: a JSON-able dict of your own (epoch, metrics...), read back by :func:`load_metadata`.
    TypeError if the model is not a Sequential of whitelisted layers (use :func:`save_weights` then).
    """
    config = model_to_config(model)
    # the file must load again: rebuild the architecture (random generator untouched) and compare
    rebuilt = model_from_config(config, keep_rng=True)
    state = model.state_dict()
    problem = _mismatch(_state_shapes(rebuilt), state)
    if problem:
        raise TypeError(f"cannot save the architecture of this model: rebuilt from its config its weights differ "
                        f"({problem}); use backprop.io.save_weights for such models")
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": json.dumps(config, separators=(",", ":"), allow_nan=False),
        "user": _user_json(metadata),
    }
    _write(path, _tensors_of(state), meta)


def load(path: PathLike) -> Module:
    """Rebuild the model saved by :func:`save` at ``path`` (in training mode, as a new model is).

    FileNotFoundError for a missing file; ValueError for a file that is not a complete, valid backprop model
    file (with the reason), or that holds weights only. Everything is checked before the model is returned.
    Backprop's random generator is left as it was.
    """
    p, meta, tensors = _read_file(path)
    config = _architecture(p, meta)
    try:
        model = model_from_config(config, keep_rng=True, max_weights=sum(int(a.size) for a in tensors.values()))
    except ValueError as e:
        raise _invalid(p, str(e)) from None
    problem = _mismatch(_state_shapes(model), tensors)
    if problem:
        raise _invalid(p, f"its weights do not match its architecture: {problem}")
    model.load_state_dict(tensors)
    return model


def _architecture(p: str, meta: Mapping[str, str]) -> dict[str, Any]:
    if "architecture" not in meta:
        if meta.get("format", FORMAT) != FORMAT:
            how = f"its metadata says format {meta['format']!r}"
        else:
            how = "no backprop architecture in its metadata"
        raise ValueError(f"{p} holds weights only ({how}): build the model in code and use "
                         f"backprop.io.load_weights(model, {p!r})")
    if meta.get("format") != FORMAT:
        raise _invalid(p, f"its metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise _invalid(p, f"it is format version {meta.get('version')!r}; this backprop reads version {FORMAT_VERSION}")
    try:
        config = json.loads(meta["architecture"], object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        raise _invalid(p, f"its architecture is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise _invalid(p, "its architecture is not a JSON object")
    return config


def load_metadata(path: PathLike) -> dict[str, Any]:
    """The ``metadata`` dict given to :func:`save` or :func:`save_weights` ({} when none, or for other files)."""
    p, data = _read_bytes(path)
    _, meta = _parse_header(p, data)
    if "user" not in meta or meta.get("format") != FORMAT:
        return {}
    try:
        user = json.loads(meta["user"])
    except (ValueError, RecursionError) as e:
        raise _invalid(p, f"its user metadata is not valid JSON ({e})") from None
    if not isinstance(user, dict):
        raise _invalid(p, "its user metadata is not a JSON object")
    return user


def save_weights(model: Module | Mapping[str, Any], path: PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write only the weights (``model.state_dict()``, or a state dict) to the safetensors file ``path``, atomically.

    The file is what ``safetensors.torch.save_file(torch_model.state_dict(), path)`` writes for the same
    architecture, and :func:`load_weights` reads either.
    """
    if isinstance(model, Module):
        state = model.state_dict()
    elif isinstance(model, Mapping):
        state = dict(model)
    else:
        raise TypeError(f"save_weights: expected a Module or a state dict, got {type(model).__name__}")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "user": _user_json(metadata)}
    _write(path, _tensors_of(state), meta)


def load_weights(model: Module, path: PathLike | Mapping[str, Any], strict: bool = True) -> Module:
    """Copy the weights in the safetensors file ``path`` (or a state dict) into ``model``; returns ``model``.

    Reads files from :func:`save`, :func:`save_weights` or ``safetensors.torch.save_file(torch_model.state_dict())``
    (same names and layouts; values are cast to the model's dtype). ValueError for missing or unexpected
    tensors (unless ``strict=False``) and for shape mismatches; the model is changed only if all fits.
    """
    if not isinstance(model, Module):
        raise TypeError(f"load_weights: expected a backprop Module, got {type(model).__name__}")
    if isinstance(path, Mapping):
        source = "the state dict"
        tensors = {k: (v.data if isinstance(v, Tensor) else np.asarray(v)) for k, v in path.items()}
        bad = [k for k, v in tensors.items() if v.dtype.kind not in "biuf"]
        if bad:
            raise ValueError(f"{source}: {bad[0]!r} has dtype {tensors[bad[0]].dtype}, expected numbers")
    else:
        source, _, tensors = _read_file(path)
    problem = _mismatch(_state_shapes(model), tensors, strict)
    if problem:
        raise ValueError(f"{source} does not fit the model: {problem}")
    model.load_state_dict(tensors, strict=strict)
    return model
