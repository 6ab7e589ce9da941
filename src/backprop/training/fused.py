"""One compiled kernel for the whole training step of a small dense network (with numba, when installed).

A captured step (:mod:`backprop.training.jit`) of a small network is all overhead: a 4-8-3 MLP at batch 1
makes about fifty NumPy calls a step, each costing more than its arithmetic (~50 us a step, where JAX's
compiled step takes ~18). When the ``numba`` extra is installed (``pip install "backprop[numba]"``),
:func:`fuse_dense_step` recognises the plan of the classic step

.. code-block:: python

    opt.zero_grad()                                   # an optim.SGD, plain (no momentum, weight decay, maximize)
    loss = F.cross_entropy(model(bp.Tensor(x)), y)    # model: Linear, [ReLU | Tanh | Sigmoid], ..., Linear
    loss.backward()
    opt.step()
    return loss                                       # or (loss, logits), in either order

and generates one numba function for it (forward, softmax cross-entropy, backward, the SGD update: plain
loops over the few numbers there are), compiled once per architecture (~1 s, the first call). What is kept:
every parameter's ``.grad`` holds its gradient after the step, the weights move by SGD's arithmetic with
the learning rate read from the optimizer at every step, the returned loss (and logits) are arrays of the
step's dtype. What differs: the sums run in another order than the BLAS products', so results equal the
eager step's within float32 rounding, not to the bit (as a folded SGD update does,
see :func:`~backprop.training.jit.fuse_sgd`).

Only where it pays: batch x weights at most :data:`MAX_WORK` multiply-adds a pass (beyond that the BLAS
products of the replayed plan are faster than loops), float32 or float64, class-index targets, the mean
loss without label smoothing. Anything else, or a group that stops being plain SGD, runs the captured plan
as before. ``BACKPROP_NUMBA=0`` in the environment turns it off.

>>> import numpy as np, backprop as bp
>>> _ = bp.manual_seed(0)
>>> model = bp.nn.Sequential(bp.nn.Linear(4, 8), bp.nn.ReLU(), bp.nn.Linear(8, 3))
>>> opt = bp.optim.SGD(model.parameters(), lr=0.1)
>>> @bp.jit
... def train_step(x, y):
...     opt.zero_grad()
...     loss = bp.nn.functional.cross_entropy(model(bp.Tensor(x)), y)
...     loss.backward()
...     opt.step()
...     return loss
>>> x, y = np.ones((2, 4), dtype=np.float32), np.array([0, 2])
>>> first, second = float(train_step(x, y).data), float(train_step(x, y).data)
>>> second < first and model[0].weight.grad.shape == (8, 4)
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from backprop.engine.capture import Plan
from backprop.engine.ops import ReLU, Sigmoid, Tanh
from backprop.engine.tensor import Tensor
from backprop.extras import available
from backprop.nn.functional import Linear
from backprop.nn.losses import CrossEntropy
from backprop.nn.module import Parameter
from backprop.optim.optimizer import Optimizer
from backprop.optim.sgd import SGD

__all__ = ["MAX_WORK", "FusedDenseStep", "fuse_dense_step"]

#: Batch size x weights (multiply-adds of one pass) up to which the loops of one kernel beat the replayed
#: plan's BLAS products and NumPy calls. NOTE: measured here, one thread, us a step fused / replayed:
#: 4-8-3 at batch 1 (56) 9.0 / 42.4; 2-16-16-2 at 32 (10k) 21.9 / 63.8; 12-352-3 at 8 (42k) 31.7 / 70.6;
#: 64-64-10 at 32 (152k) 47.7 / 72.2; 784-32-10 at 10 (254k) 54.1 / 73.5; 64-128-10 at 64 (606k)
#: 142 / 108; 100-100-100-10 at 32 (672k) 333 / 122.
MAX_WORK = 1 << 18

_ACTIVATIONS = {ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid"}
_ZERO_GRAD = Optimizer.__dict__["zero_grad"].__replayable__
_SGD_STEP = SGD.__dict__["step"].__replayable__
_set_grad = Tensor.__dict__["grad"].__set__  # NOTE: the slot itself: a Parameter's .grad setter is a property
_kernels: dict[str, Any] = {}  # generated source -> compiled numba function (one per architecture)


def fuse_dense_step(plan: Plan) -> FusedDenseStep | None:
    """The plan's step as one compiled kernel, or None when it is not the classic dense step (see the module
    docstring), is too large to gain, or numba is not installed (or ``BACKPROP_NUMBA=0``)."""
    if os.environ.get("BACKPROP_NUMBA", "1") == "0" or not available("numba"):
        return None
    chain = _match(plan)
    if chain is None:
        return None
    return FusedDenseStep(plan, *chain)


def _match(plan: Plan) -> tuple | None:
    """(optimizer, zero_grad's args and kwargs, layers, x input, y input, output roles) or None."""
    if len(plan.segments) != 1:
        return None
    code, outs = plan.segments[0]
    inputs: dict[int, int] = {}
    leaves: dict[int, Any] = {}
    layers: list[list[Any]] = []  # [weight, bias or None, activation name or None]
    opt = zero = None
    x_slot = y_slot = current = logits = loss = None
    stage = "start"
    for ins in code:
        kind = ins[0]
        if kind == "input":
            if ins[3]:
                return None  # a Tensor passed in: run the plan
            inputs[ins[1]] = ins[2]
        elif kind == "leaf":
            leaves[ins[1]] = ins[2]
        elif kind == "call" and stage == "start":
            fn, args, kwargs = ins[1], ins[2], ins[3]
            if fn is not _ZERO_GRAD or len(args) != 1 or type(args[0]) is not SGD or not kwargs.get("set_to_none", True):
                return None
            opt, zero, stage = args[0], (args, kwargs), "forward"
        elif kind == "op" and stage == "forward":
            cls, srcs, static, dynamic, out = ins[1], ins[2], ins[3], ins[4], ins[5]
            if cls is Linear and not static and not dynamic:
                if current is None:
                    if srcs[0] not in inputs:
                        return None
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
                y_slot, loss, stage = dynamic[0][1][1], out, "loss"
            else:
                return None
        elif kind == "backward" and stage == "loss":
            _, root, seed, nodes, retain = ins
            if root != loss or seed[0] != "ones" or retain or len(nodes) != len(layers) + sum(
                    a is not None for _, _, a in layers) + 1:
                return None
            stage = "backward"
        elif kind == "call" and stage == "backward":
            if ins[1] is not _SGD_STEP or ins[2] != (opt,) or ins[3]:
                return None
            stage = "done"
        else:
            return None
    if stage != "done" or not set(outs) <= {loss, logits}:
        return None
    return opt, zero, layers, inputs[x_slot], inputs[y_slot], ["loss" if s == loss else "logits" for s in outs]


class FusedDenseStep:
    """The compiled step that replaces a plan: ``run(0, *inputs)`` as ``Plan.run`` (the plan's own
    ``run`` where the kernel does not apply to these inputs or to the optimizer as it is now)."""

    def __init__(self, plan: Plan, opt: SGD, zero: tuple, layers: Sequence[Sequence[Any]], x_index: int,
                 y_index: int, roles: list[str]) -> None:
        self.plan, self.leaves, self.opt, self.zero = plan, plan.leaves, opt, zero
        self.layers = [(w, b, act) for w, b, act in layers]
        self.params = [p for w, b, _ in self.layers for p in (w, b) if p is not None]
        self.x_index, self.y_index, self.roles = x_index, y_index, roles
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        self.groups = [group_of.get(id(p)) for p in self.params]
        dtypes = {p.data.dtype for p in self.params}
        weights = sum(w.data.size for w, _, _ in self.layers)
        self.ok = (None not in self.groups and len({id(p) for p in self.params}) == len(self.params)
                   and all(isinstance(p, Parameter) and p.requires_grad for p in self.params)
                   and len(dtypes) == 1 and dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}
                   and self.layers[-1][2] is None)
        self.dtype = dtypes.pop() if len(dtypes) == 1 else None
        self.weights = weights
        self.classes = self.layers[-1][0].data.shape[0]
        self._source = _source([(b is not None, act) for _, b, act in self.layers])
        self.kernel: Any = None

    def source(self, segment: int = 0) -> str:
        """The generated numba source (what each call runs)."""
        return self._source

    def applies(self, x: Any, y: Any) -> bool:
        return (self.ok and type(x) is np.ndarray and x.ndim == 2 and x.dtype == self.dtype
                and x.shape[0] * self.weights <= MAX_WORK and type(y) is np.ndarray and y.ndim == 1
                and y.dtype.kind in "iu" and len(y) == len(x)
                and all(g["lr"] is not None and not g["momentum"] and not g["weight_decay"] and not g["maximize"]
                        for g in self.groups))

    def run(self, segment: int, *inputs: Any) -> list[np.ndarray]:
        x, y = inputs[self.x_index], inputs[self.y_index]
        if not self.applies(x, y):
            return self.plan.run(segment, *inputs)
        if self.kernel is None:
            self.kernel = _compile(self._source)
        args, kwargs = self.zero
        _ZERO_GRAD(*args, **kwargs)
        dt = self.dtype
        grads = [np.empty_like(p.data) for p in self.params]
        lrs = np.array([float(g["lr"]) for g in self.groups], dtype=dt)
        logits = np.empty((len(x), self.classes), dtype=dt)
        loss = np.empty(1, dtype=dt)
        if not self.kernel(x, y, lrs, np.array((0, 1, len(x)), dtype=dt), logits, loss,
                           *[p.data for p in self.params], *grads):
            return self.plan.run(segment, *inputs)  # NOTE: a target out of range: the op's own error, from the plan
        for p, g in zip(self.params, grads):
            _set_grad(p, g)
        return [loss.reshape(()) if r == "loss" else logits for r in self.roles]


