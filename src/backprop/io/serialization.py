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
Nothing is looked up by name anywhere else. This module knows no layer: each layer registers its description
where it is defined (:mod:`backprop.nn.registry`, ``@layer_type``), and :func:`register_layer` adds one of
your own to the whitelist.

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

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

import backprop.nn  # noqa: F401  (its __init__ imports every layer file, so every layer is registered)
from backprop.engine.random import get_rng
from backprop.engine.tensor import Tensor
from backprop.io.atomic import write_bytes_atomic
from backprop.nn.module import Module, Sequential
from backprop.nn.registry import LAYER_TYPES, Arg, LayerSpec, name_of, register_layer

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


# ------------------------------------------------------------------------------------------ model <-> config
def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        if any(isinstance(v, Tensor) for v in vars(module).values()) or any(module.named_buffers(recurse=False)):
            raise TypeError(f"cannot save the architecture: the Sequential at {where} holds tensors of its own; "
                            "use save_weights for such models")
        return {"type": "Sequential",
                "layers": [_layer_to_config(m, f"{where}.layers[{i}]", depth + 1) for i, (_, m) in enumerate(children)]}
    name = name_of(cls)
    if name is None:
        raise _not_saveable(cls, where)
    try:
        args = LAYER_TYPES[name].config(module)
    except TypeError as e:
        raise TypeError(f"cannot save {where} ({name}): {e}") from None
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
    if budget is not None:  # NOTE: before building: a small crafted file cannot make it allocate gigabytes
        need = spec.weights_needed(kwargs)
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
    shapes.update((name, buf.shape) for name, buf in model.named_buffers(persistent_only=True))
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
