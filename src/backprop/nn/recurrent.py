"""Recurrent layers: RNN, LSTM, GRU and their cells, with PyTorch's arguments, shapes, weights and results.

Each layer and direction runs as one engine op (:class:`~backprop.nn.recurrence.Recurrence`: the time loop
and backpropagation through time in NumPy, one GEMM per step for all gates of the batch, the weight gradients
as one GEMM over all steps), so a layer is a handful of graph nodes whatever the sequence's length.

Shapes (as ``torch.nn.LSTM``; D = 2 if bidirectional else 1, P = proj_size or hidden_size)::

    input  (T, B, input_size), or (B, T, input_size) with batch_first, or (T, input_size) unbatched
    output (T, B, D * P)  (batch_first: (B, T, D * P); unbatched: (T, D * P))
    h_n    (num_layers * D, B, P)     c_n (num_layers * D, B, hidden_size)   (unbatched: without B)

``RNN`` and ``GRU`` return ``(output, h_n)``, ``LSTM`` returns ``(output, (h_n, c_n))``; an initial state
``hx`` (``(h_0, c_0)`` for the LSTM) of the shape of the final one may be given, else zeros. Parameter
names and layouts are PyTorch's (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
``weight_hr_l0`` with proj_size, ``_reverse`` for the second direction; gates i, f, g, o for the LSTM and
r, z, n for the GRU), so a ``state_dict`` moves to and from the PyTorch module of the same configuration.

Variable-length batches: ``forward(input, hx, lengths=...)`` with one length per sequence (1 to T), the
``lengths`` PyTorch's ``pack_padded_sequence`` takes. ``lstm(x, lengths=lens)`` gives what PyTorch gives for
``pad_packed_sequence(lstm(pack_padded_sequence(x, lens, batch_first=bf, enforce_sorted=False))[0],
batch_first=bf, total_length=T)`` and its ``(h_n, c_n)``: outputs at padded steps are zero, each sequence's
final state is the one at its own last step, the reverse direction starts at each sequence's own end, and
padded steps receive no gradient.

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> lstm = LSTM(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
>>> out, (h_n, c_n) = lstm(bp.tensor(np.zeros((7, 4, 3))))        # 7 steps, batch of 4
>>> out.shape, h_n.shape, c_n.shape
((7, 4, 10), (4, 4, 5), (4, 4, 5))
>>> [name for name, _ in lstm.named_parameters()][:5]
['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0', 'weight_ih_l0_reverse']
>>> out, h_n = GRU(3, 5, batch_first=True)(bp.tensor(np.ones((2, 6, 3))), lengths=[6, 2])
>>> bool(np.all(out.data[1, 2:] == 0)), bool(np.allclose(h_n.data[0, 1], out.data[1, 1]))
(True, True)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

import backprop.nn.functional as F
from backprop.engine.functional import concatenate, stack
from backprop.engine.tensor import DEFAULT_DTYPE, Tensor
from backprop.nn.contract import OnnxGraph
from backprop.nn.init import uniform_
from backprop.nn.module import Module, Parameter
from backprop.nn.recurrence import GATES, Recurrence, packed_layout
from backprop.nn.registry import SIZE, Arg, Example, layer_type, small_int

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "RNNCell"]


def _size(name: str, value: Any, owner: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    return int(value)


def _as_tensor(x: Any, dtype: np.dtype) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x, dtype=dtype))


def _onnx_weights(g: OnnxGraph, mode: str, H: int, per_direction: list[list[np.ndarray]], bias: bool,
                  name: str) -> list[str]:
    """The W, R (and B) inputs of ONNX's RNN/GRU/LSTM node for one layer: directions stacked, gates reordered.

    ONNX's gate orders: LSTM i, o, f, c (PyTorch: i, f, g, o); GRU z, r, h (PyTorch: r, z, n); B is
    [Wb, Rb] (the input and the hidden biases) concatenated.
    """
    if mode == "lstm":
        order = np.r_[0:H, 3 * H:4 * H, H:2 * H, 2 * H:3 * H]
    elif mode == "gru":
        order = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
    else:
        order = np.arange(H)
    w = np.stack([p[0][order] for p in per_direction])
    r = np.stack([p[1][order] for p in per_direction])
    names = [g.weight(w, f"{name}.W"), g.weight(r, f"{name}.R")]
    if bias:
        b = np.stack([np.concatenate([p[2][order], p[3][order]]) for p in per_direction])
        names.append(g.weight(b, f"{name}.B"))
    return names


# ------------------------------------------------------------------------------------------ the layers
class _RNNBase(Module):
    """What RNN, LSTM and GRU share: the parameters of every layer and direction, and the forward over them."""

    mode = "rnn_tanh"

    def _setup(self, owner: str, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
               dropout: float, bidirectional: bool, proj_size: int, dtype: Any) -> None:
        self.input_size = _size("input_size", input_size, owner)
        self.hidden_size = _size("hidden_size", hidden_size, owner)
        self.num_layers = _size("num_layers", num_layers, owner)
        self.proj_size = _size("proj_size", proj_size, owner, low=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"{owner}: proj_size ({self.proj_size}) must be smaller than hidden_size "
                             f"({self.hidden_size})")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"{owner}: dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{owner}: dropout acts between recurrent layers, so dropout={dropout} with "
                          "num_layers=1 does nothing (as in PyTorch)", UserWarning, stacklevel=3)
        for name, v in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{owner}: {name} must be True or False, got {v!r}")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"{owner}: dtype must be floating point, got {dtype}")
        G, H = GATES[self.mode], self.hidden_size
        P = self.proj_size or H
        D = 2 if self.bidirectional else 1
        # NOTE: attributes in PyTorch's order (layer, direction, then ih, hh, biases, hr): named_parameters and
        # state_dict list them as PyTorch does
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else P * D
            for d in range(D):
                sfx = f"_l{layer}{'_reverse' if d else ''}"
                setattr(self, f"weight_ih{sfx}", Parameter(np.empty((G * H, width), dtype=dtype)))
                setattr(self, f"weight_hh{sfx}", Parameter(np.empty((G * H, P), dtype=dtype)))
                if self.bias:
                    setattr(self, f"bias_ih{sfx}", Parameter(np.empty(G * H, dtype=dtype)))
                    setattr(self, f"bias_hh{sfx}", Parameter(np.empty(G * H, dtype=dtype)))
                if self.proj_size:
                    setattr(self, f"weight_hr{sfx}", Parameter(np.empty((P, H), dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as PyTorch (backprop's generator)."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            uniform_(p, -k, k)

    def _weights(self, layer: int, d: int) -> list[Parameter]:
        sfx = f"_l{layer}{'_reverse' if d else ''}"
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else []) + \
            (["weight_hr"] if self.proj_size else [])
        return [getattr(self, n + sfx) for n in names]

    @property
    def _num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def flatten_parameters(self) -> None:
        """Nothing to do (PyTorch's cuDNN memory layout): kept so that PyTorch code runs unchanged."""

    def _check_state(self, h: Any, name: str, want: tuple[int, ...], dtype: np.dtype) -> Tensor:
        h = _as_tensor(h, dtype)
        if h.shape != want:
            raise ValueError(f"{type(self).__name__}: expected {name} of shape {want} (num_layers * num_directions, "
                             f"{'batch, ' if len(want) == 3 else ''}size), got {h.shape}")
        return h

    def _run(self, x: Any, h0: Any, c0: Any, lengths: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        owner = type(self).__name__
        dtype = self.weight_ih_l0.data.dtype
        x = _as_tensor(x, dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"{owner}: expected a 3-D input ({'batch, steps' if self.batch_first else 'steps, batch'}"
                             f", features) or a 2-D unbatched one (steps, features), got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{owner}: the input has {x.shape[-1]} features (shape {x.shape}), expected "
                             f"input_size={self.input_size}")
        batched = x.ndim == 3
        if not batched:
            if lengths is not None:
                raise ValueError(f"{owner}: lengths need a batched input (one length per sequence); an unbatched "
                                 f"input of shape {x.shape} is one sequence of {x.shape[0]} steps")
            x = x.reshape(x.shape[0], 1, x.shape[1])
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise ValueError(f"{owner}: the input has no time steps (shape {x.shape})")
        H, D, L = self.hidden_size, self._num_directions, self.num_layers
        P = self.proj_size or H
        if lengths is not None and not isinstance(lengths, np.ndarray):
            lengths = np.asarray(lengths.data if isinstance(lengths, Tensor) else lengths)
        states = []
        for init, size, name in ((h0, P, "h_0"), (c0, H, "c_0")):
            if init is None:
                states.append(None)
                continue
            want = (L * D, B, size) if batched else (L * D, size)
            t = self._check_state(init, name, want, dtype)
            states.append(t if batched else t.reshape(L * D, 1, size))
        h0, c0 = states
        layout = packed_layout(T, B, P, H, self.mode)
        hns: list[Tensor] = []
        cns: list[Tensor] = []
        layer_in = x
        for layer in range(L):
            outs = []
            for d in range(D):
                k = layer * D + d
                given = [] if h0 is None else [h0[k]] + ([] if c0 is None else [c0[k]])
                if c0 is not None and h0 is None:  # only c_0 given: h_0 zeros
                    given = [Tensor(np.zeros((B, P), dtype=dtype)), c0[k]]
                flat = Recurrence.apply(layer_in, *self._weights(layer, d), *given, mode=self.mode, reverse=d == 1,
                                        lengths=lengths, bias=self.bias, proj=bool(self.proj_size), state=len(given))
                # NOTE: the op's blocks are feature-major (P, B): transposed views give PyTorch's shapes
                a, b = (0, T * B * P) if d == 1 else (B * P, (T + 1) * B * P)
                outs.append(flat[a:b].reshape(T, P, B).transpose(0, 2, 1))
                hns.append(flat[slice(*layout["h_n"])].reshape(P, B).T)
                if self.mode == "lstm":
                    cns.append(flat[slice(*layout["c_n"])].reshape(H, B).T)
            layer_in = outs[0] if D == 1 else concatenate(outs, axis=2)
            if self.dropout and self.training and layer < L - 1:
                layer_in = F.dropout(layer_in, self.dropout)
        out = layer_in
        h_n = hns[0].reshape(1, B, P) if len(hns) == 1 else stack(hns)
        c_n = None
        if cns:
            c_n = cns[0].reshape(1, B, H) if len(cns) == 1 else stack(cns)
        if not batched:
            out = out.reshape(T, D * P)
            h_n = h_n.reshape(L * D, P)
            c_n = None if c_n is None else c_n.reshape(L * D, H)
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, h_n, c_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        for name, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s

    def _onnx(self, g: OnnxGraph, x: str) -> str:
        """ONNX's RNN / LSTM / GRU node per layer (both directions in one), with the zero initial state; the
        graph's output is the layer's ``output`` (the states are not exported). Gates are reordered to ONNX's
        (LSTM i, o, f, c; GRU z, r, h with ``linear_before_reset=1``, PyTorch's GRU); the node's
        (steps, directions, batch, hidden) output is transposed and reshaped to (steps, batch, directions *
        hidden). Not exportable: ``proj_size`` (ONNX's LSTM has no projection) and unbatched inputs."""
        if self.proj_size:
            raise g.error("ONNX's LSTM operator has no output projection (proj_size > 0); export the model with "
                          "proj_size=0 or run it in backprop")
        g.need_batched(3, "(batch, steps, features)" if self.batch_first else "(steps, batch, features)")
        op = {"lstm": "LSTM", "gru": "GRU"}.get(self.mode, "RNN")
        D, H = self._num_directions, self.hidden_size
        attrs: dict[str, Any] = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if op == "RNN":
            attrs["activations"] = ["Relu" if self.mode == "rnn_relu" else "Tanh"] * D
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        y = g.node("Transpose", [x], perm=[1, 0, 2]) if self.batch_first else x
        for layer in range(self.num_layers):
            per_dir = [[p.data for p in self._weights(layer, d)] for d in range(D)]
            inputs = _onnx_weights(g, self.mode, H, per_dir, self.bias, f"l{layer}")
            y = g.node(op, [y, *inputs], **attrs)  # (T, D, B, H)
            y = g.node("Transpose", [y], perm=[0, 2, 1, 3])
            y = g.node("Reshape", [y, g.const([0, 0, -1], dtype=np.int64)])
        if self.batch_first:
            y = g.node("Transpose", [y], perm=[1, 0, 2])
        return y


def _rnn_weights(kw: dict[str, Any], gates: int) -> int:
    """A lower bound on the weights of a recurrent layer's config (its first layer, one direction)."""
    h = kw["hidden_size"]
    return gates * h * (kw["input_size"] + min(h, kw.get("proj_size", 0) or h))


_COMMON_ARGS: dict[str, Arg] = {
    "input_size": SIZE,
    "hidden_size": SIZE,
    "num_layers": Arg(int, check=lambda v: small_int(v, 1, 1024), expect="an integer in [1, 1024]"),
    "bias": Arg(bool),
    "batch_first": Arg(bool),
    "dropout": Arg(float, check=lambda v: 0 <= v <= 1, expect="a number in [0, 1]"),
    "bidirectional": Arg(bool),
}


@layer_type({**_COMMON_ARGS, "nonlinearity": Arg(str, check=lambda v: v in ("tanh", "relu"),
                                                  expect="'tanh' or 'relu'")}, examples=[
    Example(lambda: RNN(3, 4), (5, 2, 3), lambda T: T.nn.RNN(3, 4)),
    Example(lambda: RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True, bidirectional=True), (2, 5, 3),
            lambda T: T.nn.RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True, bidirectional=True),
            "2 layers relu bidirectional batch_first"),
], min_weights=lambda kw: _rnn_weights(kw, 1))
class RNN(_RNNBase):
    """Elman RNN, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or relu), as ``torch.nn.RNN``.

    ``forward(input, hx=None, lengths=None) -> (output, h_n)``; see the module docstring for shapes and lengths.
    """

    onnx = _RNNBase._onnx  # NOTE: here, beside this class's forward (see contract.onnx_decision)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.mode = f"rnn_{nonlinearity}"
        self._setup("RNN", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, dtype)

    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Tensor, Tensor]:
        out, h_n, _ = self._run(input, hx, None, lengths)
        return out, h_n


