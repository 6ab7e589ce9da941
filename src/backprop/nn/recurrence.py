"""The recurrence of one RNN/LSTM/GRU layer in one direction, as one engine op: :class:`Recurrence`.

Backpropagation through time is an ordinary chain rule over a graph that reuses the same weights at every
step. Written as small ops it would be thousands of nodes per batch; here the whole sequence is one
:class:`~backprop.engine.function.Function` whose forward runs the time loop in NumPy and saves the gate
activations, and whose backward runs the loop backwards (the error flowing from step t to step t-1 through
``W_hh``) and then forms every weight gradient as **one** matrix product over all steps:

* each step is one GEMM for all gates of the whole batch. For the RNN and the LSTM it is
  ``[W_hh | W_ih | b] (G*H, P+I+1) @ [h_{t-1}; x_t; 1] (P+I+1, B)``: the input's projection is made in the
  same product, in cache for the gates that follow (measured: 4.0 ms instead of 4.8 ms for the LSTM forward
  at H=128, B=32, T=50 with the projection of all steps as one GEMM before the loop). The GRU's n gate needs
  ``W_in x`` apart from ``W_hn h``, so its input projection of all T steps is one GEMM before the loop;
* then a few in-place elementwise NumPy calls into preallocated buffers; one ``np.tanh`` activates every gate
  (the sigmoid gates' weights are halved: sigmoid(a) = 0.5 tanh(a/2) + 0.5);
* backward, each step is one GEMM ``W_hh^T dA_t`` carrying the error to ``h_{t-1}``; after the loop
  ``[dW_hh | dW_ih | db] = dA [h_prev; x; 1]^T`` is one GEMM over all T*B columns, and ``dX`` another.

With the ``numba`` extra, a float32 LSTM without lengths or a projection runs both time loops compiled
(:mod:`backprop.nn.recurrence_kernels`): each step's product and gate arithmetic in one pass, the weight
gradient summed step by step, the batch in two blocks of sequences on two threads (LSTM forward and backward
at H=128, B=32, T=50: ~5.9 ms instead of ~12 ms on 2 cores), within float32 rounding of these loops.

Gates and formulas are PyTorch's (``torch.nn.RNN/LSTM/GRU``): LSTM gates i, f, g, o; GRU gates r, z, n with
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; optional LSTM projection ``h = W_hr (o * tanh(c))``.

Variable lengths (``lengths``, one per sequence, as ``pack_padded_sequence`` takes them): inside the op the
batch is sorted by length, longest first, so that at step t the sequences still running are the first rows;
each step then works on those rows only (as PyTorch's packed sequences do), padded steps change no state,
receive no gradient and give zero outputs, and the reverse direction starts at each sequence's own end.

Inside, every per-step array is **feature-major**, (features, batch): a gate is then a contiguous block of
rows of the step's (G*H, B) pre-activations, which NumPy's elementwise calls run on about five times faster
than on the strided column slices of a (B, G*H) array (measured: 0.8 us against 4.2 us for one multiply of
H=128 by B=32 float32 values).

The op's output is one flat array (an op has one output), from which the layer takes its views::

    forward direction:  [h0 | y_0 ... y_{T-1} | h_n | c_n]      (c_n for LSTM only)
    reverse direction:  [y_0 ... y_{T-1} | h0 | h_n | c_n]

each block (P, B), feature-major (P = proj_size or hidden_size; c_n is (H, B)). The h0 block beside the
outputs is what step 0 (step T-1 in reverse) reads as its previous state, so the buffer of outputs is also
the buffer of previous states.

>>> import backprop as bp
>>> rng = np.random.default_rng(0)
>>> T, B, I, H = 5, 2, 3, 4
>>> x, w_ih, w_hh = (bp.tensor(rng.standard_normal(s)) for s in [(T, B, I), (4 * H, I), (4 * H, H)])
>>> out = Recurrence.apply(x, w_ih, w_hh, mode="lstm", bias=False)
>>> out.shape == ((T + 1) * B * H + 2 * B * H,)
True
>>> y = out.data[B * H:(T + 1) * B * H].reshape(T, H, B)     # the outputs; h_n is the last step's output
>>> bool(np.allclose(out.data[(T + 1) * B * H:(T + 2) * B * H].reshape(H, B), y[-1]))
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import backprop.nn.recurrence_kernels as recurrence_kernels  # noqa: PLR0402 - the module, not the package backprop.nn
from backprop.engine import kernels
from backprop.engine.blas import SMALL_BATCH, one_thread
from backprop.engine.memory import tune_malloc
from backprop.engine.parallel import halfway
from backprop.engine.registry import Case, cases, register, sample
from backprop.engine.tensor import Function

__all__ = ["GATES", "MODES", "PHASES", "Recurrence", "check_lengths", "packed_layout"]

# mode -> number of gates (rows of W_ih per hidden unit)
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
MODES = tuple(GATES)

# Seconds spent in each phase of the op, summed over calls, while a dict is assigned here (the benchmark
# benchmarks/lstm_train.py does); None: not recorded (the clock is read a few times per call either way).
PHASES: dict[str, float] | None = None
_clock = time.perf_counter


def _record(**seconds: float) -> None:
    if PHASES is not None:
        for name, s in seconds.items():
            PHASES[name] = PHASES.get(name, 0.0) + s


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
    """Where the op's flat output keeps each part: name -> (start, stop) (``rows``: h0 and the outputs, (T+1, P,
    B); ``h_n``: (P, B); ``c_n``: (H, B))."""
    rows = (steps + 1) * batch * out_size
    hn = rows + batch * out_size
    return {"rows": (0, rows), "h_n": (rows, hn), "c_n": (hn, hn + (batch * hidden if mode == "lstm" else 0))}


# --------------------------------------------------------------------------------------------- the forward
@dataclass
class _Saved:
    """What the backward needs: shapes, the sorted order, the inputs and the activations of every step.

    Every per-step array is feature-major, (features, batch) (see the module docstring).
    """

    mode: str
    reverse: bool
    bias: bool
    proj: bool
    state: int
    T: int
    B: int
    H: int
    P: int
    x_aug: np.ndarray | None  # GRU: (T, B, I [+1]): the input (sorted with lengths) and ones for the bias
    ext: np.ndarray | None  # RNN, LSTM: (T+1, P + I [+1], B): each state stacked on the input its step reads
    w_ih: np.ndarray  # internal gate order, not scaled
    w_hh: np.ndarray  # internal gate order, not scaled
    w_hr: np.ndarray | None
    rows: np.ndarray  # (T+1, P, B): previous states and outputs (sorted order)
    acts: np.ndarray  # (T, G*H, B): tanh of the (halved) pre-activations of every gate (see _sigmoid_scale)
    sig: np.ndarray | None  # LSTM (T, 3H, B) i, f, o; GRU (T, 2H, B) r, z: the sigmoid gates' values
    cells: np.ndarray | None  # LSTM: (T+1, H, B) cell states, laid out as rows
    tanh_c: np.ndarray | None  # LSTM: (T, H, B) tanh(c_t)
    m: np.ndarray | None  # LSTM with projection: (T, H, B) o * tanh(c_t)
    hg: np.ndarray | None  # GRU: (T, 3H, B) W_hh h (+ b_hn in its n part)
    counts: np.ndarray | None  # columns active at each step (sorted order), None: all
    perm: np.ndarray | None  # sorted position -> original batch index
    inv: np.ndarray | None  # original batch index -> sorted position
    order: np.ndarray | None  # internal gate row -> PyTorch's row (LSTM)
    dtype: np.dtype
    blocks: np.ndarray | None = None  # compiled LSTM loops: where its blocks of sequences begin and end; ext,
    # acts, sig, cells and tanh_c are then (blocks, ..., width) (see recurrence_kernels)


def _lstm_order(H: int) -> np.ndarray:
    """PyTorch's gate rows i, f, g, o -> the internal order i, f, o, g (the three sigmoid gates adjacent)."""
    return np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]


