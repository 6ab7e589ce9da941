"""The recurrence of one RNN/LSTM/GRU layer in one direction, as one engine op: :class:`Recurrence`.

Backpropagation through time is an ordinary chain rule over a graph that reuses the same weights at every
step. Written as small ops it would be thousands of nodes per batch; here the whole sequence is one
:class:`~backprop.engine.function.Function` whose forward runs the time loop in NumPy and saves the gate
activations, and whose backward runs the loop backwards (the error flowing from step t to step t-1 through
``W_hh``) and then forms every weight gradient as **one** matrix product over all steps:

* before the loop, the input projection of all T steps is one GEMM, ``X (T*B, I) @ W_ih^T`` (biases added);
* each step is one GEMM for all gates of the batch, ``h_{t-1} (B, P) @ W_hh^T (P, G*H)``, and a few
  in-place elementwise NumPy calls into preallocated buffers;
* backward, each step is one GEMM ``dA_t @ W_hh`` carrying the error to ``h_{t-1}``; after the loop
  ``dW_ih = dA^T X``, ``dW_hh = dA^T H_prev`` and ``dX = dA W_ih`` are one GEMM each over all T*B rows.

Gates and formulas are PyTorch's (``torch.nn.RNN/LSTM/GRU``): LSTM gates i, f, g, o; GRU gates r, z, n with
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; optional LSTM projection ``h = W_hr (o * tanh(c))``.

Variable lengths (``lengths``, one per sequence, as ``pack_padded_sequence`` takes them): inside the op the
batch is sorted by length, longest first, so that at step t the sequences still running are the first rows;
each step then works on those rows only (as PyTorch's packed sequences do), padded steps change no state,
receive no gradient and give zero outputs, and the reverse direction starts at each sequence's own end.

The op's output is one flat array (an op has one output), from which the layer takes its views::

    forward direction:  [h0 | y_0 ... y_{T-1} | h_n | c_n]      (c_n for LSTM only)
    reverse direction:  [y_0 ... y_{T-1} | h0 | h_n | c_n]

each block (B, P) per step (P = proj_size or hidden_size; c_n is (B, H)). The h0 row beside the outputs is
what step 0 (step T-1 in reverse) reads as its previous state, so the buffer of outputs is also the buffer
of previous states and ``dW_hh`` is one product with a contiguous slice of it.

>>> import backprop as bp
>>> rng = np.random.default_rng(0)
>>> T, B, I, H = 5, 2, 3, 4
>>> x, w_ih, w_hh = (bp.tensor(rng.standard_normal(s)) for s in [(T, B, I), (4 * H, I), (4 * H, H)])
>>> out = Recurrence.apply(x, w_ih, w_hh, mode="lstm", bias=False)
>>> out.shape == ((T + 1) * B * H + 2 * B * H,)
True
>>> y = out.data[B * H:(T + 1) * B * H].reshape(T, B, H)     # the outputs; h_n is the last step's output
>>> bool(np.allclose(out.data[(T + 1) * B * H:(T + 2) * B * H].reshape(B, H), y[-1]))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import Function

__all__ = ["GATES", "MODES", "Recurrence", "check_lengths", "packed_layout"]

# mode -> number of gates (rows of W_ih per hidden unit)
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
MODES = tuple(GATES)


def check_lengths(lengths: Any, batch: int, steps: int, owner: str = "lengths") -> np.ndarray | None:
    """``lengths`` as a 1-D int64 array of ``batch`` values in [1, steps] (None stays None); ValueError otherwise."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{owner}: lengths must be integers (one per sequence), got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != batch:
        raise ValueError(f"{owner}: lengths must be 1-D with one length per sequence ({batch}), got shape {arr.shape}")
    if batch and (arr.min() < 1 or arr.max() > steps):
        bad = int(arr.min()) if arr.min() < 1 else int(arr.max())
        raise ValueError(f"{owner}: every length must be in [1, {steps}] (the number of time steps), got {bad}")
    return arr.astype(np.int64, copy=False)


def packed_layout(steps: int, batch: int, out_size: int, hidden: int, mode: str) -> dict[str, tuple[int, int]]:
    """Where the op's flat output keeps each part: name -> (start, stop) (``rows`` = h0 and the outputs)."""
    rows = (steps + 1) * batch * out_size
    hn = rows + batch * out_size
    return {"rows": (0, rows), "h_n": (rows, hn), "c_n": (hn, hn + (batch * hidden if mode == "lstm" else 0))}


