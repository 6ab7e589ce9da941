"""A dense network's training step as two compiled kernels (with numba, when installed).

A captured step (:mod:`backprop.training.jit`) still calls NumPy a few dozen times a step, and each call
costs a microsecond or more beside its arithmetic: ~50 us a step for a 4-8-3 MLP at batch 1 (JAX's
compiled step: ~18), ~100 us of a 784-256-256-10 step at batch 10 besides its matrix products. When the
``numba`` extra is installed (``pip install "backprop[numba]"``), :func:`fuse_dense_step` recognises the
plan of the classic step, written by hand for ``bp.jit``

.. code-block:: python

    opt.zero_grad()                                   # an optim.SGD
    loss = F.cross_entropy(model(bp.Tensor(x)), y)    # model: Linear, [ReLU | Tanh | Sigmoid], ..., Linear
    loss.backward()
    opt.step()
    return loss                                       # or (logits, loss), in either order

or made by ``fit`` for such a model with ``loss="cross_entropy"`` and no sample weights, and
runs it as two numba functions generated for the architecture and compiled on first use (~2 s, then
kept on disk: :func:`_compile`): the
forward (every product one ``cblas_?gemm`` call into NumPy's own OpenBLAS, the bias and activation in the
same loop that reads the product, the softmax cross-entropy) and the backward with the update (the
gradient through each activation in the loop after its product; plain SGD's update of each weight folded
into its weight-gradient product, ``W += -lr * g^T a`` with ``beta = 1``, as
:func:`~backprop.training.jit.fuse_sgd` does).

What is kept: the learning rate is read from the optimizer at every step; ``.grad`` of every parameter gives
its gradient afterwards (a :class:`~backprop.nn.module.LazyGrad`, formed when read); ``fit``'s check that
the gradients are finite runs before anything moves (on the factors of each product, as ``fuse_sgd``); a
group that is not plain SGD (momentum, weight decay, maximize), ``fit`` with gradient clipping or data
parallelism, leaves the update to the optimizer, with the gradients formed. What differs: sums run in
another order than the replayed plan's (the products in other layouts, the loops vectorised), so results
equal the eager step's within float32 rounding, not to the bit. Anything else (other layers, losses,
weights, label smoothing, float16) runs the replayed plan. ``BACKPROP_NUMBA=0`` in the environment turns
it off.

The kernels a 4-8-3 network's step gets (whether numba is installed or not, the source is the same):

>>> source = _source([(True, "relu"), (True, None)])
>>> print(source.splitlines()[0])
def forward(x, y, consts, chunks, loss, logits, probs, a1, W0, b0, W1, b1):
>>> [line.strip() for line in source.splitlines() if "gemm(" in line][:1]
['gemm(ROW, NT, T, min(c, n - s), o, m, one, a0.ctypes.data + s * m * size, m, W0.ctypes.data, m, zero, z.ctypes.data + s * o * size, o)']
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backprop.engine import kernels
from backprop.engine.blas import (
    NO_TRANS,
    ROW_MAJOR,
    SMALL_BATCH,
    TRANS,
    _rows_per_call,
    set_blas_threads,
)
from backprop.engine.capture import Plan
from backprop.engine.kernels import cache_dir, external_gemm
from backprop.engine.ops import ReLU, Sigmoid, Tanh
from backprop.nn.functional import Linear
from backprop.nn.losses import CrossEntropy
from backprop.nn.module import Parameter, set_linear_grads
from backprop.optim.optimizer import Optimizer
from backprop.optim.sgd import SGD

__all__ = ["MAX_CURVED", "MAX_SOFTMAX", "FusedDenseStep", "dense_forward", "fuse_dense_step"]

_ACTIVATIONS = {ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid"}
#: The most tanh/sigmoid values (batch x units) a step may compute in the kernels. NOTE: numba calls the C
#: library's tanh and exp one value at a time (here 10 and 5 ns), where NumPy's are vectorised (np.tanh of
#: 512 x 32 float32: 4 us in NumPy, 165 us in a numba loop): beyond a few hundred values the replayed plan,
#: with its NumPy calls, is faster. ReLU costs nothing of the kind.
MAX_CURVED = 1024
#: The most softmax values (batch x classes) a step may compute in the kernels, for the same reason: an
#: exp each, ~25 us for 512 x 10, where a step of such a batch takes milliseconds.
MAX_SOFTMAX = 65_536
_ZERO_GRAD = Optimizer.__dict__["zero_grad"].__replayable__
_SGD_STEP = SGD.__dict__["step"].__replayable__
_kernels: dict[tuple[str, str], Any] = {}  # (generated source, dtype) -> compiled numba function
UPDATED, FORMED, NONFINITE = 0, 1, 2  # what the backward kernel did


def fuse_dense_step(plan: Plan) -> FusedDenseStep | None:
    """The plan's step as compiled kernels, or None when it is not a dense step (see the module docstring),
    numba is not installed, NumPy's OpenBLAS cannot be called, or ``BACKPROP_NUMBA=0``."""
    found = _match_jitted(plan) if len(plan.segments) == 1 else _match_fit(plan)
    if found is None:
        return None
    step = FusedDenseStep(plan, *found)
    # NOTE: numba (60 MB) is imported only for a step it can run
    return step if step.ok and kernels.enabled(step.dtype) else None


