"""Export a backprop model to ONNX, for onnxruntime and every other ONNX runtime.

    import backprop.onnx
    backprop.onnx.export(model, "model.onnx", example_input=x[:1])      # then: onnxruntime, Netron, ...

The model is a :class:`~backprop.nn.Sequential` (nested Sequentials are walked too) of the layers in
``backprop.nn``. Each layer becomes one ONNX operator, or a few:

==============================  ==========================================================================
backprop layer                  ONNX
==============================  ==========================================================================
Linear                          Gemm (transB=1) on (N, in) inputs; MatMul + Add on inputs of other ranks
Conv2d, Conv1d                  Conv (strides, pads, incl. ``"same"``/``"valid"``, dilations, group)
MaxPool2d                       MaxPool (pads, dilations; ceil_mode as the extra end padding it implies)
AvgPool2d                       AveragePool (pads, ceil_mode likewise, count_include_pad; a Pad first
                                where the divisor needs it; divisor_override: AveragePool * k*k/d)
AdaptiveAvgPool2d               GlobalAveragePool for output size 1; AveragePool when the sizes divide
BatchNorm1d, BatchNorm2d        BatchNormalization with the running statistics (the eval-mode layer)
LayerNorm                       LayerNormalization (opset >= 17); below: ReduceMean, Sub, Sqrt, Div...
ReLU, Sigmoid, Tanh             Relu, Sigmoid, Tanh
LeakyReLU                       LeakyRelu (alpha = negative_slope)
GELU                            Gelu (opset >= 20); below: x/2 (1 + Erf(x/sqrt 2)), or its tanh formula
Softmax, LogSoftmax             Softmax, LogSoftmax (axis = dim)
Flatten                         Flatten (start_dim 1) or Reshape
Unflatten                       Reshape to a constant shape (batch dimension given as 0: kept)
Dropout, Identity               nothing (inference)
Embedding                       Gather (integer input)
==============================  ==========================================================================

The graph is what the model computes in **eval mode** (dropout off, batch norm with its running
statistics), as ``torch.onnx.export`` does by default; the model's own mode is left as it was. Weights are
initializers of the model's dtype (float32 or float64). ``example_input`` fixes every input dimension but the
first, which is a dynamic ``"batch"`` dimension on the input and the output (``dynamic_batch=False``: fixed
too). The file passes ``onnx.checker.check_model(full_check=True)``; when onnxruntime is installed the graph
is also run on ``example_input`` and compared with backprop's output before anything is written (the file is
written atomically: an existing file is replaced only by a complete, checked export).

Any other layer (a custom Module, say) raises ValueError naming its position in the model and its class.

Needs the ``onnx`` package (``pip install onnx onnxruntime``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from backprop.nn import conv as _conv
from backprop.nn import embedding as _embedding
from backprop.nn import layers as _layers
from backprop.nn import normalization as _norm
from backprop.nn import pooling as _pool
from backprop.nn.module import Module, Sequential

__all__ = ["MIN_OPSET", "ExportCheckError", "export", "supported_layers"]

MIN_OPSET = 13  # Softmax over one axis, Gemm with an optional bias, ReduceMean's axes as an attribute
DEFAULT_OPSET = 17


class ExportCheckError(ValueError):
    """onnxruntime's output of the exported graph differs from backprop's: the export is not written."""


def _need_onnx() -> Any:
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("backprop.onnx needs the onnx package: pip install onnx onnxruntime") from None
    return onnx


# ------------------------------------------------------------------------------------------ the graph
class _Graph:
    """Nodes and initializers being built, with fresh names and the model's float dtype."""

    def __init__(self, onnx: Any, opset: int, dtype: np.dtype) -> None:
        self.onnx, self.opset, self.dtype = onnx, opset, np.dtype(dtype)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = set()
        self._consts: dict[tuple[Any, ...], str] = {}

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def weight(self, array: Any, hint: str, dtype: Any = None) -> str:
        """An initializer holding ``array`` (cast to the model's dtype unless ``dtype`` is given)."""
        from onnx import numpy_helper

        arr = np.ascontiguousarray(np.asarray(array, dtype=self.dtype if dtype is None else dtype))
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, value: Any, dtype: Any = None) -> str:
        """A shared constant initializer (scalars for the composed formulas, shapes for Reshape)."""
        arr = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(arr, "const", dtype=arr.dtype)
        return self._consts[key]

    def node(self, op: str, inputs: list[str], where: str, **attrs: Any) -> str:
        out = self.fresh(f"{where}/{op}")
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