# --------------------------------------------------------------------------------------------- the forward
@dataclass
class _Saved:
    """What the backward needs: shapes, the sorted order, the inputs and the activations of every step."""

    mode: str
    reverse: bool
    bias: bool
    proj: bool
    state: int
    T: int
    B: int
    H: int
    P: int
    x: np.ndarray  # (T, B, I), in sorted order when lengths are given
    w_ih: np.ndarray
    w_hh: np.ndarray
    w_hr: np.ndarray | None
    rows: np.ndarray  # (T+1, B, P): previous states and outputs (sorted order)
    acts: np.ndarray  # (T, B, G*H): gate activations (LSTM internal order i, f, o, g)
    cells: np.ndarray | None  # LSTM: (T+1, B, H) cell states, laid out as rows
    tanh_c: np.ndarray | None  # LSTM: (T, B, H) tanh(c_t)
    m: np.ndarray | None  # LSTM with projection: (T, B, H) o * tanh(c_t)
    hg: np.ndarray | None  # GRU: (T, B, 3H) W_hh h + b_hh (its n part is used)
    counts: np.ndarray | None  # rows active at each step (sorted order), None: all
    perm: np.ndarray | None  # sorted position -> original batch index
    inv: np.ndarray | None  # original batch index -> sorted position
    dtype: np.dtype


def _lstm_order(H: int) -> np.ndarray:
    """PyTorch's gate rows i, f, g, o -> the internal order i, f, o, g (the three sigmoid gates adjacent)."""
    return np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]


def _sigmoid_scale(mode: str, H: int, dtype: np.dtype) -> np.ndarray | None:
    """Row factors of the internal weights: 0.5 on sigmoid gates, whose activation is then 0.5 tanh(u) + 0.5.

    NOTE: sigmoid(a) = 0.5 tanh(a / 2) + 0.5 exactly; halving the weights (exact in floating point) lets one
    ``np.tanh`` call activate all the gates of a step at once, and tanh never overflows as exp can.
    """
    if mode == "lstm":
        return np.r_[np.full(3 * H, 0.5), np.ones(H)].astype(dtype)
    if mode == "gru":
        return np.r_[np.full(2 * H, 0.5), np.ones(H)].astype(dtype)
    return None


def _parse(arrays: tuple[np.ndarray, ...], bias: bool, proj: bool, state: int) -> tuple[Any, ...]:
    x, w_ih, w_hh, *rest = arrays
    k = 0
    b_ih = b_hh = w_hr = h0 = c0 = None
    if bias:
        b_ih, b_hh = rest[0], rest[1]
        k = 2
    if proj:
        w_hr = rest[k]
        k += 1
    if state >= 1:
        h0 = rest[k]
    if state >= 2:
        c0 = rest[k + 1]
    if len(rest) != k + state:
        raise TypeError(f"Recurrence: expected {3 + k + state} inputs for bias={bias}, proj={proj}, state={state}, "
                        f"got {len(arrays)}")
    return x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0


def _check_shapes(mode: str, x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Any, b_hh: Any,
                  w_hr: Any, h0: Any, c0: Any) -> tuple[int, int, int, int, int]:
    if mode not in GATES:
        raise ValueError(f"Recurrence: mode must be one of {MODES}, got {mode!r}")
    if x.ndim != 3:
        raise ValueError(f"Recurrence: the input must be (steps, batch, features), got shape {x.shape}")
    T, B, I = x.shape
    G = GATES[mode]
    if w_ih.ndim != 2 or w_ih.shape[1] != I or w_ih.shape[0] % G:
        raise ValueError(f"Recurrence: weight_ih must be ({G} * hidden_size, {I}) for an input of {I} features, "
                         f"got shape {w_ih.shape}")
    H = w_ih.shape[0] // G
    P = H if w_hr is None else w_hr.shape[0]
    if w_hr is not None and (mode != "lstm" or w_hr.shape != (P, H) or not 0 < P < H):
        raise ValueError(f"Recurrence: weight_hr must be (proj_size, {H}) with proj_size < {H}, for an LSTM only; "
                         f"got shape {w_hr.shape} ({mode})")
    if w_hh.shape != (G * H, P):
        raise ValueError(f"Recurrence: weight_hh must be ({G * H}, {P}), got shape {w_hh.shape}")
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None and b.shape != (G * H,):
            raise ValueError(f"Recurrence: {name} must be ({G * H},), got shape {b.shape}")
    if h0 is not None and h0.shape != (B, P):
        raise ValueError(f"Recurrence: the initial hidden state must be (batch, {P}) = ({B}, {P}), got {h0.shape}")
    if c0 is not None and c0.shape != (B, H):
        raise ValueError(f"Recurrence: the initial cell state must be (batch, {H}) = ({B}, {H}), got {c0.shape}")
    if c0 is not None and mode != "lstm":
        raise ValueError(f"Recurrence: only an LSTM has a cell state ({mode} was given one)")
    return T, B, I, H, P


