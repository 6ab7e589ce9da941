"""``Module.summary()``: a Keras-style table of a model's layers, their output shapes and parameter counts.

One row per sub-module, in the order they were assigned, named by their attribute path (``0``, ``block.1``:
the prefixes of the ``state_dict`` names) and indented by nesting, as torchinfo does. The ``Param #`` column
counts the parameters a module holds itself; a container whose parameters all live in its sub-layers shows
``--``, so the column adds up to the total; parameters assigned to the model itself get a first row of their
own. A module or parameter shared by several modules is counted once, where it is first found (as
``parameters()`` finds it); later rows of a shared module say ``(shared: <name>)``. Then the totals:

* **Total params**: every parameter's elements (what ``sum(p.numel() for p in model.parameters())`` gives
  for the same model in PyTorch), with their size in memory;
* **Trainable** / **Non-trainable params**: parameters with ``requires_grad`` True / False (frozen);
* **Buffers** (batch norm's running statistics...) are not parameters: they are listed on a line of their
  own, not in the totals. (Keras counts its batch norm moving averages as non-trainable params; PyTorch and
  this library keep them as buffers.)

The output shapes need an input: ``input_shape`` (one sample, without the batch dimension, e.g. ``(1, 28,
28)``; zeros of the model's dtype, or integer zeros for a model that starts with an Embedding) or
``example_input`` (a batch, of which the first sample is used). The model runs once, on a batch of one,
under ``no_grad`` and in eval mode, while each sub-module's ``forward`` is wrapped to note the shape it
returns; the batch dimension is shown as ``None``, as Keras does. Afterwards everything is as it was: the
wrappers are removed (also when the forward fails), each module's train/eval mode is restored, and so are
the buffers (running statistics) and the state of the global random generator, should a layer have touched
them. Without an input the table has no shape column.

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> net = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 2))
>>> text = summary(net, (4,), print_fn=None)
>>> print(text)
Model: Sequential
=============================================================
Layer (type)                Output Shape              Param #
=============================================================
0 (Linear)                  (None, 8)                      40
1 (ReLU)                    (None, 8)                       0
2 (Linear)                  (None, 2)                      18
=============================================================
Total params: 58 (232 B)
Trainable params: 58 (232 B)
Non-trainable params: 0 (0 B)
Input shape: (None, 4)
Output shape: (None, 2)
-------------------------------------------------------------
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backprop.engine import random as _random
from backprop.engine.tensor import Tensor, no_grad

# NOTE: no import of backprop.nn.module: Module.summary calls this module, and nn's imports form no cycle
# (tests/test_layer_registry.py). A model is anything with Module's traversal methods; its parameters are
# those ``parameters()`` finds.
Module = Any

__all__ = ["summary"]

_MISSING = object()


@dataclass
class _Row:
    name: str
    module: Module
    depth: int
    params: int | None  # None: a container without parameters of its own ("--")
    frozen: int
    same_as: str | None = None  # the module appeared before, under this name (a shared module)
    shapes: list[str] = field(default_factory=list)


def _walk(module: Module, prefix: str, depth: int, out: list[tuple[str, Module, int]]) -> None:
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        out.append((path, child, depth))
        _walk(child, path, depth + 1, out)


def _shape_text(value: Any) -> str:
    """The shape of a forward's result: the batch dimension (the first, of size 1 here) as None, as Keras
    shows it; tuples, lists and dicts of results as such; ``?`` for anything else."""
    if isinstance(value, (Tensor, np.ndarray)):
        dims: list[Any] = list(value.shape)
        if dims and dims[0] == 1:
            dims[0] = None
        return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_shape_text(v) for v in value)
        return f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shape_text(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "None"
    return "?"


def _parse_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if (not isinstance(shape, (tuple, list)) or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                                       and d >= 0 for d in shape)):
        raise ValueError(f"summary: input_shape must be one sample's shape, without the batch dimension, as a tuple "
                         f"of non-negative ints (e.g. (1, 28, 28)), or a list of such tuples for a model taking "
                         f"several inputs; got {shape!r}")
    return tuple(int(d) for d in shape)


def _inputs(model: Module, input_shape: Any, example_input: Any) -> list[Any]:
    """The model's arguments for the recording pass: batches of one sample."""
    if example_input is not None:
        items = list(example_input) if (isinstance(example_input, (tuple, list)) and example_input and all(
            isinstance(e, (Tensor, np.ndarray)) for e in example_input)) else [example_input]
        out = []
        for e in items:
            arr = np.asarray(e.data if isinstance(e, Tensor) else e)
            if arr.ndim == 0:
                raise ValueError("summary: example_input must have a batch dimension (it is 0-dimensional); pass "
                                 "input_shape for one sample without it")
            arr = arr[:1]  # NOTE: one sample is enough for the shapes, and costs the least
            # floats in the model's dtype (as ONNX export takes its example); integer indices as they are
            out.append(Tensor(arr.astype(model.dtype, copy=False)) if arr.dtype.kind == "f" else arr)
        return out
    many = isinstance(input_shape, (tuple, list)) and input_shape and all(
        isinstance(s, (tuple, list)) for s in input_shape)
    shapes = [_parse_shape(s) for s in input_shape] if many else [_parse_shape(input_shape)]
    if getattr(model, "input_kind", "float") == "indices":  # integer indices (an Embedding first): index 0 exists in every table
        return [np.zeros((1, *s), dtype=np.int64) for s in shapes]
    return [Tensor(np.zeros((1, *s), dtype=model.dtype)) for s in shapes]


