"""Export a backprop model to ONNX, for onnxruntime and every other ONNX runtime.

    import backprop.onnx
    backprop.onnx.export(model, "model.onnx", example_input=x[:1])      # then: onnxruntime, Netron, ...

The model is a :class:`~backprop.nn.Sequential` (nested Sequentials are walked too) of the layers in
``backprop.nn``, or any Module with an ``onnx`` method. This module knows no layer: each layer's ``onnx(g, x)``
method, defined with the layer, adds its operators through the builder ``g`` (the :class:`Builder` here,
whose interface is :class:`backprop.nn.contract.OnnxGraph`) and returns its output's name; a layer that has
no ONNX form says why (``onnx = NotExportable(reason)``). :func:`supported_layers` lists the exportable
ones; their ``onnx`` docstrings say which operators they become (Linear: Gemm; Conv2d: Conv; BatchNorm:
BatchNormalization with the running statistics; Dropout and Identity: nothing...).

The graph is what the model computes in **eval mode** (dropout off, batch norm with its running
statistics), as ``torch.onnx.export`` does by default; the model's own mode is left as it was. Weights are
initializers of the model's dtype (float32 or float64). ``example_input`` fixes every input dimension but the
first, which is a dynamic ``"batch"`` dimension on the input and the output (``dynamic_batch=False``: fixed
too). The file passes ``onnx.checker.check_model(full_check=True)``; when onnxruntime is installed the graph
is also run on ``example_input`` and compared with backprop's output before anything is written (the file is
written atomically: an existing file is replaced only by a complete, checked export).

Any other layer (a custom Module without an ``onnx`` method, say) raises ValueError naming its position in
the model and its class.

Needs the ``onnx`` package (the extra ``pip install "backprop[onnx]"``, which brings onnxruntime too).

>>> import backprop.onnx
>>> "Linear" in backprop.onnx.supported_layers() and "ModuleList" not in backprop.onnx.supported_layers()
True
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backprop.engine.tensor import Tensor, no_grad
from backprop.extras import MissingExtra, require
from backprop.io.atomic import write_bytes_atomic
from backprop.nn.contract import NotExportable, onnx_decision
from backprop.nn.module import Module

__all__ = ["MIN_OPSET", "Builder", "ExportCheckError", "export", "supported_layers"]

MIN_OPSET = 13  # Softmax over one axis, Gemm with an optional bias, ReduceMean's axes as an attribute
DEFAULT_OPSET = 17


class ExportCheckError(ValueError):
    """onnxruntime's output of the exported graph differs from backprop's: the export is not written."""


def _need_onnx() -> Any:
    """The onnx module, or :class:`~backprop.extras.MissingExtra` naming ``pip install "backprop[onnx]"``."""
    return require("onnx", needed_by="backprop.onnx")


# ------------------------------------------------------------------------------------------ the graph
def _describe(position: str, module: Module) -> str:
    return f"layer {position} ({type(module).__name__})" if position else f"the model ({type(module).__name__})"


def supported_layers() -> list[str]:
    """The names of the layer classes :func:`export` knows (the public Module classes with an ``onnx`` method).

    >>> {"Linear", "Conv2d", "Sequential", "Softplus"} <= set(supported_layers())
    True
    """
    names: set[str] = set()
    todo = list(Module.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_") and callable(onnx_decision(cls)):
            names.add(cls.__name__)
    return sorted(names)


def _example_arg(x: Any) -> Any:
    """An example value as a layer is called with it: float arrays as Tensors, indices and masks as arrays."""
    return Tensor(x) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x


class _Layer:
    """One layer being exported: where it sits and the example values at its input (and output, when run).

    ``kwargs``: the example values of its other (keyword) arguments, for a layer called with several.
    """

    def __init__(self, position: str, module: Module, x: np.ndarray, kwargs: dict[str, Any] | None = None) -> None:
        self.position, self.module, self.x, self.kwargs = position, module, x, kwargs or {}
        self.where = f"layer{position}" if position else type(module).__name__
        self._y: np.ndarray | None = None
        self.outputs: list[np.ndarray] = []

    def run(self) -> np.ndarray:
        """The layer's output on the example (eval mode, no gradients), computed once."""
        if self._y is None:
            x = self.x
            kwargs = {k: _example_arg(v) for k, v in self.kwargs.items()}
            try:
                out = self.module(_example_arg(x), **kwargs)  # integer indices go in as they are
            except Exception as e:
                raise ValueError(f"{_describe(self.position, self.module)} fails on the example input (shape "
                                 f"{x.shape}): {e}") from e
            # NOTE: a layer returning a tuple (MultiheadAttention's (output, weights)) passes its first item on
            outs = out if isinstance(out, tuple) else (out,)
            outs = [p for o in outs for p in (o if isinstance(o, tuple) else (o,))]  # LSTM: (y, (h_n, c_n))
            self.outputs = [np.asarray(o.data if isinstance(o, Tensor) else o) for o in outs if o is not None]
            self._y = self.outputs[0]
        return self._y