def _place_initial(buf: np.ndarray, init: np.ndarray | None, reverse: bool, ls: np.ndarray | None) -> None:
    """Write the initial state where each sequence's first step reads it: row 0 forward; in reverse row T, or,
    with lengths, row ``length`` of each sequence (its own end)."""
    if init is None:
        if ls is None:  # a fresh buffer of the no-lengths path is np.empty: zero the row that is read
            buf[buf.shape[0] - 1 if reverse else 0] = 0
        return
    if not reverse:
        buf[0] = init
    elif ls is None:
        buf[-1] = init
    else:
        buf[ls, np.arange(buf.shape[1])] = init


def recurrence_forward(*arrays: np.ndarray, mode: str, reverse: bool = False, lengths: Any = None,
                       bias: bool = True, proj: bool = False, state: int = 0) -> tuple[np.ndarray, _Saved]:
    """The op's forward (see the module docstring): the flat output and what the backward needs."""
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = _parse(arrays, bias, proj, state)
    T, B, I, H, P = _check_shapes(mode, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    dtype = np.result_type(*arrays)
    G = GATES[mode]
    lengths = check_lengths(lengths, B, T, "Recurrence")
    if lengths is not None and np.all(lengths == T):
        lengths = None  # NOTE: full lengths are the plain path exactly (and skip the sorting copies)
    layout = packed_layout(T, B, P, H, mode)
    out = np.empty(layout["c_n"][1], dtype=dtype)
    out_rows = out[:layout["rows"][1]].reshape(T + 1, B, P)
    perm = inv = counts = ls = None
    if lengths is None:
        xs, h0s, c0s = x, h0, c0
        rows = out_rows  # NOTE: the outputs are written straight into the op's result
    else:
        perm = np.argsort(-lengths, kind="stable")
        inv = np.empty_like(perm)
        inv[perm] = np.arange(B)
        ls = lengths[perm]
        counts = np.searchsorted(-ls, -np.arange(T), side="left")  # rows with length > t
        xs = x[:, perm]
        h0s = None if h0 is None else h0[perm]
        c0s = None if c0 is None else c0[perm]
        rows = np.zeros((T + 1, B, P), dtype=dtype)
    _place_initial(rows, h0s, reverse, ls)

    # the input projection of every step: one GEMM (internal gate order, sigmoid rows halved)
    order = _lstm_order(H) if mode == "lstm" else None
    scale = _sigmoid_scale(mode, H, dtype)
    wi, wh = (w_ih, w_hh) if order is None else (w_ih[order], w_hh[order])
    if scale is not None:
        wi, wh = wi * scale[:, None], wh * scale[:, None]
    wi_t = np.ascontiguousarray(wi.T, dtype=dtype)  # NOTE: (I, G*H) C order: 30% faster than a transposed view
    wh_t = np.ascontiguousarray(wh.T, dtype=dtype)
    acts = np.matmul(xs.reshape(T * B, I).astype(dtype, copy=False), wi_t).reshape(T, B, G * H)
    b_h = None
    if bias:
        if mode == "gru":  # NOTE: b_hn stays inside r * (W_hn h + b_hn): b_hh is added to the h-projection
            b_i = b_ih if scale is None else b_ih * scale
            b_h = (b_hh if scale is None else b_hh * scale).astype(dtype, copy=False)
        else:
            b_i = b_ih + b_hh
            b_i = b_i if order is None else b_i[order] * scale
        acts += b_i.astype(dtype, copy=False)

    steps = range(T - 1, -1, -1) if reverse else range(T)
    rev = 1 if reverse else 0
    cells = tanh_c = m = hg = None
    if mode in ("rnn_tanh", "rnn_relu"):
        _rnn_forward(steps, rev, counts, acts, rows, wh_t, mode == "rnn_relu", B)
    elif mode == "lstm":
        cells = np.zeros((T + 1, B, H), dtype=dtype) if lengths is not None else np.empty((T + 1, B, H), dtype=dtype)
        _place_initial(cells, c0s, reverse, ls)
        tanh_c = np.empty((T, B, H), dtype=dtype)
        if proj:
            m = np.zeros((T, B, H), dtype=dtype)
        w_hr_t = None if w_hr is None else np.ascontiguousarray(w_hr.T, dtype=dtype)
        _lstm_forward(steps, rev, counts, acts, rows, cells, tanh_c, m, wh_t, w_hr_t, B, H)
    else:
        hg = np.empty((T, B, 3 * H), dtype=dtype)
        _gru_forward(steps, rev, counts, acts, rows, hg, wh_t, b_h, B, H)

    # the result: outputs (zero at padded steps), the initial-state row, h_n and c_n, in the caller's order
    hn_out = out[slice(*layout["h_n"])].reshape(B, P)
    cn_out = out[slice(*layout["c_n"])].reshape(B, H) if mode == "lstm" else None
    if lengths is None:
        hn_out[...] = rows[0] if reverse else rows[T]
        if cn_out is not None:
            cn_out[...] = cells[0] if reverse else cells[T]
    else:
        ys = rows[:T] if reverse else rows[1:]
        y_out = out_rows[:T] if reverse else out_rows[1:]
        np.take(ys, inv, axis=1, out=y_out)
        if reverse:  # the initial state sits at each shorter sequence's own end: a padded step, zero out there
            short = np.nonzero(lengths < T)[0]
            y_out[lengths[short], short] = 0
        out_rows[T if reverse else 0] = 0 if h0 is None else h0
        ar = np.arange(B)
        hn_out[...] = (rows[0] if reverse else rows[ls, ar])[inv]
        if cn_out is not None:
            cn_out[...] = (cells[0] if reverse else cells[ls, ar])[inv]
    saved = _Saved(mode, reverse, bias, proj, state, T, B, H, P, xs, w_ih, w_hh, w_hr, rows, acts, cells, tanh_c,
                   m, hg, counts, perm, inv, dtype)
    return out, saved


def _rnn_forward(steps: range, rev: int, counts: Any, acts: np.ndarray, rows: np.ndarray, wh_t: np.ndarray,
                 relu: bool, B: int) -> None:
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        h = rows[t + 1 - rev, :n]
        np.matmul(rows[t + rev, :n], wh_t, out=h)
        h += acts[t, :n]
        if relu:
            np.maximum(h, 0, out=h)
        else:
            np.tanh(h, out=h)


def _lstm_forward(steps: range, rev: int, counts: Any, acts: np.ndarray, rows: np.ndarray, cells: np.ndarray,
                  tanh_c: np.ndarray, m_all: np.ndarray | None, wh_t: np.ndarray, w_hr_t: np.ndarray | None, B: int,
                  H: int) -> None:
    """Internal gate order i, f, o, g; sigmoid rows pre-halved (see ``_sigmoid_scale``)."""
    dtype = acts.dtype
    gemm = np.empty((B, 4 * H), dtype=dtype)
    tmp = np.empty((B, H), dtype=dtype)
    H2, H3 = 2 * H, 3 * H
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        u = acts[t, :n]
        gm = gemm[:n]
        np.matmul(rows[t + rev, :n], wh_t, out=gm)
        u += gm
        np.tanh(u, out=u)
        s = u[:, :H3]  # sigmoid(a) = 0.5 tanh(a/2) + 0.5
        s *= 0.5
        s += 0.5
        c = cells[t + 1 - rev, :n]
        np.multiply(u[:, H:H2], cells[t + rev, :n], out=c)  # f * c_{t-1}
        tm = tmp[:n]
        np.multiply(u[:, :H], u[:, H3:], out=tm)  # i * g
        c += tm
        tc = tanh_c[t, :n]
        np.tanh(c, out=tc)
        if m_all is None:
            np.multiply(u[:, H2:H3], tc, out=rows[t + 1 - rev, :n])  # h = o * tanh(c)
        else:
            mt = m_all[t, :n]
            np.multiply(u[:, H2:H3], tc, out=mt)
            np.matmul(mt, w_hr_t, out=rows[t + 1 - rev, :n])  # h = W_hr (o * tanh(c))


def _gru_forward(steps: range, rev: int, counts: Any, acts: np.ndarray, rows: np.ndarray, hg_all: np.ndarray,
                 wh_t: np.ndarray, b_h: np.ndarray | None, B: int, H: int) -> None:
    """Gates r, z, n; r and z rows pre-halved. ``acts`` holds W_i x + b_i and becomes (r, z, n)."""
    tmp = np.empty((B, H), dtype=acts.dtype)
    H2 = 2 * H
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        hp = rows[t + rev, :n]
        hg = hg_all[t, :n]
        np.matmul(hp, wh_t, out=hg)
        if b_h is not None:
            hg += b_h
        u = acts[t, :n]
        rz = u[:, :H2]
        rz += hg[:, :H2]
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5
        tm = tmp[:n]
        np.multiply(u[:, :H], hg[:, H2:], out=tm)  # r * (W_hn h + b_hn)
        nn = u[:, H2:]
        nn += tm
        np.tanh(nn, out=nn)
        h = rows[t + 1 - rev, :n]
        np.subtract(hp, nn, out=h)  # h = n + z * (h_prev - n)
        h *= u[:, H:H2]
        h += nn


# -------------------------------------------------------------------------------------------- the backward
def recurrence_backward(s: _Saved, g: np.ndarray, needs: tuple[bool, ...]) -> tuple[np.ndarray | None, ...]:
    """Backpropagation through time: the gradient of every input from the gradient of the flat output."""
    T, B, H, P, mode, dtype = s.T, s.B, s.H, s.P, s.mode, s.dtype
    G = GATES[mode]
    layout = packed_layout(T, B, P, H, mode)
    g = np.asarray(g, dtype=dtype)
    g_rows = g[:layout["rows"][1]].reshape(T + 1, B, P)
    g_y = g_rows[:T] if s.reverse else g_rows[1:]
    g_h0_row = g_rows[T] if s.reverse else g_rows[0]
    g_hn = g[slice(*layout["h_n"])].reshape(B, P)
    g_cn = g[slice(*layout["c_n"])].reshape(B, H) if mode == "lstm" else None
    if s.perm is not None:
        g_y = np.take(g_y, s.perm, axis=1)
        g_hn = g_hn[s.perm]
        g_cn = None if g_cn is None else g_cn[s.perm]
    dh = np.array(g_hn, dtype=dtype)  # the error reaching h at each sequence's last step, carried back
    steps = range(T) if s.reverse else range(T - 1, -1, -1)  # the forward's steps, backwards
    rev = 1 if s.reverse else 0
    make = np.zeros if s.counts is not None else np.empty  # NOTE: padded rows must hold zero gradients
    dc = None
    dw_hr = None
    if mode in ("rnn_tanh", "rnn_relu"):
        d_x = d_h = make((T, B, H), dtype=dtype)
        _rnn_backward(steps, rev, s, g_y, dh, d_h)
        order = None
    elif mode == "lstm":
        d_x = d_h = make((T, B, 4 * H), dtype=dtype)
        dc = np.array(g_cn, dtype=dtype)
        order = _lstm_order(H)
        dh_all = make((T, B, P), dtype=dtype) if s.proj else None
        _lstm_backward(steps, rev, s, g_y, dh, dc, d_h, s.w_hh[order].astype(dtype, copy=False), dh_all)
        if s.proj:
            dw_hr = dh_all.reshape(T * B, P).T @ s.m.reshape(T * B, H)
    else:
        d_x = make((T, B, 3 * H), dtype=dtype)
        d_h = make((T, B, 3 * H), dtype=dtype)
        _gru_backward(steps, rev, s, g_y, dh, d_x, d_h)
        order = None

    grads: list[np.ndarray | None] = []
    dx2 = d_x.reshape(T * B, G * H)
    dh2 = d_h.reshape(T * B, G * H)
    unorder = None if order is None else np.argsort(order)
    # one GEMM each, over all steps
    if needs[0]:
        w_ih = s.w_ih if order is None else s.w_ih[order]
        dxs = (dx2 @ w_ih.astype(dtype, copy=False)).reshape(T, B, -1)
        grads.append(dxs if s.inv is None else np.take(dxs, s.inv, axis=1))
    else:
        grads.append(None)
    if needs[1]:
        dw = dx2.T @ s.x.reshape(T * B, -1)
        grads.append(dw if unorder is None else dw[unorder])
    else:
        grads.append(None)
    if needs[2]:
        prev = s.rows[1:] if s.reverse else s.rows[:T]  # the state each step read
        dw = dh2.T @ prev.reshape(T * B, P)
        grads.append(dw if unorder is None else dw[unorder])
    else:
        grads.append(None)
    k = 3
    if s.bias:
        db_i = dx2.sum(axis=0) if needs[k] else None
        db_h = None
        if needs[k + 1]:  # NOTE: the same sum for RNN and LSTM, but never one array for two inputs
            db_h = dh2.sum(axis=0) if d_h is not d_x or db_i is None else db_i.copy()
        if unorder is not None:
            db_i = None if db_i is None else db_i[unorder]
            db_h = None if db_h is None else db_h[unorder]
        grads += [db_i, db_h]
        k += 2
    if s.proj:
        grads.append(dw_hr if needs[k] else None)
        k += 1
    if s.state >= 1:
        dh0 = dh if s.inv is None else dh[s.inv]
        grads.append(dh0 + g_h0_row if needs[k] else None)
    if s.state >= 2:
        grads.append((dc if s.inv is None else dc[s.inv]) if needs[k + 1] else None)
    return tuple(grads)


def _rnn_backward(steps: range, rev: int, s: _Saved, g_y: np.ndarray, dh: np.ndarray, d_a: np.ndarray) -> None:
    w_hh = s.w_hh.astype(s.dtype, copy=False)
    relu = s.mode == "rnn_relu"
    rows, counts, B = s.rows, s.counts, s.B
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        d = dh[:n]
        d += g_y[t, :n]
        h = rows[t + 1 - rev, :n]
        da = d_a[t, :n]
        if relu:
            np.multiply(d, h > 0, out=da)
        else:  # tanh' = 1 - h^2
            np.multiply(h, h, out=da)
            np.subtract(1, da, out=da)
            da *= d
        np.matmul(da, w_hh, out=d)


def _lstm_backward(steps: range, rev: int, s: _Saved, g_y: np.ndarray, dh: np.ndarray, dc: np.ndarray,
                   d_a: np.ndarray, w_hh: np.ndarray, dh_all: np.ndarray | None) -> None:
    """Internal order i, f, o, g. d_a gets dL/da (the unscaled pre-activations)."""
    H, B = s.H, s.B
    H2, H3 = 2 * H, 3 * H
    cells, tanh_c, acts, counts = s.cells, s.tanh_c, s.acts, s.counts
    w_hr = None if s.w_hr is None else s.w_hr.astype(s.dtype, copy=False)
    tmp = np.empty((B, H), dtype=s.dtype)
    dm_buf = np.empty((B, H), dtype=s.dtype) if w_hr is not None else None
    sig = np.empty((B, H3), dtype=s.dtype)
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        d = dh[:n]
        d += g_y[t, :n]  # dL/dh_t
        if w_hr is not None:
            dh_all[t, :n] = d
            dm = dm_buf[:n]
            np.matmul(d, w_hr, out=dm)  # dL/dm_t, m = o * tanh(c)
        else:
            dm = d
        u = acts[t, :n]
        da = d_a[t, :n]
        tc = tanh_c[t, :n]
        c_t = dc[:n]
        tm = tmp[:n]
        np.multiply(tc, tc, out=tm)  # dc_t += dm * o * (1 - tanh(c)^2)
        np.subtract(1, tm, out=tm)
        tm *= u[:, H2:H3]
        tm *= dm
        c_t += tm
        np.multiply(dm, tc, out=da[:, H2:H3])  # do
        np.multiply(c_t, u[:, H3:], out=da[:, :H])  # di = dc * g
        np.multiply(c_t, cells[t + rev, :n], out=da[:, H:H2])  # df = dc * c_{t-1}
        np.multiply(c_t, u[:, :H], out=da[:, H3:])  # dg = dc * i
        c_t *= u[:, H:H2]  # dc_{t-1} = dc * f
        sg = sig[:n]
        np.subtract(1, u[:, :H3], out=sg)  # sigmoid' = s (1 - s)
        sg *= u[:, :H3]
        da[:, :H3] *= sg
        gg = tm  # tanh' = 1 - g^2
        np.multiply(u[:, H3:], u[:, H3:], out=gg)
        np.subtract(1, gg, out=gg)
        da[:, H3:] *= gg
        np.matmul(da, w_hh, out=d)  # dL/dh_{t-1} (before the output gradient of step t-1 joins)


def _gru_backward(steps: range, rev: int, s: _Saved, g_y: np.ndarray, dh: np.ndarray, d_x: np.ndarray,
                  d_h: np.ndarray) -> None:
    """d_x: dL/d(W_i x + b_i) (r, z, n); d_h: dL/d(W_h h + b_h); they differ in the n part only."""
    H, B = s.H, s.B
    H2 = 2 * H
    rows, acts, hg_all, counts = s.rows, s.acts, s.hg, s.counts
    w_hh = s.w_hh.astype(s.dtype, copy=False)
    t1 = np.empty((B, H), dtype=s.dtype)
    t2 = np.empty((B, H), dtype=s.dtype)
    sig = np.empty((B, H2), dtype=s.dtype)
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        d = dh[:n]
        d += g_y[t, :n]  # dL/dh_t
        u = acts[t, :n]
        r, z, nn = u[:, :H], u[:, H:H2], u[:, H2:]
        hp = rows[t + rev, :n]
        dx, dhh = d_x[t, :n], d_h[t, :n]
        a, b = t1[:n], t2[:n]
        np.multiply(nn, nn, out=a)  # dL/d(n pre-activation) = dh (1 - z) (1 - n^2)
        np.subtract(1, a, out=a)
        np.subtract(1, z, out=b)
        b *= d
        dn = dx[:, H2:]
        np.multiply(a, b, out=dn)
        np.multiply(dn, r, out=dhh[:, H2:])  # through r * (W_hn h + b_hn)
        np.multiply(dn, hg_all[t, :n, H2:], out=dhh[:, :H])  # dr
        np.subtract(hp, nn, out=dhh[:, H:H2])  # dz = dh (h_prev - n)
        dhh[:, H:H2] *= d
        sg = sig[:n]
        np.subtract(1, u[:, :H2], out=sg)
        sg *= u[:, :H2]
        dhh[:, :H2] *= sg
        dx[:, :H2] = dhh[:, :H2]
        np.multiply(d, z, out=a)  # the direct path h_prev -> h
        np.matmul(dhh, w_hh, out=d)
        d += a


# ------------------------------------------------------------------------------------------------- the op
def _torch_reference(T: Any, mode: str, reverse: bool, lengths: np.ndarray | None, bias: bool, proj: bool,
                     state: int, *tensors: Any) -> Any:
    """The op's flat output computed by ``torch.nn.RNN/LSTM/GRU`` (a bidirectional module whose forward half is
    zero when ``reverse``), with ``pack_padded_sequence(enforce_sorted=False)`` for lengths."""
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = _parse(tensors, bias, proj, state)
    steps, batch, feat = x.shape
    G = GATES[mode]
    H = w_ih.shape[0] // G
    P = H if w_hr is None else w_hr.shape[0]
    kw = {"bias": bias, "bidirectional": reverse, "dtype": x.dtype}
    if mode == "lstm":
        net = T.nn.LSTM(feat, H, proj_size=P if proj else 0, **kw)
    elif mode == "gru":
        net = T.nn.GRU(feat, H, **kw)
    else:
        net = T.nn.RNN(feat, H, nonlinearity=mode[4:], **kw)
    names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if bias else []) + \
        (["weight_hr_l0"] if proj else [])
    given = [w_ih, w_hh] + ([b_ih, b_hh] if bias else []) + ([w_hr] if proj else [])
    params = {}
    for name, w in zip(names, given):
        if reverse:
            params[name] = T.zeros_like(w)
            params[name + "_reverse"] = w
        else:
            params[name] = w
    zeros_h = T.zeros((batch, P), dtype=x.dtype)
    zeros_c = T.zeros((batch, H), dtype=x.dtype)
    h = zeros_h if h0 is None else h0
    c = zeros_c if c0 is None else c0
    if reverse:
        h, c = T.stack([zeros_h, h]), T.stack([zeros_c, c])
    else:
        h, c = h[None], c[None]
    hx = (h, c) if mode == "lstm" else h
    inp = x if lengths is None else T.nn.utils.rnn.pack_padded_sequence(x, T.tensor(lengths), enforce_sorted=False)
    y, hn = T.func.functional_call(net, params, (inp, hx))
    if lengths is not None:
        y, _ = T.nn.utils.rnn.pad_packed_sequence(y, total_length=steps)
    k = 1 if reverse else 0
    hn, cn = (hn[0][k], hn[1][k]) if mode == "lstm" else (hn[k], None)
    y = y[..., P:] if reverse else y
    init = zeros_h if h0 is None else h0
    parts = [y, init[None]] if reverse else [init[None], y]
    flat = [T.cat(parts).reshape(-1), hn.reshape(-1)] + ([cn.reshape(-1)] if cn is not None else [])
    return T.cat(flat)


