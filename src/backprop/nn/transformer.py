"""The Transformer encoder (``torch.nn.TransformerEncoderLayer``, ``TransformerEncoder``) and positional encodings.

``TransformerEncoderLayer`` is composed of :class:`~backprop.nn.attention.MultiheadAttention`, ``LayerNorm``,
``Dropout`` and ``Linear`` with PyTorch's names (``self_attn.*``, ``linear1``, ``linear2``, ``norm1``,
``norm2``), so its weights move to and from PyTorch through safetensors; post-norm (the default, as in
"Attention Is All You Need") or pre-norm (``norm_first=True``). ``TransformerEncoder`` stacks copies of a
layer (``layers.0.…``) with an optional final norm. ``sinusoidal_positional_encoding`` is the table of
Vaswani et al. (2017), section 3.5, and ``PositionalEncoding`` adds it to a sequence of embeddings.

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> layer = TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
>>> x = bp.tensor(np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32))
>>> layer(x, is_causal=True).shape
(3, 5, 8)
>>> sinusoidal_positional_encoding(4, 6, dtype=np.float64)[1].round(3).tolist()   # position 1: sin/cos pairs, slower and slower
[0.841, 0.54, 0.046, 0.999, 0.002, 1.0]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

import backprop.nn.functional as F
from backprop.engine.tensor import DEFAULT_DTYPE, Tensor
from backprop.nn.attention import MultiheadAttention, attention_onnx, onnx_mask
from backprop.nn.contract import OnnxGraph
from backprop.nn.layers import GELU, Dropout, Linear
from backprop.nn.module import Module, ModuleList
from backprop.nn.normalization import LayerNorm
from backprop.nn.registry import LAYER_TYPES, SIZE, Arg, Example, layer_type, small_int

__all__ = ["PositionalEncoding", "TransformerEncoder", "TransformerEncoderLayer", "sinusoidal_positional_encoding"]

_ACTIVATIONS = ("relu", "gelu")


# ------------------------------------------------------------------------------------ positional encoding
def sinusoidal_positional_encoding(length: int, d_model: int, base: float = 10000.0,
                                   dtype: Any = DEFAULT_DTYPE) -> np.ndarray:
    """The (length, d_model) table PE[pos, 2i] = sin(pos / base^(2i / d_model)), PE[pos, 2i + 1] = cos(same),
    of "Attention Is All You Need" (base 10000). An odd ``d_model`` ends with a sine column.

    >>> sinusoidal_positional_encoding(3, 4, dtype=np.float64).round(4).tolist()
    [[0.0, 1.0, 0.0, 1.0], [0.8415, 0.5403, 0.01, 1.0], [0.9093, -0.4161, 0.02, 0.9998]]
    """
    if not small_int(length, 1) or not small_int(d_model, 1):
        raise ValueError(f"sinusoidal_positional_encoding: length and d_model must be positive integers, got "
                         f"{length!r} and {d_model!r}")
    if not (isinstance(base, (int, float)) and base > 1):
        raise ValueError(f"sinusoidal_positional_encoding: base must be a number > 1, got {base!r}")
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-math.log(base) / d_model))  # 1 / base^(2i/d)
    table = np.zeros((length, d_model))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: d_model // 2])
    return table.astype(dtype)


@layer_type({
    "d_model": SIZE, "max_len": SIZE,
    "dropout": Arg(float, check=lambda v: 0.0 <= v < 1.0, expect="a number in [0, 1)", get=lambda m: m.dropout.p),
    "batch_first": bool,
}, examples=[
    Example(lambda: PositionalEncoding(6, max_len=20), (7, 2, 6), None, "(L, N, E)"),
    Example(lambda: PositionalEncoding(5, max_len=10, batch_first=True), (2, 4, 5), None, "batch_first odd d_model"),
])
class PositionalEncoding(Module):
    """``x + sinusoidal_positional_encoding(L, d_model)`` for a sequence of length L, then dropout.

    ``x`` is (L, N, d_model), (N, L, d_model) with ``batch_first=True``, or unbatched (L, d_model); L is at
    most ``max_len``. The table is a buffer that is not saved (``persistent=False``): it is rebuilt from the
    arguments. As in Vaswani et al. (and PyTorch's tutorial), scale the embeddings by sqrt(d_model) before
    adding it if they are initialised small.

    >>> import backprop as bp
    >>> pe = PositionalEncoding(4, max_len=10)
    >>> pe(bp.tensor(np.zeros((3, 1, 4)))).data[:, 0].astype(float).round(3).tolist()
    [[0.0, 1.0, 0.0, 1.0], [0.841, 0.54, 0.01, 1.0], [0.909, -0.416, 0.02, 1.0]]
    """

    keeps_shape = True

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, batch_first: bool = False,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        if not small_int(max_len, 1):
            raise ValueError(f"PositionalEncoding: max_len must be a positive integer, got {max_len!r}")
        self.d_model, self.max_len, self.batch_first = int(d_model), int(max_len), bool(batch_first)
        self.dropout = Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model, dtype=dtype), persistent=False)

    def _length_axis(self, ndim: int) -> int:
        if ndim not in (2, 3):
            raise ValueError(f"PositionalEncoding: expected (L, N, E), (N, L, E) or (L, E) inputs, got {ndim}-D")
        return 1 if self.batch_first and ndim == 3 else 0

    def forward(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x, dtype=self.pe.dtype))
        axis = self._length_axis(x.ndim)
        length = x.shape[axis]
        if x.shape[-1] != self.d_model or length > self.max_len:
            raise ValueError(f"PositionalEncoding: input of shape {x.shape} must end with d_model={self.d_model} "
                             f"and have a length (axis {axis}) of at most max_len={self.max_len}")
        # NOTE: the whole buffer becomes the tensor and ops slice it: in a captured step (bp.jit) it is then a
        # constant of its own shape, never mistaken for an array computed from a batch of the same length
        table = Tensor(self.pe)[:length]
        if x.ndim == 3 and axis == 0:
            table = table.reshape(length, 1, self.d_model)
        if table.dtype != x.dtype:
            table = table.astype(x.dtype)
        return self.dropout(x + table)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, dropout={self.dropout.p}, batch_first={self.batch_first}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Add of the table's first L rows: a constant, or (L the dynamic first dimension) Slice of the whole
        table up to Shape(x)[0]."""
        axis = self._length_axis(len(g.in_shape))
        length = g.in_shape[axis]
        if axis == 0 and g.dynamic_batch:
            table = self.pe if len(g.in_shape) == 2 else self.pe[:, None, :]
            first = g.node("Slice", [g.node("Shape", [x]), g.const([0], dtype=np.int64), g.const([1], dtype=np.int64)])
            rows = g.node("Slice", [g.weight(table, "pe"), g.const([0], dtype=np.int64), first,
                                    g.const([0], dtype=np.int64)])
            return g.node("Add", [x, rows])
        table = self.pe[:length] if len(g.in_shape) == 2 or axis == 1 else self.pe[:length, None, :]
        return g.node("Add", [x, g.weight(table, "pe")])


# --------------------------------------------------------------------------------------- encoder layer
def _layer_weights(kw: Mapping[str, Any]) -> int:
    d, f = kw["d_model"], kw.get("dim_feedforward", 2048)
    return 4 * d * d + 2 * d * f


@layer_type({
    "d_model": SIZE, "nhead": SIZE,
    "dim_feedforward": Arg(int, check=lambda v: small_int(v, 1), expect="an integer in [1, 2**20]"),
    "dropout": Arg(float, check=lambda v: 0.0 <= v < 1.0, expect="a number in [0, 1)", get=lambda m: m.dropout.p),
    "activation": Arg(str, check=lambda v: v in _ACTIVATIONS, expect="'relu' or 'gelu'"),
    "layer_norm_eps": Arg(float, check=lambda v: v > 0, expect="a number > 0", get=lambda m: m.norm1.eps),
    "batch_first": Arg(bool, get=lambda m: m.self_attn.batch_first), "norm_first": bool,
    "bias": Arg(bool, get=lambda m: m.linear1.bias is not None),
}, examples=[
    Example(lambda: TransformerEncoderLayer(8, 2, 16, dropout=0.0), (5, 3, 8),
            lambda T: T.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), "post-norm relu (L, N, E)"),
    Example(lambda: TransformerEncoderLayer(6, 3, 12, dropout=0.0, activation="gelu", batch_first=True,
                                            norm_first=True), (2, 4, 6),
            lambda T: T.nn.TransformerEncoderLayer(6, 3, 12, dropout=0.0, activation="gelu", batch_first=True,
                                                   norm_first=True), "pre-norm gelu batch_first"),
    Example(lambda: TransformerEncoderLayer(4, 2, 8, dropout=0.0, bias=False, layer_norm_eps=1e-3), (3, 4),
            lambda T: T.nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, bias=False, layer_norm_eps=1e-3),
            "unbatched no bias"),
    Example(lambda: TransformerEncoderLayer(4, 2, 8, dropout=0.3, batch_first=True), (2, 3, 4), None, "dropout"),
], min_weights=_layer_weights)
class TransformerEncoderLayer(Module):
    """Self-attention and a feed-forward block, each with a residual connection and a layer norm
    (``torch.nn.TransformerEncoderLayer``).

    Post-norm (``norm_first=False``): ``x = norm1(x + sa(x)); x = norm2(x + ff(x))``; pre-norm:
    ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``, where ``sa`` is self-attention followed by dropout and
    ``ff`` is ``linear2(dropout(activation(linear1(x))))`` followed by dropout. ``activation``: "relu" or
    "gelu" (exact). ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)`` with src
    (L, N, E), (N, L, E) if ``batch_first``, or (L, E); the masks are those of
    :class:`~backprop.nn.attention.MultiheadAttention` (``attn_mask``, ``key_padding_mask``); ``is_causal``
    without a ``src_mask`` masks the future (PyTorch requires the mask and takes the flag as a hint).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, dtype: Any = DEFAULT_DTYPE) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"TransformerEncoderLayer: activation must be 'relu' or 'gelu', got {activation!r}")
        if not small_int(dim_feedforward, 1):
            raise ValueError(f"TransformerEncoderLayer: dim_feedforward must be a positive integer, got "
                             f"{dim_feedforward!r}")
        # NOTE: assigned in PyTorch's order: the state_dict lists the same names in the same order
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = activation

    @property
    def d_model(self) -> int:
        return self.self_attn.embed_dim

    @property
    def nhead(self) -> int:
        return self.self_attn.num_heads

    @property
    def dim_feedforward(self) -> int:
        return self.linear1.out_features

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, norm_first={self.norm_first}"

    def _sa(self, x: Tensor, src_mask: Any, src_key_padding_mask: Any, is_causal: bool) -> Tensor:
        out, _ = self.self_attn(x, x, x, attn_mask=src_mask, key_padding_mask=src_key_padding_mask,
                                need_weights=False, is_causal=is_causal)
        return self.dropout1(out)

    def _ff(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        h = F.relu(h) if self.activation == "relu" else F.gelu(h)
        return self.dropout2(self.linear2(self.dropout(h)))

    def forward(self, src: Any, src_mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool = False) -> Tensor:
        x = src if isinstance(src, Tensor) else Tensor(np.asarray(src, dtype=self.linear1.weight.dtype))
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff(x))

    def onnx(self, g: OnnxGraph, src: str, src_mask: str | None = None, src_key_padding_mask: str | None = None,
             is_causal: bool = False) -> str:
        """Its sub-layers' nodes (MultiheadAttention's, LayerNormalization, MatMul/Gemm, Relu or Gelu) and the
        residual Adds; the masks are graph inputs (a dict of inputs to ``export``), ``is_causal`` a constant."""
        shape = g.in_shape
        kpm = onnx_mask(g, src_key_padding_mask, "src_key_padding_mask")
        am = onnx_mask(g, src_mask, "src_mask")

        def sa(x: str) -> str:
            out, _ = attention_onnx(self.self_attn, _Scoped(g, "self_attn"), x, x, x, shape, shape, kpm, am,
                                    bool(is_causal), False, True)
            return out

        def ff(x: str) -> str:
            h = self.linear1.onnx(_Scoped(g, "linear1"), x)
            h = g.node("Relu", [h]) if self.activation == "relu" else GELU().onnx(g, h)
            return self.linear2.onnx(_Scoped(g, "linear2"), h)

        def norm(i: int, x: str) -> str:
            return getattr(self, f"norm{i}").onnx(_Scoped(g, f"norm{i}"), x)

        x = src
        if self.norm_first:
            x = g.node("Add", [x, sa(norm(1, x))])
            return g.node("Add", [x, ff(norm(2, x))])
        x = norm(1, g.node("Add", [x, sa(x)]))
        return norm(2, g.node("Add", [x, ff(x)]))


class _Scoped:
    """The builder as a sub-layer of a composite layer sees it: the same graph, its weights named after the
    sub-layer (``layer0.norm1.weight``), everything else as the composite's (its input shape: the
    sub-layers of an encoder layer keep that shape)."""

    def __init__(self, g: OnnxGraph, name: str) -> None:
        self._g, self._name = g, name

    def weight(self, array: Any, name: str, dtype: Any = None) -> str:
        return self._g.weight(array, f"{self._name}.{name}", dtype)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._g, attr)


# ---------------------------------------------------------------------------------------------- encoder
def _from_config(kind: str, config: Mapping[str, Any], owner: str) -> Module:
    """Build the registered layer ``kind`` from its config (a file's JSON object), every argument checked."""
    spec = LAYER_TYPES[kind]
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        arg = spec.args.get(key)
        if arg is None:
            raise ValueError(f"{owner}: {kind} takes no argument {key!r} (it takes {', '.join(spec.args)})")
        try:
            value = arg.validate(value)
        except ValueError as e:
            raise ValueError(f"{owner}: {kind} argument {key!r}: {e}") from None
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    missing = [k for k, a in spec.args.items() if a.required and k not in kwargs]
    if missing:
        raise ValueError(f"{owner}: the {kind} config lacks {missing}")
    return spec.cls(**kwargs)


def _config_of(kind: str, module: Module | None) -> dict[str, Any] | None:
    return None if module is None else LAYER_TYPES[kind].config(module)


def _encoder_weights(kw: Mapping[str, Any]) -> int:
    return kw["num_layers"] * LAYER_TYPES["TransformerEncoderLayer"].weights_needed(kw["encoder_layer"])


@layer_type({
    "encoder_layer": Arg(dict, required=True, expect="the arguments of a TransformerEncoderLayer (an object)",
                         get=lambda m: _config_of("TransformerEncoderLayer", m.layers[0])),
    "num_layers": Arg(int, check=lambda v: small_int(v, 1, 1000), expect="an integer in [1, 1000]", required=True),
    "norm": Arg((dict, type(None)), expect="the arguments of a LayerNorm (an object) or null",
                get=lambda m: _config_of("LayerNorm", m.norm)),
}, examples=[
    Example(lambda: TransformerEncoder(TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2, norm=LayerNorm(8)),
            (5, 3, 8), lambda T: T.nn.TransformerEncoder(T.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2,
                                                         norm=T.nn.LayerNorm(8), enable_nested_tensor=False),
            "2 layers and a norm"),
    Example(lambda: TransformerEncoder(TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True,
                                                               norm_first=True, activation="gelu"), 1),
            (2, 3, 6), lambda T: T.nn.TransformerEncoder(T.nn.TransformerEncoderLayer(
                6, 2, 8, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"), 1,
                enable_nested_tensor=False), "pre-norm"),
], min_weights=_encoder_weights)
class TransformerEncoder(Module):
    """``num_layers`` copies of ``encoder_layer`` applied in turn, then ``norm`` if given (``torch.nn.TransformerEncoder``).

    As in PyTorch the layers are deep copies of ``encoder_layer``, so they start with equal weights;
    parameters are named ``layers.0.self_attn.in_proj_weight``, ..., ``norm.weight``. ``encoder_layer`` and
    ``norm`` may also be given as the constructor arguments of a ``TransformerEncoderLayer`` and a
    ``LayerNorm`` (dicts: how a model file records them). ``forward(src, mask=None,
    src_key_padding_mask=None, is_causal=False)`` passes the masks to every layer.
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer | Mapping[str, Any], num_layers: int,
                 norm: LayerNorm | Mapping[str, Any] | None = None) -> None:
        if isinstance(encoder_layer, Mapping):
            encoder_layer = _from_config("TransformerEncoderLayer", encoder_layer, "TransformerEncoder")
        if not isinstance(encoder_layer, TransformerEncoderLayer):
            raise TypeError(f"TransformerEncoder: encoder_layer must be a TransformerEncoderLayer, got "
                            f"{type(encoder_layer).__name__}")
        if not small_int(num_layers, 1):
            raise ValueError(f"TransformerEncoder: num_layers must be a positive integer, got {num_layers!r}")
        if isinstance(norm, Mapping):
            norm = _from_config("LayerNorm", norm, "TransformerEncoder")
        if norm is not None and not isinstance(norm, LayerNorm):
            raise TypeError(f"TransformerEncoder: norm must be a LayerNorm or None, got {type(norm).__name__}")
        self.layers = ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = int(num_layers)
        self.norm = norm

    def forward(self, src: Any, mask: Any = None, src_key_padding_mask: Any = None, is_causal: bool = False) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return x if self.norm is None else self.norm(x)

    def onnx(self, g: OnnxGraph, src: str, mask: str | None = None, src_key_padding_mask: str | None = None,
             is_causal: bool = False) -> str:
        """Its layers' exports one after the other, then the norm's."""
        inputs = {"src_mask": mask, "src_key_padding_mask": src_key_padding_mask, "is_causal": is_causal}
        x = src
        for i, layer in enumerate(self.layers):
            x = g.layer(layer, x, f"layers.{i}", inputs={k: v for k, v in inputs.items() if v is not None})
        return x if self.norm is None else g.layer(self.norm, x, "norm")