def _sigmoid_scale(mode: str, H: int, factor: float, dtype: np.dtype) -> np.ndarray | None:
    """Row factors: ``factor`` on the sigmoid gates' rows (LSTM i, f, o internally first; GRU r, z), 1 elsewhere.

    NOTE: sigmoid(a) = 0.5 tanh(a / 2) + 0.5 exactly. With the forward's weights halved on those rows (factor
    0.5, exact in floating point) one ``np.tanh`` call activates every gate of a step, and never overflows as
    exp can; the backward then needs only 1 - t^2 for every gate (t the stored tanh), since the sigmoid's
    derivative is 0.25 (1 - t^2): the 0.25 (factor 0.25) is applied to W_hh in the per-step product and to
    the weight gradients once, after the loop, instead of at every step.
    """
    if mode in ("lstm", "gru"):
        k = 3 if mode == "lstm" else 2
        return np.r_[np.full(k * H, factor), np.ones(H)].astype(dtype)
    return None


# NOTE: OpenBLAS multiplies without packing its operands (its "small matrix" kernels, SkylakeX and later) when
# m*n*k <= 1e6. A step's product, (4H, P) @ (P, B) for H = 128 and B = 32, is 2.1e6: in row chunks of at most
# 1e6 it took 37 us instead of 46 (float32; its backward (P, 4H) @ (4H, B) 43 instead of 49; float64 and other
# sizes alike, measured here for B = 8-32). Beyond 32 columns one call was as fast or faster. A rule of shapes
# only, so eager and captured steps and a resumed run compute the same sums in the same order.
_SMALL_MNK = 1_000_000