# ------------------------------------------------------------------------------------------ recognising
def dense_forward(code: Sequence[tuple]) -> bool:
    """True when a recorded forward (``fit``'s segment 0) is the chain the kernels compute, and they can run
    here: ``fit`` then records the backward at once (see :class:`~backprop.training.jit.CapturedStep`)."""
    found = _chain(code, {}, {})
    return found is not None and not found[5] and kernels.enabled()


def _chain(code: Sequence[tuple], inputs: dict[int, int], leaves: dict[int, Any]) -> tuple | None:
    """The instructions ``code`` as (layers, x slot, y slot, logits slot, loss slot, rest): a chain of Linear
    layers, each with an activation or none, from an input, ending in the mean cross-entropy of an input's
    class indices; ``rest`` is what follows. Inputs and leaves met on the way are recorded."""
    layers: list[list[Any]] = []  # [weight, bias or None, activation name or None]
    x_slot = current = logits = None
    for n, ins in enumerate(code):
        kind = ins[0]
        if kind == "input":
            if ins[3]:
                return None  # a Tensor passed in
            inputs[ins[1]] = ins[2]
            continue
        if kind == "leaf":
            leaves[ins[1]] = ins[2]
            continue
        if kind != "op":
            return None
        cls, srcs, static, dynamic, out = ins[1], ins[2], ins[3], ins[4], ins[5]
        if cls is Linear and not static and not dynamic:
            if current is None and srcs[0] in inputs:
                x_slot = current = srcs[0]
            if srcs[0] != current or any(s not in leaves for s in srcs[1:]) or len(ins[8][0]) != 2:
                return None
            layers.append([leaves[srcs[1]], leaves[srcs[2]] if len(srcs) == 3 else None, None])
            current = logits = out
        elif cls in _ACTIVATIONS and not static and not dynamic and layers and layers[-1][2] is None \
                and srcs == (current,) and current == logits:
            layers[-1][2] = _ACTIVATIONS[cls]
            current = out
        elif cls is CrossEntropy and srcs == (current,) and current == logits and layers \
                and static == {"reduction": "mean", "label_smoothing": 0.0} and len(dynamic) == 1 \
                and dynamic[0][0] == "target" and dynamic[0][1][0] == "slot" and dynamic[0][1][1] in inputs:
            return layers, x_slot, dynamic[0][1][1], logits, out, list(code[n + 1:])
        else:
            return None
    return None


def _backward_of(ins: tuple, loss: int, layers: list) -> bool:
    """True when ``ins`` is the backward from the loss through exactly the chain's ops."""
    if ins[0] != "backward" or ins[1] != loss or ins[4]:
        return False
    return len(ins[3]) == len(layers) + sum(a is not None for _, _, a in layers) + 1


