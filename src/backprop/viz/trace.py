"""One step of backpropagation computed by hand, the computation ``backprop trace`` prints and the playground explains.

The four equations of backpropagation (Nielsen, "Neural Networks and Deep Learning", ch. 2) applied in
float64 NumPy to a fully connected network, plus the same gradients twice more: from backprop's autograd
engine and from central finite differences. ``backprop trace`` prints every number of :func:`backward`;
``backprop playground`` uses it to explain one weight's gradient (:func:`explain_weight`). One code path:
both call these functions.

Notation: layer 0 is the input, layer L the output; ``W[l][j, k]`` is the weight from unit k of layer l-1 to
unit j of layer l (``nn.Linear.weight``'s layout); vectors are columns, one column per sample.

>>> import numpy as np
>>> net = Net([np.array([[0.15, 0.20], [0.25, 0.30]]), np.array([[0.40, 0.45], [0.50, 0.55]])],
...           [np.array([0.35, 0.35]), np.array([0.60, 0.60])], ["sigmoid", "sigmoid"], "quadratic")
>>> x, y = np.array([[0.05], [0.10]]), np.array([[0.01], [0.99]])
>>> step = backward(net, x, y)
>>> round(step.cost, 9), round(float(step.grads_W[2][0, 0]), 9)      # Matt Mazur's worked example
(0.298371109, 0.082167041)
>>> fd = finite_differences(net, x, y)
>>> bool(np.allclose(fd[2], step.grads_W[2], atol=1e-9))
True
>>> e = explain_weight(net, x, y, step, 2, 0, 0)
>>> e["formula"]
'dC/dW^2[0,0] = delta^2[0] * a^1[0]'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import erf

from backprop import nn
from backprop.engine.random import get_rng
from backprop.engine.tensor import Tensor
from backprop.nn import functional as F

__all__ = ["ACTIVATIONS", "FD_EPS", "LOSSES", "Backward", "Net", "activate", "backward", "cost", "derivative",
           "engine_gradients", "explain_weight", "finite_differences"]

#: Elementwise activations (hidden or output); "softmax" is also an output activation (with cross-entropy).
ACTIVATIONS = ("sigmoid", "relu", "tanh", "linear", "gelu")
#: quadratic: C = 1/2 ||a - y||^2 (any output activation); cross_entropy: softmax outputs, C = -sum y ln a;
#: bce: sigmoid outputs, C = -sum (y ln a + (1 - y) ln(1 - a)). Each averaged over the samples.
LOSSES = ("quadratic", "cross_entropy", "bce")
FD_EPS = 1e-6


# ------------------------------------------------------------------------------------------ activations
def activate(name: str, z: np.ndarray) -> np.ndarray:
    """sigma(z) for an activation name (softmax: one column per sample)."""
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "linear":
        return z.copy()
    if name == "gelu":  # x Phi(x), the exact form nn.GELU() computes
        return z * 0.5 * (1.0 + erf(z / math.sqrt(2.0)))
    if name == "softmax":
        e = np.exp(z - z.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)
    raise ValueError(f"unknown activation {name!r}")


def derivative(name: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """sigma'(z), written with a = sigma(z) where the textbook does."""
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "tanh":
        return 1.0 - a * a
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "linear":
        return np.ones_like(z)
    if name == "gelu":  # Phi(z) + z phi(z)
        return 0.5 * (1.0 + erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    raise ValueError(f"no elementwise derivative for {name!r}")


def cost(loss: str, z: np.ndarray, a: np.ndarray, y: np.ndarray) -> float:
    """The cost of the output layer (pre-activations z, activations a), averaged over the samples (columns)."""
    n = y.shape[1]
    if loss == "quadratic":
        return float(0.5 * np.sum((a - y) ** 2) / n)
    if loss == "bce":  # from z, stably: ln sigma(z) = -log(1 + e^-z), ln(1 - sigma(z)) = -log(1 + e^z)
        return float(np.sum(y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z)) / n)
    m = z.max(axis=0, keepdims=True)
    log_a = z - m - np.log(np.exp(z - m).sum(axis=0, keepdims=True))  # ln softmax, stable
    return float(-np.sum(y * log_a) / n)


# -------------------------------------------------------------------------------------------- the network
class Net:
    """Weights ``W[l]`` (out, in) and biases ``b[l]`` for l = 1..L (index 0 unused), an activation per layer.

    ``masks[l]`` (optional, (units, samples)) multiplies a^l after the activation: the inverted-dropout mask
    the engine drew for that layer (0 or 1/(1-p)); None for layers without dropout.
    """

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], acts: list[str], loss: str,
                 masks: list[np.ndarray | None] | None = None) -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        self.W = [np.empty((0, 0)), *weights]
        self.b = [np.empty(0), *biases]
        self.acts = ["", *acts]
        self.loss = loss
        self.L = len(weights)
        self.masks: list[np.ndarray | None] = [None, *(masks or [None] * self.L)]

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """z^l and a^l for every layer; x and the results have one column per sample."""
        zs, as_ = [np.empty(0)], [x]
        for l in range(1, self.L + 1):
            z = self.W[l] @ as_[l - 1] + self.b[l][:, None]
            zs.append(z)
            a = activate(self.acts[l], z)
            if self.masks[l] is not None:
                a = a * self.masks[l]
            as_.append(a)
        return zs, as_

    def cost(self, x: np.ndarray, y: np.ndarray) -> float:
        zs, as_ = self.forward(x)
        return cost(self.loss, zs[-1], as_[-1], y)