def _row_chunks(m: int, k: int, n: int) -> list[slice]:
    """Row slices of an (m, k) @ (k, n) product for the BLAS calls of one step (see ``_SMALL_MNK``)."""
    work = m * k * n
    if n > 32 or work <= _SMALL_MNK:
        return [slice(0, m)]
    rows = -(-m // -(-work // _SMALL_MNK))
    rows = (rows + 7) // 8 * 8
    while rows > 8 and rows * k * n > _SMALL_MNK:
        rows -= 8
    return [slice(i, min(i + rows, m)) for i in range(0, m, rows)]


class _Product:
    """``w @ h`` for one weight and the h of every step (up to ``batch`` columns), in row chunks of w."""

    def __init__(self, w: np.ndarray, batch: int) -> None:
        w = np.ascontiguousarray(w)
        self.w = w
        self.parts = [(w[s], s) for s in _row_chunks(w.shape[0], w.shape[1], batch)]

    def into(self, h: np.ndarray, out: np.ndarray) -> None:
        """out = w @ h"""
        for w, s in self.parts:
            np.matmul(w, h, out=out[s])


def _parse(arrays: tuple[Any, ...], bias: bool, proj: bool, state: int) -> tuple[Any, ...]:
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
    """Write the initial state (B, size) into ``buf`` (T+1, size, B) where each sequence's first step reads it:
    row 0 forward; in reverse row T, or, with lengths, row ``length`` of each sequence (its own end)."""
    if init is None:
        if ls is None:  # a buffer of the no-lengths path is np.empty: zero the row that is read
            buf[buf.shape[0] - 1 if reverse else 0] = 0
        return
    if not reverse:
        buf[0] = init.T
    elif ls is None:
        buf[-1] = init.T
    else:
        buf[ls, :, np.arange(buf.shape[2])] = init


def _one_blas_thread(batch: int, parallel: bool) -> Any:
    """The time loops on one BLAS thread when the batch is small (as ``backprop.engine.blas`` does for short
    products): each step's GEMM is too short for two threads, which mostly wait for each other (measured
    here: 2 threads made the (512, 128) @ (128, 32) product 7x slower on a busy 2-core machine); and always
    while compiled loops run blocks of the batch on two threads (``parallel``)."""
    return one_thread(batch < SMALL_BATCH or parallel)


def recurrence_forward(*arrays: np.ndarray, mode: str, reverse: bool = False, lengths: Any = None,
                       bias: bool = True, proj: bool = False, state: int = 0) -> tuple[np.ndarray, _Saved]:
    """The op's forward (see the module docstring): the flat output and what the backward needs."""
    t0 = _clock()
    # NOTE: a step allocates and frees some 15 MB of arrays (activations, gradients) for H=128, B=32, T=50;
    # fresh pages for them every step cost more than a third of it (23 vs 15 ms of CPU per step in a plain
    # loop). This keeps them in the process's heap, as fit and bp.jit do when training starts (idempotent).
    tune_malloc()
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = _parse(arrays, bias, proj, state)
    T, B, I, H, P = _check_shapes(mode, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    dtype = np.result_type(*arrays)
    G = GATES[mode]
    lengths = check_lengths(lengths, B, T, "Recurrence")
    if lengths is not None and np.all(lengths == T):
        lengths = None  # NOTE: full lengths are the plain path exactly (and skip the sorting copies)
    layout = packed_layout(T, B, P, H, mode)
    out = np.empty(layout["c_n"][1], dtype=dtype)
    out_rows = out[:layout["rows"][1]].reshape(T + 1, P, B)
    perm = inv = counts = ls = None
    if lengths is None:
        xs, h0s, c0s = x, h0, c0
        rows = out_rows  # NOTE: the outputs are written straight into the op's result
    else:
        perm = np.argsort(-lengths, kind="stable")
        inv = np.empty_like(perm)
        inv[perm] = np.arange(B)
        ls = lengths[perm]
        counts = np.searchsorted(-ls, -np.arange(T), side="left")  # sequences with length > t
        xs = x[:, perm]
        h0s = None if h0 is None else h0[perm]
        c0s = None if c0 is None else c0[perm]
        rows = np.zeros((T + 1, P, B), dtype=dtype)

    # internal weights: LSTM gates reordered to i, f, o, g; sigmoid rows halved
    order = _lstm_order(H) if mode == "lstm" else None
    scale = _sigmoid_scale(mode, H, 0.5, dtype)
    wi = (w_ih if order is None else w_ih[order]).astype(dtype, copy=False)
    wh = (w_hh if order is None else w_hh[order]).astype(dtype, copy=False)
    k0 = I + (1 if bias else 0)  # the input and, for the bias, a row of ones
    b_int = b_hn = None
    if bias:
        if mode == "gru":  # NOTE: b_hn stays inside r * (W_hn h + b_hn); b_hr and b_hz join the input's
            b_int = b_ih + np.r_[b_hh[:2 * H], np.zeros(H, dtype=b_hh.dtype)]
            b_hn = np.asarray(b_hh[2 * H:], dtype=dtype)[:, None]
        else:
            b_int = b_ih + b_hh
            b_int = b_int if order is None else b_int[order]
    x_aug = ext = None
    compiled = mode == "lstm" and _compiled_lstm(dtype, lengths, proj, T * B * G * H)
    if mode == "gru":
        # the input projection of every step, (T, 3H, B): one batched product before the recurrence (the GRU's
        # n gate keeps W_in x apart from W_hn h)
        w_aug = np.empty((G * H, k0), dtype=dtype)
        w_aug[:, :I] = wi
        if bias:
            w_aug[:, I] = b_int
        w_aug *= scale[:, None]
        x_aug = np.empty((T, B, k0), dtype=dtype)
        x_aug[..., :I] = xs
        if bias:
            x_aug[..., I] = 1
        acts = np.matmul(w_aug, x_aug.transpose(0, 2, 1))
        step_w = _Product(wh * scale[:, None], B)
    else:
        # NOTE: each step is one product [W_hh | W_ih | b] @ [h_{t-1}; x_t; 1]: the input's part is made there,
        # in cache for the gates that follow, instead of all steps' at once before the loop (4.0 instead of
        # 4.8 ms for the forward of H=128, B=32, T=50); the stacked operands are also the weight gradient's
        w_cat = np.empty((G * H, P + k0), dtype=dtype)
        w_cat[:, :P] = wh
        w_cat[:, P:P + I] = wi
        if bias:
            w_cat[:, P + I] = b_int
        if scale is not None:
            w_cat *= scale[:, None]
        step_w = _Product(w_cat, B)
        ext = (np.zeros if lengths is not None else np.empty)((T + 1, P + k0, B), dtype=dtype)
        read = ext[1:] if reverse else ext[:T]  # step t reads ext[t] (ext[t + 1] in reverse)
        read[:, P:P + I] = xs.transpose(0, 2, 1)
        if bias:
            read[:, P + I] = 1
        acts = None if compiled else np.empty((T, G * H, B), dtype=dtype)  # compiled: in blocks, below
        rows = ext[:, :P]
    _place_initial(rows, h0s, reverse, ls)
    t1 = _clock()

    steps = range(T - 1, -1, -1) if reverse else range(T)
    rev = 1 if reverse else 0
    sig = cells = tanh_c = m = hg = None
    make = np.zeros if lengths is not None else np.empty
    blocks = None
    parallel = compiled and kernels.parallel_allowed(own_blas=True)
    with _one_blas_thread(B, parallel):
        if mode in ("rnn_tanh", "rnn_relu"):
            _rnn_forward(steps, rev, counts, acts, ext, rows, step_w, mode == "rnn_relu", B)
        elif mode == "lstm":
            cells = make((T + 1, H, B), dtype=dtype)
            _place_initial(cells, c0s, reverse, ls)
            if compiled:
                blocks = _blocks(B)
                acts, sig, cells, tanh_c, ext_b = _lstm_forward_compiled(ext, cells, step_w.w, blocks, parallel,
                                                                         reverse)
            else:
                sig = make((T, 3 * H, B), dtype=dtype)
                tanh_c = make((T, H, B), dtype=dtype)
                if proj:
                    m = np.zeros((T, H, B), dtype=dtype)
                _lstm_forward(steps, rev, counts, acts, sig, ext, rows, cells, tanh_c, m,
                              None if w_hr is None else w_hr.astype(dtype, copy=False), step_w, B, H)
        else:
            sig = make((T, 2 * H, B), dtype=dtype)
            hg = make((T, 3 * H, B), dtype=dtype)
            _gru_forward(steps, rev, counts, acts, sig, rows, hg, step_w, b_hn, B, H)
    t2 = _clock()

    # the result: outputs (zero at padded steps), the initial-state row, h_n and c_n, in the caller's order
    hn_out = out[slice(*layout["h_n"])].reshape(P, B)
    cn_out = out[slice(*layout["c_n"])].reshape(H, B) if mode == "lstm" else None
    if lengths is None:
        if rows is not out_rows:
            out_rows[...] = rows
        hn_out[...] = rows[0] if reverse else rows[T]
        if cn_out is not None:
            cn_out[...] = _unblock(cells[:, 0] if reverse else cells[:, T], blocks) if blocks is not None else \
                (cells[0] if reverse else cells[T])
    else:
        ys = rows[:T] if reverse else rows[1:]
        y_out = out_rows[:T] if reverse else out_rows[1:]
        np.take(ys, inv, axis=2, out=y_out)
        if reverse:  # the initial state sits at each shorter sequence's own end: a padded step, zero out there
            short = np.nonzero(lengths < T)[0]
            y_out[lengths[short], :, short] = 0
        out_rows[T if reverse else 0] = 0 if h0 is None else h0.T
        ar = np.arange(B)
        hn_out[...] = rows[0][:, inv] if reverse else rows[ls, :, ar][inv].T
        if cn_out is not None:
            cn_out[...] = cells[0][:, inv] if reverse else cells[ls, :, ar][inv].T
    saved = _Saved(mode, reverse, bias, proj, state, T, B, H, P, x_aug, ext if blocks is None else ext_b, wi, wh,
                   None if w_hr is None else w_hr.astype(dtype, copy=False), rows, acts, sig, cells, tanh_c, m, hg,
                   counts, perm, inv, order, dtype, blocks)
    t3 = _clock()
    _record(input_projection=t1 - t0, recurrence_forward=t2 - t1, forward_rest=t3 - t2)
    return out, saved


def _cols(a: np.ndarray, n: int, B: int) -> np.ndarray:
    """The first n columns (active sequences) of a (features, batch) block: the block itself when all are."""
    return a if n == B else a[:, :n]


def _rnn_forward(steps: range, rev: int, counts: Any, acts: np.ndarray, ext: np.ndarray, rows: np.ndarray,
                 step_w: _Product, relu: bool, B: int) -> None:
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        a = _cols(acts[t], n, B)
        step_w.into(_cols(ext[t + rev], n, B), a)  # W_hh h + W_ih x + b
        h = _cols(rows[t + 1 - rev], n, B)
        if relu:
            np.maximum(a, 0, out=h)
        else:
            np.tanh(a, out=h)


def _lstm_forward(steps: range, rev: int, counts: Any, acts: np.ndarray, sig: np.ndarray, ext: np.ndarray,
                  rows: np.ndarray, cells: np.ndarray, tanh_c: np.ndarray, m_all: np.ndarray | None,
                  w_hr: np.ndarray | None, step_w: _Product, B: int, H: int) -> None:
    """Internal gate order i, f, o, g; sigmoid rows pre-halved (see ``_sigmoid_scale``)."""
    tmp = np.empty((H, B), dtype=acts.dtype)
    H2, H3 = 2 * H, 3 * H
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        u = _cols(acts[t], n, B)
        step_w.into(_cols(ext[t + rev], n, B), u)  # W_hh h + W_ih x + b, every gate
        np.tanh(u, out=u)  # tanh of every gate's (halved) pre-activation, kept for the backward
        s = _cols(sig[t], n, B)
        np.multiply(u[:H3], 0.5, out=s)  # i, f, o = sigmoid(a) = 0.5 tanh(a/2) + 0.5
        s += 0.5
        c = _cols(cells[t + 1 - rev], n, B)
        np.multiply(s[H:H2], _cols(cells[t + rev], n, B), out=c)  # f * c_{t-1}
        tm = _cols(tmp, n, B)
        np.multiply(s[:H], u[H3:], out=tm)  # i * g
        c += tm
        tc = _cols(tanh_c[t], n, B)
        np.tanh(c, out=tc)
        h = _cols(rows[t + 1 - rev], n, B)
        if m_all is None:
            np.multiply(s[H2:H3], tc, out=h)  # h = o * tanh(c)
        else:
            mt = _cols(m_all[t], n, B)
            np.multiply(s[H2:H3], tc, out=mt)
            np.matmul(w_hr, mt, out=h)  # h = W_hr (o * tanh(c))


def _gru_forward(steps: range, rev: int, counts: Any, acts: np.ndarray, sig: np.ndarray, rows: np.ndarray,
                 hg_all: np.ndarray, step_w: _Product, b_hn: np.ndarray | None, B: int, H: int) -> None:
    """Gates r, z, n; r and z rows pre-halved. ``acts`` holds W_i x + b_i (+ b_hr, b_hz) and becomes the tanh of
    every gate's (halved) pre-activation; ``sig`` gets r and z."""
    tmp = np.empty((H, B), dtype=acts.dtype)
    H2 = 2 * H
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        hp = _cols(rows[t + rev], n, B)
        hg = _cols(hg_all[t], n, B)
        step_w.into(hp, hg)
        u = _cols(acts[t], n, B)
        rz = u[:H2]
        rz += hg[:H2]
        np.tanh(rz, out=rz)
        s = _cols(sig[t], n, B)
        np.multiply(rz, 0.5, out=s)
        s += 0.5
        hn = hg[H2:]
        if b_hn is not None:
            hn += b_hn
        tm = _cols(tmp, n, B)
        np.multiply(s[:H], hn, out=tm)  # r * (W_hn h + b_hn)
        nn = u[H2:]
        nn += tm
        np.tanh(nn, out=nn)
        h = _cols(rows[t + 1 - rev], n, B)
        np.subtract(hp, nn, out=h)  # h = n + z * (h_prev - n)
        h *= s[H:H2]
        h += nn


# Fewest sequences in a block of the compiled LSTM loops (recurrence_kernels): a batch of 2 * _BLOCK or more
# runs as two blocks, on two threads where allowed (at B=32 the products of 16 columns a thread ran ~1.8x).
_BLOCK = 8


# Fewest gate values (steps x batch x 4H) for the compiled loops: below, the NumPy loops take ~1 ms or less
# and a process that only runs such LSTMs need not import numba (~0.5 s, 60 MB) and load the kernels.
_COMPILED_MIN_GATES = 1 << 18


def _compiled_lstm(dtype: np.dtype, lengths: Any, proj: bool, gates: int) -> bool:
    """Whether an LSTM's time loops run compiled (:mod:`backprop.nn.recurrence_kernels`): float32, without
    lengths or a projection, ``gates`` gate values a sequence batch or more, the ``numba`` extra
    (:func:`backprop.engine.kernels.enabled`). A rule of shapes: a step and its backward agree."""
    return dtype == np.float32 and lengths is None and not proj and gates >= _COMPILED_MIN_GATES \
        and kernels.enabled(dtype) and recurrence_kernels.ready()


def _blocks(B: int) -> np.ndarray:
    """The blocks of sequences the compiled loops cut a batch of B into, whatever the thread count (so the
    results do not depend on it): two halves (at a multiple of _BLOCK) when each gets _BLOCK or more."""
    mid = halfway(B, _BLOCK)
    return np.array([0, mid, B] if min(mid, B - mid) >= _BLOCK else [0, B], dtype=np.int64)


def _chunk(m: int, k: int, blocks: np.ndarray) -> int:
    """Rows per product of a block's step (the NumPy loops' row chunks for the widest block)."""
    return _row_chunks(m, k, int(np.diff(blocks).max()))[0].stop


def _to_blocks(a: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """(..., B) -> (blocks, ..., width): each block's columns, zero-padded to the widest (a copy)."""
    width = int(np.diff(blocks).max())
    out = (np.zeros if np.diff(blocks).min() < width else np.empty)((len(blocks) - 1, *a.shape[:-1], width),
                                                                      dtype=a.dtype)
    for b in range(len(blocks) - 1):
        out[b, ..., :blocks[b + 1] - blocks[b]] = a[..., blocks[b]:blocks[b + 1]]
    return out


def _unblock(a: np.ndarray, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(blocks, ..., width) -> (..., B): the inverse of :func:`_to_blocks` (into ``out`` if given)."""
    if out is None:
        out = np.empty((*a.shape[1:-1], int(blocks[-1])), dtype=a.dtype)
    for b in range(len(blocks) - 1):
        out[..., blocks[b]:blocks[b + 1]] = a[b, ..., :blocks[b + 1] - blocks[b]]
    return out


def _lstm_forward_compiled(ext: np.ndarray, cells: np.ndarray, w_cat: np.ndarray, blocks: np.ndarray,
                           parallel: bool, reverse: bool) -> tuple[np.ndarray, ...]:
    """The LSTM's forward time loop by :func:`recurrence_kernels.lstm_forward`, on blocks of sequences: the
    states are written back into ``ext``'s first H rows (the outputs), the cell states' last row into
    ``cells``; returns (acts, sig, cells, tanh_c, ext) in blocks, for the backward."""
    T, H = ext.shape[0] - 1, cells.shape[1]
    first = T if reverse else 0
    ext_b = _to_blocks(ext, blocks)
    cells_b = np.empty((len(blocks) - 1, T + 1, H, ext_b.shape[-1]), dtype=ext.dtype)
    cells_b[:, first] = _to_blocks(cells[first], blocks)
    acts, sig, tanh_c = (np.empty((len(blocks) - 1, T, rows, ext_b.shape[-1]), dtype=ext.dtype)
                         for rows in (4 * H, 3 * H, H))
    recurrence_kernels.lstm_forward(w_cat, ext_b, acts, sig, cells_b, tanh_c, parallel, reverse,
                                    _chunk(4 * H, w_cat.shape[1], blocks))
    _unblock(ext_b[:, :, :H], blocks, ext[:, :H])
    return acts, sig, cells_b, tanh_c, ext_b


# -------------------------------------------------------------------------------------------- the backward
def _by_step(a: np.ndarray) -> np.ndarray:
    """(T, F, B) per-step blocks -> (F, T*B): the layout of one GEMM over all steps (a transposing copy)."""
    T, F, B = a.shape
    return np.ascontiguousarray(a.transpose(1, 0, 2)).reshape(F, T * B)


def _batch_major(a: np.ndarray, extra: int = 0) -> np.ndarray:
    """(T, F, B) -> (T*B, F [+ extra]) (a transposing copy; ``extra`` columns of ones appended)."""
    T, F, B = a.shape
    out = np.empty((T, B, F + extra), dtype=a.dtype)
    out[..., :F] = a.transpose(0, 2, 1)
    if extra:
        out[..., F:] = 1
    return out.reshape(T * B, F + extra)


def recurrence_backward(s: _Saved, g: np.ndarray, needs: tuple[bool, ...]) -> tuple[np.ndarray | None, ...]:
    """Backpropagation through time: the gradient of every input from the gradient of the flat output."""
    t0 = _clock()
    T, B, H, P, mode, dtype = s.T, s.B, s.H, s.P, s.mode, s.dtype
    G = GATES[mode]
    layout = packed_layout(T, B, P, H, mode)
    g = np.asarray(g, dtype=dtype)
    g_rows = g[:layout["rows"][1]].reshape(T + 1, P, B)
    g_y = g_rows[:T] if s.reverse else g_rows[1:]
    g_h0_row = g_rows[T] if s.reverse else g_rows[0]
    g_hn = g[slice(*layout["h_n"])].reshape(P, B)
    g_cn = g[slice(*layout["c_n"])].reshape(H, B) if mode == "lstm" else None
    if s.perm is not None:
        g_y = np.take(g_y, s.perm, axis=2)
        g_hn = g_hn[:, s.perm]
        g_cn = None if g_cn is None else g_cn[:, s.perm]
    dh = np.array(g_hn, dtype=dtype)  # the error reaching h at each sequence's last step, carried back
    steps = range(T) if s.reverse else range(T - 1, -1, -1)  # the forward's steps, backwards
    rev = 1 if s.reverse else 0
    make = np.zeros if s.counts is not None else np.empty  # NOTE: padded columns must hold zero gradients
    # the backward's gate gradients are taken with respect to the halved sigmoid pre-activations, up to the
    # factor 0.25 of the sigmoid rows, which W_hh^T takes here and the weight gradients after the loop
    dscale = _sigmoid_scale(mode, H, 0.25, dtype)
    w_hh = s.w_hh if dscale is None else s.w_hh * dscale[:, None]
    step_w = _Product(w_hh.T, B)
    w_ih = s.w_ih if dscale is None else s.w_ih * dscale[:, None]
    dc = e_n = dh_all = dw = dx = None
    # dL/d(pre-activations) (GRU: of W_h h + b_h), up to dscale (the compiled loops keep it to themselves)
    e = make((T, G * H, B), dtype=dtype) if s.blocks is None else None
    t1 = _clock()
    parallel = s.blocks is not None and kernels.parallel_allowed(own_blas=True)
    with _one_blas_thread(B, parallel):
        if mode in ("rnn_tanh", "rnn_relu"):
            _rnn_backward(steps, rev, s, g_y, dh, e, step_w)
        elif mode == "lstm":
            dc = np.array(g_cn, dtype=dtype)
            dh_all = make((T, P, B), dtype=dtype) if s.proj else None
            if s.blocks is not None:
                dw, dx = _lstm_backward_compiled(s, g_y, dh, dc, step_w.w, w_ih if needs[0] else None, parallel)
            else:
                _lstm_backward(steps, rev, s, g_y, dh, dc, e, dh_all, step_w)
        else:
            e_n = make((T, H, B), dtype=dtype)  # dL/d(n pre-activation): the input side's n part
            _gru_backward(steps, rev, s, g_y, dh, e, e_n, step_w)
    t2 = _clock()

    # the weight and input gradients: one GEMM each over all T*B columns
    I = s.w_ih.shape[1]
    k0 = I + (1 if s.bias else 0)
    prev = s.rows[1:] if s.reverse else s.rows[:T]  # the state each step read
    e2 = None if e is None else _by_step(e)
    if mode == "gru":
        e_x2 = e2.copy()
        e_x2[2 * H:] = _by_step(e_n)
        dw_i = e_x2 @ s.x_aug.reshape(T * B, k0) if needs[1] or (s.bias and needs[3]) else None  # [dW_ih | db_ih]
        dw_h = e2 @ _batch_major(prev, 1 if s.bias else 0) if needs[2] or (s.bias and needs[4]) else None
        if dscale is not None:
            dw_i = None if dw_i is None else dw_i * dscale[:, None]
            dw_h = None if dw_h is None else dw_h * dscale[:, None]
        dx = (e_x2.T @ w_ih).reshape(T, B, I) if needs[0] else None
    else:
        # [dW_hh | dW_ih | db]: one GEMM with the operands the steps read, [h_{t-1}; x_t; 1] (the compiled
        # loops: summed over their steps already)
        if e is not None:
            dw = e2 @ _batch_major(s.ext[1:] if s.reverse else s.ext[:T]) if any(needs[1:5]) else None
            dx = np.matmul(e.transpose(0, 2, 1), w_ih) if needs[0] else None
        if dw is not None and dscale is not None:
            dw *= dscale[:, None]
        if dw is not None and s.order is not None:
            dw = dw[np.argsort(s.order)]
        dw_i = None if dw is None else dw[:, P:]
        dw_h = None if dw is None else dw[:, :P]
    grads: list[np.ndarray | None] = [
        None if dx is None else (dx if s.inv is None else np.take(dx, s.inv, axis=1)),
        np.ascontiguousarray(dw_i[:, :I]) if needs[1] else None,
        np.ascontiguousarray(dw_h[:, :P]) if needs[2] else None,
    ]
    k = 3
    if s.bias:
        if mode == "gru":
            grads += [dw_i[:, I].copy() if needs[3] else None, dw_h[:, P].copy() if needs[4] else None]
        else:  # NOTE: the same sum for both biases, but never one array for two inputs
            grads += [dw_i[:, I].copy() if needs[3] else None, dw_i[:, I].copy() if needs[4] else None]
        k += 2
    if s.proj:
        grads.append(_by_step(dh_all) @ _batch_major(s.m) if needs[k] else None)
        k += 1
    if s.state >= 1:
        dh0 = dh if s.inv is None else dh[:, s.inv]
        grads.append((dh0 + g_h0_row).T if needs[k] else None)
    if s.state >= 2:
        grads.append((dc if s.inv is None else dc[:, s.inv]).T if needs[k + 1] else None)
    t3 = _clock()
    _record(backward_rest=t1 - t0, backward_through_time=t2 - t1, weight_gradients=t3 - t2)
    return tuple(grads)


def _lstm_backward_compiled(s: _Saved, g_y: np.ndarray, dh: np.ndarray, dc: np.ndarray, w_t: np.ndarray,
                            w_ih: np.ndarray | None, parallel: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The LSTM's backward time loop by :func:`recurrence_kernels.lstm_backward` on the forward's blocks: dh
    and dc carried back in place; returns ([dW_hh | dW_ih | db] before the sigmoid rows' 0.25, and dx (T, B,
    I) when ``w_ih`` (scaled) is given, else None). NOTE: each block adds its steps' share of the weight
    gradient as it goes (a rank-width product a step, in cache): no (4H, T*B) array of dL/du, no copies of
    it and of the inputs into the layouts of one product over all steps, and two blocks run at once."""
    blocks, T, G = s.blocks, s.T, 4 * s.H
    nblk = len(blocks) - 1
    dh_b, dc_b = _to_blocks(dh, blocks), _to_blocks(dc, blocks)
    ext = s.ext  # (blocks, T+1, H + I [+1], width)
    dw_b = np.zeros((nblk, G, ext.shape[2]), dtype=s.dtype)
    dx_b = np.empty((nblk, T, ext.shape[3], 0 if w_ih is None else w_ih.shape[1]), dtype=s.dtype)
    recurrence_kernels.lstm_backward(w_t, _to_blocks(g_y, blocks), dh_b, dc_b, s.acts, s.sig, s.cells, s.tanh_c, ext,
                                     dw_b, np.zeros((G, 0), s.dtype) if w_ih is None else w_ih, dx_b, parallel,
                                     s.reverse, _chunk(s.H, G, blocks))
    _unblock(dh_b, blocks, dh)
    _unblock(dc_b, blocks, dc)
    dw = dw_b[0]
    for b in range(1, nblk):
        dw += dw_b[b]
    if w_ih is None:
        return dw, None
    dx = np.empty((T, s.B, w_ih.shape[1]), dtype=s.dtype)
    for b in range(nblk):
        dx[:, blocks[b]:blocks[b + 1]] = dx_b[b, :, :blocks[b + 1] - blocks[b]]
    return dw, dx


def _rnn_backward(steps: range, rev: int, s: _Saved, g_y: np.ndarray, dh: np.ndarray, e: np.ndarray,
                  step_w: _Product) -> None:
    relu = s.mode == "rnn_relu"
    rows, counts, B = s.rows, s.counts, s.B
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        d = _cols(dh, n, B)
        d += _cols(g_y[t], n, B)
        h = _cols(rows[t + 1 - rev], n, B)
        da = _cols(e[t], n, B)
        if relu:
            np.multiply(d, h > 0, out=da)
        else:  # tanh' = 1 - h^2
            np.multiply(h, h, out=da)
            np.subtract(1, da, out=da)
            da *= d
        step_w.into(da, d)


def _lstm_backward(steps: range, rev: int, s: _Saved, g_y: np.ndarray, dh: np.ndarray, dc: np.ndarray,
                   e: np.ndarray, dh_all: np.ndarray | None, step_w: _Product) -> None:
    """Internal order i, f, o, g; ``e`` gets dL/du up to the factor 0.25 of the sigmoid rows (u the halved
    pre-activations of i, f, o and g's own, see ``_sigmoid_scale``)."""
    H, B = s.H, s.B
    H2, H3 = 2 * H, 3 * H
    cells, tanh_c, acts, sig, counts = s.cells, s.tanh_c, s.acts, s.sig, s.counts
    w_hr_t = None if s.w_hr is None else np.ascontiguousarray(s.w_hr.T)
    tmp = np.empty((H, B), dtype=s.dtype)
    dm_buf = np.empty((H, B), dtype=s.dtype) if w_hr_t is not None else None
    q_buf = np.empty((4 * H, B), dtype=s.dtype)
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        d = _cols(dh, n, B)
        d += _cols(g_y[t], n, B)  # dL/dh_t
        if w_hr_t is not None:
            _cols(dh_all[t], n, B)[...] = d
            dm = _cols(dm_buf, n, B)
            np.matmul(w_hr_t, d, out=dm)  # dL/dm_t, m = o * tanh(c)
        else:
            dm = d
        u = _cols(acts[t], n, B)
        sg = _cols(sig[t], n, B)
        da = _cols(e[t], n, B)
        tc = _cols(tanh_c[t], n, B)
        c_t = _cols(dc, n, B)
        tm = _cols(tmp, n, B)
        np.multiply(tc, tc, out=tm)  # dc_t += dm * o * (1 - tanh(c)^2)
        np.subtract(1, tm, out=tm)
        tm *= sg[H2:H3]
        tm *= dm
        c_t += tm
        np.multiply(c_t, u[H3:], out=da[:H])  # di = dc * g
        np.multiply(c_t, _cols(cells[t + rev], n, B), out=da[H:H2])  # df = dc * c_{t-1}
        np.multiply(dm, tc, out=da[H2:H3])  # do
        np.multiply(c_t, sg[:H], out=da[H3:])  # dg = dc * i
        c_t *= sg[H:H2]  # dc_{t-1} = dc * f
        q = _cols(q_buf, n, B)
        np.multiply(u, u, out=q)  # every gate's tanh' = 1 - t^2 (the sigmoid rows' 0.25 aside)
        np.subtract(1, q, out=q)
        da *= q
        step_w.into(da, d)  # dL/dh_{t-1} (before the output gradient of step t-1 joins)


def _gru_backward(steps: range, rev: int, s: _Saved, g_y: np.ndarray, dh: np.ndarray, e: np.ndarray,
                  e_n: np.ndarray, step_w: _Product) -> None:
    """``e``: dL/d(W_h h + b_h) (r, z, n); ``e_n``: dL/d(n pre-activation), the input side's n part (the r and
    z rows up to their factor 0.25, see ``_lstm_backward``)."""
    H, B = s.H, s.B
    H2 = 2 * H
    rows, acts, sig, hg_all, counts = s.rows, s.acts, s.sig, s.hg, s.counts
    t1 = np.empty((H, B), dtype=s.dtype)
    t2 = np.empty((H, B), dtype=s.dtype)
    q_buf = np.empty((3 * H, B), dtype=s.dtype)
    for t in steps:
        n = B if counts is None else counts[t]
        if n == 0:
            continue
        d = _cols(dh, n, B)
        d += _cols(g_y[t], n, B)  # dL/dh_t
        u = _cols(acts[t], n, B)
        sg = _cols(sig[t], n, B)
        r, z = sg[:H], sg[H:H2]
        hp = _cols(rows[t + rev], n, B)
        dhh = _cols(e[t], n, B)
        a, b = _cols(t1, n, B), _cols(t2, n, B)
        q = _cols(q_buf, n, B)
        np.multiply(u, u, out=q)  # tanh' = 1 - t^2 of every gate
        np.subtract(1, q, out=q)
        np.subtract(1, z, out=b)  # dL/d(n pre-activation) = dh (1 - z) (1 - n^2)
        b *= d
        dn = _cols(e_n[t], n, B)
        np.multiply(b, q[H2:], out=dn)
        np.multiply(dn, r, out=dhh[H2:])  # through r * (W_hn h + b_hn)
        np.multiply(dn, _cols(hg_all[t], n, B)[H2:], out=dhh[:H])  # dr
        np.subtract(hp, u[H2:], out=dhh[H:H2])  # dz = dh (h_prev - n)
        dhh[H:H2] *= d
        dhh[:H2] *= q[:H2]
        np.multiply(d, z, out=a)  # the direct path h_prev -> h
        step_w.into(dhh, d)
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
    flat = [T.cat(parts).transpose(1, 2).reshape(-1), hn.T.reshape(-1)] + ([cn.T.reshape(-1)] if cn is not None else [])
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