def _describe(name: str, module: Module) -> str:
    return f"layer {name!r} ({type(module).__name__})" if name else f"the model ({type(module).__name__})"


def _record(model: Module, args: list[Any], names: dict[int, str], rows_by_id: dict[int, list[_Row]]) -> list[str]:
    """Run ``model(*args)`` once with every module's forward wrapped; note each output's shape in its rows;
    return the model's own output shape(s)."""
    failed: list[tuple[str, Module, list[Any]]] = []
    installed: list[tuple[Module, Any]] = []
    outputs: dict[int, list[str]] = {}

    def wrap(m: Module) -> Callable[..., Any]:
        inner = m.forward  # NOTE: the bound method (or an instance attribute someone set), called as it was

        def forward(*a: Any, **kw: Any) -> Any:
            try:
                out = inner(*a, **kw)
            except Exception:
                if not failed:  # the innermost module that failed: the first wrapper the error passes
                    failed.append((names.get(id(m), ""), m, list(a)))
                raise
            outputs.setdefault(id(m), []).append(_shape_text(out))
            return out

        return forward

    modes = [(m, m.__dict__.get("training", _MISSING)) for m in model.modules()]
    buffers = [(m, name, arr, np.array(arr, copy=True)) for m in model.modules()
               for name, arr in m.named_buffers(recurse=False)]
    rng = _random.get_rng()
    rng_state = rng.bit_generator.state
    try:
        for m in {id(m): m for m in model.modules()}.values():
            installed.append((m, m.__dict__.get("forward", _MISSING)))
            m.__dict__["forward"] = wrap(m)  # NOTE: an instance attribute, seen by Module.__call__ only here
        model.eval()
        with no_grad():
            try:
                model(*args)
            except Exception as e:
                name, m, a = failed[0] if failed else ("", model, args)
                shapes = ", ".join(_shape_text(x) for x in a) or "no arguments"
                raise ValueError(f"summary: {_describe(name, m)} fails on its input {shapes}: "
                                 f"{type(e).__name__}: {e}") from e
    finally:
        for m, before in installed:
            if before is _MISSING:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = before
        for m, mode in reversed(modes):  # NOTE: exactly as before: an instance attribute or the class default
            if mode is _MISSING:
                m.__dict__.pop("training", None)
            else:
                m.__dict__["training"] = mode
        for m, name, arr, saved in buffers:  # NOTE: the same array objects, with their values
            m.__dict__[name] = arr
            np.copyto(arr, saved)
        _random._generator = rng
        rng.bit_generator.state = rng_state
    for key, shapes in outputs.items():
        for row in rows_by_id.get(key, ()):
            row.shapes = shapes
    return outputs.get(id(model), [])


def _calls(shapes: list[str]) -> str:
    if not shapes:
        return "--"  # not called by the forward
    distinct = list(dict.fromkeys(shapes))
    text = " | ".join(distinct)
    return text + (f" [{len(shapes)} calls]" if len(shapes) > 1 else "")


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return ""  # pragma: no cover