@dataclass
class Backward:
    """Every intermediate of one forward and backward pass (lists indexed by layer, index 0 unused).

    ``dC_da``: dC/da^L (quadratic cost only, else None); ``sp[l]``: sigma'(z^l) (for the output layer only
    with the quadratic cost); ``back[l]``: (W^(l+1))^T delta^(l+1) for the hidden layers; ``deltas[l]``:
    delta^l = dC_x/dz^l, one column per sample (of each sample's own cost C_x); ``grads_W``/``grads_b``: the
    gradients of the cost averaged over the samples.
    """

    zs: list[np.ndarray]
    as_: list[np.ndarray]
    cost: float
    dC_da: np.ndarray | None
    sp: list[np.ndarray] = field(default_factory=list)
    back: list[np.ndarray] = field(default_factory=list)
    deltas: list[np.ndarray] = field(default_factory=list)
    grads_W: list[np.ndarray] = field(default_factory=list)
    grads_b: list[np.ndarray] = field(default_factory=list)


def backward(net: Net, x: np.ndarray, y: np.ndarray) -> Backward:
    """The forward pass, the cost, and the four equations: BP1 (output error), BP2 (error of an earlier layer),
    BP3 (dC/db) and BP4 (dC/dW), averaged over the samples (the columns of x and y)."""
    zs, as_ = net.forward(x)
    L, n = net.L, x.shape[1]
    empty = np.empty(0)
    out = Backward(zs, as_, cost(net.loss, zs[L], as_[L], y), None, [empty] * (L + 1), [empty] * (L + 1),
                   [empty] * (L + 1), [empty], [empty])
    aL = as_[L]
    if net.loss == "quadratic":  # BP1: delta^L = dC/da^L (.) sigma'(z^L)
        out.dC_da = aL - y
        out.sp[L] = derivative(net.acts[L], zs[L], aL)
        out.deltas[L] = out.dC_da * out.sp[L]
    else:  # softmax + cross-entropy, sigmoid + binary cross-entropy: the 1/a of the log cancels sigma'
        out.deltas[L] = aL - y
    for l in range(L - 1, 0, -1):  # BP2: delta^l = ((W^(l+1))^T delta^(l+1)) (.) sigma'(z^l) [(.) mask^l]
        out.back[l] = net.W[l + 1].T @ out.deltas[l + 1]
        sp = derivative(net.acts[l], zs[l], activate(net.acts[l], zs[l]))
        if net.masks[l] is not None:
            sp = sp * net.masks[l]  # NOTE: a^l = mask (.) sigma(z^l), so da^l/dz^l = mask (.) sigma'(z^l)
        out.sp[l] = sp
        out.deltas[l] = out.back[l] * sp
    for l in range(1, L + 1):  # BP4 and BP3, averaged over the batch
        out.grads_W.append(out.deltas[l] @ as_[l - 1].T / n)
        out.grads_b.append(out.deltas[l].sum(axis=1) / n)
    return out


# ----------------------------------------------------------------------------------- the two other routes
_MODULES = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def engine_gradients(net: Net, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float, str]:
    """dC/dW^1, dC/db^1, ... from backprop's autograd: the network as nn.Linear layers, float64.

    The global random generator is left as it was (nn.Linear draws initial weights, overwritten here).
    """
    rng = get_rng()
    state = rng.bit_generator.state
    try:
        layers: list[Any] = []
        linears, acts = [], []
        for l in range(1, net.L + 1):
            lin = nn.Linear(net.W[l].shape[1], net.W[l].shape[0], dtype=np.float64)
            lin.weight.data[...] = net.W[l]
            lin.bias.data[...] = net.b[l]
            from_logits = l == net.L and net.loss in ("cross_entropy", "bce")  # the loss applies the output's
            act = _MODULES[net.acts[l]]() if net.acts[l] in _MODULES and not from_logits else None
            linears.append(lin)
            acts.append(act)
            layers += [lin] if act is None else [lin, act]
    finally:
        rng.bit_generator.state = state
    n = x.shape[1]
    h = Tensor(np.ascontiguousarray(x.T))  # the engine's rows are samples: x W^T + b
    for l, (lin, act) in enumerate(zip(linears, acts), start=1):
        h = lin(h) if act is None else act(lin(h))
        if net.masks[l] is not None:  # the dropout mask the engine drew, after the activation
            h = h * Tensor(np.ascontiguousarray(net.masks[l].T))
    if net.loss == "quadratic":
        loss = F.mse_loss(h, y.T, reduction="sum") * (0.5 / n)
        desc = "1/2 mse_loss(model(x), y, reduction='sum') / n"
    elif net.loss == "bce":
        loss = F.binary_cross_entropy_with_logits(h, y.T)
        desc = "F.binary_cross_entropy_with_logits(model(x), y)"
    else:
        loss = F.cross_entropy(h, y.T)
        desc = "F.cross_entropy(model(x), y)"
    loss.backward()
    grads = []
    for lin in linears:
        grads += [np.asarray(lin.weight.grad, dtype=np.float64), np.asarray(lin.bias.grad, dtype=np.float64)]
    names = ", ".join(type(m).__name__ + (f"({m.in_features}, {m.out_features})" if isinstance(m, nn.Linear) else "()")
                      for m in layers)
    return grads, float(loss.item()), f"model = nn.Sequential({names}), C = {desc}"


