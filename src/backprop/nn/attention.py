"""Multi-head attention (``torch.nn.MultiheadAttention``) and the masked softmax it is built on.

``MultiheadAttention`` has PyTorch's arguments, parameter names and layouts (``in_proj_weight`` (3E, E),
``in_proj_bias`` (3E,), ``out_proj.weight``, ``out_proj.bias``; ``q_proj_weight``/``k_proj_weight``/
``v_proj_weight`` when ``kdim``/``vdim`` differ from ``embed_dim``), its masks (boolean: True = may not
attend; float: added to the scores), its shapes (``batch_first``, unbatched inputs) and its return value
``(attn_output, attn_weights)``, so weights move to and from PyTorch through safetensors. It is composed of
registered ops: one fused ``linear`` per projection, reshapes and transposes that put the heads next to the
batch, **one batched matmul** for the scores of every head of every sequence, the fused
:class:`MaskedSoftmax`, dropout, a second batched matmul and the output projection; so every gradient comes
from ops the test suite gradient-checks.

A query row whose keys are all masked has no distribution to attend with: its weights are all zero and its
output is the output projection's bias, with no gradient flowing through the row. That is what PyTorch's
``scaled_dot_product_attention`` (its ``need_weights=False`` path, and ``torch._safe_softmax``) returns;
PyTorch's ``need_weights=True`` path returns NaN there instead.

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> mha = MultiheadAttention(embed_dim=8, num_heads=2, batch_first=True)
>>> x = bp.tensor(np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32))
>>> out, weights = mha(x, x, x, is_causal=True)      # self-attention; each position sees itself and the past
>>> out.shape, weights.shape, bool(np.allclose(weights.data.sum(-1), 1.0)), float(weights.data[0, 0, 1])
((3, 5, 8), (3, 5, 5), True, 0.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import backprop.nn.functional as F
from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import DEFAULT_DTYPE, Function, Tensor
from backprop.nn.contract import OnnxGraph
from backprop.nn.init import constant_, xavier_uniform_
from backprop.nn.layers import Linear
from backprop.nn.module import Module, Parameter
from backprop.nn.registry import SIZE, Arg, Example, layer_type, small_int

__all__ = [
    "MaskedSoftmax", "MultiheadAttention", "attention_onnx", "generate_square_subsequent_mask", "masked_softmax",
    "onnx_mask",
]


# ------------------------------------------------------------------------------------- the masked softmax
_ROWS = np.array([[False, True, False, True], [True, True, True, True], [False, False, False, True]])
_KEYS = np.array([[False, False, True, False], [True, False, False, False]])
_ADD = sample((3, 4), seed=7)
_ADD_INF = np.where(_ROWS, -np.inf, 0.0)


def _torch_masked(T: Any, x: Any, *masks: Any) -> Any:
    for m in masks:
        m = T.tensor(m)
        x = x.masked_fill(m, float("-inf")) if m.dtype == T.bool else x + m
    return T._safe_softmax(x, -1)


@register(cases(
    Case("no mask", lambda x: masked_softmax(x), [sample((2, 3, 4), seed=5)], lambda T, x: _torch_masked(T, x)),
    Case("bool mask, a fully masked row", lambda x: masked_softmax(x, (_ROWS,)), [sample((2, 3, 4), seed=6)],
         lambda T, x: _torch_masked(T, x, _ROWS)),
    Case("bool masks reshaped", lambda x: masked_softmax(x, (_KEYS, _ROWS), ((2, 1, 1, 4), (1, 1, 3, 4))),
         [sample((2, 2, 3, 4), seed=8)],
         lambda T, x: _torch_masked(T, x, _KEYS.reshape(2, 1, 1, 4), _ROWS)),
    Case("float masks with -inf", lambda x: masked_softmax(x, (_ADD, _ADD_INF)), [sample((3, 4), seed=9)],
         lambda T, x: _torch_masked(T, x, _ADD, _ADD_INF)),
))
class MaskedSoftmax(Function):
    """Softmax over the last axis of ``x`` after its masks: a bool mask puts -inf where it is True (not
    allowed), a float mask is added; each mask is first reshaped to its entry of ``shapes`` (empty: as it is),
    then broadcast against ``x``. The masks are arrays, not inputs of the graph: they get no gradient.

    Stable for any scores (the row maximum is shifted out). A row left all -inf gives zeros and passes no
    gradient, as ``torch._safe_softmax``.
    """

    @staticmethod
    def kernel_forward(x, masks=(), shapes=()):
        z = None  # NOTE: x is never written: it is the op's input (another op's output, or the user's array)
        for i, m in enumerate(masks):
            if i < len(shapes) and shapes[i]:
                m = m.reshape(shapes[i])
            if m.dtype == np.bool_:
                if z is None:
                    z = x.copy()
                np.copyto(z, -np.inf, where=m)
            else:
                z = x + m.astype(x.dtype, copy=False) if z is None else z.__iadd__(m.astype(x.dtype, copy=False))
        top = (x if z is None else z).max(axis=-1, keepdims=True)
        dead = top == -np.inf  # NOTE: every key masked: exp(-inf - -inf) would be NaN
        any_dead = bool(dead.any())
        if any_dead:
            top[dead] = 0.0
        if z is None:
            z = x - top
        else:
            z -= top
        np.exp(z, out=z)
        total = z.sum(axis=-1, keepdims=True)
        if any_dead:
            total[dead] = 1.0  # 0 / 1: the dead row stays 0
        z /= total
        return z, z

    @staticmethod
    def kernel_backward(s, g, needs):  # J^T g = s * (g - <g, s>): zero on a dead row, where s is 0
        return s * (g - (g * s).sum(axis=-1, keepdims=True))


def masked_softmax(x: Tensor, masks: tuple[Any, ...] = (), shapes: tuple[tuple[int, ...], ...] = ()) -> Tensor:
    """Softmax over the last axis with ``masks`` applied first (see :class:`MaskedSoftmax`).

    >>> import backprop as bp
    >>> masked_softmax(bp.tensor([[1.0, 1.0, 5.0], [0.0, 0.0, 0.0]]), (np.array([False, False, True]),)).tolist()
    [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]
    """
    arrays = tuple(m.data if isinstance(m, Tensor) else np.asarray(m) for m in masks)
    return MaskedSoftmax.apply(x, masks=arrays, shapes=tuple(tuple(s) for s in shapes))


def generate_square_subsequent_mask(size: int, dtype: Any = DEFAULT_DTYPE) -> np.ndarray:
    """The causal mask of ``torch.nn.Transformer.generate_square_subsequent_mask``: a float (size, size) array,
    -inf above the diagonal (position i may not attend to j > i), 0 elsewhere.

    >>> generate_square_subsequent_mask(3).tolist()
    [[0.0, -inf, -inf], [0.0, 0.0, -inf], [0.0, 0.0, 0.0]]
    """
    if not small_int(size, 1):
        raise ValueError(f"generate_square_subsequent_mask: size must be a positive integer, got {size!r}")
    return np.triu(np.full((size, size), -np.inf, dtype=dtype), k=1)


def _causal(tgt_len: int, src_len: int) -> np.ndarray:
    """Boolean (L, S): True where key j comes after query i (j > i), what ``is_causal`` masks out."""
    return np.triu(np.ones((tgt_len, src_len), dtype=bool), k=1)


# ------------------------------------------------------------------------------------------- the layer
def _mask_array(mask: Any, name: str) -> np.ndarray | Tensor:
    """A mask as given: a float Tensor that requires grad stays a Tensor (its gradient flows), anything
    else becomes its array; only bool and floating dtypes are masks."""
    if isinstance(mask, Tensor):
        if mask.requires_grad:
            return mask
        mask = mask.data
    arr = np.asarray(mask)
    if arr.dtype != np.bool_ and arr.dtype.kind != "f":
        raise TypeError(f"MultiheadAttention: {name} must be a bool mask (True: not allowed) or a float mask (added "
                        f"to the scores), got dtype {arr.dtype}")
    # NOTE: seen as a tensor, so that a captured step (bp.jit) follows a mask passed in as an input of the step and
    # refuses (runs eagerly) one computed from the batch with NumPy, which a replay would keep; the same array
    return Tensor(arr).data


def _attention_args(embed_dim: Any, num_heads: Any, dropout: Any, kdim: Any, vdim: Any) -> None:
    for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
        if not small_int(v, 1):
            raise ValueError(f"MultiheadAttention: {name} must be a positive integer, got {v!r}")
    for name, v in (("kdim", kdim), ("vdim", vdim)):
        if v is not None and not small_int(v, 1):
            raise ValueError(f"MultiheadAttention: {name} must be a positive integer or None, got {v!r}")
    if embed_dim % num_heads:
        raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}): "
                         f"each head gets embed_dim // num_heads features")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"MultiheadAttention: dropout must be a number in [0, 1), got {dropout!r}")


def _mha_weights(kw: dict[str, Any]) -> int:
    e = kw["embed_dim"]
    return e * (e + (kw.get("kdim") or e) + (kw.get("vdim") or e)) + e * e


@layer_type({
    "embed_dim": SIZE, "num_heads": SIZE,
    "dropout": Arg(float, check=lambda v: 0.0 <= v < 1.0, expect="a number in [0, 1)"),
    "bias": Arg(bool, get=lambda m: m.in_proj_bias is not None), "batch_first": bool,
    "kdim": Arg((int, type(None)), check=lambda v: v is None or small_int(v, 1), expect="a size or null"),
    "vdim": Arg((int, type(None)), check=lambda v: v is None or small_int(v, 1), expect="a size or null"),
}, examples=[
    Example(lambda: MultiheadAttention(8, 2), (5, 3, 8),
            lambda T: _self_attention(T)(8, 2), "self-attention (L, N, E)"),
    Example(lambda: MultiheadAttention(6, 3, bias=False, batch_first=True), (2, 4, 6),
            lambda T: _self_attention(T)(6, 3, bias=False, batch_first=True), "batch_first no bias"),
    Example(lambda: MultiheadAttention(4, 1, dropout=0.5, batch_first=True), (3, 2, 4), None, "dropout"),
], min_weights=_mha_weights)
class MultiheadAttention(Module):
    """Attention over ``num_heads`` heads of ``embed_dim // num_heads`` features each (``torch.nn.MultiheadAttention``).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns ``(attn_output, attn_weights)``:

    * shapes (L: target length, S: source length, N: batch, E: ``embed_dim``): query (L, N, E), key (S, N,
      kdim), value (S, N, vdim), attn_output (L, N, E); with ``batch_first=True`` (N, L, E)...; unbatched
      (L, E), (S, kdim), (S, vdim) give (L, E). ``key`` and ``value`` default to ``query`` (self-attention;
      PyTorch requires them), so the layer also runs on one input, in a ``Sequential`` or an ONNX export.
    * ``key_padding_mask`` (N, S) (unbatched (S,)): True (bool) marks padding keys no query may attend to;
      a float mask is added to the scores. ``attn_mask`` (L, S), or (N * num_heads, L, S) per sequence and head
      (unbatched: (num_heads, L, S)), bool or float alike. Both may be given: they are combined.
    * ``is_causal=True`` with no ``attn_mask`` masks every key after the query's position (j > i), the mask
      PyTorch's ``generate_square_subsequent_mask`` makes (PyTorch itself requires that mask as ``attn_mask``
      and takes ``is_causal`` as a hint); with an ``attn_mask`` the mask is used as given, as in PyTorch.
    * ``attn_weights``: (N, L, S) averaged over the heads, (N, num_heads, L, S) with
      ``average_attn_weights=False``, None with ``need_weights=False``; in training they are the weights
      after dropout, the ones the output was computed with (as in PyTorch).
    * dropout (training only) zeroes attention weights with probability ``dropout``, drawing from backprop's
      seeded generator (``bp.manual_seed``).

    A query whose every key is masked gets zero weights (see the module docstring).

    >>> import backprop as bp
    >>> _ = bp.manual_seed(0)
    >>> mha = MultiheadAttention(4, 2, kdim=3, vdim=5)
    >>> [(name, p.shape) for name, p in mha.named_parameters()][:3]
    [('q_proj_weight', (4, 4)), ('k_proj_weight', (4, 3)), ('v_proj_weight', (4, 5))]
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, kdim: int | None = None, vdim: int | None = None,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        _attention_args(embed_dim, num_heads, dropout, kdim, vdim)
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.kdim = self.embed_dim if kdim is None else int(kdim)
        self.vdim = self.embed_dim if vdim is None else int(vdim)
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        e = self.embed_dim
        # NOTE: assigned in PyTorch's order, so state_dict and named_parameters list the same names in the same order
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(np.empty((3 * e, e), dtype=dtype))
        else:
            self.q_proj_weight = Parameter(np.empty((e, e), dtype=dtype))
            self.k_proj_weight = Parameter(np.empty((e, self.kdim), dtype=dtype))
            self.v_proj_weight = Parameter(np.empty((e, self.vdim), dtype=dtype))
        self.in_proj_bias = Parameter(np.empty(3 * e, dtype=dtype)) if bias else None
        self.out_proj = Linear(e, e, bias=bias, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialisation: Xavier-uniform projections, zero biases (``out_proj.weight`` as a Linear's)."""
        if self._qkv_same_embed_dim:
            xavier_uniform_(self.in_proj_weight)
        else:
            xavier_uniform_(self.q_proj_weight)
            xavier_uniform_(self.k_proj_weight)
            xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            constant_(self.in_proj_bias, 0.0)
            constant_(self.out_proj.bias, 0.0)

    def extra_repr(self) -> str:
        extra = "" if self._qkv_same_embed_dim else f", kdim={self.kdim}, vdim={self.vdim}"
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}{extra}")

    # -------------------------------------------------------------------------------------------- forward
    def _as_tensor(self, x: Any, name: str) -> Tensor:
        if isinstance(x, Tensor):
            return x
        arr = np.asarray(x)
        if arr.dtype.kind != "f":
            raise TypeError(f"MultiheadAttention: {name} must be a float tensor, got dtype {arr.dtype}")
        return Tensor(arr)

    def _projections(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e, b = self.embed_dim, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e:2 * e], b[2 * e:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if q is k and k is v:  # NOTE: self-attention: one GEMM for all three projections, then split
                qkv = F.linear(q, w, b)
                return qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
            wq, wk, wv = w[:e], w[e:2 * e], w[2 * e:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(v, wv, bv)

    def _masks(self, key_padding_mask: Any, attn_mask: Any, is_causal: bool, batched: bool, n: int, tgt: int,
               src: int) -> tuple[list[np.ndarray], list[tuple[int, ...]], list[Tensor]]:
        """The masks as (arrays, shapes to broadcast against the (N, H, L, S) scores, float Tensors that
        require grad and are added to the scores instead)."""
        h = self.num_heads
        arrays: list[np.ndarray] = []
        shapes: list[tuple[int, ...]] = []
        added: list[Tensor] = []

        def take(mask: Any, shape: tuple[int, ...]) -> None:
            if isinstance(mask, Tensor):
                added.append(mask.reshape(shape))
            else:
                arrays.append(mask)
                shapes.append(shape)

        if key_padding_mask is not None:
            kpm = _mask_array(key_padding_mask, "key_padding_mask")
            want = (n, src) if batched else (src,)
            if tuple(kpm.shape) != want:
                raise ValueError(f"MultiheadAttention: key_padding_mask must have shape {want} "
                                 f"({'(N, S)' if batched else '(S,) for an unbatched query'}), got {tuple(kpm.shape)}")
            take(kpm, (n, 1, 1, src))
        if attn_mask is None and is_causal:
            attn_mask = _causal(tgt, src)
        if attn_mask is not None:
            am = _mask_array(attn_mask, "attn_mask")
            if am.ndim == 2:
                if tuple(am.shape) != (tgt, src):
                    raise ValueError(f"MultiheadAttention: a 2-D attn_mask must have shape (L, S) = {(tgt, src)}, "
                                     f"got {tuple(am.shape)}")
                take(am, (1, 1, tgt, src))
            elif am.ndim == 3:
                want3 = (n * h, tgt, src) if batched else (h, tgt, src)
                if tuple(am.shape) != want3:
                    what = "(N * num_heads, L, S)" if batched else "(num_heads, L, S) for an unbatched query"
                    raise ValueError(f"MultiheadAttention: a 3-D attn_mask must have shape {what} = {want3}, "
                                     f"got {tuple(am.shape)}")
                take(am, (n, h, tgt, src))
            else:
                raise ValueError(f"MultiheadAttention: attn_mask must be 2-D (L, S) or 3-D (N * num_heads, L, S), "
                                 f"got shape {tuple(am.shape)}")
        return arrays, shapes, added

    def forward(self, query: Any, key: Any = None, value: Any = None, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        q = self._as_tensor(query, "query")
        k = q if key is None else self._as_tensor(key, "key")
        v = k if value is None and key is not None else (q if value is None else self._as_tensor(value, "value"))
        if q.ndim not in (2, 3):
            raise ValueError(f"MultiheadAttention: query must be unbatched 2-D (L, E) or batched 3-D, got shape {q.shape}")
        batched = q.ndim == 3
        if k.ndim != q.ndim or v.ndim != q.ndim:
            raise ValueError(f"MultiheadAttention: key and value must be {q.ndim}-D like the query {q.shape}, got "
                             f"key {k.shape} and value {v.shape}")
        for name, t, dim in (("query", q, self.embed_dim), ("key", k, self.kdim), ("value", v, self.vdim)):
            if t.shape[-1] != dim:
                raise ValueError(f"MultiheadAttention: {name} has {t.shape[-1]} features (shape {t.shape}), expected "
                                 f"{dim} ({'embed_dim' if name == 'query' else name[0] + 'dim'})")
        # the layout: bf (batch first: (N, L, E)), else (L, N, E); unbatched (L, E) is bf with N = 1
        bf = self.batch_first or not batched
        seq_axis, batch_axis = (1, 0) if self.batch_first else (0, 1)
        if batched:
            n, tgt, src = q.shape[batch_axis], q.shape[seq_axis], k.shape[seq_axis]
            if k.shape[:2] != v.shape[:2] or k.shape[batch_axis] != n:
                raise ValueError(f"MultiheadAttention: key {k.shape} and value {v.shape} must have the query's batch "
                                 f"size ({n}) and one source length")
        else:
            n, tgt, src = 1, q.shape[0], k.shape[0]
            if v.shape[0] != src:
                raise ValueError(f"MultiheadAttention: key {k.shape} and value {v.shape} must have one source length")
        arrays, shapes, added = self._masks(key_padding_mask, attn_mask, is_causal, batched, n, tgt, src)

        qp, kp, vp = self._projections(q, k, v)
        h, d, e = self.num_heads, self.head_dim, self.embed_dim
        if not batched:
            qp, kp, vp = qp.reshape(1, tgt, e), kp.reshape(1, src, e), vp.reshape(1, src, e)
        # NOTE: (N, L, H, d) or (L, N, H, d) -> (N, H, L, d): the heads join the batch, one matmul does them all
        q_perm, k_perm, back = ((0, 2, 1, 3), (0, 2, 3, 1), (0, 2, 1, 3)) if bf else \
            ((1, 2, 0, 3), (1, 2, 3, 0), (2, 0, 1, 3))
        lead_q, lead_k = qp.shape[:2], kp.shape[:2]
        qh = qp.reshape(*lead_q, h, d).transpose(*q_perm) * math.sqrt(1.0 / d)  # scaled first, as PyTorch
        kt = kp.reshape(*lead_k, h, d).transpose(*k_perm)  # (N, H, d, S)
        vh = vp.reshape(*lead_k, h, d).transpose(*q_perm)  # (N, H, S, d)
        scores = qh @ kt  # (N, H, L, S)
        for m in added:
            scores = scores + m
        weights = masked_softmax(scores, tuple(arrays), tuple(shapes))
        weights = F.dropout(weights, self.dropout, self.training)
        out = (weights @ vh).transpose(*back)  # (N, L, H, d) or (L, N, H, d)
        out = self.out_proj(out.reshape(*out.shape[:2], e))
        if not batched:
            out = out.reshape(tgt, e)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(axis=1)
        if not batched:
            weights = weights.reshape(weights.shape[1:])
        return out, weights

    # ----------------------------------------------------------------------------------------------- ONNX
    def onnx(self, g: OnnxGraph, query: str, key: str | None = None, value: str | None = None,
             key_padding_mask: str | None = None, need_weights: bool = True, attn_mask: str | None = None,
             average_attn_weights: bool = True, is_causal: bool = False) -> str | tuple[str, str]:
        """MatMul/Add projections, Reshape + Transpose to (N, H, L, d), MatMul, Softmax (masks: Where/Add, and a
        row with every key masked set to 0), MatMul, Transpose + Reshape back, MatMul/Add.

        In a ``Sequential`` (one input) it is self-attention; exported alone with a dict of inputs
        (``export(mha, path, {"query": q, "key": k, "key_padding_mask": m, "need_weights": False})``) the masks
        are graph inputs and ``is_causal`` a constant. Returns the output and, when ``need_weights``, the weights.
        """
        k_name = query if key is None else key
        v_name = k_name if value is None and key is not None else (query if value is None else value)
        q_shape = g.in_shape
        k_shape = q_shape if k_name == query else g.example(k_name).shape
        masks = [onnx_mask(g, name, what) for name, what in ((key_padding_mask, "key_padding_mask"),
                                                               (attn_mask, "attn_mask"))]
        out, weights = attention_onnx(self, g, query, k_name, v_name, q_shape, k_shape, masks[0], masks[1],
                                      bool(is_causal), bool(need_weights), bool(average_attn_weights))
        return out if weights is None else (out, weights)


def onnx_mask(g: OnnxGraph, name: Any, what: str) -> tuple[str, np.ndarray] | None:
    """A mask argument of an export: None, or (its graph input's name, its example value)."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise g.error(f"{what} must be a graph input: give it as an array in the dict of inputs, got "
                      f"{type(name).__name__}")
    return name, g.example(name)


def _self_attention(T: Any) -> Any:
    """PyTorch's MultiheadAttention called on one input (self-attention), for the registry's examples."""

    class SelfAttention(T.nn.MultiheadAttention):
        def forward(self, x: Any) -> Any:
            return super().forward(x, x, x)

    return SelfAttention


# -------------------------------------------------------------------------------------------- ONNX graph
def attention_onnx(m: MultiheadAttention, g: OnnxGraph, q: str, k: str, v: str, q_shape: tuple[int, ...],
                   k_shape: tuple[int, ...], key_padding_mask: tuple[str, np.ndarray] | None,
                   attn_mask: tuple[str, np.ndarray] | None, is_causal: bool, need_weights: bool,
                   average: bool) -> tuple[str, str | None]:
    """The nodes of ``m`` on the graph values ``q``, ``k``, ``v`` (of the example shapes ``q_shape``,
    ``k_shape``); masks as (graph name, example value). Returns (output, weights or None).

    Every size but the head count and head size is read from the input at run time (Reshape with 0 copies a
    dimension), so dynamic dimensions stay dynamic.
    """
    e, h, d = m.embed_dim, m.num_heads, m.head_dim
    rank = len(q_shape)
    if rank not in (2, 3) or len(k_shape) != rank:
        raise g.error(f"expected a query of shape (L, E) or (N, L, E)/(L, N, E), got example shape {q_shape}")
    bf = m.batch_first or rank == 2
    b = None if m.in_proj_bias is None else m.in_proj_bias.data
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight.data
        ws = (w[:e], w[e:2 * e], w[2 * e:])
    else:
        ws = (m.q_proj_weight.data, m.k_proj_weight.data, m.v_proj_weight.data)
    heads = [0, h, d] if rank == 2 else [0, 0, h, d]
    if rank == 2:
        q_perm, k_perm, back = (1, 0, 2), (1, 2, 0), (1, 0, 2)
    elif bf:
        q_perm, k_perm, back = (0, 2, 1, 3), (0, 2, 3, 1), (0, 2, 1, 3)
    else:
        q_perm, k_perm, back = (1, 2, 0, 3), (1, 2, 3, 0), (2, 0, 1, 3)

    def project(x: str, i: int, perm: tuple[int, ...], what: str) -> str:
        y = g.node("MatMul", [x, g.weight(ws[i].T, f"{what}_proj_weight_t")])
        if b is not None:
            y = g.node("Add", [y, g.weight(b[i * e:(i + 1) * e], f"{what}_proj_bias")])
        return g.node("Transpose", [g.node("Reshape", [y, g.const(heads, dtype=np.int64)])], perm=list(perm))

    qh = g.node("Mul", [project(q, 0, q_perm, "q"), g.const(math.sqrt(1.0 / d))])
    scores = g.node("MatMul", [qh, project(k, 1, k_perm, "k")])  # (N, H, L, S) or (H, L, S)
    masked = False
    neg_inf = g.const(-np.inf)
    if key_padding_mask is not None:
        name, value = key_padding_mask
        if rank == 3:  # (N, S) -> (N, 1, 1, S)
            name = g.node("Unsqueeze", [name, g.const([1, 2], dtype=np.int64)])
        scores = _apply_mask(g, scores, name, value.dtype == np.bool_, neg_inf)
        masked = True
    if attn_mask is not None:
        name, value = attn_mask
        if value.ndim == 3 and rank == 3:  # (N * H, L, S) -> (N, H, L, S)
            name = g.node("Reshape", [name, g.const([-1, h, *value.shape[1:]], dtype=np.int64)])
        scores = _apply_mask(g, scores, name, value.dtype == np.bool_, neg_inf)
        masked = True
    elif is_causal:  # NOTE: built from the scores' shape at run time, so the sequence length may vary
        shape = g.node("Shape", [scores])
        one = g.const(1, dtype=np.int64)
        zero = g.const(0, dtype=np.int64)
        rows = g.node("Range", [zero, g.node("Gather", [shape, g.const(-2, dtype=np.int64)]), one])
        cols = g.node("Range", [zero, g.node("Gather", [shape, g.const(-1, dtype=np.int64)]), one])
        later = g.node("Greater", [g.node("Unsqueeze", [cols, g.const([0], dtype=np.int64)]),
                                   g.node("Unsqueeze", [rows, g.const([1], dtype=np.int64)])])
        scores = g.node("Where", [later, neg_inf, scores])
        masked = True
    weights = g.node("Softmax", [scores], axis=-1)
    if masked:  # NOTE: Softmax of a row of -inf is NaN; backprop (and PyTorch's SDPA) give zeros there
        weights = g.node("Where", [g.node("IsNaN", [weights]), g.const(0.0), weights])
    out = g.node("MatMul", [weights, project(v, 2, q_perm, "v")])
    out = g.node("Reshape", [g.node("Transpose", [out], perm=list(back)),
                             g.const([0, e] if rank == 2 else [0, 0, e], dtype=np.int64)])
    out = g.node("MatMul", [out, g.weight(m.out_proj.weight.data.T, "out_proj.weight_t")])
    if m.out_proj.bias is not None:
        out = g.node("Add", [out, g.weight(m.out_proj.bias.data, "out_proj.bias")])
    if not need_weights:
        return out, None
    if average:
        axis = 0 if rank == 2 else 1
        if g.opset >= 18:
            weights = g.node("ReduceMean", [weights, g.const([axis], dtype=np.int64)], keepdims=0)
        else:
            weights = g.node("ReduceMean", [weights], axes=[axis], keepdims=0)
    return out, weights


def _apply_mask(g: OnnxGraph, scores: str, mask: str, is_bool: bool, neg_inf: str) -> str:
    return g.node("Where", [mask, neg_inf, scores]) if is_bool else g.node("Add", [scores, mask])