class _Layer:
    """One layer being exported: where it sits, the shapes it sees in the example, and how to complain."""

    def __init__(self, position: str, module: Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 dynamic_batch: bool) -> None:
        self.position, self.module = position, module
        self.in_shape, self.out_shape, self.dynamic_batch = in_shape, out_shape, dynamic_batch
        self.where = f"layer{position}" if position else type(module).__name__

    def error(self, reason: str) -> ValueError:
        return ValueError(f"{_describe(self.position, self.module)} cannot be exported to ONNX: {reason}")

    def need_batched(self, ndim: int, layout: str) -> None:
        if len(self.in_shape) != ndim:
            raise self.error(f"expected a batched input of shape {layout}, got example shape {self.in_shape}")


def _describe(position: str, module: Module) -> str:
    return f"layer {position} ({type(module).__name__})" if position else f"the model ({type(module).__name__})"


# --------------------------------------------------------------------------------------- the layers
Handler = Callable[[_Graph, _Layer, str], str]


def _linear(g: _Graph, ly: _Layer, x: str) -> str:
    m: _layers.Linear = ly.module
    w, b = m.weight.data, None if m.bias is None else m.bias.data
    if len(ly.in_shape) == 2:
        inputs = [x, g.weight(w, f"{ly.where}.weight")]
        if b is not None:
            inputs.append(g.weight(b, f"{ly.where}.bias"))
        return g.node("Gemm", inputs, ly.where, transB=1)
    y = g.node("MatMul", [x, g.weight(w.T, f"{ly.where}.weight_t")], ly.where)
    return y if b is None else g.node("Add", [y, g.weight(b, f"{ly.where}.bias")], ly.where)


def _conv_node(g: _Graph, ly: _Layer, x: str) -> str:
    m: _conv._ConvNd = ly.module
    n = m._dims
    ly.need_batched(n + 2, "(N, C, L)" if n == 1 else "(N, C, H, W)")
    pads = _conv._padding(m.padding, m.kernel_size, m.stride, m.dilation, type(m).__name__)
    inputs = [x, g.weight(m.weight.data, f"{ly.where}.weight")]
    if m.bias is not None:
        inputs.append(g.weight(m.bias.data, f"{ly.where}.bias"))
    return g.node("Conv", inputs, ly.where, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  dilations=list(m.dilation), pads=[p[0] for p in pads] + [p[1] for p in pads], group=m.groups)


def _pad(g: _Graph, ly: _Layer, x: str, begin: tuple[int, ...], end: tuple[int, ...], value: float) -> str:
    """x padded with ``value`` over its last dimensions (ONNX Pad: begins of every axis, then ends)."""
    lead = [0] * (len(ly.in_shape) - len(begin))
    pads = [*lead, *begin, *lead, *end]
    return g.node("Pad", [x, g.const(pads, dtype=np.int64), g.const(value)], ly.where, mode="constant")


def _pool_geometry(ly: _Layer, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> Any:
    return _pool._Geometry(ly.in_shape, kernel, stride, padding, dilation, bool(ceil_mode), type(ly.module).__name__)


# NOTE: ceil_mode is written as the extra padding after the input that it implies (backprop's, PyTorch's
# rule: a last window that would start in the right padding is dropped), with ceil_mode=0 in the graph.
# ONNX's ceil_mode leaves that rule to the runtime: onnx's shape inference and onnxruntime disagree on it.
def _max_pool(g: _Graph, ly: _Layer, x: str) -> str:
    m: _pool.MaxPool2d = ly.module
    ly.need_batched(4, "(N, C, H, W)")
    kernel, stride, padding, dilation = _pool._pool_args(m.kernel_size, m.stride, m.padding, m.dilation, "MaxPool2d")
    geo = _pool_geometry(ly, kernel, stride, padding, dilation, m.ceil_mode)
    begin, end = padding, geo.after
    if any(p >= k for p, k in zip((*begin, *end), (*kernel, *kernel))):  # onnxruntime wants pads < kernel
        x = _pad(g, ly, x, begin, end, -np.inf)
        begin = end = (0, 0)
    return g.node("MaxPool", [x], ly.where, kernel_shape=list(kernel), strides=list(stride), pads=[*begin, *end],
                  dilations=list(dilation), ceil_mode=0)


def _avg_pool(g: _Graph, ly: _Layer, x: str) -> str:
    m: _pool.AvgPool2d = ly.module
    ly.need_batched(4, "(N, C, H, W)")
    kernel, stride, padding, _ = _pool._pool_args(m.kernel_size, m.stride, m.padding, 1, "AvgPool2d")
    geo = _pool_geometry(ly, kernel, stride, padding, (1, 1), m.ceil_mode)
    after = geo.after
    extra = tuple(a - p for a, p in zip(after, padding))  # ceil_mode's windows reaching beyond the padding
    attrs: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(stride), "ceil_mode": 0}
    if m.divisor_override is not None:  # sum / d: pad with zeros, average k*k elements everywhere, times k*k / d
        if any(padding) or any(after):
            x = _pad(g, ly, x, padding, after, 0.0)
        y = g.node("AveragePool", [x], ly.where, **attrs)
        return g.node("Mul", [y, g.const(kernel[0] * kernel[1] / m.divisor_override)], ly.where)
    if not any(extra):
        return g.node("AveragePool", [x], ly.where, pads=[*padding, *padding],
                      count_include_pad=int(bool(m.count_include_pad)), **attrs)
    if m.count_include_pad and any(padding):  # count the padding, not what lies beyond it: pad it for real
        x = _pad(g, ly, x, padding, padding, 0.0)
        padding = (0, 0)
    return g.node("AveragePool", [x], ly.where, pads=[*padding, *(p + e for p, e in zip(padding, extra))],
                  count_include_pad=0, **attrs)