class Builder:
    """The graph being built, as the layers' ``onnx(g, x)`` methods see it (:class:`backprop.nn.contract.OnnxGraph`).

    It keeps the nodes and initializers, gives them fresh names prefixed with the current layer's position,
    and knows the example's values at every name the layers returned, so each layer sees its input and
    output shapes.
    """

    def __init__(self, onnx: Any, opset: int, dtype: np.dtype, dynamic_batch: bool) -> None:
        self.onnx, self.opset, self.dtype, self.dynamic_batch = onnx, opset, np.dtype(dtype), dynamic_batch
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.values: dict[str, np.ndarray] = {}  # the example's value of each layer input/output
        self._used: set[str] = set()
        self._consts: dict[tuple[Any, ...], str] = {}
        self._stack: list[_Layer] = []

    # --------------------------------------------------------------------------- the current layer
    @property
    def _here(self) -> _Layer:
        return self._stack[-1]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self._here.x.shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self._here.run().shape

    def error(self, reason: str) -> ValueError:
        return ValueError(f"{_describe(self._here.position, self._here.module)} cannot be exported to ONNX: {reason}")

    def example(self, name: str) -> np.ndarray:
        """The example's value at the graph value ``name`` (a graph input, or a layer's output)."""
        if name not in self.values:
            raise self.error(f"no example value is known for {name!r}")
        return self.values[name]

    def need_batched(self, ndim: int, layout: str) -> None:
        if len(self.in_shape) != ndim:
            raise self.error(f"expected a batched input of shape {layout}, got example shape {self.in_shape}")

    # ----------------------------------------------------------------------------------- building
    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def _initializer(self, arr: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def weight(self, array: Any, name: str, dtype: Any = None) -> str:
        arr = np.asarray(array, dtype=self.dtype if dtype is None else dtype)
        return self._initializer(arr, f"{self._here.where}.{name}")

    def const(self, value: Any, dtype: Any = None) -> str:
        arr = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self._initializer(arr, "const")
        return self._consts[key]

    def node(self, op: str, inputs: Any, **attrs: Any) -> str:
        out = self.fresh(f"{self._here.where}/{op}")
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def pad(self, x: str, begin: Any, end: Any, value: float) -> str:
        lead = [0] * (len(self.in_shape) - len(begin))
        pads = [*lead, *begin, *lead, *end]
        return self.node("Pad", [x, self.const(pads, dtype=np.int64), self.const(value)], mode="constant")

    def reshape_to_output(self, x: str, keeps_batch: bool) -> str:
        if self.dynamic_batch and not keeps_batch:
            raise self.error(f"it merges or splits the batch dimension (example shape {self.in_shape} -> "
                             f"{self.out_shape}), which a dynamic batch cannot follow; export with dynamic_batch=False")
        shape = list(self.out_shape)
        if self.dynamic_batch:
            shape[0] = 0
        return self.node("Reshape", [x, self.const(shape, dtype=np.int64)])

    def layer(self, module: Module, x: str, name: str = "", inputs: dict[str, Any] | None = None,
              all_outputs: bool = False) -> Any:
        """Export ``module`` on the graph value ``x``; ``name``: its attribute in the current layer (its position).

        ``inputs``: its keyword arguments, each the name of a graph value (a str this builder knows) or a
        constant (True, None, a number), passed to its ``forward`` and its ``onnx`` alike. Returns the name
        of its output (the first, for a layer returning several), or all of them with ``all_outputs``.
        """
        inputs = dict(inputs or {})
        values = {k: self.values[v] if isinstance(v, str) and v in self.values else v for k, v in inputs.items()}
        parent = self._stack[-1].position if self._stack else ""
        position = f"{parent}.{name}" if parent and name else (name or parent)
        export = onnx_decision(type(module))
        if export is None:
            raise ValueError(f"{_describe(position, module)} is not supported by ONNX export; supported layers: "
                             f"{', '.join(supported_layers())}")
        if isinstance(export, NotExportable):  # NOTE: ValueError as for any layer export refuses
            raise ValueError(f"{_describe(position, module)} cannot be exported to ONNX: {export.reason}")  # noqa: TRY004
        here = _Layer(position, module, self.values[x], values)
        if next(module.children(), None) is None:
            here.run()  # NOTE: a layer (no sub-layers) is run first, so a wrong input is reported as such
        self._stack.append(here)
        try:
            y = export(module, self, x, **inputs)
        finally:
            self._stack.pop()
        ys = list(y) if isinstance(y, tuple) else [y]
        for i, out in enumerate(ys):
            if out not in self.values:  # a container's output is its last sub-layer's, known already
                here.run()
                self.values[out] = here.outputs[i]
        return ys if all_outputs else ys[0]


# ------------------------------------------------------------------------------------------- export
def _elem_type(onnx: Any, dtype: np.dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _value_info(onnx: Any, name: str, dtype: np.dtype, shape: tuple[int, ...], dynamic_batch: bool,
                first: str = "batch") -> Any:
    dims: list[Any] = list(shape)
    if dynamic_batch and dims:
        dims[0] = first
    return onnx.helper.make_tensor_value_info(name, _elem_type(onnx, dtype), dims)


def _model_dtype(model: Module) -> np.dtype:
    for p in model.parameters():
        if p.data.dtype.kind == "f":
            return p.data.dtype
    return np.dtype(np.float32)


def _input_array(example_input: Any, model: Module, dtype: np.dtype) -> np.ndarray:
    x = np.asarray(example_input.data if isinstance(example_input, Tensor) else example_input)
    if model.input_kind == "indices":
        if x.dtype.kind not in "iu":
            raise TypeError(f"example_input: the model starts with a {_first_taking_indices(model)}, which takes "
                            f"integer indices; got dtype {x.dtype}")
        return x if x.dtype in (np.int32, np.int64) else x.astype(np.int64)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"example_input: expected numbers, got dtype {x.dtype}")
    return x.astype(dtype, copy=False)


def _first_taking_indices(model: Module) -> str:
    for m in model.modules():
        if type(m).input_kind == "indices":
            return type(m).__name__
    return type(model).__name__


def _check_opset(onnx: Any, opset: Any) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {newest} (this onnx package's newest), "
                         f"got {opset!r}")
    return int(opset)


def export(model: Module, path: str | os.PathLike[str], example_input: Any, opset: int = DEFAULT_OPSET,
           input_name: str = "input", output_name: str | Sequence[str] = "output", dynamic_batch: bool = True, *,
           check: bool = True) -> Any:
    """Write ``model`` (as in eval mode) to ``path`` as an ONNX file; returns the ``onnx.ModelProto``.

    ``example_input``: an array (or Tensor) of the shape the model takes, e.g. ``x[:1]``; it fixes every
    dimension but the first (the batch, dynamic unless ``dynamic_batch=False``) and the input's dtype (the
    model's float dtype; integer indices for a model that starts with an Embedding). ``opset``: the ONNX
    operator set, from 13 (LayerNorm and GELU are composed of basic operators below 17 and 20).

    A model called with several arguments is given them as a dict ``{argument: value}`` (the first is passed
    by position, the others by keyword): arrays (and Tensors) become graph inputs named after their
    arguments, each with a dynamic first dimension; other values (True, None, numbers) are fixed in the graph,
    e.g. ``{"query": q, "key": k, "value": v, "key_padding_mask": m, "need_weights": False}`` for a
    MultiheadAttention; ``input_name`` is not used then. A model returning a tuple (MultiheadAttention's
    ``(output, weights)``) exports its first item, or as many as ``output_name`` names when it is a list.

    ``check=True`` runs onnxruntime (when installed) on the graph with ``example_input`` and raises
    :class:`ExportCheckError` (a ValueError) if its output differs from backprop's; a graph that
    onnxruntime has no kernels for (float64 convolutions, for instance) is only checked by
    ``onnx.checker`` then, with a warning. Unsupported layers raise ValueError naming their position and class.
    """
    onnx = _need_onnx()
    opset = _check_opset(onnx, opset)
    if not isinstance(model, Module):
        raise TypeError(f"export: model must be a backprop Module, got {type(model).__name__}")
    output_names = [output_name] if isinstance(output_name, str) else list(output_name)
    for what, name in (("input_name", input_name), *(("output_name", n) for n in output_names)):
        if not isinstance(name, str) or not name:
            raise ValueError(f"export: {what} must be a non-empty string, got {name!r}")
    dtype = _model_dtype(model)
    inputs, consts = _named_inputs(example_input, model, dtype, input_name)
    clash = sorted(set(inputs) & set(output_names))
    if clash:
        raise ValueError(f"export: input_name and output_name must differ, both are {clash[0]!r}")
    if len(set(output_names)) != len(output_names) or not output_names:
        raise ValueError(f"export: output_name must name one output or several different ones, got {output_name!r}")
    if dynamic_batch and any(x.ndim == 0 for x in inputs.values()):
        raise ValueError("export: example_input must have a batch dimension (it is 0-dimensional)")

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        graph, expected = _build(onnx, model, inputs, consts, dtype, opset, output_names, bool(dynamic_batch))
    finally:
        for m, mode in modes:
            m.training = mode

    # NOTE: read from the loaded package, not imported: backprop/__init__.py imports this module (no cycle)
    version = getattr(sys.modules.get("backprop"), "__version__", "unknown")
    proto = onnx.helper.make_model(graph, producer_name="backprop", producer_version=version,
                                   opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   doc_string=f"Exported by backprop {version} from:\n{model!r}")
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    if check:
        _check_with_onnxruntime(data, inputs, expected)

    write_bytes_atomic(path, data)
    return proto


def _named_inputs(example_input: Any, model: Module, dtype: np.dtype,
                  input_name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(graph inputs by name, constant arguments): one input ``input_name``, or a dict's arrays and constants."""
    if not isinstance(example_input, Mapping):
        return {input_name: _input_array(example_input, model, dtype)}, {}
    if not example_input:
        raise ValueError("export: example_input is an empty dict; give the model's arguments")
    inputs: dict[str, np.ndarray] = {}
    consts: dict[str, Any] = {}
    for i, (key, value) in enumerate(example_input.items()):
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"export: the keys of example_input must be argument names, got {key!r}")
        if i == 0:
            inputs[key] = _input_array(value, model, dtype)
        elif isinstance(value, (Tensor, np.ndarray)):
            arr = np.asarray(value.data if isinstance(value, Tensor) else value)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"export: example_input[{key!r}]: expected numbers, got dtype {arr.dtype}")
            # NOTE: masks stay bool, indices integers; floats take the model's dtype
            inputs[key] = arr.astype(dtype if arr.dtype.kind == "f" else np.int64 if arr.dtype.kind in "iu"
                                     else arr.dtype, copy=False)
        else:
            consts[key] = value
    return inputs, consts


