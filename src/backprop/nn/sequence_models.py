"""Ready-made sequence networks: recurrent and transformer readers of sequences, and character language models.

Each is one registered layer (saved and loaded with its arguments by :func:`backprop.io.save`, exported to
ONNX through its sub-layers), built from the layers of :mod:`backprop.nn.recurrent` and
:mod:`backprop.nn.transformer`; inputs are batch-first:

* :class:`RecurrentNet`: an RNN, LSTM or GRU reading x (N, T, F); its final hidden state (the output at the
  last step of the last layer) goes through a Linear layer: (N, out_features), one class or number per
  sequence (many-to-one); ``every_step=True`` applies the Linear layer at every step: (N, T, out_features).
* :class:`TransformerNet`: a Linear projection of every step to ``d_model``, the sinusoidal positional
  encoding, a pre-norm :class:`~backprop.nn.transformer.TransformerEncoder` and the mean over the steps into a
  Linear layer (or, with ``every_step``, the Linear layer at every step).
* :class:`RecurrentLM`: a character (token) language model, Embedding -> RNN/LSTM/GRU -> Linear over the
  vocabulary at every step: indices (N, T) to logits (N, T, V), the next token's scores after each prefix.
* :class:`TransformerLM`: the same with a causal transformer encoder (each step attends to itself and the
  steps before it) over at most ``max_len`` steps.

:func:`generate` samples text from either language model.

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> net = RecurrentNet("lstm", input_size=2, hidden_size=8, out_features=1)
>>> net(bp.tensor(np.zeros((3, 10, 2), dtype=np.float32))).shape
(3, 1)
>>> lm = RecurrentLM("gru", vocab_size=5, embedding_dim=4, hidden_size=8)
>>> lm(np.zeros((2, 7), dtype=np.int64)).shape                          # next-token logits at every step
(2, 7, 5)
>>> ids = generate(lm, np.array([1, 2]), length=6, temperature=0.8, seed=0)
>>> ids.shape, bool(np.array_equal(ids, generate(lm, np.array([1, 2]), length=6, temperature=0.8, seed=0)))
((6,), True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backprop.engine.tensor import DEFAULT_DTYPE, Tensor, no_grad
from backprop.nn.contract import OnnxGraph
from backprop.nn.embedding import Embedding
from backprop.nn.layers import Dropout, Linear
from backprop.nn.module import Module
from backprop.nn.normalization import LayerNorm
from backprop.nn.recurrent import GRU, LSTM, RNN
from backprop.nn.registry import SIZE, Arg, Example, layer_type, small_int
from backprop.nn.transformer import PositionalEncoding, TransformerEncoder, TransformerEncoderLayer, _Scoped

__all__ = ["MODES", "RecurrentLM", "RecurrentNet", "TransformerLM", "TransformerNet", "generate"]

#: The recurrent layers a model may use: "rnn" is the plain Elman RNN with tanh.
MODES = ("rnn", "lstm", "gru")
_LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}

_MODE = Arg(str, check=lambda v: v in MODES, expect="'rnn', 'lstm' or 'gru'", required=True)
_LAYERS_ARG = Arg(int, check=lambda v: small_int(v, 1, 64), expect="an integer in [1, 64]")
_DROPOUT = Arg(float, check=lambda v: 0.0 <= v < 1.0, expect="a number in [0, 1)")


def _recurrent(mode: str, input_size: int, hidden_size: int, num_layers: int, dropout: float, dtype: Any) -> Module:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    # NOTE: dropout between stacked layers only (PyTorch's rule); one layer gets none, and no warning
    return _LAYERS[mode](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                         dropout=dropout if num_layers > 1 else 0.0, dtype=dtype)


def _check_dropout(dropout: Any, owner: str) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{owner}: dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


def _encoder(d_model: int, nhead: int, dim_feedforward: int | None, num_layers: int, dropout: float,
             dtype: Any) -> TransformerEncoder:
    """The sequence models' encoder: ``num_layers`` pre-norm layers (batch first) and a final norm.
    NOTE: pre-norm (norm_first) with a final norm trains without a learning-rate warm-up."""
    dim_feedforward = 4 * d_model if dim_feedforward is None else dim_feedforward
    layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=dropout, batch_first=True,
                                    norm_first=True, dtype=dtype)
    return TransformerEncoder(layer, num_layers, norm=LayerNorm(d_model, dtype=dtype))


def _last_step_onnx(g: OnnxGraph, y: str) -> str:
    """(N, T, H) -> (N, H): the last step (Gather of index [-1] on axis 1, then Squeeze of that axis).

    NOTE: not a Gather of the scalar -1, which would drop the axis by itself: the builder stores constants as
    arrays of at least one dimension.
    """
    last = g.node("Gather", [y, g.const([-1], dtype=np.int64)], axis=1)
    return g.node("Squeeze", [last, g.const([1], dtype=np.int64)])


class _Head(_Scoped):
    """The builder as the final Linear layer of a composite sees it: its weights named ``head.*`` and its
    input of rank ``ndim`` (the composite's input may have another: indices (N, T) before an Embedding)."""

    def __init__(self, g: OnnxGraph, ndim: int) -> None:
        super().__init__(g, "head")
        self.in_shape = (0,) * ndim


def _head_onnx(head: Linear, g: OnnxGraph, h: str, ndim: int) -> str:
    return head.onnx(_Head(g, ndim), h)


def _recurrent_weights(kw: Any, inputs: int) -> int:
    return _GATES.get(kw["mode"], 1) * kw["hidden_size"] * (inputs + kw["hidden_size"])


# ------------------------------------------------------------------------------------------ readers
@layer_type({
    "mode": _MODE, "input_size": SIZE, "hidden_size": SIZE, "out_features": SIZE, "num_layers": _LAYERS_ARG,
    "dropout": _DROPOUT, "every_step": bool,
}, examples=[
    Example(lambda: RecurrentNet("lstm", 3, 5, 2), (2, 4, 3), None, "lstm many-to-one"),
    Example(lambda: RecurrentNet("gru", 3, 4, 1, num_layers=2), (3, 5, 3), None, "gru 2 layers"),
    Example(lambda: RecurrentNet("rnn", 2, 4, 3, every_step=True), (2, 6, 2), None, "rnn every step"),
], min_weights=lambda kw: _recurrent_weights(kw, kw["input_size"]))
class RecurrentNet(Module):
    """An RNN/LSTM/GRU reading (N, T, input_size) whose final hidden state a Linear layer maps to
    ``out_features`` (a class score each, or a number); ``every_step``: the Linear layer at every step.

    ``dropout``: between stacked recurrent layers and before the Linear layer.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, out_features: int, num_layers: int = 1,
                 dropout: float = 0.0, every_step: bool = False, dtype: Any = DEFAULT_DTYPE) -> None:
        self.mode, self.every_step = mode, bool(every_step)
        self.dropout = _check_dropout(dropout, "RecurrentNet")
        self.rnn = _recurrent(mode, input_size, hidden_size, num_layers, self.dropout, dtype)
        self.drop = Dropout(self.dropout)
        self.head = Linear(hidden_size, out_features, dtype=dtype)

    input_size = property(lambda self: self.rnn.input_size)
    hidden_size = property(lambda self: self.rnn.hidden_size)
    num_layers = property(lambda self: self.rnn.num_layers)
    out_features = property(lambda self: self.head.out_features)

    def forward(self, x: Any) -> Tensor:
        out, _ = self.rnn(x)
        if not self.every_step:
            out = out[:, -1]  # NOTE: the last layer's final hidden state (h_n[-1]), for every mode
        return self.head(self.drop(out))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, every_step={self.every_step}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """The recurrent layer's node(s), Gather of the last step, MatMul + Add."""
        y = g.layer(self.rnn, x, "rnn")
        if not self.every_step:
            y = _last_step_onnx(g, y)
        return _head_onnx(self.head, g, y, 3 if self.every_step else 2)


def _transformer_weights(kw: Any) -> int:
    d = kw["d_model"]
    return kw["num_layers"] * (4 * d * d + 2 * d * kw.get("dim_feedforward", 4 * d))


@layer_type({
    "input_size": SIZE, "d_model": SIZE, "nhead": SIZE, "num_layers": _LAYERS_ARG, "out_features": SIZE,
    "dim_feedforward": SIZE, "dropout": _DROPOUT, "max_len": SIZE, "every_step": bool,
}, examples=[
    Example(lambda: TransformerNet(3, 8, 2, 1, 4, dim_feedforward=16, dropout=0.0, max_len=10), (2, 5, 3), None,
            "mean over steps"),
    Example(lambda: TransformerNet(2, 4, 1, 2, 3, dim_feedforward=8, dropout=0.0, max_len=6, every_step=True),
            (3, 6, 2), None, "every step"),
], min_weights=_transformer_weights)
class TransformerNet(Module):
    """A small transformer encoder reading (N, T, input_size): every step projected to ``d_model``, the
    sinusoidal positional encoding added, ``num_layers`` pre-norm encoder layers (``nhead`` heads,
    ``dim_feedforward`` wide, default 4 d_model) and a final LayerNorm, then the mean over the steps into a
    Linear layer to ``out_features`` (``every_step``: the Linear layer at every step). T <= ``max_len``.
    """

    def __init__(self, input_size: int, d_model: int, nhead: int, num_layers: int, out_features: int,
                 dim_feedforward: int | None = None, dropout: float = 0.1, max_len: int = 512,
                 every_step: bool = False, dtype: Any = DEFAULT_DTYPE) -> None:
        self.dropout = _check_dropout(dropout, "TransformerNet")
        self.every_step = bool(every_step)
        self.project = Linear(input_size, d_model, dtype=dtype)
        self.position = PositionalEncoding(d_model, max_len=max_len, dropout=self.dropout, batch_first=True,
                                           dtype=dtype)
        self.encoder = _encoder(d_model, nhead, dim_feedforward, num_layers, self.dropout, dtype)
        self.head = Linear(d_model, out_features, dtype=dtype)

    input_size = property(lambda self: self.project.in_features)
    d_model = property(lambda self: self.project.out_features)
    nhead = property(lambda self: self.encoder.layers[0].nhead)
    num_layers = property(lambda self: self.encoder.num_layers)
    dim_feedforward = property(lambda self: self.encoder.layers[0].dim_feedforward)
    max_len = property(lambda self: self.position.max_len)
    out_features = property(lambda self: self.head.out_features)

    def forward(self, x: Any) -> Tensor:
        h = self.encoder(self.position(self.project(x)))
        if not self.every_step:
            h = h.mean(axis=1)
        return self.head(h)

    def extra_repr(self) -> str:
        return f"every_step={self.every_step}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """MatMul + Add, the positional table's Add, the encoder's nodes, ReduceMean over the steps, MatMul + Add."""
        h = g.layer(self.encoder, g.layer(self.position, g.layer(self.project, x, "project"), "position"), "encoder")
        if not self.every_step:
            h = g.node("ReduceMean", [h, g.const([1], dtype=np.int64)], keepdims=0) if g.opset >= 18 else \
                g.node("ReduceMean", [h], axes=[1], keepdims=0)
        return _head_onnx(self.head, g, h, 3 if self.every_step else 2)


# ------------------------------------------------------------------------------------ language models
def _index_input(rng: np.random.Generator, vocab: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, vocab, shape)


@layer_type({
    "mode": _MODE, "vocab_size": SIZE, "embedding_dim": SIZE, "hidden_size": SIZE, "num_layers": _LAYERS_ARG,
    "dropout": _DROPOUT,
}, examples=[
    Example(lambda: RecurrentLM("lstm", 7, 4, 6), lambda rng: _index_input(rng, 7, (2, 5)), None, "lstm"),
    Example(lambda: RecurrentLM("gru", 5, 3, 4, num_layers=2), lambda rng: _index_input(rng, 5, (3, 4)), None,
            "gru 2 layers"),
], min_weights=lambda kw: _recurrent_weights(kw, kw["embedding_dim"]) + kw["vocab_size"] * kw["embedding_dim"])
class RecurrentLM(Module):
    """A language model over a vocabulary of ``vocab_size`` tokens: Embedding -> RNN/LSTM/GRU -> Linear.

    ``forward(indices (N, T)) -> logits (N, T, vocab_size)``: at step t the scores of the token after
    ``indices[:, :t + 1]``. :meth:`step` carries the recurrent state from one call to the next (sampling one
    token at a time). ``dropout``: after the embedding, between stacked layers and before the Linear layer.
    """

    input_kind = "indices"

    def __init__(self, mode: str, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, dtype: Any = DEFAULT_DTYPE) -> None:
        self.mode = mode
        self.dropout = _check_dropout(dropout, "RecurrentLM")
        self.embedding = Embedding(vocab_size, embedding_dim, dtype=dtype)
        self.rnn = _recurrent(mode, embedding_dim, hidden_size, num_layers, self.dropout, dtype)
        self.drop = Dropout(self.dropout)
        self.head = Linear(hidden_size, vocab_size, dtype=dtype)

    vocab_size = property(lambda self: self.embedding.num_embeddings)
    embedding_dim = property(lambda self: self.embedding.embedding_dim)
    hidden_size = property(lambda self: self.rnn.hidden_size)
    num_layers = property(lambda self: self.rnn.num_layers)

    def step(self, indices: Any, state: Any = None) -> tuple[Tensor, Any]:
        """Logits (N, T, V) for ``indices`` (N, T) continuing from ``state`` (None: the start), and the state
        after them (``h_n``, or ``(h_n, c_n)`` for an LSTM)."""
        out, state = self.rnn(self.drop(self.embedding(indices)), state)
        return self.head(self.drop(out)), state

    def forward(self, indices: Any) -> Tensor:
        return self.step(indices)[0]

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Gather of the embeddings, the recurrent layer's node(s), MatMul + Add at every step."""
        e = g.layer(self.embedding, x, "embedding")
        return _head_onnx(self.head, g, g.layer(self.rnn, e, "rnn"), 3)


@layer_type({
    "vocab_size": SIZE, "d_model": SIZE, "nhead": SIZE, "num_layers": _LAYERS_ARG, "dim_feedforward": SIZE,
    "dropout": _DROPOUT, "max_len": SIZE,
}, examples=[
    Example(lambda: TransformerLM(6, 8, 2, 1, dim_feedforward=16, dropout=0.0, max_len=8),
            lambda rng: _index_input(rng, 6, (2, 5)), None, "one layer"),
    Example(lambda: TransformerLM(5, 4, 1, 2, dim_feedforward=8, dropout=0.0, max_len=4),
            lambda rng: _index_input(rng, 5, (3, 4)), None, "two layers"),
], min_weights=lambda kw: _transformer_weights(kw) + kw["vocab_size"] * kw["d_model"])
class TransformerLM(Module):
    """A causal transformer language model: Embedding + sinusoidal positions ->
    ``num_layers`` pre-norm encoder layers with a causal mask and a final LayerNorm -> Linear over the
    vocabulary at every step. ``forward(indices (N, T)) -> logits (N, T, vocab_size)``, T <= ``max_len``.
    """

    input_kind = "indices"

    def __init__(self, vocab_size: int, d_model: int, nhead: int, num_layers: int, dim_feedforward: int | None = None,
                 dropout: float = 0.1, max_len: int = 256, dtype: Any = DEFAULT_DTYPE) -> None:
        self.dropout = _check_dropout(dropout, "TransformerLM")
        self.embedding = Embedding(vocab_size, d_model, dtype=dtype)
        self.position = PositionalEncoding(d_model, max_len=max_len, dropout=self.dropout, batch_first=True,
                                           dtype=dtype)
        self.encoder = _encoder(d_model, nhead, dim_feedforward, num_layers, self.dropout, dtype)
        self.head = Linear(d_model, vocab_size, dtype=dtype)

    vocab_size = property(lambda self: self.embedding.num_embeddings)
    d_model = property(lambda self: self.embedding.embedding_dim)
    nhead = property(lambda self: self.encoder.layers[0].nhead)
    num_layers = property(lambda self: self.encoder.num_layers)
    dim_feedforward = property(lambda self: self.encoder.layers[0].dim_feedforward)
    max_len = property(lambda self: self.position.max_len)

    def forward(self, indices: Any) -> Tensor:
        # NOTE: not scaled by sqrt(d_model) as in Vaswani et al., whose embeddings start at a variance of
        # 1 / d_model: these start at N(0, 1), the scale of the positional table's sines and cosines
        return self.head(self.encoder(self.position(self.embedding(indices)), is_causal=True))

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Gather, the positional table's Add, the encoder's nodes with the causal mask, MatMul + Add."""
        h = g.layer(self.position, g.layer(self.embedding, x, "embedding"), "position")
        h = g.layer(self.encoder, h, "encoder", inputs={"is_causal": True})
        return _head_onnx(self.head, g, h, 3)


# ------------------------------------------------------------------------------------------- sampling
def _language_model(model: Module) -> Module:
    """The RecurrentLM or TransformerLM in ``model`` (itself, or the only layer of a Sequential)."""
    found = [m for m in model.modules() if isinstance(m, (RecurrentLM, TransformerLM))]
    if len(found) != 1:
        raise TypeError(f"generate needs a language model (RecurrentLM or TransformerLM), got {type(model).__name__}")
    return found[0]


def generate(model: Module, prompt: Any, length: int, temperature: float = 1.0, seed: Any = None) -> np.ndarray:
    """``length`` token indices sampled from ``model`` after ``prompt`` (indices, at least one).

    Each token is drawn from softmax(logits / temperature) of the model's scores after everything before
    it; ``temperature`` 0 takes the most likely token (greedy), higher values flatten the distribution. A
    :class:`RecurrentLM` carries its state from token to token (the whole text is its context); a
    :class:`TransformerLM` sees the last ``max_len`` tokens. ``seed`` makes the draw reproducible.
    """
    lm = _language_model(model)
    ids = np.asarray(prompt)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"generate: prompt must be a non-empty 1-D array of token indices, got shape {ids.shape} "
                         f"and dtype {ids.dtype}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"generate: length must be an integer >= 0, got {length!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not \
            (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"generate: temperature must be a finite number >= 0 (0: the most likely token), got "
                         f"{temperature!r}")
    rng = np.random.default_rng(seed)
    out = np.empty(int(length), dtype=np.int64)
    was_training = lm.training
    lm.eval()
    try:
        with no_grad():
            context, state = ids[None, :].astype(np.int64), None
            for i in range(int(length)):
                if isinstance(lm, RecurrentLM):
                    logits, state = lm.step(context, state)
                else:
                    logits = lm(context[:, -lm.max_len:])
                out[i] = _draw(logits.data[0, -1].astype(np.float64), temperature, rng)
                if isinstance(lm, RecurrentLM):
                    context = out[i:i + 1][None, :]
                else:
                    context = np.concatenate([context, out[None, i:i + 1]], axis=1)[:, -lm.max_len:]
    finally:
        lm.train(was_training)
    return out


def _draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))