def _adaptive_avg_pool(g: _Graph, ly: _Layer, x: str) -> str:
    m: _pool.AdaptiveAvgPool2d = ly.module
    ly.need_batched(4, "(N, C, H, W)")
    h, w = ly.in_shape[2:]
    oh, ow = _pool._output_size(m.output_size, h, w)
    if (oh, ow) == (1, 1):
        return g.node("GlobalAveragePool", [x], ly.where)
    if h % oh or w % ow:
        raise ly.error(f"output size ({oh}, {ow}) does not divide the input size ({h}, {w}) (example shape "
                       f"{ly.in_shape}); only output size 1 or sizes that divide the input map to ONNX pooling")
    k = [h // oh, w // ow]
    return g.node("AveragePool", [x], ly.where, kernel_shape=k, strides=k)


def _batch_norm(g: _Graph, ly: _Layer, x: str) -> str:
    m: _norm._BatchNorm = ly.module
    if not m.track_running_stats:
        raise ly.error("track_running_stats=False normalises with the batch's own statistics even in eval mode; "
                       "ONNX's BatchNormalization needs running statistics")
    c = m.num_features
    scale = m.weight.data if m.affine else np.ones(c)
    bias = m.bias.data if m.affine else np.zeros(c)
    inputs = [x, g.weight(scale, f"{ly.where}.weight"), g.weight(bias, f"{ly.where}.bias"),
              g.weight(m.running_mean, f"{ly.where}.running_mean"), g.weight(m.running_var, f"{ly.where}.running_var")]
    return g.node("BatchNormalization", inputs, ly.where, epsilon=m.eps)


def _layer_norm(g: _Graph, ly: _Layer, x: str) -> str:
    m: _norm.LayerNorm = ly.module
    k = len(m.normalized_shape)
    if ly.dynamic_batch and k >= len(ly.in_shape):
        raise ly.error(f"normalized_shape {m.normalized_shape} includes the batch dimension of the example shape "
                       f"{ly.in_shape}; export with dynamic_batch=False")
    w = None if m.weight is None else m.weight.data
    b = None if m.bias is None else m.bias.data
    if g.opset >= 17:
        # NOTE: the optional bias is given (zeros) too: onnxruntime 1.16's Gelu fusion crashes without it
        inputs = [x, g.weight(np.ones(m.normalized_shape) if w is None else w, f"{ly.where}.weight"),
                  g.weight(np.zeros(m.normalized_shape) if b is None else b, f"{ly.where}.bias")]
        return g.node("LayerNormalization", inputs, ly.where, axis=-k, epsilon=m.eps)
    axes = list(range(-k, 0))  # opset < 17: (x - mean) / sqrt(var + eps), means over the last k axes
    mean = g.node("ReduceMean", [x], ly.where, axes=axes, keepdims=1)
    xc = g.node("Sub", [x, mean], ly.where)
    var = g.node("ReduceMean", [g.node("Mul", [xc, xc], ly.where)], ly.where, axes=axes, keepdims=1)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(m.eps)], ly.where)], ly.where)
    y = g.node("Div", [xc, std], ly.where)
    if w is not None:
        y = g.node("Mul", [y, g.weight(w, f"{ly.where}.weight")], ly.where)
    if b is not None:
        y = g.node("Add", [y, g.weight(b, f"{ly.where}.bias")], ly.where)
    return y


