"""Training checkpoints that resume exactly: model, optimizer, scheduler, random generators, counters and History.

A checkpoint is ONE `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its tensors are the arrays:

* ``model.<name>``: the model's ``state_dict()`` (``model.0.weight``, ``model.0.bias``...);
* ``optim.state.<index>.<name>``: the optimizer's state arrays (``optim.state.3.exp_avg``,
  ``optim.state.0.momentum_buffer``), numbered as in ``Optimizer.state_dict()``.

Everything else is JSON, in the header's ``__metadata__`` (strings only)::

    {"format": "backprop-checkpoint", "version": "1",
     "architecture": "<the model's config, as in a model file; only when the model is saveable>",
     "checkpoint": "{\\"epoch\\": 2, \\"iteration\\": 32, \\"rng_states\\": {...}, \\"optimizer\\": {...},
                     \\"scheduler\\": {...} | null, \\"history\\": {...} | null, \\"extra\\": {...}}"}

``optimizer`` is ``{"type": "Adam", "param_groups": [...], "state": {"3": {"step": 32}}}`` (the state's
scalars; its arrays are the ``optim.state.*`` tensors), ``scheduler`` ``{"type": "CosineAnnealingLR",
"state": {...}}``, ``rng_states`` maps a name (``fit`` saves ``"global"``, backprop's generator used by
dropout, and ``"loader"``, the DataLoader's shuffling generator) to a NumPy ``bit_generator.state`` whose
128-bit integers are written as decimal strings::

    {"bit_generator": "PCG64", "state": "1234...", "inc": "5678...", "has_uint32": 0, "uinteger": 0}

Nothing is ever unpickled and no code is looked up by name: :func:`load_checkpoint` reads the file, checks
every key, type and shape, and refuses anything it does not expect (unknown metadata or JSON keys, tensors
outside the two prefixes, non-numeric tensors, a truncated file) with a ``ValueError`` that says what is
wrong, before anything is applied. :meth:`Checkpoint.restore` checks the model, optimizer and scheduler
against the checkpoint before changing any of them. Files are written atomically
(:func:`backprop.io.atomic.write_bytes_atomic`): a crash mid-write leaves the previous checkpoint intact.

>>> import os, tempfile, numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> net = bp.nn.Sequential(bp.nn.Linear(3, 4), bp.nn.ReLU(), bp.nn.Linear(4, 2))
>>> opt = bp.optim.Adam(net.parameters(), lr=0.01)
>>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.safetensors")
>>> save_checkpoint(path, net, opt, epoch=1, iteration=10, rng_states={"global": bp.get_rng()})
>>> ckpt = load_checkpoint(path)
>>> ckpt.epoch, ckpt.iteration, sorted(ckpt.model_state_dict), ckpt.architecture["type"]
(1, 10, ['0.bias', '0.weight', '2.bias', '2.weight'], 'Sequential')
>>> ckpt.rng_states["global"] == bp.get_rng().bit_generator.state
True
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import safetensors.numpy

from backprop.engine.tensor import Tensor
from backprop.io.atomic import write_bytes_atomic
from backprop.io.serialization import (
    _mismatch,
    _no_duplicates,
    _state_shapes,
    model_from_config,
    model_to_config,
)
from backprop.nn.module import Module
from backprop.training.history import History

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Checkpoint", "TrainingCheckpoint", "load_checkpoint",
           "save_checkpoint"]

CHECKPOINT_FORMAT = "backprop-checkpoint"
CHECKPOINT_VERSION = "1"

PathLike = str | os.PathLike[str]

_MODEL = "model."
_OPTIM = "optim.state."
_META_KEYS = {"format", "version", "checkpoint", "architecture"}
_BODY_KEYS = ("epoch", "iteration", "rng_states", "optimizer", "scheduler", "history", "extra")
_OPTIM_KEYS = ("type", "param_groups", "state")
_SCHED_KEYS = ("type", "state")
_HISTORY_KEYS = ("history", "epoch", "params", "epochs", "iterations", "samples_seen", "interrupted",
                 "stopped_early", "terminated_on_nan")
_RNG_KEYS = ("bit_generator", "state", "inc", "has_uint32", "uinteger")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM")  # NumPy's default_rng and its successor: state = (state, inc), 128-bit
_TENSOR_DTYPES = {"F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"}
_MAX_HEADER_BYTES = 100_000_000
_MAX_DEPTH = 32
_U128 = 1 << 128
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,38})")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPTIM_TENSOR = re.compile(r"optim\.state\.(0|[1-9][0-9]{0,8})\.([A-Za-z_][A-Za-z0-9_]*)")


# ---------------------------------------------------------------------------------------------- objects
@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: everything needed to continue training where it stopped.

    ``epoch``: epochs completed (training resumes with the epoch of that 0-based index); ``iteration``:
    optimizer steps taken. ``rng_states``: name -> NumPy ``bit_generator.state`` dict (assign it to
    ``generator.bit_generator.state``). ``optimizer_state_dict`` has ``Optimizer.state_dict()``'s layout;
    ``scheduler_state_dict`` is None when no scheduler was saved; ``history`` is the History as a dict
    (:meth:`to_history` rebuilds it); ``architecture`` the model config when the model was saveable
    (:meth:`build_model`); ``extra`` the JSON dict given to :func:`save_checkpoint` (``fit`` keeps its
    settings under ``extra["fit"]``).
    """

    model_state_dict: dict[str, np.ndarray]
    optimizer_state_dict: dict[str, Any]
    scheduler_state_dict: dict[str, Any] | None
    epoch: int
    iteration: int
    rng_states: dict[str, dict[str, Any]]
    history: dict[str, Any] | None = None
    architecture: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    optimizer_type: str = ""
    scheduler_type: str | None = None
    path: str = ""

    # ---------------------------------------------------------------------------------------- restore
    def restore(self, model: Module, optimizer: Any = None, scheduler: Any = None) -> None:
        """Load the saved states into ``model``, ``optimizer`` and ``scheduler`` (those given).

        Everything is checked first (names, shapes, types, optimizer and scheduler kinds, parameter
        groups); on any mismatch a ValueError says what differs and nothing is changed. Random
        generators are not touched: see ``rng_states``.
        """
        where = self.path or "the checkpoint"
        if not isinstance(model, Module):
            raise TypeError(f"Checkpoint.restore: expected a backprop Module, got {type(model).__name__}")
        problem = _mismatch(_state_shapes(model), self.model_state_dict)
        if problem:
            raise ValueError(f"{where} does not fit the model: {problem}")
        opt_state = None
        if optimizer is not None:
            opt_state = self._optimizer_state_for(optimizer, where)
        sched_state = None
        if scheduler is not None:
            sched_state = self._scheduler_state_for(scheduler, where)
        elif self.scheduler_state_dict is not None and optimizer is not None:
            raise ValueError(f"{where} holds the state of a {self.scheduler_type} learning-rate scheduler, but no "
                             "scheduler was given to restore it into")
        # all checked: apply (the optimizer validates its groups' hyperparameters before changing anything)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        model.load_state_dict(self.model_state_dict)
        if sched_state is not None:
            scheduler.load_state_dict(sched_state)

    def _optimizer_state_for(self, optimizer: Any, where: str) -> dict[str, Any]:
        kind = type(optimizer).__name__
        if self.optimizer_type != kind:
            raise ValueError(f"{where} holds the state of a {self.optimizer_type} optimizer, not {kind}")
        saved_groups = self.optimizer_state_dict["param_groups"]
        groups = optimizer.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(f"{where}: the optimizer has {len(groups)} parameter groups, the checkpoint "
                             f"{len(saved_groups)}")
        params: dict[int, Any] = {}
        new_groups = []
        for gi, (saved, live) in enumerate(zip(saved_groups, groups)):
            if len(saved["params"]) != len(live["params"]):
                raise ValueError(f"{where}: parameter group {gi} has {len(live['params'])} parameters in the "
                                 f"optimizer but {len(saved['params'])} in the checkpoint")
            params.update(zip(saved["params"], live["params"]))
            allowed = set(live) | set(getattr(optimizer, "defaults", {})) | {"initial_lr"}
            new = {}
            for key, value in saved.items():
                if key == "params":
                    new[key] = list(value)
                    continue
                if key not in allowed:
                    raise ValueError(f"{where}: parameter group {gi} has the hyperparameter {key!r}, which "
                                     f"{kind} does not have")
                if key in live:
                    _compatible(value, live[key], f"{where}: optimizer parameter group {gi}, {key!r}")
                    value = _like(value, live[key])
                new[key] = value
            new_groups.append(new)
        state: dict[int, dict[str, Any]] = {}
        for index, entry in self.optimizer_state_dict["state"].items():
            p = params.get(index)
            if p is None:
                raise ValueError(f"{where}: optimizer state for parameter {index}, which no group holds")
            for name, value in entry.items():
                if isinstance(value, np.ndarray) and value.shape != p.data.shape:
                    raise ValueError(f"{where}: optimizer state {name!r} of parameter {index} has shape "
                                     f"{value.shape}, the parameter {p.data.shape}")
            state[index] = dict(entry)
        return {"state": state, "param_groups": new_groups}

    def _scheduler_state_for(self, scheduler: Any, where: str) -> dict[str, Any]:
        kind = type(scheduler).__name__
        if self.scheduler_state_dict is None:
            raise ValueError(f"{where} holds no learning-rate scheduler state, but a {kind} was given")
        if self.scheduler_type != kind:
            raise ValueError(f"{where} holds the state of a {self.scheduler_type} scheduler, not {kind}")
        live = scheduler.state_dict()
        saved = self.scheduler_state_dict
        missing = sorted(set(live) - set(saved))
        unexpected = sorted(set(saved) - set(live))
        if missing or unexpected:
            raise ValueError(f"{where}: the {kind} state does not match"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unexpected {', '.join(unexpected)}" if unexpected else ""))
        out = {}
        for key, value in saved.items():
            _compatible(value, live[key], f"{where}: scheduler state {key!r}")
            out[key] = _like(value, live[key])
        return out

    # --------------------------------------------------------------------------------------- helpers
    def to_history(self) -> Any:
        """The saved History as a :class:`~backprop.training.history.History` (an empty one if none was saved)."""
        h = History()
        if self.history is None:
            h.epochs, h.iterations = self.epoch, self.iteration
            return h
        d = self.history
        h.history = {k: list(v) for k, v in d["history"].items()}
        h.epoch = list(d["epoch"])
        h.params = dict(d["params"])
        h.epochs, h.iterations, h.samples_seen = d["epochs"], d["iterations"], d["samples_seen"]
        h.interrupted, h.stopped_early, h.terminated_on_nan = d["interrupted"], d["stopped_early"], d["terminated_on_nan"]
        return h

    def build_model(self) -> Module:
        """The model rebuilt from ``architecture`` with the saved weights (backprop's generator untouched)."""
        if self.architecture is None:
            raise ValueError(f"{self.path or 'the checkpoint'} holds no architecture (the model was not saveable): "
                             "build the model in code and use Checkpoint.restore(model)")
        model = model_from_config(self.architecture, keep_rng=True)
        model.load_state_dict(self.model_state_dict)
        return model


class TrainingCheckpoint:
    """Where ``fit(..., checkpoint=...)`` writes a checkpoint at the end of every epoch, and what it adds.

    ``filepath`` may hold ``str.format`` fields as :class:`~backprop.training.callbacks.ModelCheckpoint`'s:
    ``{epoch}`` (1-based) and any log key; ``extra`` is a JSON dict stored in every checkpoint (``extra["fit"]``
    is ``fit``'s own). ``last_saved`` is the path of the last checkpoint written.
    """

    def __init__(self, filepath: PathLike, extra: Mapping[str, Any] | None = None) -> None:
        self.filepath = os.fspath(filepath)
        self.extra = dict(extra or {})
        if "fit" in self.extra:
            raise ValueError("TrainingCheckpoint: extra['fit'] is reserved for fit's own settings")
        _to_json(self.extra, "TrainingCheckpoint extra")
        self.last_saved: str | None = None

    def __repr__(self) -> str:
        return f"TrainingCheckpoint({self.filepath!r})"


# ---------------------------------------------------------------------------------------------- saving
def save_checkpoint(
    path: PathLike,
    model: Module,
    optimizer: Any,
    scheduler: Any = None,
    *,
    epoch: int,
    iteration: int,
    rng_states: Mapping[str, Any],
    history: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a training checkpoint to the safetensors file ``path``, atomically (see the module's docstring).

    ``epoch``: epochs completed; ``iteration``: optimizer steps taken. ``rng_states``: name ->
    ``np.random.Generator`` (or its bit generator, or a ``bit_generator.state`` dict); PCG64 and
    PCG64DXSM generators (what ``np.random.default_rng`` makes) are supported. ``history``: a History (or
    the dict :attr:`Checkpoint.history` holds). ``extra``: a JSON-able dict of your own. The file is built
    in memory in full before the old one is replaced; TypeError names anything that cannot be saved.
    """
    if not isinstance(model, Module):
        raise TypeError(f"save_checkpoint: expected a backprop Module, got {type(model).__name__}")
    for name, value in (("epoch", epoch), ("iteration", iteration)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"save_checkpoint: {name} must be an integer >= 0, got {value!r}")
    tensors: dict[str, np.ndarray] = {}
    for name, value in model.state_dict().items():
        tensors[_MODEL + name] = _array(value, f"model tensor {name!r}")
    optim_json, optim_tensors = _pack_optimizer(optimizer)
    tensors.update(optim_tensors)
    if not isinstance(rng_states, Mapping):
        raise TypeError(f"save_checkpoint: rng_states must be a dict name -> generator, got {type(rng_states).__name__}")
    body = {
        "epoch": int(epoch),
        "iteration": int(iteration),
        "rng_states": {_key(k, "rng_states"): _pack_rng(v, k) for k, v in rng_states.items()},
        "optimizer": optim_json,
        "scheduler": None if scheduler is None else {
            "type": type(scheduler).__name__,
            "state": _to_json(_scheduler_state(scheduler), "save_checkpoint: the scheduler state"),
        },
        "history": None if history is None else _pack_history(history),
        "extra": _to_json(dict(extra or {}), "save_checkpoint: extra"),
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "checkpoint": json.dumps(body, separators=(",", ":"), ensure_ascii=False),
    }
    architecture = _architecture_of(model)
    if architecture is not None:
        meta["architecture"] = architecture
    blob = safetensors.numpy.save(tensors, metadata=meta)
    write_bytes_atomic(path, blob)


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    state_dict = getattr(scheduler, "state_dict", None)
    if not callable(state_dict):
        raise TypeError(f"save_checkpoint: the scheduler ({type(scheduler).__name__}) has no state_dict()")
    state = state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"save_checkpoint: {type(scheduler).__name__}.state_dict() returned a "
                        f"{type(state).__name__}, expected a dict")
    return dict(state)


def _pack_optimizer(optimizer: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    state_dict = getattr(optimizer, "state_dict", None)
    if not callable(state_dict):
        raise TypeError(f"save_checkpoint: expected an optimizer with state_dict(), got {type(optimizer).__name__}")
    sd = state_dict()
    groups = []
    for gi, group in enumerate(sd["param_groups"]):
        packed = {}
        for key, value in group.items():
            if key == "params":
                packed[key] = [int(i) for i in value]
            else:
                packed[_key(key, f"optimizer group {gi}")] = _to_json(value, f"save_checkpoint: optimizer group {gi} "
                                                                              f"{key!r}")
        groups.append(packed)
    scalars: dict[str, dict[str, Any]] = {}
    tensors: dict[str, np.ndarray] = {}
    for index, entry in sd["state"].items():
        index = int(index)
        out: dict[str, Any] = {}
        for name, value in entry.items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise TypeError(f"save_checkpoint: optimizer state name {name!r} of parameter {index} is not an "
                                "identifier")
            if isinstance(value, (np.ndarray, Tensor)):
                tensors[f"{_OPTIM}{index}.{name}"] = _array(value, f"optimizer state {name!r} of parameter {index}")
            else:
                if isinstance(value, np.generic):
                    value = value.item()
                if not (value is None or isinstance(value, (bool, int, float))):
                    raise TypeError(f"save_checkpoint: optimizer state {name!r} of parameter {index} is a "
                                    f"{type(value).__name__}; only arrays and numbers can be saved")
                out[name] = value
        scalars[str(index)] = out
    return {"type": type(optimizer).__name__, "param_groups": groups, "state": scalars}, tensors


def _pack_rng(value: Any, name: str) -> dict[str, Any]:
    if isinstance(value, np.random.Generator):
        value = value.bit_generator
    if isinstance(value, np.random.BitGenerator):
        value = value.state
    if not isinstance(value, Mapping):
        raise TypeError(f"save_checkpoint: rng_states[{name!r}] must be a NumPy Generator or its "
                        f"bit_generator.state, got {type(value).__name__}")
    kind = value.get("bit_generator")
    if kind not in _BIT_GENERATORS:
        raise TypeError(f"save_checkpoint: rng_states[{name!r}] is a {kind} generator; checkpoints hold "
                        f"{' and '.join(_BIT_GENERATORS)} generators (np.random.default_rng)")
    inner = value.get("state", {})
    return {"bit_generator": kind, "state": str(int(inner["state"])), "inc": str(int(inner["inc"])),
            "has_uint32": int(value.get("has_uint32", 0)), "uinteger": int(value.get("uinteger", 0))}


def _pack_history(history: Any) -> dict[str, Any]:
    if isinstance(history, Mapping):
        d = dict(history)
    else:
        d = {k: getattr(history, k) for k in _HISTORY_KEYS}
    out = {
        "history": {_key(k, "history"): [float(v) for v in vals] for k, vals in d["history"].items()},
        "epoch": [int(e) for e in d["epoch"]],
        "params": _to_json(dict(d["params"]), "save_checkpoint: history.params"),
        "epochs": int(d["epochs"]), "iterations": int(d["iterations"]), "samples_seen": int(d["samples_seen"]),
        "interrupted": bool(d["interrupted"]), "stopped_early": bool(d["stopped_early"]),
        "terminated_on_nan": bool(d["terminated_on_nan"]),
    }
    return out


_verified: dict[str, bool] = {}  # architecture JSON + weight shapes -> whether the config rebuilds the model


def _architecture_of(model: Module) -> str | None:
    """The model's config as JSON when it is saveable (as backprop.io.save would write it), else None."""
    try:
        config = model_to_config(model)
        text = json.dumps(config, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None
    shapes = _state_shapes(model)
    key = text + repr(sorted(shapes.items()))
    ok = _verified.get(key)
    if ok is None:  # rebuilt from its config the model must have the same tensors (checked once per architecture)
        try:
            rebuilt = _state_shapes(model_from_config(config, keep_rng=True))
            ok = {k: tuple(v) for k, v in rebuilt.items()} == {k: tuple(v) for k, v in shapes.items()}
        except (TypeError, ValueError):
            ok = False
        if len(_verified) > 64:
            _verified.clear()
        _verified[key] = ok
    return text if ok else None


def _array(value: Any, what: str) -> np.ndarray:
    arr = np.ascontiguousarray(value.data if isinstance(value, Tensor) else np.asarray(value))
    if arr.dtype.kind not in "iuf" or arr.dtype.itemsize > 8:
        raise TypeError(f"save_checkpoint: {what} has dtype {arr.dtype}; only float and integer arrays can be saved")
    return arr


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"save_checkpoint: {where}: keys must be strings, got {key!r}")
    return key


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _to_json(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as plain JSON data (tuples become lists, NumPy scalars numbers); TypeError naming the culprit."""
    if depth > _MAX_DEPTH:
        raise TypeError(f"{where}: nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _to_json(v, f"{where}[{k!r}]", depth + 1)
        return out
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot hold "
                    "(numbers, strings, booleans, None, lists and dicts only)")


def _like(value: Any, template: Any) -> Any:
    """JSON ``value`` with lists turned back into tuples where the live ``template`` has tuples."""
    if isinstance(template, tuple) and isinstance(value, list):
        return tuple(_like(v, t) for v, t in zip(value, template)) if len(value) == len(template) else tuple(value)
    if isinstance(template, list) and isinstance(value, list) and len(template) == len(value):
        return [_like(v, t) for v, t in zip(value, template)]
    if isinstance(template, Mapping) and isinstance(value, dict):
        return {k: _like(v, template[k]) if k in template else v for k, v in value.items()}
    return value


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float, np.number)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def _compatible(saved: Any, live: Any, where: str, depth: int = 0) -> None:
    """ValueError unless the saved JSON value has the kind of the live one (None goes with anything)."""
    if saved is None or live is None or depth > _MAX_DEPTH:
        return
    if _kind(saved) != _kind(live):
        raise ValueError(f"{where} is {_kind(saved)} in the checkpoint but {_kind(live)} here")
    if isinstance(live, (list, tuple)):
        for i, (s, v) in enumerate(zip(saved, live)):
            _compatible(s, v, f"{where}[{i}]", depth + 1)
    elif isinstance(live, Mapping):
        for k in saved:
            if k in live:
                _compatible(saved[k], live[k], f"{where}[{k!r}]", depth + 1)


# --------------------------------------------------------------------------------------------- loading
class _Invalid(ValueError):
    pass


def load_checkpoint(path: PathLike) -> Checkpoint:
    """Read and check the checkpoint written by :func:`save_checkpoint` at ``path``.

    FileNotFoundError for a missing file; ValueError ``"<path> is not a valid backprop checkpoint: <why>"``
    for anything else: a truncated or corrupted file, a model file or another safetensors file, unknown
    metadata keys or JSON keys, values of the wrong type, tensors that are not numbers or have unexpected
    names, optimizer state for parameters no group holds, weights that do not match the saved architecture.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such checkpoint file", p) from None
    try:
        return _parse(p, data)
    except _Invalid as e:
        raise ValueError(f"{p} is not a valid backprop checkpoint: {e}") from None


def _parse(p: str, data: bytes) -> Checkpoint:
    meta, tensors = _read_safetensors(data)
    unknown = sorted(set(meta) - _META_KEYS)
    if meta.get("format") == "backprop" and "checkpoint" not in meta:
        raise _Invalid("it is a backprop model file (load it with backprop.io.load), not a training checkpoint")
    if unknown:
        raise _Invalid(f"unexpected metadata key {unknown[0]!r} (expected {', '.join(sorted(_META_KEYS))})")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise _Invalid(f"its metadata format is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise _Invalid(f"it is checkpoint version {meta.get('version')!r}; this backprop reads version "
                       f"{CHECKPOINT_VERSION}")
    if "checkpoint" not in meta:
        raise _Invalid("its metadata has no 'checkpoint' entry")
    body = _json_object(meta["checkpoint"], "the 'checkpoint' metadata")
    _exact_keys(body, _BODY_KEYS, "the 'checkpoint' metadata")
    epoch = _count(body["epoch"], "epoch")
    iteration = _count(body["iteration"], "iteration")
    rng_states = _unpack_rngs(body["rng_states"])
    model_state, optim_arrays = _split_tensors(tensors)
    optim_type, optim_state = _unpack_optimizer(body["optimizer"], optim_arrays)
    sched_type, sched_state = _unpack_scheduler(body["scheduler"])
    history = _unpack_history(body["history"])
    extra = body["extra"]
    if not isinstance(extra, dict):
        raise _Invalid(f"'extra' must be an object, got {_show(extra)}")
    architecture = None
    if "architecture" in meta:
        architecture = _json_object(meta["architecture"], "the architecture")
        try:
            rebuilt = model_from_config(architecture, keep_rng=True)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        problem = _mismatch(_state_shapes(rebuilt), model_state)
        if problem:
            raise _Invalid(f"its model weights do not match its architecture: {problem}")
    return Checkpoint(model_state_dict=model_state, optimizer_state_dict=optim_state,
                      scheduler_state_dict=sched_state, epoch=epoch, iteration=iteration, rng_states=rng_states,
                      history=history, architecture=architecture, extra=extra, optimizer_type=optim_type,
                      scheduler_type=sched_type, path=p)


def _read_safetensors(data: bytes) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    if len(data) < 8:
        raise _Invalid(f"it is {len(data)} bytes long, too short for a safetensors header (truncated?)")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise _Invalid(f"its header length field says {n} bytes but {len(data) - 8} follow "
                       "(truncated, or not a safetensors file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Invalid(f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _Invalid("its header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _Invalid("its header has no __metadata__ of strings (not a checkpoint)")
    end = 0
    for name, info in header.items():
        if not isinstance(info, dict) or info.get("dtype") not in _TENSOR_DTYPES:
            dtype = info.get("dtype") if isinstance(info, dict) else None
            raise _Invalid(f"tensor {name!r} has dtype {dtype!r}; checkpoints hold float and integer tensors only")
        offsets = info.get("data_offsets")
        if isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets):
            end = max(end, offsets[1])
    if 8 + n + end != len(data):
        raise _Invalid(f"its tensors need {8 + n + end} bytes but the file has {len(data)} (truncated or padded)")
    try:
        tensors = safetensors.numpy.load(data)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError and others on bad input
        raise _Invalid(f"{type(e).__name__}: {e}") from None
    return meta, tensors


def _show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else _kind(v)
    return text if len(text) < 60 else text[:57] + "..."


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        raise _Invalid(f"{what} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise _Invalid(f"{what} is not a JSON object")
    return value


def _exact_keys(obj: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    unexpected = [k for k in obj if k not in keys]
    if unexpected:
        raise _Invalid(f"{where}: unexpected key {unexpected[0]!r} (expected {', '.join(keys)})")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _Invalid(f"{where}: missing key {missing[0]!r}")


def _count(v: Any, where: str) -> int:
    if not _is_int(v) or v < 0:
        raise _Invalid(f"{where} must be an integer >= 0, got {_show(v)}")
    return int(v)


def _unpack_rngs(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise _Invalid(f"'rng_states' must be an object, got {_show(value)}")
    out = {}
    for name, s in value.items():
        where = f"rng_states[{name!r}]"
        if not isinstance(s, dict):
            raise _Invalid(f"{where} must be an object, got {_show(s)}")
        _exact_keys(s, _RNG_KEYS, where)
        if s["bit_generator"] not in _BIT_GENERATORS:
            raise _Invalid(f"{where}: bit_generator must be one of {', '.join(_BIT_GENERATORS)}, "
                           f"got {_show(s['bit_generator'])}")
        ints = {}
        for key in ("state", "inc"):
            text = s[key]
            if not isinstance(text, str) or not _DECIMAL.fullmatch(text) or int(text) >= _U128:
                raise _Invalid(f"{where}: {key!r} must be a 128-bit unsigned integer as a decimal string, "
                               f"got {_show(text)}")
            ints[key] = int(text)
        if s["has_uint32"] not in (0, 1) or isinstance(s["has_uint32"], bool):
            raise _Invalid(f"{where}: 'has_uint32' must be 0 or 1, got {_show(s['has_uint32'])}")
        if not _is_int(s["uinteger"]) or not 0 <= s["uinteger"] < 1 << 32:
            raise _Invalid(f"{where}: 'uinteger' must be a 32-bit unsigned integer, got {_show(s['uinteger'])}")
        out[name] = {"bit_generator": s["bit_generator"], "state": ints, "has_uint32": s["has_uint32"],
                     "uinteger": s["uinteger"]}
    return out


def _split_tensors(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    model: dict[str, np.ndarray] = {}
    optim: dict[int, dict[str, np.ndarray]] = {}
    for name, arr in tensors.items():
        if arr.dtype.kind not in "iuf":
            raise _Invalid(f"tensor {name!r} has dtype {arr.dtype}, expected float or integer numbers")
        if name.startswith(_MODEL) and len(name) > len(_MODEL):
            model[name[len(_MODEL):]] = arr
            continue
        m = _OPTIM_TENSOR.fullmatch(name)
        if m is None:
            raise _Invalid(f"unexpected tensor {name!r} (tensors are named model.<name> or "
                           "optim.state.<index>.<name>)")
        optim.setdefault(int(m.group(1)), {})[m.group(2)] = arr
    if not model:
        raise _Invalid("it holds no model tensors")
    return model, optim


def _unpack_optimizer(value: Any, arrays: dict[int, dict[str, np.ndarray]]) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise _Invalid(f"'optimizer' must be an object, got {_show(value)}")
    _exact_keys(value, _OPTIM_KEYS, "'optimizer'")
    kind = value["type"]
    if not isinstance(kind, str) or not _NAME.fullmatch(kind):
        raise _Invalid(f"optimizer 'type' must be a class name, got {_show(kind)}")
    groups = value["param_groups"]
    if not isinstance(groups, list) or not groups:
        raise _Invalid(f"optimizer 'param_groups' must be a non-empty list, got {_show(groups)}")
    seen: set[int] = set()
    for gi, g in enumerate(groups):
        where = f"optimizer param_groups[{gi}]"
        if not isinstance(g, dict):
            raise _Invalid(f"{where} must be an object, got {_show(g)}")
        ids = g.get("params")
        if not isinstance(ids, list) or not ids or not all(_is_int(i) and i >= 0 for i in ids):
            raise _Invalid(f"{where}: 'params' must be a non-empty list of parameter indices, got {_show(ids)}")
        if seen & set(ids) or len(set(ids)) != len(ids):
            raise _Invalid(f"{where}: a parameter index appears more than once")
        seen.update(ids)
        for key, v in g.items():
            if not _NAME.fullmatch(key):
                raise _Invalid(f"{where}: {key!r} is not a hyperparameter name")
            if key != "params" and isinstance(v, dict):
                raise _Invalid(f"{where}: hyperparameter {key!r} is an object; expected numbers, strings or lists")
    scalars = value["state"]
    if not isinstance(scalars, dict):
        raise _Invalid(f"optimizer 'state' must be an object, got {_show(scalars)}")
    state: dict[int, dict[str, Any]] = {}
    for key, entry in scalars.items():
        if not _DECIMAL.fullmatch(key) or int(key) not in seen:
            raise _Invalid(f"optimizer state for parameter {key!r}, which no parameter group holds")
        if not isinstance(entry, dict):
            raise _Invalid(f"optimizer state[{key!r}] must be an object, got {_show(entry)}")
        for name, v in entry.items():
            if not _NAME.fullmatch(name):
                raise _Invalid(f"optimizer state[{key!r}]: {name!r} is not a state name")
            if not (v is None or isinstance(v, (bool, int, float))):
                raise _Invalid(f"optimizer state[{key!r}][{name!r}] must be a number, got {_show(v)}")
            if name == "step" and not _is_int(v):
                raise _Invalid(f"optimizer state[{key!r}]['step'] must be an integer, got {_show(v)}")
        state[int(key)] = dict(entry)
    for index, named in arrays.items():
        if index not in state:
            raise _Invalid(f"tensor optim.state.{index}.* has no entry in the optimizer state")
        for name, arr in named.items():
            if name in state[index]:
                raise _Invalid(f"optimizer state {name!r} of parameter {index} is both a tensor and a number")
            if arr.dtype.kind != "f":
                raise _Invalid(f"tensor optim.state.{index}.{name} has dtype {arr.dtype}, expected floats")
            state[index][name] = arr
    return kind, {"state": dict(sorted(state.items())), "param_groups": groups}


def _unpack_scheduler(value: Any) -> tuple[str | None, dict[str, Any] | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise _Invalid(f"'scheduler' must be an object or null, got {_show(value)}")
    _exact_keys(value, _SCHED_KEYS, "'scheduler'")
    kind, state = value["type"], value["state"]
    if not isinstance(kind, str) or not _NAME.fullmatch(kind):
        raise _Invalid(f"scheduler 'type' must be a class name, got {_show(kind)}")
    if not isinstance(state, dict) or not all(_NAME.fullmatch(k) for k in state):
        raise _Invalid("scheduler 'state' must be an object of attribute names")
    return kind, state


def _unpack_history(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(f"'history' must be an object or null, got {_show(value)}")
    _exact_keys(value, _HISTORY_KEYS, "'history'")
    epochs = value["epoch"]
    if not isinstance(epochs, list) or not all(_is_int(e) and e >= 0 for e in epochs):
        raise _Invalid("history 'epoch' must be a list of epoch indices")
    logs = value["history"]
    if not isinstance(logs, dict):
        raise _Invalid("history 'history' must be an object metric -> list of numbers")
    for k, vals in logs.items():
        if not isinstance(vals, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in vals):
            raise _Invalid(f"history[{k!r}] must be a list of numbers")
        if len(vals) > len(epochs):
            raise _Invalid(f"history[{k!r}] has {len(vals)} values for {len(epochs)} epochs")
    if not isinstance(value["params"], dict):
        raise _Invalid("history 'params' must be an object")
    for key in ("epochs", "iterations", "samples_seen"):
        _count(value[key], f"history {key!r}")
    for key in ("interrupted", "stopped_early", "terminated_on_nan"):
        if not isinstance(value[key], bool):
            raise _Invalid(f"history {key!r} must be true or false, got {_show(value[key])}")
    out = dict(value)
    out["history"] = {k: [float(v) for v in vals] for k, vals in logs.items()}
    return out