@layer_type({**_COMMON_ARGS, "proj_size": Arg(int, check=lambda v: small_int(v, 0), expect="an integer >= 0")},
            examples=[
    Example(lambda: LSTM(3, 4), (5, 2, 3), lambda T: T.nn.LSTM(3, 4)),
    Example(lambda: LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True, dropout=0.3), (2, 6, 3),
            lambda T: T.nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True, dropout=0.3),
            "2 layers bidirectional batch_first dropout"),
    Example(lambda: LSTM(3, 4, bias=False), (4, 1, 3), lambda T: T.nn.LSTM(3, 4, bias=False), "no bias"),
], min_weights=lambda kw: _rnn_weights(kw, 4))
class LSTM(_RNNBase):
    """Long short-term memory (Hochreiter & Schmidhuber 1997), as ``torch.nn.LSTM``, gates i, f, g, o::

        i, f, o = sigmoid(W_i* x + b_i* + W_h* h + b_h*),   g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)   (h_t = W_hr (o * tanh(c_t)) with proj_size)

    ``forward(input, hx=None, lengths=None) -> (output, (h_n, c_n))``, ``hx = (h_0, c_0)``.
    """

    onnx = _RNNBase._onnx  # NOTE: here, beside this class's forward (see contract.onnx_decision)

    mode = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        self._setup("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                    dtype)

    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("LSTM: hx must be a tuple (h_0, c_0), got "
                                f"{type(hx).__name__}{'' if not isinstance(hx, (tuple, list)) else f' of {len(hx)}'}")
            h0, c0 = hx
        out, h_n, c_n = self._run(input, h0, c0, lengths)
        return out, (h_n, c_n)


@layer_type(_COMMON_ARGS, examples=[
    Example(lambda: GRU(3, 4), (5, 2, 3), lambda T: T.nn.GRU(3, 4)),
    Example(lambda: GRU(3, 4, num_layers=2, bidirectional=True), (4, 3, 3),
            lambda T: T.nn.GRU(3, 4, num_layers=2, bidirectional=True), "2 layers bidirectional"),
], min_weights=lambda kw: _rnn_weights(kw, 3))
class GRU(_RNNBase):
    """Gated recurrent unit (Cho et al. 2014), as ``torch.nn.GRU``, gates r, z, n::

        r, z = sigmoid(W_i* x + b_i* + W_h* h + b_h*),   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    ``forward(input, hx=None, lengths=None) -> (output, h_n)``.
    """

    onnx = _RNNBase._onnx  # NOTE: here, beside this class's forward (see contract.onnx_decision)

    mode = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        self._setup("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, dtype)

    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Tensor, Tensor]:
        out, h_n, _ = self._run(input, hx, None, lengths)
        return out, h_n


# ------------------------------------------------------------------------------------------- the cells
class _CellBase(Module):
    """One step of a recurrent layer: the same op as the layers, over one time step."""

    mode = "rnn_tanh"

    def _setup(self, owner: str, input_size: int, hidden_size: int, bias: bool, dtype: Any) -> None:
        self.input_size = _size("input_size", input_size, owner)
        self.hidden_size = _size("hidden_size", hidden_size, owner)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{owner}: bias must be True or False, got {bias!r}")
        self.bias = bool(bias)
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"{owner}: dtype must be floating point, got {dtype}")
        G, H = GATES[self.mode], self.hidden_size
        self.weight_ih = Parameter(np.empty((G * H, self.input_size), dtype=dtype))
        self.weight_hh = Parameter(np.empty((G * H, H), dtype=dtype))
        if self.bias:
            self.bias_ih = Parameter(np.empty(G * H, dtype=dtype))
            self.bias_hh = Parameter(np.empty(G * H, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as PyTorch."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            uniform_(p, -k, k)

    def _step(self, x: Any, h: Any, c: Any) -> tuple[Tensor, Tensor | None]:
        owner = type(self).__name__
        dtype = self.weight_ih.data.dtype
        x = _as_tensor(x, dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{owner}: expected an input of shape (batch, {self.input_size}) or ({self.input_size},),"
                             f" got {x.shape}")
        batched = x.ndim == 2
        B, H = (x.shape[0] if batched else 1), self.hidden_size
        given = []
        for init, name in ((h, "hidden state"), (c, "cell state")):
            if init is None:
                continue
            t = _as_tensor(init, dtype)
            want = (B, H) if batched else (H,)
            if t.shape != want:
                raise ValueError(f"{owner}: expected the {name} of shape {want}, got {t.shape}")
            given.append(t if batched else t.reshape(1, H))
        if c is not None and h is None:
            given.insert(0, Tensor(np.zeros((B, H), dtype=dtype)))
        weights = [self.weight_ih, self.weight_hh] + ([self.bias_ih, self.bias_hh] if self.bias else [])
        flat = Recurrence.apply(x.reshape(1, B, self.input_size), *weights, *given, mode=self.mode, bias=self.bias,
                                state=len(given))
        h_new = flat[B * H:2 * B * H].reshape(H, B).T if batched else flat[H:2 * H]  # feature-major blocks
        c_new = None
        if self.mode == "lstm":
            a, b = packed_layout(1, B, H, H, "lstm")["c_n"]
            c_new = flat[a:b].reshape(H, B).T if batched else flat[a:b]
        return h_new, c_new

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def _onnx(self, g: OnnxGraph, x: str) -> str:
        """One step of ONNX's RNN / LSTM / GRU node (gates reordered as for the layers) from the zero state: the
        input unsqueezed to one time step, the node's (1, 1, batch, hidden) output squeezed to (batch, hidden)."""
        g.need_batched(2, "(batch, features)")
        op = {"lstm": "LSTM", "gru": "GRU"}.get(self.mode, "RNN")
        attrs: dict[str, Any] = {"hidden_size": self.hidden_size}
        if op == "RNN":
            attrs["activations"] = ["Relu" if self.mode == "rnn_relu" else "Tanh"]
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        weights = [self.weight_ih.data, self.weight_hh.data] + \
            ([self.bias_ih.data, self.bias_hh.data] if self.bias else [])
        inputs = _onnx_weights(g, self.mode, self.hidden_size, [weights], self.bias, "cell")
        seq = g.node("Unsqueeze", [x, g.const([0], dtype=np.int64)])
        y = g.node(op, [seq, *inputs], **attrs)
        return g.node("Squeeze", [y, g.const([0, 1], dtype=np.int64)])


_CELL_ARGS: dict[str, Arg] = {"input_size": SIZE, "hidden_size": SIZE, "bias": Arg(bool)}


@layer_type({**_CELL_ARGS, "nonlinearity": Arg(str, check=lambda v: v in ("tanh", "relu"),
                                                expect="'tanh' or 'relu'")}, examples=[
    Example(lambda: RNNCell(3, 4), (2, 3), lambda T: T.nn.RNNCell(3, 4)),
    Example(lambda: RNNCell(3, 4, nonlinearity="relu", bias=False), (5, 3),
            lambda T: T.nn.RNNCell(3, 4, nonlinearity="relu", bias=False), "relu no bias"),
], min_weights=lambda kw: kw["hidden_size"] * (kw["input_size"] + kw["hidden_size"]))
class RNNCell(_CellBase):
    """One step of an Elman RNN, as ``torch.nn.RNNCell``: ``forward(input, hx=None) -> h'``."""

    onnx = _CellBase._onnx  # NOTE: here, beside this class's forward (see contract.onnx_decision)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 dtype: Any = DEFAULT_DTYPE) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.mode = f"rnn_{nonlinearity}"
        self._setup("RNNCell", input_size, hidden_size, bias, dtype)

    def forward(self, input: Any, hx: Any = None) -> Tensor:
        return self._step(input, hx, None)[0]


@layer_type(_CELL_ARGS, examples=[
    Example(lambda: LSTMCell(3, 4), (2, 3), lambda T: T.nn.LSTMCell(3, 4)),
], min_weights=lambda kw: 4 * kw["hidden_size"] * (kw["input_size"] + kw["hidden_size"]))
class LSTMCell(_CellBase):
    """One LSTM step, as ``torch.nn.LSTMCell``: ``forward(input, hx=None) -> (h', c')`` with ``hx = (h, c)``."""

    onnx = _CellBase._onnx  # NOTE: here, beside this class's forward (see contract.onnx_decision)

    mode = "lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = DEFAULT_DTYPE) -> None:
        self._setup("LSTMCell", input_size, hidden_size, bias, dtype)

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        h = c = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"LSTMCell: hx must be a tuple (h, c), got {type(hx).__name__}")
            h, c = hx
        h_new, c_new = self._step(input, h, c)
        return h_new, c_new


@layer_type(_CELL_ARGS, examples=[
    Example(lambda: GRUCell(3, 4), (2, 3), lambda T: T.nn.GRUCell(3, 4)),
], min_weights=lambda kw: 3 * kw["hidden_size"] * (kw["input_size"] + kw["hidden_size"]))
class GRUCell(_CellBase):
    """One GRU step, as ``torch.nn.GRUCell``: ``forward(input, hx=None) -> h'``."""

    onnx = _CellBase._onnx  # NOTE: here, beside this class's forward (see contract.onnx_decision)

    mode = "gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = DEFAULT_DTYPE) -> None:
        self._setup("GRUCell", input_size, hidden_size, bias, dtype)

    def forward(self, input: Any, hx: Any = None) -> Tensor:
        return self._step(input, hx, None)[0]