def _simple(op: str, **attrs: Any) -> Handler:
    def handler(g: _Graph, ly: _Layer, x: str) -> str:
        return g.node(op, [x], ly.where, **{k: f(ly.module) for k, f in attrs.items()})

    return handler


def _gelu(g: _Graph, ly: _Layer, x: str) -> str:
    approximate = ly.module.approximate
    if g.opset >= 20:
        return g.node("Gelu", [x], ly.where, approximate=approximate)
    if approximate == "tanh":  # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as backprop computes it
        cube = g.node("Mul", [g.node("Mul", [x, x], ly.where), x], ly.where)
        inner = g.node("Add", [x, g.node("Mul", [cube, g.const(0.044715)], ly.where)], ly.where)
        t = g.node("Tanh", [g.node("Mul", [inner, g.const(math.sqrt(2 / math.pi))], ly.where)], ly.where)
    else:  # x/2 (1 + erf(x / sqrt 2))
        t = g.node("Erf", [g.node("Mul", [x, g.const(1 / math.sqrt(2))], ly.where)], ly.where)
    half = g.node("Mul", [x, g.const(0.5)], ly.where)
    return g.node("Mul", [half, g.node("Add", [t, g.const(1.0)], ly.where)], ly.where)


def _softmax(op: str) -> Handler:
    def handler(g: _Graph, ly: _Layer, x: str) -> str:
        dim = ly.module.dim
        if dim is None or isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ly.error(f"dim must be an integer, got {dim!r}")
        return g.node(op, [x], ly.where, axis=int(dim))

    return handler


def _reshape(g: _Graph, ly: _Layer, x: str, keeps_batch: bool) -> str:
    """Reshape to the example's output shape; a kept (dynamic) batch dimension is written 0: copied."""
    if ly.dynamic_batch and not keeps_batch:
        raise ly.error(f"it merges or splits the batch dimension (example shape {ly.in_shape} -> {ly.out_shape}), "
                       f"which a dynamic batch cannot follow; export with dynamic_batch=False")
    shape = list(ly.out_shape)
    if ly.dynamic_batch:
        shape[0] = 0
    return g.node("Reshape", [x, g.const(shape, dtype=np.int64)], ly.where)


def _flatten(g: _Graph, ly: _Layer, x: str) -> str:
    rank = len(ly.in_shape)
    start = ly.module.start_dim % rank if rank else 0
    if start == 1:
        return g.node("Flatten", [x], ly.where, axis=1)
    return _reshape(g, ly, x, keeps_batch=start >= 1)


def _unflatten(g: _Graph, ly: _Layer, x: str) -> str:
    rank = len(ly.in_shape)
    return _reshape(g, ly, x, keeps_batch=rank > 0 and ly.module.dim % rank != 0)


def _gather(g: _Graph, ly: _Layer, x: str) -> str:
    return g.node("Gather", [g.weight(ly.module.weight.data, f"{ly.where}.weight"), x], ly.where, axis=0)


def _passthrough(g: _Graph, ly: _Layer, x: str) -> str:
    return x


_HANDLERS: dict[type[Module], Handler] = {
    _layers.Linear: _linear,
    _conv.Conv2d: _conv_node,
    _conv.Conv1d: _conv_node,
    _pool.MaxPool2d: _max_pool,
    _pool.AvgPool2d: _avg_pool,
    _pool.AdaptiveAvgPool2d: _adaptive_avg_pool,
    _norm.BatchNorm1d: _batch_norm,
    _norm.BatchNorm2d: _batch_norm,
    _norm.LayerNorm: _layer_norm,
    _layers.ReLU: _simple("Relu"),
    _layers.Sigmoid: _simple("Sigmoid"),
    _layers.Tanh: _simple("Tanh"),
    _layers.LeakyReLU: _simple("LeakyRelu", alpha=lambda m: float(m.negative_slope)),
    _layers.GELU: _gelu,
    _layers.Softmax: _softmax("Softmax"),
    _layers.LogSoftmax: _softmax("LogSoftmax"),
    _layers.Flatten: _flatten,
    _layers.Unflatten: _unflatten,
    _layers.Dropout: _passthrough,
    _layers.Identity: _passthrough,
    _embedding.Embedding: _gather,
}