def _build(onnx: Any, model: Module, inputs: dict[str, np.ndarray], consts: dict[str, Any], dtype: np.dtype,
           opset: int, output_names: list[str], dynamic_batch: bool) -> tuple[Any, list[np.ndarray]]:
    """The ONNX graph, built while running the example through the layers one at a time (for their shapes)."""
    g = Builder(onnx, opset, dtype, dynamic_batch)
    for name in (*inputs, *output_names):
        g.fresh(name)
    g.values.update(inputs)
    first, *others = inputs
    with no_grad():
        names = g.layer(model, first, inputs={**{k: k for k in others}, **consts}, all_outputs=True)
    if len(names) < len(output_names):
        raise ValueError(f"export: the model returns {len(names)} output(s), output_name names {len(output_names)}")
    names = names[: len(output_names)]
    values = [g.values[n] for n in names]
    for i, (name, out_name) in enumerate(zip(names, output_names)):
        if i == 0 and len(names) == 1 and name not in inputs and g.nodes and list(g.nodes[-1].output) == [name]:
            g.nodes[-1].output[0] = out_name  # the last node writes the output itself
        else:  # an input, the output of an earlier node (Dropout/Identity last), or one of several
            g.nodes.append(onnx.helper.make_node("Identity", [name], [out_name], name=g.fresh("identity")))
    # NOTE: only what the outputs need: a layer may build more (MultiheadAttention's weights in a Sequential)
    needed = set(output_names)
    kept = []
    for node in reversed(g.nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    in_infos = [_value_info(onnx, name, x.dtype, x.shape, dynamic_batch, "batch" if i == 0 else f"{name}_dim0")
                for i, (name, x) in enumerate(inputs.items())]
    out_infos = [_value_info(onnx, name, v.dtype, v.shape, dynamic_batch, "batch" if i == 0 else f"{name}_dim0")
                 for i, (name, v) in enumerate(zip(output_names, values))]
    graph = onnx.helper.make_graph(kept[::-1], "backprop", in_infos, out_infos,
                                   [t for t in g.initializers if t.name in needed])
    return graph, values


def _check_with_onnxruntime(data: bytes, inputs: dict[str, np.ndarray], expected: list[np.ndarray]) -> None:
    try:
        ort = require("onnxruntime")
    except MissingExtra:  # NOTE: optional even within the extra: without it onnx.checker alone checks
        return
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # the graph as written, not onnxruntime's fusions of it (1.16 fuses float64 Gemm + Tanh into a float-only op)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types differ between versions
        if "NOT_IMPLEMENTED" in str(e):
            warnings.warn(f"onnxruntime has no kernel for part of this graph, so the export was checked by "
                          f"onnx.checker only: {str(e).strip()[:300]}", RuntimeWarning, stacklevel=3)
            return
        raise
    for i, (got, want) in enumerate(zip(session.run(None, inputs), expected)):
        what = "output" if len(expected) == 1 else f"output {i}"
        if got.shape != want.shape:
            raise ExportCheckError(f"onnxruntime's {what} has shape {got.shape}, backprop's {want.shape}")
        eps = np.finfo(want.dtype).eps if want.dtype.kind == "f" else 0.0
        scale = float(np.max(np.abs(want), initial=1.0))
        tol = max(1e3 * eps, 1e-9) * scale
        err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
        if not err <= tol:  # NaN too
            raise ExportCheckError(f"onnxruntime's {what} differs from backprop's by up to {err:.3g} (tolerance "
                                   f"{tol:.3g}) on the example input; the export was not written")
