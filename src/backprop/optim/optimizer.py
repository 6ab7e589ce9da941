"""Base class for optimizers, with PyTorch's public API.

An optimizer updates *parameters*: any objects with a ``.data`` attribute (a
floating-point numpy array, updated **in place** - other code holds references
to it, so it is never rebound) and a ``.grad`` attribute (an array of the same
shape, or ``None``; parameters whose grad is ``None`` are skipped).

Parameters are organised in *parameter groups* (``self.param_groups``), each a
dict with a ``"params"`` list and the group's hyperparameters, exactly as in
``torch.optim``.  Per-parameter state lives in ``self.state`` (a dict keyed by
the parameter object; parameters must hash by identity, which is Python's
default).  ``state_dict()`` / ``load_state_dict()`` use PyTorch's layout, with
numpy arrays in place of tensors and an ``int`` step count.

The update rules themselves are written as short sequences of in-place numpy
operations on the state buffers plus two reusable scratch arrays per dtype
(see :meth:`Optimizer._scratch`), so a step allocates (almost) nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from typing import Any

import numpy as np

from backprop.engine.function import replayable

__all__ = ["Optimizer"]


# --------------------------------------------------------------------------- #
# Validation helpers (shared by the concrete optimizers)
# --------------------------------------------------------------------------- #
def _as_real(name: str, label: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Invalid {label}: {value!r} ({name} must be a real number)")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {label}: {value!r} ({name} must be finite)")
    return value


def check_nonneg(name: str, label: str, value: Any) -> None:
    """Raise ValueError unless ``value`` is a finite real ``>= 0``."""
    if _as_real(name, label, value) < 0.0:
        raise ValueError(f"Invalid {label}: {value!r} ({name} must be >= 0)")


def check_unit(name: str, label: str, value: Any, *, closed: bool) -> None:
    """Raise ValueError unless ``value`` lies in ``[0, 1)`` (``[0, 1]`` when ``closed``)."""
    v = _as_real(name, label, value)
    if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"Invalid {label}: {value!r} ({name} must be in {interval})")


def check_lr(lr: Any) -> None:
    """Validate a learning rate (finite and ``>= 0``)."""
    check_nonneg("lr", "learning rate", lr)


# --------------------------------------------------------------------------- #
# Composable per-parameter update pieces (in place, no allocation)
# --------------------------------------------------------------------------- #
def effective_grad(grad: np.ndarray, data: np.ndarray, weight_decay: float, maximize: bool,
                   out: np.ndarray) -> np.ndarray:
    """The gradient the update rule sees: ``(-grad if maximize else grad) + weight_decay * data``.

    Returns ``grad`` itself (no copy, never modified) when there is nothing to
    do, otherwise writes into ``out`` and returns it.
    """
    if weight_decay:
        np.multiply(data, weight_decay, out=out)
        if maximize:
            out -= grad
        else:
            out += grad
        return out
    if maximize:
        return np.negative(grad, out=out)
    return grad


def lerp_(buf: np.ndarray, end: np.ndarray, weight: float, tmp: np.ndarray) -> None:
    """``buf <- buf + weight * (end - buf)`` in place, with PyTorch's ``lerp`` rounding.

    PyTorch evaluates ``end - (end - buf) * (1 - weight)`` when ``weight >= 0.5``;
    ``tmp`` is scratch (it may not alias ``buf`` or ``end``).
    """
    np.subtract(end, buf, out=tmp)
    if weight < 0.5:
        tmp *= weight
        buf += tmp
    else:
        tmp *= 1.0 - weight
        np.subtract(end, tmp, out=buf)


# --------------------------------------------------------------------------- #
# Optimizer
# --------------------------------------------------------------------------- #
def _is_param(obj: Any) -> bool:
    return hasattr(obj, "data") and hasattr(obj, "grad")


class Optimizer:
    """Base class of all optimizers (PyTorch's ``torch.optim.Optimizer`` API).

    Args:
        params: an iterable of parameters, or of dicts defining parameter
            groups (each with a ``"params"`` entry and optional per-group
            hyperparameter overrides).
        defaults: default hyperparameters, used for every group that does not
            override them.

    Subclasses implement :meth:`step` and may override :meth:`_check_group`
    to validate a group's hyperparameters.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # NOTE: a captured step (backprop.jit) replays an optimizer's step and zero_grad as whole calls
        super().__init_subclass__(**kwargs)
        for name in ("step", "zero_grad"):
            fn = cls.__dict__.get(name)
            if fn is not None and not hasattr(fn, "__replayable__"):
                setattr(cls, name, replayable(fn))

    def __init__(self, params: Iterable[Any] | Iterable[dict], defaults: dict[str, Any]) -> None:
        self._check_group(defaults)
        self.defaults: dict[str, Any] = dict(defaults)
        self.state: dict[Any, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        # Scratch space: dtype -> flat buffer; parameter -> (work0, work1) views into it.
        self._work: dict[np.dtype, np.ndarray] = {}
        self._work_views: dict[Any, tuple[np.ndarray, np.ndarray]] = {}

        if _is_param(params) or isinstance(params, (np.ndarray, str, bytes)):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of parameters "
                f"or dicts, but got {type(params).__name__}"
            )
        if isinstance(params, Mapping):
            params = [params]
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------ groups
    def _check_group(self, group: Mapping[str, Any]) -> None:
        """Validate a group's hyperparameters (ValueError naming the bad one)."""
        if "lr" in group:
            check_lr(group["lr"])

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a parameter group (a dict with ``"params"`` and optional overrides)."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if _is_param(params):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of a set changes between runs; use a list instead")
        else:
            params = list(params)
        if len(params) == 0:
            raise ValueError("optimizer got an empty parameter list")

        seen: set[int] = set()
        for p in params:
            if not _is_param(p):
                raise TypeError(
                    f"optimizer can only optimize objects with .data and .grad, got {type(p).__name__}"
                )
            dtype = getattr(p.data, "dtype", None)
            if dtype is None or not np.issubdtype(dtype, np.floating):
                raise TypeError(f"optimizer can only optimize floating-point arrays, got dtype {dtype}")
            if id(p) in seen:
                raise ValueError("optimizer parameter group contains the same parameter more than once")
            seen.add(id(p))
        for other in self.param_groups:
            if any(id(q) in seen for q in other["params"]):
                raise ValueError("some parameters appear in more than one parameter group")

        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        group["params"] = params
        self.param_groups.append(group)

    # ------------------------------------------------------------------ lr
    @property
    def lr(self) -> float:
        """The first group's learning rate; setting it sets every group's."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        check_lr(value)
        for group in self.param_groups:
            group["lr"] = value

    # ------------------------------------------------------------------ steps
    @replayable
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: set them to ``None`` (default) or zero them in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                else:
                    g = p.grad
                    if g is None:
                        continue
                    if isinstance(g, np.ndarray) and g.flags.writeable:
                        g.fill(0)
                    else:
                        p.grad = np.zeros_like(p.data)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        raise NotImplementedError

    def _scratch(self, p: Any, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two work arrays shaped and typed like ``data``, reused across steps.

        All parameters of one dtype share a single flat buffer of twice the
        largest parameter's size, so the update rules allocate no temporaries.
        """
        views = self._work_views.get(p)
        if views is not None and views[0].shape == data.shape and views[0].dtype == data.dtype:
            return views
        n = data.size
        buf = self._work.get(data.dtype)
        if buf is None or buf.size < 2 * n:
            buf = np.empty(2 * n, dtype=data.dtype)
            self._work[data.dtype] = buf
            self._work_views.clear()  # let the old buffer go once no view is left
        views = (buf[:n].reshape(data.shape), buf[n:2 * n].reshape(data.shape))
        self._work_views[p] = views
        return views

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, PyTorch-style, as an independent copy.

        ``{"state": {index: {name: array | int}}, "param_groups": [{..., "params": [index, ...]}]}``
        where parameters are numbered in order through all groups.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index[id(p)] = len(index)
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            i = index.get(id(p))
            if i is not None:
                state[i] = {k: (v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v))
                            for k, v in s.items()}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (arrays are copied; shapes and group sizes are checked).

        The hyperparameters of each group are replaced by the saved ones (the
        group dicts are updated in place); the parameters stay the current ones.
        Nothing is changed if validation fails.
        """
        if not isinstance(state_dict, Mapping) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise ValueError("optimizer state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has a different number of parameter groups "
                f"({len(saved_groups)}) than the optimizer ({len(self.param_groups)})"
            )
        id_map: dict[int, Any] = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            saved_ids = list(saved.get("params", ()))
            if len(saved_ids) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict's parameter group {gi} has {len(saved_ids)} parameters, "
                    f"but the optimizer's has {len(group['params'])}"
                )
            for i, p in zip(saved_ids, group["params"]):
                id_map[int(i)] = p

        new_state: dict[Any, dict[str, Any]] = {}
        for key, saved_state in state_dict["state"].items():
            try:
                p = id_map[int(key)]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"loaded state dict has state for unknown parameter {key!r}") from None
            data = p.data
            entry = {}
            for name, value in saved_state.items():
                if name == "step":
                    entry[name] = int(value)
                elif isinstance(value, np.ndarray):
                    if value.shape != data.shape:
                        raise ValueError(
                            f"loaded state {name!r} of parameter {key} has shape {value.shape}, "
                            f"expected {data.shape}"
                        )
                    entry[name] = np.array(value, dtype=data.dtype, copy=True)
                else:
                    entry[name] = copy.deepcopy(value)
            new_state[p] = entry

        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            new = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            for k, v in self.defaults.items():
                new.setdefault(k, v)
            self._check_group(new)
            new["params"] = group["params"]
            new_groups.append(new)

        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state.clear()
        self.state.update(new_state)

    # ------------------------------------------------------------------ misc
    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_work"] = {}
        d["_work_views"] = {}
        return d

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)