def supported_layers() -> list[str]:
    """The names of the layer classes :func:`export` knows (and ``Sequential``, which it walks)."""
    return sorted(["Sequential", *(cls.__name__ for cls in _HANDLERS)])


def _handler(module: Module) -> Handler | None:
    """The handler of ``module``'s class, or of a base class whose ``forward`` it does not override."""
    for cls in type(module).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls] if type(module).forward is cls.forward else None
    return None


def _is_sequential(module: Module) -> bool:
    return isinstance(module, Sequential) and type(module).forward is Sequential.forward


def _walk(module: Module, position: str = "") -> Iterator[tuple[str, Module]]:
    """(position, layer) for every layer, nested Sequentials flattened: positions "0", "3.1", ..."""
    if not _is_sequential(module):
        yield position, module
        return
    for name, child in vars(module).items():
        if isinstance(child, Module):
            yield from _walk(child, f"{position}.{name}" if position else name)


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


def _input_array(example_input: Any, layers: list[tuple[str, Module]], dtype: np.dtype) -> np.ndarray:
    from backprop.engine.tensor import Tensor

    x = np.asarray(example_input.data if isinstance(example_input, Tensor) else example_input)
    first = next((m for _, m in layers if _handler(m) is not _passthrough), None)
    if isinstance(first, _embedding.Embedding):
        if x.dtype.kind not in "iu":
            raise TypeError(f"example_input: the model starts with an Embedding, which takes integer indices; "
                            f"got dtype {x.dtype}")
        return x if x.dtype in (np.int32, np.int64) else x.astype(np.int64)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"example_input: expected numbers, got dtype {x.dtype}")
    return x.astype(dtype, copy=False)


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
    layers = list(_walk(model))
    for position, layer in layers:
        if _handler(layer) is None:
            raise ValueError(f"{_describe(position, layer)} is not supported by ONNX export; supported layers: "
                             f"{', '.join(supported_layers())}")
    dtype = _model_dtype(model)
    x = _input_array(example_input, layers, dtype)
    if dynamic_batch and x.ndim == 0:
        raise ValueError("export: example_input must have a batch dimension (it is 0-dimensional)")

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        graph, expected = _build(onnx, layers, x, dtype, opset, input_name, output_name, bool(dynamic_batch))
    finally:
        for m, mode in modes:
            m.training = mode

    from backprop import __version__

    proto = onnx.helper.make_model(graph, producer_name="backprop", producer_version=__version__,
                                   opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   doc_string=f"Exported by backprop {__version__} from:\n{model!r}")
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    if check:
        _check_with_onnxruntime(data, x, expected, input_name)

    from backprop.io import write_bytes_atomic

    write_bytes_atomic(path, data)
    return proto


def _build(onnx: Any, layers: list[tuple[str, Module]], x: np.ndarray, dtype: np.dtype, opset: int,
           input_name: str, output_name: str, dynamic_batch: bool) -> tuple[Any, np.ndarray]:
    """The ONNX graph, built while running the example through the layers one at a time (for their shapes)."""
    from backprop.engine.tensor import Tensor, no_grad

    g = _Graph(onnx, opset, dtype)
    g.fresh(input_name)
    g.fresh(output_name)
    name, value = input_name, x
    with no_grad():
        for position, layer in layers:
            try:
                out = layer(value if isinstance(layer, _embedding.Embedding) else Tensor(value))
            except Exception as e:
                raise ValueError(f"{_describe(position, layer)} fails on the example input (shape "
                                 f"{value.shape}): {e}") from e
            out = np.asarray(out.data if isinstance(out, Tensor) else out)
            ly = _Layer(position, layer, value.shape, out.shape, dynamic_batch)
            handler = _handler(layer)
            assert handler is not None  # checked before building
            name, value = handler(g, ly, name), out
    if name == input_name:  # nothing but Dropout/Identity
        g.nodes.append(onnx.helper.make_node("Identity", [name], [output_name], name="identity"))
    else:  # the last node writes the output itself
        last = g.nodes[-1]
        assert list(last.output) == [name]
        last.output[0] = output_name
    graph = onnx.helper.make_graph(
        g.nodes, "backprop", [_value_info(onnx, input_name, x.dtype, x.shape, dynamic_batch)],
        [_value_info(onnx, output_name, value.dtype, value.shape, dynamic_batch)], g.initializers)
    return graph, value


def _check_with_onnxruntime(data: bytes, x: np.ndarray, expected: np.ndarray, input_name: str) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
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