# ------------------------------------------------------------------------------------------- the kernel
_FORWARD_ACT = {
    None: "{a}[i, j] = v",
    "relu": "{a}[i, j] = zero if v <= 0 else v",  # NOTE: np.maximum's NaN stays NaN
    "tanh": "{a}[i, j] = math.tanh(v)",
    # NOTE: the op's own stable form: exp(-|v|) <= 1 never overflows
    "sigmoid": "e = math.exp(-abs(v))\n{pad}{a}[i, j] = one / (one + e) if v >= 0 else e / (one + e)",
}
_BACKWARD_ACT = {  # the gradient through the activation, from its output a
    None: "d",
    "relu": "d * (one if a > 0 else zero)",  # NOTE: the op's g * (out > 0): an infinite d times 0 is NaN there too
    "tanh": "d * (one - a * a)",
    "sigmoid": "d * a * (one - a)",
}


def _source(layers: list[tuple[bool, str | None]]) -> str:
    """The kernel of a chain of Linear layers (bias or not, then an activation or none) and cross-entropy.

    NOTE: every number stays in the step's dtype (``zero``, ``one`` and ``nf``, the batch size, come in as
    that dtype: numba would widen float32 with a Python int to float64), so float32 rounds as float32 does.
    Returns False, with nothing changed, when a target is not a class index.
    """
    k = len(layers)
    params = [f"W{i}" + (f", b{i}" if has_b else "") for i, (has_b, _) in enumerate(layers)]
    grads = [f"gW{i}" + (f", gb{i}" if has_b else "") for i, (has_b, _) in enumerate(layers)]
    L = [f"def step(x, y, lrs, consts, logits, loss, {', '.join(params)}, {', '.join(grads)}):",
         "    n = x.shape[0]",
         "    zero, one, nf = consts[0], consts[1], consts[2]",
         f"    for i in range(n):",
         f"        if y[i] < 0 or y[i] >= W{k - 1}.shape[0]:",
         "            return False",
         "    a0 = x"]
    for i, (has_b, act) in enumerate(layers):  # forward: a_{i+1} = act(a_i W_i^T + b_i)
        dst = "logits" if i == k - 1 else f"a{i + 1}"
        if i < k - 1:
            L.append(f"    a{i + 1} = np.empty((n, W{i}.shape[0]), x.dtype)")
        L += ["    for i in range(n):",
              f"        for j in range(W{i}.shape[0]):",
              f"            v = {'b' + str(i) + '[j]' if has_b else 'zero'}",
              f"            for q in range(W{i}.shape[1]):",
              f"                v += a{i}[i, q] * W{i}[j, q]"]
        L.append("            " + _FORWARD_ACT[act].format(a=dst, pad="            "))
    # softmax cross-entropy, the op's arithmetic: the mean of log(s) - shifted[target], and the gradient
    # (softmax - onehot) * (1 / n)
    L += ["    C = logits.shape[1]",
          "    g = np.empty((n, C), x.dtype)",
          "    total = zero",
          "    scale = one / nf",
          "    for i in range(n):",
          "        m = logits[i, 0]",
          "        for c in range(1, C):",
          "            m = max(m, logits[i, c])",
          "        s = zero",
          "        for c in range(C):",
          "            e = math.exp(logits[i, c] - m)",
          "            g[i, c] = e",
          "            s += e",
          "        total += math.log(s) - (logits[i, y[i]] - m)",
          "        for c in range(C):",
          "            g[i, c] = g[i, c] / s",
          "        g[i, y[i]] -= one",
          "        for c in range(C):",
          "            g[i, c] *= scale",
          "    loss[0] = total / nf"]
    for i in range(k - 1, -1, -1):  # backward: grads of W_i, b_i, then of a_i through its activation
        has_b = layers[i][0]
        L += ["    for j in range(W{0}.shape[0]):".format(i)]
        L += [f"        gb{i}[j] = zero"] if has_b else []
        L += [f"        for q in range(W{i}.shape[1]):", f"            gW{i}[j, q] = zero"]
        L += ["    for i in range(n):",
              f"        for j in range(W{i}.shape[0]):",
              "            d = g[i, j]"] + ([f"            gb{i}[j] += d"] if has_b else []) + [
              f"            for q in range(W{i}.shape[1]):",
              f"                gW{i}[j, q] += d * a{i}[i, q]"]
        if i:
            act = layers[i - 1][1]
            L += [f"    h = np.empty((n, W{i}.shape[1]), x.dtype)",
                  "    for i in range(n):",
                  f"        for q in range(W{i}.shape[1]):",
                  "            d = zero",
                  f"            for j in range(W{i}.shape[0]):",
                  f"                d += g[i, j] * W{i}[j, q]",
                  f"            a = a{i}[i, q]",
                  f"            h[i, q] = {_BACKWARD_ACT[act]}",
                  "    g = h"]
    # the update, SGD's arithmetic: p -= lr * grad, once every gradient is known (as the eager step)
    slot = 0
    for i, (has_b, _) in enumerate(layers):
        L += [f"    lr = lrs[{slot}]",
              f"    for j in range(W{i}.shape[0]):",
              f"        for q in range(W{i}.shape[1]):",
              f"            W{i}[j, q] -= lr * gW{i}[j, q]"]
        slot += 1
        if has_b:
            L += [f"    lr = lrs[{slot}]", f"    for j in range(b{i}.shape[0]):", f"        b{i}[j] -= lr * gb{i}[j]"]
            slot += 1
    L.append("    return True")
    return "\n".join(L) + "\n"


def _compile(source: str) -> Any:
    kernel = _kernels.get(source)
    if kernel is None:
        import math

        import numba

        namespace: dict[str, Any] = {"np": np, "math": math}
        exec(compile(source, "<backprop fused dense step>", "exec"), namespace)  # noqa: S102 - our generated code
        # NOTE: sums may be reordered and multiply-adds fused (the loops then vectorise: 1.3-2x faster here),
        # but not the no-NaN/no-inf assumptions of full fastmath: a diverging step still shows NaN and inf
        kernel = _kernels[source] = numba.njit(cache=False, nogil=True, fastmath={"reassoc", "contract"})(
            namespace["step"])
    return kernel