def _match_jitted(plan: Plan) -> tuple | None:
    """``bp.jit`` of the classic step: zero_grad, the chain, backward, step; returns the loss and/or logits."""
    code, outs = plan.segments[0]
    if len(code) < 4:
        return None
    inputs: dict[int, int] = {}
    leaves: dict[int, Any] = {}
    head = 0
    while head < len(code) and code[head][0] == "input":
        inputs[code[head][1]] = code[head][2]
        if code[head][3]:
            return None
        head += 1
    ins = code[head]
    if ins[0] != "call" or ins[1] is not _ZERO_GRAD or len(ins[2]) != 1 or type(ins[2][0]) is not SGD \
            or not ins[3].get("set_to_none", True) or len(ins[2]) > 1:
        return None
    opt, zero = ins[2][0], (ins[2], ins[3])
    found = _chain(code[head + 1:], inputs, leaves)
    if found is None:
        return None
    layers, x_slot, y_slot, logits, loss, rest = found
    if len(rest) != 2 or not _backward_of(rest[0], loss, layers) or rest[0][2][0] != "ones" \
            or rest[1][0] != "call" or rest[1][1] is not _SGD_STEP or rest[1][2] != (opt,) or rest[1][3]:
        return None
    if not set(outs) <= {loss, logits}:
        return None
    roles = ["loss" if s == loss else "logits" for s in outs]
    return opt, zero, layers, inputs[x_slot], inputs[y_slot], roles


def _match_fit(plan: Plan) -> tuple | None:
    """``fit``'s captured step: segment 0 the chain (inputs x, y; returns logits and loss), segment 1 the
    backward seeded by its input."""
    if len(plan.segments) != 2:
        return None
    (code0, outs0), (code1, outs1) = plan.segments
    inputs: dict[int, int] = {}
    found = _chain(code0, inputs, {})
    if found is None:
        return None
    layers, x_slot, y_slot, logits, loss, rest = found
    if rest or outs0 != [logits, loss] or outs1 or len(code1) != 2 or code1[0][0] != "input" \
            or not _backward_of(code1[1], loss, layers) or code1[1][2][:2] != ("slot", code1[0][1]):
        return None
    return None, None, layers, inputs[x_slot], inputs[y_slot], ["logits", "loss"]