def finite_differences(net: Net, x: np.ndarray, y: np.ndarray, eps: float = FD_EPS,
                       only: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """(C(p + eps) - C(p - eps)) / 2eps for every weight and bias, perturbing one at a time.

    ``only=(l, j, k)``: the one weight W^l[j,k] (the other entries are left 0), two forward passes in all.
    """
    grads = []
    for l in range(1, net.L + 1):
        for is_w, arr in ((True, net.W[l]), (False, net.b[l])):
            g = np.zeros_like(arr)
            flat, gflat = arr.reshape(-1), g.reshape(-1)  # views: perturbing flat perturbs the network
            if only is None:
                indices = range(flat.size)
            else:
                indices = [only[1] * arr.shape[1] + only[2]] if is_w and only[0] == l else []
            for i in indices:
                old = flat[i]
                flat[i] = old + eps
                plus = net.cost(x, y)
                flat[i] = old - eps
                minus = net.cost(x, y)
                flat[i] = old
                gflat[i] = (plus - minus) / (2 * eps)
            grads.append(g)
    return grads


# ---------------------------------------------------------------------------------- one weight, explained
def explain_weight(net: Net, x: np.ndarray, y: np.ndarray, step: Backward, l: int, j: int, k: int,
                   max_samples: int = 8) -> dict[str, Any]:
    """The chain-rule factors of dC/dW^l[j,k] on the samples of x (one column each), with a finite-difference check.

    dC/dW^l[j,k] = (1/n) sum_x delta^l[j](x) a^(l-1)[k](x) (BP4), and delta^l[j] is BP1 at the output or
    BP2, ((W^(l+1))^T delta^(l+1))[j] sigma'(z^l[j]), below it. Returns JSON-able numbers: the formula, the
    factors per sample (the first ``max_samples``), the hand gradient, and the finite difference.
    """
    if not (1 <= l <= net.L and 0 <= j < net.W[l].shape[0] and 0 <= k < net.W[l].shape[1]):
        raise ValueError(f"no weight W^{l}[{j},{k}] in this network")
    n = x.shape[1]
    delta, a_prev = step.deltas[l][j], step.as_[l - 1][k]
    rows = []
    for s in range(min(n, max_samples)):
        row: dict[str, Any] = {"sample": s, "a_prev": float(a_prev[s]), "delta": float(delta[s]),
                               "product": float(delta[s] * a_prev[s]), "z": float(step.zs[l][j, s])}
        if l == net.L:
            row["output"] = float(step.as_[l][j, s])
            row["target"] = float(y[j, s])
            if net.loss == "quadratic":
                row["dC_da"] = float(step.dC_da[j, s])
                row["sigma_prime"] = float(step.sp[l][j, s])
        else:
            row["back"] = float(step.back[l][j, s])
            row["sigma_prime"] = float(step.sp[l][j, s])
        rows.append(row)
    if l == net.L:
        rule = {"quadratic": f"delta^{l}[{j}] = (a^{l}[{j}] - y[{j}]) * {net.acts[l]}'(z^{l}[{j}])   (BP1)",
                "cross_entropy": f"delta^{l}[{j}] = a^{l}[{j}] - y[{j}]   (BP1, softmax with cross-entropy)",
                "bce": f"delta^{l}[{j}] = a^{l}[{j}] - y[{j}]   (BP1, sigmoid with binary cross-entropy)"}[net.loss]
    else:
        rule = (f"delta^{l}[{j}] = (sum_m W^{l + 1}[m,{j}] delta^{l + 1}[m]) * {net.acts[l]}'(z^{l}[{j}])"
                + (" * mask" if net.masks[l] is not None else "") + "   (BP2)")
    numeric = finite_differences(net, x, y, only=(l, j, k))[2 * (l - 1)][j, k]
    return {
        "layer": l, "to": j, "from": k, "weight": float(net.W[l][j, k]), "samples": n,
        "formula": f"dC/dW^{l}[{j},{k}] = " + (f"(1/{n}) sum_x " if n > 1 else "") + f"delta^{l}[{j}] * a^{l - 1}[{k}]",
        "delta_rule": rule,
        "rows": rows,
        "hand": float(step.grads_W[l][j, k]),
        "numeric": float(numeric),
        "cost": step.cost,
        "eps": FD_EPS,
    }