def _case(mode: str, *, reverse: bool = False, lengths: list[int] | None = None, bias: bool = True,
          proj: int = 0, state: bool = True, steps: int = 4, batch: int = 3, feat: int = 2, hidden: int = 3,
          seed: int = 0) -> Case:
    G = GATES[mode]
    P = proj or hidden
    shapes = [(steps, batch, feat), (G * hidden, feat), (G * hidden, P)]
    if bias:
        shapes += [(G * hidden,), (G * hidden,)]
    if proj:
        shapes += [(proj, hidden)]
    n_state = (2 if mode == "lstm" else 1) if state else 0
    shapes += [(batch, P), (batch, hidden)][:n_state]
    inputs = [sample(s, seed=seed + k) * (1.0 if k == 0 else 0.6) for k, s in enumerate(shapes)]
    lens = None if lengths is None else np.array(lengths)
    kw = {"mode": mode, "reverse": reverse, "lengths": lens, "bias": bias, "proj": bool(proj), "state": n_state}

    def fn(*ts: Any) -> Any:
        return Recurrence.apply(*ts, **kw)

    def torch_fn(T: Any, *ts: Any) -> Any:
        return _torch_reference(T, mode, reverse, lens, bias, bool(proj), n_state, *ts)

    label = f"{mode}{' reverse' if reverse else ''}{f' lengths={lengths}' if lengths else ''}" \
            f"{'' if bias else ' no bias'}{f' proj={proj}' if proj else ''}{'' if state else ' no h0'}"
    return Case(label, fn, inputs, torch_fn)