# ------------------------------------------------------------------------------------------ the step
class FusedDenseStep:
    """Runs in place of a plan: ``run(segment, *inputs)`` as ``Plan.run`` (segment 0: the forward, or the
    whole ``bp.jit`` step; segment 1: ``fit``'s backward and update). Where the kernels do not apply to these
    inputs, the plan runs instead. After a backward, ``checked`` and ``complete`` tell ``fit``'s step what is
    left to do (as :class:`~backprop.training.jit.fuse_sgd`'s update does)."""

    def __init__(self, plan: Plan, opt: SGD | None, zero: tuple | None, layers: Sequence[Sequence[Any]],
                 x_index: int, y_index: int, roles: list[str]) -> None:
        self.plan, self.leaves, self.zero, self.roles = plan, plan.leaves, zero, roles
        self.layers = [(w, b, act) for w, b, act in layers]
        self.params = [p for w, b, _ in self.layers for p in (w, b) if p is not None]
        self.x_index, self.y_index = x_index, y_index
        dtypes = {p.data.dtype for p in self.params}
        self.dtype = next(iter(dtypes)) if len(dtypes) == 1 else None
        self.ok = (self.dtype in (np.dtype(np.float32), np.dtype(np.float64)) and self.layers[-1][2] is None
                   and len({id(p) for p in self.params}) == len(self.params)
                   and all(isinstance(p, Parameter) and p.requires_grad for p in self.params))
        self.classes = self.layers[-1][0].data.shape[0]
        self._curved = sum(w.data.shape[0] for w, _, act in self.layers if act in ("tanh", "sigmoid"))
        self.optimizer, self.groups = None, []
        self.fold, self.check_finite, self._covers, self.direct = True, False, False, True
        self.checked = self.complete = False
        self.fallback_update: Any = None  # the plan's own folded update (fuse_sgd), when the plan runs
        self._saved: tuple | None = None  # the forward's arrays, for segment 1
        self._chunk_cache: dict[int, np.ndarray] = {}
        self._consts: dict[int, np.ndarray] = {}
        self._known: list[np.ndarray] = []  # the parameters' arrays last found laid out for the kernels
        self._one_thread = plan._one_thread
        self._threads = set_blas_threads()
        self.source_text = _source([(b is not None, act) for _, b, act in self.layers])
        self.forward_kernel = self.backward_kernel = None
        self.broken = False  # the kernels failed to compile: the plan runs
        if opt is not None:
            self.bind(opt)

    def bind(self, optimizer: Any, fold: bool = True, check_finite: bool = False) -> None:
        """The optimizer whose plain-SGD update the backward may make (``fold``), and whether every gradient
        must be found finite first (``check_finite``: else nothing moves and the gradients are formed)."""
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.optimizer, self.groups = optimizer, [group_of.get(id(p)) for p in self.params]
        self.direct = fold  # NOTE: nothing between the gradients and optimizer.step() (no clipping, one process)
        self.fold = fold and type(optimizer) is SGD and None not in self.groups
        self.check_finite = check_finite
        mine = {id(p) for p in self.params}
        self._covers = all(id(p) in mine for g in optimizer.param_groups for p in g["params"])

    def source(self, segment: int = 0) -> str:
        """The generated numba source (what each call runs)."""
        return self.source_text

    def _applies(self, x: Any, y: Any, datas: list[np.ndarray]) -> bool:
        return (type(x) is np.ndarray and x.ndim == 2 and x.dtype == self.dtype and x.flags.c_contiguous
                and len(x) * self._curved <= MAX_CURVED and len(x) * self.classes <= MAX_SOFTMAX
                and type(y) is np.ndarray and y.ndim == 1 and y.dtype.kind in "iu" and len(y) == len(x)
                and len(x) > 0 and self._laid_out(datas))

    def _laid_out(self, datas: list[np.ndarray]) -> bool:
        """The parameters' arrays are C-contiguous and writable (the kernels address them as such). NOTE:
        checked again only when one of them is another array than last time (updates are in place)."""
        known = self._known
        if len(known) == len(datas) and all(a is b for a, b in zip(datas, known)):
            return True
        if all(d.flags.c_contiguous and d.flags.writeable for d in datas):
            self._known = datas
            return True
        return False

    def _plain(self) -> bool:
        return self.fold and all(not g["momentum"] and not g["weight_decay"] and not g["maximize"]
                                 for g in self.groups)

    def run(self, segment: int, *inputs: Any) -> list[np.ndarray]:
        if segment == 1:
            if self._saved is None:  # the forward ran the plan: so does the backward, with its folded update
                result = self.plan.run(1, *inputs)
                fb = self.fallback_update
                self.checked, self.complete = (fb.checked, fb.complete) if fb is not None else (False, False)
                return result
            self._backward(np.asarray(inputs[0]).item())
            return []
        self._saved = None
        x, y = inputs[self.x_index], inputs[self.y_index]
        datas = [p.data for p in self.params]
        if self.broken or not self._applies(x, y, datas):
            return self.plan.run(segment, *inputs)
        if self.forward_kernel is None:
            try:
                self.forward_kernel, self.backward_kernel = _compile(self.source_text, self.dtype)
            except Exception as e:  # noqa: BLE001 - numba's errors are many; the plan computes the same step
                self.broken = True
                warnings.warn(f"backprop: the dense step's numba kernels could not be compiled ({type(e).__name__}: "
                              f"{e}); the replayed plan runs instead (BACKPROP_NUMBA=0 says so without this "
                              "warning)", RuntimeWarning, stacklevel=2)
                return self.plan.run(segment, *inputs)
        if self.zero is not None:  # bp.jit's step: zero_grad, forward, backward, step
            _ZERO_GRAD(*self.zero[0], **self.zero[1])
        n, dt = len(x), self.dtype
        acts = [np.empty((n, w.data.shape[0]), dtype=dt) for w, _, _ in self.layers[:-1]]
        logits, probs = np.empty((n, self.classes), dtype=dt), np.empty((n, self.classes), dtype=dt)
        loss = np.empty(1, dtype=dt)
        consts = self._consts.get(n)
        if consts is None:  # NOTE: one per batch size; its seed entry is set by each backward
            consts = self._consts[n] = np.array((0, 1, n, 0, np.finfo(dt).max), dtype=dt)
        restore = self._single_thread()
        try:
            ok = self.forward_kernel(x, y, consts, self._chunks(n), loss, logits, probs, *acts, *datas)
        finally:
            restore()
        if not ok:  # a target out of range: the plan raises the op's own error
            return self.plan.run(segment, *inputs)
        self._saved = (x, acts, probs, y, consts)
        out = {"loss": loss.reshape(()), "logits": logits}
        # bp.jit's whole step: the recorded opt.step() is what updates when the kernel did not
        if self.zero is not None and self._backward(1.0) != UPDATED:
            _SGD_STEP(self.optimizer)
        return [out[r] for r in self.roles]

    def _chunks(self, n: int) -> np.ndarray:
        """Rows per BLAS call of each layer's forward and input-gradient products at batch size n (0: one
        call; the forward then transposed): :mod:`backprop.engine.blas`'s rules, which the replayed plan uses."""
        found = self._chunk_cache.get(n)
        if found is None:
            # NOTE: the transposed forward pays below SMALL_BATCH rows only (as linear_forward): beyond, x W^T
            # in one call, read back row by row, is as fast and its loop reads memory in order
            found = self._chunk_cache[n] = np.array([c for w, _, _ in self.layers for c in (
                n if n >= SMALL_BATCH else _rows_per_call(n, w.data.size, w.data.shape[0]),
                _rows_per_call(n, w.data.size))], dtype=np.int64)
        return found

    def _single_thread(self) -> Callable[[], Any]:
        if self._one_thread and self._threads is not None:
            n = self._threads(1)
            if n != 1:
                return functools.partial(self._threads, n)
        return _nothing

    def _backward(self, seed: float) -> int:
        x, acts, probs, y, consts = self._saved
        self._saved = None
        consts[3] = seed
        dt = self.dtype
        n = len(x)
        grads = [np.empty((n, w.data.shape[0]), dtype=dt) for w, _, _ in self.layers]
        bias_grads = [np.empty(w.data.shape[0], dtype=dt) for w, _, _ in self.layers]  # NOTE: zeroed by the kernel
        fold = self._plain()
        lrs = np.array([float(g["lr"]) for g in self.groups] if fold else [0.0] * len(self.params), dtype=dt)
        restore = self._single_thread()
        try:
            status = self.backward_kernel(x, y, consts, self._chunks(n), probs, *acts, *grads, *bias_grads,
                                          *[p.data for p in self.params], lrs, fold, self.check_finite)
        finally:
            restore()
        inputs = [x, *acts]
        for (w, b, _), g, a, gb in zip(self.layers, grads, inputs, bias_grads):
            # NOTE: not UPDATED: the optimizer updates (or the step's own check finds what is not finite)
            set_linear_grads(w, b, g, a, gb, applied=status == UPDATED)
        # NOTE: FORMED too, when nothing else stands between the gradients and the optimizer (fit's step may
        # then skip its exact check: the kernel checked the factors); with clipping or data parallelism the
        # step's own apply_gradients runs (it clips, the other checks)
        self.checked = status == UPDATED or (status == FORMED and self.direct)
        self.complete = status == UPDATED and self._covers
        return status