def summary(model: Module, input_shape: Any = None, *, example_input: Any = None,
            print_fn: Callable[[str], Any] | None = print) -> str:
    """The table of ``model``'s layers, output shapes and parameter counts; printed and returned.

    ``input_shape``: one sample's shape without the batch dimension (``(1, 28, 28)``), or a list of them for
    a model taking several inputs; or ``example_input``: a batch (an array or Tensor, or a tuple of them),
    of which the first sample is used. With neither, the table has no shape column. ``print_fn`` is called
    on each line, as in Keras (``None``: print nothing; the text is returned either way).

    A forward that fails raises ValueError naming the innermost layer that failed and the shape it was given.

    >>> import backprop as bp
    >>> net = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU())
    >>> net[0].bias.requires_grad = False
    >>> print(summary(net, print_fn=None).splitlines()[-2])
    Non-trainable params: 8 (32 B)
    >>> summary(net, (3,), print_fn=None)
    Traceback (most recent call last):
    ...
    ValueError: summary: layer '0' (Linear) fails on its input (None, 3): ValueError: linear: input has 3 features (shape (1, 3)) but the weight expects 4 (weight shape (8, 4))
    """
    if not all(callable(getattr(model, a, None)) for a in ("named_children", "modules", "parameters", "buffers")):
        raise TypeError(f"summary: expected a backprop Module, got {type(model).__name__}")
    if input_shape is not None and example_input is not None:
        raise ValueError("summary: give input_shape or example_input, not both")

    params = list(model.parameters())
    is_param = {id(p) for p in params}
    walked: list[tuple[str, Module, int]] = []
    if any(id(p) in is_param for p in vars(model).values()):  # the model's own parameters: a row too
        walked.append(("", model, 0))
    _walk(model, "", 0, walked)
    seen: set[int] = set()
    first: dict[int, str] = {}
    rows: list[_Row] = []
    for name, m, depth in walked:
        own = [p for p in vars(m).values() if id(p) in is_param and id(p) not in seen]
        seen.update(id(p) for p in own)
        count = sum(p.data.size for p in own)
        has_children = next(m.children(), None) is not None
        rows.append(_Row(name, m, depth, None if has_children and not count else int(count),
                         int(sum(p.data.size for p in own if not p.requires_grad)), first.get(id(m))))
        first.setdefault(id(m), name or type(m).__name__)

    with_shapes = input_shape is not None or example_input is not None
    model_out: list[str] = []
    args: list[Any] = []
    if with_shapes:
        args = _inputs(model, input_shape, example_input)
        names: dict[int, str] = {}
        by_id: dict[int, list[_Row]] = {}
        for row in rows:
            names.setdefault(id(row.module), row.name)
            by_id.setdefault(id(row.module), []).append(row)
        model_out = _record(model, args, names, by_id)

    header = ["Layer (type)", "Output Shape", "Param #"] if with_shapes else ["Layer (type)", "Param #"]
    table: list[list[str]] = []
    for row in rows:
        label = "  " * row.depth + (f"{row.name} ({type(row.module).__name__})" if row.name else
                                    f"{type(row.module).__name__} (the model's own)")
        if row.same_as is not None:  # NOTE: its parameters are counted where it first appears
            count = f"(shared: {row.same_as})"
        elif row.params is None:
            count = "--"
        elif row.frozen == row.params and row.params:
            count = f"{row.params:,} (frozen)"
        elif row.frozen:
            count = f"{row.params:,} ({row.frozen:,} frozen)"
        else:
            count = f"{row.params:,}"
        table.append([label, _calls(row.shapes), count] if with_shapes else [label, count])
    minimum = [24, 20, 9] if with_shapes else [24, 9]  # NOTE: Keras-like proportions for small models
    widths = [max(low, *(len(r[i]) for r in [header, *table])) for i, low in enumerate(minimum)]
    gap = "    "

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) for c, w in zip(cells[:-1], widths)] + [cells[-1].rjust(widths[-1])]
        return gap.join(parts).rstrip()

    total = sum(p.data.size for p in params)
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    buffers = list(model.buffers())

    def amount(ps: Sequence[Any]) -> str:
        return f"{sum(p.data.size for p in ps):,} ({_bytes(sum(p.data.nbytes for p in ps))})"

    lines = [f"Model: {type(model).__name__}", "=", line(header), "="]
    lines += [line(r) for r in table] or ["(no sub-modules)"]
    lines += ["=", f"Total params: {total:,} ({_bytes(sum(p.data.nbytes for p in params))})",
              f"Trainable params: {amount(trainable)}", f"Non-trainable params: {amount(frozen)}"]
    if buffers:
        lines.append(f"Buffers (not params): {sum(b.size for b in buffers):,} values in {len(buffers)} arrays "
                     f"({_bytes(sum(b.nbytes for b in buffers))})")
    if with_shapes:
        lines.append(f"Input shape: {', '.join(_shape_text(a) for a in args)}")
        lines.append(f"Output shape: {_calls(model_out)}")
    rule = max(sum(widths) + len(gap) * (len(widths) - 1), *(len(ln) for ln in lines))
    lines = [("=" * rule if ln == "=" else ln) for ln in lines] + ["-" * rule]
    text = "\n".join(lines)
    if print_fn is not None:
        for ln in lines:
            print_fn(ln)
    return text