def _recurrence_cases() -> list[Case]:
    out = []
    for mode in ("rnn_tanh", "lstm", "gru"):
        for reverse in (False, True):
            out.append(_case(mode, reverse=reverse, seed=1))
            out.append(_case(mode, reverse=reverse, lengths=[4, 2, 3], seed=2))
        out.append(_case(mode, bias=False, state=False, lengths=[3, 1, 2], seed=3))
    out.append(_case("rnn_relu", seed=4))
    out.append(_case("rnn_relu", reverse=True, lengths=[2, 4, 1], seed=5))
    out.append(_case("lstm", proj=2, lengths=[2, 4, 3], seed=6))
    out.append(_case("lstm", proj=2, reverse=True, seed=7))
    out.append(_case("lstm", proj=2, reverse=True, lengths=[1, 3, 4], state=False, seed=8))
    out.append(_case("gru", steps=1, batch=1, seed=9))  # one step: a cell
    return out


@register(cases(*_recurrence_cases()))
class Recurrence(Function):
    """One layer and direction of an RNN (``mode`` "rnn_tanh"/"rnn_relu"), LSTM or GRU over a whole sequence.

    Inputs, in order: x (T, B, I), weight_ih (G*H, I), weight_hh (G*H, P), then bias_ih and bias_hh if
    ``bias``, weight_hr (P, H) if ``proj``, then ``state`` initial states: h0 (B, P) and, for an LSTM, c0
    (B, H). ``reverse``: run from the end (each sequence's own end with ``lengths``). The output is the
    flat array of the module docstring; :func:`packed_layout` says where each part is.
    """

    kernel_forward = staticmethod(recurrence_forward)
    kernel_backward = staticmethod(recurrence_backward)