def _nothing() -> None:
    return None


# ------------------------------------------------------------------------------------------- the kernels
_FORWARD_ACT = {
    None: "{a}[i, j] = v",
    "relu": "{a}[i, j] = zero if v <= 0 else v",  # NOTE: np.maximum's NaN stays NaN
    "tanh": "{a}[i, j] = math.tanh(v)",
    # NOTE: the op's own stable form: exp(-|v|) <= 1 never overflows
    "sigmoid": "e = math.exp(-abs(v))\n{pad}{a}[i, j] = one / (one + e) if v >= 0 else e / (one + e)",
}
_BACKWARD_ACT = {  # the gradient d through the activation, from its output a (the op's own formulas)
    "relu": "d * (one if a > 0 else zero)",
    "tanh": "d * (one - a * a)",
    "sigmoid": "d * a * (one - a)",
}


def _source(layers: list[tuple[bool, str | None]]) -> str:
    """The two kernels of a chain of Linear layers (bias or not, then an activation or none) and the mean
    cross-entropy of class indices.

    Products are ``gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)`` on addresses;
    a layer's forward is computed transposed, ``W @ a^T`` (out, n): OpenBLAS's faster form for few rows
    (see :mod:`backprop.engine.blas`), read back row by row by the loop that adds the bias and applies the
    activation. NOTE: every number stays in the step's dtype (``zero``, ``one``, ``nf`` = the batch size,
    ``seed`` and ``big`` = the dtype's largest value come in ``consts``: numba would widen float32 with a
    Python number to float64), so float32 rounds as float32 does.
    """
    k = len(layers)
    params = ", ".join(f"W{i}" + (f", b{i}" if has_b else "") for i, (has_b, _) in enumerate(layers))
    acts = "".join(f"a{i}, " for i in range(1, k))
    grads = ", ".join(f"g{i}" for i in range(k)) + ", " + ", ".join(f"gb{i}" for i in range(k))
    head = ["    n = x.shape[0]", "    zero, one, nf, seed, big = consts[0], consts[1], consts[2], consts[3], consts[4]",
            "    a0 = x", "    size = x.itemsize"]
    F = [f"def forward(x, y, consts, chunks, loss, logits, probs, {acts}{params}):", *head,
         "    for i in range(n):",
         f"        if y[i] < 0 or y[i] >= W{k - 1}.shape[0]:",
         "            return False"]
    for i, (has_b, act) in enumerate(layers):
        bias = f"b{i}[j]" if has_b else "zero"
        rows = ["        for s in range(0, n, c):",  # a few rows a call (chunks[2i] of them), or all at once
                (f"            gemm(ROW, NT, T, min(c, n - s), o, m, one, a{i}.ctypes.data + s * m * size, m, "
                 f"W{i}.ctypes.data, m, zero, {{z}}.ctypes.data + s * o * size, o)")]
        if i < k - 1:  # (n, out) = a W^T by rows, or (out, n) = W a^T; then a_{i+1}[r, j] = act(z + b[j])
            F += [f"    o, m = W{i}.shape",
                  f"    c = chunks[{2 * i}]",
                  "    if c:",
                  "        z = np.empty((n, o), x.dtype)",
                  *[line.format(z="z") for line in rows],
                  "        for i in range(n):",
                  "            for j in range(o):",
                  f"                v = z[i, j] + {bias}",
                  "                " + _FORWARD_ACT[act].format(a=f"a{i + 1}", pad="                "),
                  "    else:",
                  "        z = np.empty((o, n), x.dtype)",
                  f"        gemm(ROW, NT, T, o, n, m, one, W{i}.ctypes.data, m, a{i}.ctypes.data, m, zero, z.ctypes.data, n)",
                  "        for i in range(n):",
                  "            for j in range(o):",
                  f"                v = z[j, i] + {bias}",
                  "                " + _FORWARD_ACT[act].format(a=f"a{i + 1}", pad="                ")]
        else:  # the logits (n, C) = a W^T + b, then softmax cross-entropy (the op's arithmetic)
            F += [f"    o, m = W{i}.shape",
                  f"    c = chunks[{2 * i}] or n",
                  *[line[4:].format(z="logits") for line in rows],
                  "    total = zero",
                  "    for i in range(n):",
                  "        for j in range(o):",
                  f"            logits[i, j] += {bias}",
                  "        top = logits[i, 0]",
                  "        for j in range(1, o):",
                  "            top = max(top, logits[i, j])",
                  "        s = zero",
                  "        for j in range(o):",
                  "            e = math.exp(logits[i, j] - top)",
                  "            probs[i, j] = e",
                  "            s += e",
                  "        total += math.log(s) - (logits[i, y[i]] - top)",
                  "        for j in range(o):",
                  "            probs[i, j] = probs[i, j] / s",
                  "    loss[0] = total / nf",
                  "    return True"]
    B = [f"def backward(x, y, consts, chunks, probs, {acts}{grads}, {params}, lrs, fold, check):", *head,
         # the gradient of the logits: (softmax - onehot) * (seed / n), the op's own arithmetic
         "    scale = seed / nf",
         f"    g = g{k - 1}",
         "    for i in range(n):",
         "        for j in range(probs.shape[1]):",
         "            g[i, j] = probs[i, j]",
         "        g[i, y[i]] -= one",
         "        for j in range(probs.shape[1]):",
         "            g[i, j] *= scale"]
    for i in range(k - 1, -1, -1):
        has_b = layers[i][0]
        if has_b:
            B += [f"    for j in range(g{i}.shape[1]):", f"        gb{i}[j] = zero",
                  "    for r in range(n):", f"        for j in range(g{i}.shape[1]):", f"            gb{i}[j] += g{i}[r, j]"]
        if i:  # the gradient of the layer's input, (n, in) = g W (a few rows a call, or all), then through
            B += [f"    o, m = W{i}.shape",  # the previous activation
                  f"    c = chunks[{2 * i + 1}] or n",
                  "    for s in range(0, n, c):",
                  (f"        gemm(ROW, NT, NT, min(c, n - s), m, o, one, g{i}.ctypes.data + s * o * size, o, "
                   f"W{i}.ctypes.data, m, zero, g{i - 1}.ctypes.data + s * m * size, m)"),
                  "    for r in range(n):",
                  "        for j in range(m):",
                  f"            d, a = g{i - 1}[r, j], a{i}[r, j]",
                  f"            g{i - 1}[r, j] = {_BACKWARD_ACT[layers[i - 1][1]]}"]
    # check (fit's check_finite): every entry of g^T a is finite when g and a are and n |g| |a| < big, as
    # fuse_sgd's check; the bias gradients exactly. Nothing has moved yet when it fails.
    B += ["    if check:"]
    for i in range(k):
        B += [f"        gf, af = g{i}.reshape(-1), a{i}.reshape(-1)",  # NOTE: one BLAS dot each, as fuse_sgd's
              "        if not (math.sqrt(np.dot(gf, gf)) * math.sqrt(np.dot(af, af)) * nf < big):", "            return 2"]
        if layers[i][0]:
            B += [f"        for v in gb{i}:", "            if not math.isfinite(v):", "                return 2"]
    B += ["    if not fold:", "        return 1"]
    slot = 0  # plain SGD: W += -lr g^T a in the product (beta = 1), b -= lr gb (SGD's own arithmetic)
    for i, (has_b, _) in enumerate(layers):
        B += [f"    o, m = W{i}.shape",
              f"    gemm(ROW, T, NT, o, m, n, -lrs[{slot}], g{i}.ctypes.data, o, a{i}.ctypes.data, m, one, W{i}.ctypes.data, m)"]
        slot += 1
        if has_b:
            B += [f"    lr = lrs[{slot}]", f"    for j in range(b{i}.shape[0]):", f"        b{i}[j] -= lr * gb{i}[j]"]
            slot += 1
    B.append("    return 0")
    return "\n".join(F) + "\n\n\n" + "\n".join(B) + "\n"


