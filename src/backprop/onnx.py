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


class _Layer:
    """One layer being exported: where it sits and the example values at its input (and output, when run)."""

    def __init__(self, position: str, module: Module, x: np.ndarray) -> None:
        self.position, self.module, self.x = position, module, x
        self.where = f"layer{position}" if position else type(module).__name__
        self._y: np.ndarray | None = None

    def run(self) -> np.ndarray:
        """The layer's output on the example (eval mode, no gradients), computed once."""
        if self._y is None:
            x = self.x
            try:
                out = self.module(Tensor(x) if x.dtype.kind == "f" else x)  # integer indices go in as they are
            except Exception as e:
                raise ValueError(f"{_describe(self.position, self.module)} fails on the example input (shape "
                                 f"{x.shape}): {e}") from e
            self._y = np.asarray(out.data if isinstance(out, Tensor) else out)
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

    def layer(self, module: Module, x: str, name: str = "") -> str:
        """Export ``module`` on the graph value ``x``; ``name``: its attribute in the current layer (its position)."""
        parent = self._stack[-1].position if self._stack else ""
        position = f"{parent}.{name}" if parent and name else (name or parent)
        export = onnx_decision(type(module))
        if export is None:
            raise ValueError(f"{_describe(position, module)} is not supported by ONNX export; supported layers: "
                             f"{', '.join(supported_layers())}")
        if isinstance(export, NotExportable):  # NOTE: ValueError as for any layer export refuses
            raise ValueError(f"{_describe(position, module)} cannot be exported to ONNX: {export.reason}")  # noqa: TRY004
        here = _Layer(position, module, self.values[x])
        if next(module.children(), None) is None:
            here.run()  # NOTE: a layer (no sub-layers) is run first, so a wrong input is reported as such
        self._stack.append(here)
        try:
            y = export(module, self, x)
        finally:
            self._stack.pop()
        if y not in self.values:  # a container's output is its last sub-layer's, known already
            self.values[y] = here.run()
        return y


# ------------------------------------------------------------------------------------------- export
def _elem_type(onnx: Any, dtype: np.dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _value_info(onnx: Any, name: str, dtype: np.dtype, shape: tuple[int, ...], dynamic_batch: bool) -> Any:
    dims: list[Any] = list(shape)
    if dynamic_batch and dims:
        dims[0] = "batch"
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
           input_name: str = "input", output_name: str = "output", dynamic_batch: bool = True, *,
           check: bool = True) -> Any:
    """Write ``model`` (as in eval mode) to ``path`` as an ONNX file; returns the ``onnx.ModelProto``.

    ``example_input``: an array (or Tensor) of the shape the model takes, e.g. ``x[:1]``; it fixes every
    dimension but the first (the batch, dynamic unless ``dynamic_batch=False``) and the input's dtype (the
    model's float dtype; integer indices for a model that starts with an Embedding). ``opset``: the ONNX
    operator set, from 13 (LayerNorm and GELU are composed of basic operators below 17 and 20).

    ``check=True`` runs onnxruntime (when installed) on the graph with ``example_input`` and raises
    :class:`ExportCheckError` (a ValueError) if its output differs from backprop's; a graph that
    onnxruntime has no kernels for (float64 convolutions, for instance) is only checked by
    ``onnx.checker`` then, with a warning. Unsupported layers raise ValueError naming their position and class.
    """
    onnx = _need_onnx()
    opset = _check_opset(onnx, opset)
    if not isinstance(model, Module):
        raise TypeError(f"export: model must be a backprop Module, got {type(model).__name__}")
    for what, name in (("input_name", input_name), ("output_name", output_name)):
        if not isinstance(name, str) or not name:
            raise ValueError(f"export: {what} must be a non-empty string, got {name!r}")
    if input_name == output_name:
        raise ValueError(f"export: input_name and output_name must differ, both are {input_name!r}")
    dtype = _model_dtype(model)
    x = _input_array(example_input, model, dtype)
    if dynamic_batch and x.ndim == 0:
        raise ValueError("export: example_input must have a batch dimension (it is 0-dimensional)")

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        graph, expected = _build(onnx, model, x, dtype, opset, input_name, output_name, bool(dynamic_batch))
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
        _check_with_onnxruntime(data, x, expected, input_name)

    write_bytes_atomic(path, data)
    return proto


def _build(onnx: Any, model: Module, x: np.ndarray, dtype: np.dtype, opset: int, input_name: str,
           output_name: str, dynamic_batch: bool) -> tuple[Any, np.ndarray]:
    """The ONNX graph, built while running the example through the layers one at a time (for their shapes)."""
    g = Builder(onnx, opset, dtype, dynamic_batch)
    g.fresh(input_name)
    g.fresh(output_name)
    g.values[input_name] = x
    with no_grad():
        name = g.layer(model, input_name)
    value = g.values[name]
    if name == input_name or not g.nodes or list(g.nodes[-1].output) != [name]:  # nothing but Dropout/Identity
        g.nodes.append(onnx.helper.make_node("Identity", [name], [output_name], name="identity"))
    else:  # the last node writes the output itself
        g.nodes[-1].output[0] = output_name
    graph = onnx.helper.make_graph(
        g.nodes, "backprop", [_value_info(onnx, input_name, x.dtype, x.shape, dynamic_batch)],
        [_value_info(onnx, output_name, value.dtype, value.shape, dynamic_batch)], g.initializers)
    return graph, value


def _check_with_onnxruntime(data: bytes, x: np.ndarray, expected: np.ndarray, input_name: str) -> None:
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
    (got,) = session.run(None, {input_name: x})
    if got.shape != expected.shape:
        raise ExportCheckError(f"onnxruntime's output has shape {got.shape}, backprop's {expected.shape}")
    eps = np.finfo(expected.dtype).eps if expected.dtype.kind == "f" else 0.0
    scale = float(np.max(np.abs(expected), initial=1.0))
    tol = max(1e3 * eps, 1e-9) * scale
    err = float(np.max(np.abs(got.astype(np.float64) - expected), initial=0.0))
    if not err <= tol:  # NaN too
        raise ExportCheckError(f"onnxruntime's output differs from backprop's by up to {err:.3g} (tolerance "
                               f"{tol:.3g}) on the example input; the export was not written")
