"""Embedding: a trainable lookup table, row ``i`` of the weight for index ``i`` (``torch.nn.Embedding``).

The lookup is one :class:`~backprop.engine.tensor.Function`: forward gathers rows, backward scatter-adds
the incoming gradient into a zero table with ``np.add.at``, so an index used k times gets the sum of its
k gradients. The ``padding_idx`` row gets no gradient (and starts at zero in the Module).

>>> import backprop as bp
>>> _ = bp.manual_seed(0)
>>> emb = Embedding(10, 4, padding_idx=0)
>>> out = emb(np.array([[1, 2, 0], [2, 2, 9]]))
>>> out.shape, float(np.abs(out.data[0, 2]).sum())      # (batch, sequence, embedding_dim); padding is zero
((2, 3, 4), 0.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import DEFAULT_DTYPE, Function, Tensor
from backprop.nn.contract import OnnxGraph
from backprop.nn.init import normal_
from backprop.nn.module import Module, Parameter
from backprop.nn.registry import SIZE, Arg, Example, layer_type

__all__ = ["Embedding", "EmbeddingLookup", "embedding"]

_IDX = np.array([[0, 2], [2, 4], [0, 0]])
_PAD_MASK = (_IDX != 2).astype(np.float64)[..., None]


@register(cases(
    Case("repeated indices", lambda w: embedding(_IDX, w), [sample((5, 3))],
         lambda T, w: T.nn.functional.embedding(T.tensor(_IDX), w)),
    # NOTE: the padding row gets no gradient although the output depends on it, which finite differences
    # cannot agree with; masking the padded positions out of the output makes both zero there.
    Case("padding_idx", lambda w: embedding(_IDX, w, padding_idx=2) * _PAD_MASK, [sample((5, 3), seed=1)],
         lambda T, w: T.nn.functional.embedding(T.tensor(_IDX), w, padding_idx=2) * T.tensor(_PAD_MASK)),
    Case("1-d indices", lambda w: embedding(np.array([3, 1, 3]), w), [sample((4, 2), seed=2)],
         lambda T, w: T.nn.functional.embedding(T.tensor([3, 1, 3]), w)),
    Case("scalar index", lambda w: embedding(np.array(1), w), [sample((3, 2), seed=3)],
         lambda T, w: T.nn.functional.embedding(T.tensor(1), w)),
))
class EmbeddingLookup(Function):
    """``weight[indices]`` for a 2-D weight (num_embeddings, embedding_dim) and integer ``indices`` of any shape."""

    def forward(self, weight, indices=None, padding_idx=None):
        self.indices, self.padding_idx = indices, padding_idx
        self.shape, self.dtype = weight.shape, weight.dtype
        return weight[indices]

    def backward(self, g):  # scatter-add: rows used several times sum their gradients
        gw = np.zeros(self.shape, dtype=self.dtype)
        np.add.at(gw, self.indices.reshape(-1), g.reshape(-1, self.shape[1]))
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return gw


def _check_padding_idx(padding_idx: Any, num_embeddings: int, owner: str) -> int | None:
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
        raise TypeError(f"{owner}: padding_idx must be an integer or None, got {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"{owner}: padding_idx {padding_idx} is out of range for num_embeddings={num_embeddings}")
    return int(padding_idx) % num_embeddings


def _check_indices(indices: Any, num_embeddings: int) -> np.ndarray:
    idx = np.asarray(indices.data if isinstance(indices, Tensor) else indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if idx.size:
        lo, hi = idx.min(), idx.max()
        if lo < 0 or hi >= num_embeddings:
            bad = lo if lo < 0 else hi
            raise IndexError(f"embedding: index {bad} is out of range for num_embeddings={num_embeddings} "
                             f"(valid indices are 0 to {num_embeddings - 1})")
    return idx


def embedding(indices: Any, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` (num_embeddings, embedding_dim) picked by integer ``indices``: shape (*indices.shape, dim).

    Like ``torch.nn.functional.embedding``: the ``padding_idx`` row receives no gradient (its value is
    returned as it is).
    """
    w = weight if isinstance(weight, Tensor) else Tensor(np.asarray(weight))
    if w.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got shape {w.shape}")
    idx = _check_indices(indices, w.shape[0])
    pad = _check_padding_idx(padding_idx, w.shape[0], "embedding")
    return EmbeddingLookup.apply(w, indices=idx, padding_idx=pad)


@layer_type({"num_embeddings": SIZE, "embedding_dim": SIZE, "padding_idx": Arg((int, type(None)))}, examples=[
    Example(lambda: Embedding(10, 4), lambda rng: rng.integers(0, 10, (3, 5)), lambda T: T.nn.Embedding(10, 4)),
    Example(lambda: Embedding(6, 3, padding_idx=0), lambda rng: rng.integers(0, 6, (7,)),
            lambda T: T.nn.Embedding(6, 3, padding_idx=0), "padding_idx"),
], min_weights=lambda kw: kw["num_embeddings"] * kw["embedding_dim"])
class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``; weight ~ N(0, 1) as in PyTorch.

    ``padding_idx``: that row is zeroed at initialisation and never receives a gradient.
    """

    input_kind = "indices"

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        for name, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Embedding: {name} must be a positive integer, got {v!r}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = _check_padding_idx(padding_idx, self.num_embeddings, "Embedding")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"Embedding: dtype must be floating point, got {dtype}")
        self.weight = Parameter(np.empty((self.num_embeddings, self.embedding_dim), dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        normal_(self.weight, 0.0, 1.0)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings: Any, freeze: bool = True, padding_idx: int | None = None) -> Embedding:
        """An Embedding holding a copy of ``embeddings`` (2-D); ``freeze=True`` stops it from learning."""
        arr = np.array(embeddings.data if isinstance(embeddings, Tensor) else embeddings)
        if arr.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-D, got shape {arr.shape}")
        if arr.dtype.kind != "f":
            arr = arr.astype(DEFAULT_DTYPE)
        emb = cls.__new__(cls)
        emb.num_embeddings, emb.embedding_dim = arr.shape
        emb.padding_idx = _check_padding_idx(padding_idx, arr.shape[0], "Embedding.from_pretrained")
        emb.weight = Parameter(arr, requires_grad=not freeze)
        return emb

    def forward(self, indices: Any) -> Tensor:
        return embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"

    def onnx(self, g: OnnxGraph, x: str) -> str:
        """Gather of the table's rows (integer input)."""
        return g.node("Gather", [g.weight(self.weight.data, "weight"), x], axis=0)