def _compile(source: str, dtype: np.dtype) -> tuple[Any, Any]:
    """The (forward, backward) numba functions of a generated source for ``dtype``, compiled once per process
    and, where a cache folder can be written (:func:`backprop.engine.kernels.cache_dir`), once per machine: the source is written
    there as a module and numba keeps the machine code beside it (a later process loads it in a fraction of
    the ~1-2 s a compilation takes; ``backprop train``'s default run is a few seconds)."""
    key = (source, dtype.str)
    kernels = _kernels.get(key)
    if kernels is None:
        import numba

        # NOTE: sums may be reordered and multiply-adds fused (the loops vectorise), but not full fastmath's
        # no-NaN/no-inf assumptions: a diverging step still shows NaN and inf, and the check sees them
        options = {"nogil": True, "fastmath": {"reassoc", "contract"}}
        module = _module(source, dtype)
        if module is not None:
            jit = numba.njit(cache=True, **options)
            kernels = (jit(module.forward), jit(module.backward))
        else:
            import math

            namespace: dict[str, Any] = {"np": np, "math": math, "gemm": external_gemm(dtype.str),
                                         "ROW": ROW_MAJOR, "NT": NO_TRANS, "T": TRANS}
            exec(compile(source, "<backprop fused dense step>", "exec"), namespace)  # noqa: S102 - generated code
            jit = numba.njit(cache=False, **options)
            kernels = (jit(namespace["forward"]), jit(namespace["backward"]))
        _kernels[key] = kernels
    return kernels


_HEADER = """# Generated by backprop.training.fused for {dtype}: the forward and backward kernels of a dense network's step.
import math

import numpy as np

from backprop.engine.kernels import external_gemm

gemm = external_gemm("{dtype}")
ROW, NT, T = {row}, {nt}, {t}


"""


def _module(source: str, dtype: np.dtype) -> Any:
    """The source as a module in the cache folder (written atomically), imported; None where there is none."""
    folder = cache_dir()
    if folder is None:
        return None
    text = _HEADER.format(dtype=dtype.str, row=ROW_MAJOR, nt=NO_TRANS, t=TRANS) + source
    name = "backprop_kernels_" + hashlib.sha256(text.encode()).hexdigest()[:20]
    path = folder / f"{name}.py"
    try:
        if not path.exists() or path.read_text() != text:
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)  # NOTE: another process may write the same file at once: same text either way
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # NOTE: numba's cache finds a function's module again by its name
            spec.loader.exec_module(module)
    except OSError:
        return None
    return module
