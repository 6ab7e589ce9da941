"""Backpropagation through time by hand: one training step of a tiny Elman RNN, every factor kept, the
computation ``backprop trace --model rnn`` prints (the RNN counterpart of :mod:`backprop.viz.trace`).

The network reads a sequence x_1 .. x_T (I values per step) and answers once, after the last step
(many-to-one, the case where the error has to travel back through every step)::

    z_t = W_xh x_t + W_hh h_(t-1) + b_h,   h_t = tanh(z_t),   h_0 = 0           (t = 1 .. T)
    o = W_hy h_T + b_y
    quadratic:      y_hat = o,           C = 1/2 ||y_hat - y||^2
    cross_entropy:  y_hat = softmax(o),  C = -sum_j y[j] ln y_hat[j]

Backward through time (:func:`unroll`): dC/do = y_hat - y for both costs, dC/dh_T = W_hy^T dC/do, and for
t = T .. 1 the error at step t is delta_t = dC/dz_t = dC/dh_t * (1 - h_t^2), which passes to the step before
as dC/dh_(t-1) = W_hh^T delta_t. W_xh, W_hh and b_h are shared by every step, so their gradient is the sum
of one contribution per step: delta_t x_t^T, delta_t h_(t-1)^T and delta_t.

Everything here is plain NumPy in float64 (the reference a learner follows), except
:func:`engine_gradients` and :func:`layer_gradients`, which compute the same step with backprop's autograd
(from engine ops, and with the ``nn.RNN`` layer), and the finite differences
(:func:`finite_differences`, :func:`per_step_finite_differences`), which check it from the definition of the
derivative. The command's printing is :mod:`backprop.cli.trace_rnn`.

Arrays indexed by time have T + 1 rows so that row t is step t: ``h[0]`` is h_0 and ``dh[0]`` is dC/dh_0;
row 0 of the arrays that have no step 0 (``z``, ``delta``, the contributions, the Jacobians) is NaN.

>>> w = RNNWeights(W_xh=np.array([[0.5], [-0.3]]), W_hh=np.array([[0.1, 0.2], [-0.4, 0.3]]),
...                b_h=np.zeros(2), W_hy=np.array([[1.0, -1.0]]), b_y=np.zeros(1))
>>> step = unroll(w, np.array([[1.0], [0.5], [-1.0]]), np.array([0.2]))
>>> step.steps, step.h.shape, round(step.cost, 6)
(3, (4, 2), 0.313648)
>>> bool(np.allclose(step.grads["W_hh"], step.contributions["W_hh"][1:].sum(axis=0)))
True
>>> fd = finite_differences(w, step.x[1:], step.y)
>>> max(float(np.max(np.abs(fd[k] - step.grads[k]))) for k in PARAMETERS) < 1e-8
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from backprop import nn
from backprop.engine.random import get_rng
from backprop.engine.tensor import Tensor
from backprop.nn import functional as F

__all__ = ["LOSSES", "PARAMETERS", "SHARED", "BPTTStep", "RNNWeights", "cost", "draw_example", "engine_gradients",
           "finite_differences", "forward", "layer_gradients", "per_step_finite_differences", "unroll"]

LOSSES = ("quadratic", "cross_entropy")
PARAMETERS = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")
SHARED = ("W_xh", "W_hh", "b_h")  # used at every step: their gradients are sums over the steps
FD_EPS = 1e-6


@dataclass(frozen=True)
class RNNWeights:
    """The parameters: W_xh (H, I), W_hh (H, H), b_h (H,), W_hy (O, H), b_y (O,), float64.

    The (out, in) layout of ``nn.Linear.weight`` and of PyTorch's ``weight_ih_l0`` / ``weight_hh_l0``
    (whose two biases ``bias_ih_l0 + bias_hh_l0`` are the one b_h here).
    """

    W_xh: np.ndarray
    W_hh: np.ndarray
    b_h: np.ndarray
    W_hy: np.ndarray
    b_y: np.ndarray

    def __post_init__(self) -> None:
        for name in PARAMETERS:
            object.__setattr__(self, name, np.array(getattr(self, name), dtype=np.float64))
        i, h, o = self.sizes
        expected = {"W_xh": (h, i), "W_hh": (h, h), "b_h": (h,), "W_hy": (o, h), "b_y": (o,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape} "
                                 f"(inputs {i}, hidden {h}, outputs {o})")

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(inputs I, hidden H, outputs O)."""
        return int(self.W_xh.shape[1]), int(self.W_xh.shape[0]), int(np.shape(self.W_hy)[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in PARAMETERS}

    def count(self) -> int:
        return sum(v.size for v in self.as_dict().values())

    def step(self, grads: dict[str, np.ndarray], lr: float) -> RNNWeights:
        """Gradient descent: every parameter p <- p - lr * dC/dp."""
        return dataclasses.replace(self, **{k: v - lr * grads[k] for k, v in self.as_dict().items()})


def draw_example(inputs: int, hidden: int, outputs: int, steps: int, loss: str, seed: int,
                 x: np.ndarray | None = None, y: np.ndarray | None = None
                 ) -> tuple[RNNWeights, np.ndarray, np.ndarray]:
    """Weights, a sequence x (steps, inputs) and a target y (outputs,) drawn with ``seed``, rounded to 2
    decimals so the arithmetic can be followed; a given ``x`` or ``y`` is used as it is.

    The weights come from U(-1/sqrt(H), 1/sqrt(H)), PyTorch's initialisation of ``nn.RNN`` and of the
    ``nn.Linear(H, O)`` on top; x from U(-1, 1); y from U(-1, 1) (quadratic) or one-hot (cross-entropy).
    """
    rng = np.random.default_rng(seed)
    bound = 1.0 / math.sqrt(hidden)

    def draw(*shape: int) -> np.ndarray:
        return np.round(rng.uniform(-bound, bound, size=shape), 2)

    # NOTE: the order of the draws is part of the output's contract (a seed names one example): weights in
    # PARAMETERS order, then x, then y; a given x or y skips its draw.
    w = RNNWeights(draw(hidden, inputs), draw(hidden, hidden), draw(hidden), draw(outputs, hidden), draw(outputs))
    if x is None:
        x = np.round(rng.uniform(-1.0, 1.0, size=(steps, inputs)), 2)
    if y is None:
        y = (np.eye(outputs)[rng.integers(0, outputs)] if loss == "cross_entropy"
             else np.round(rng.uniform(-1.0, 1.0, size=outputs), 2))
    return w, np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


# ------------------------------------------------------------------------------------------- forward
def _softmax(o: np.ndarray) -> np.ndarray:
    e = np.exp(o - o.max())
    return e / e.sum()


def _cost_of(loss: str, o: np.ndarray, y: np.ndarray) -> float:
    if loss == "quadratic":
        return float(0.5 * np.sum((o - y) ** 2))
    if loss == "cross_entropy":
        m = o.max()
        log_p = o - m - math.log(float(np.exp(o - m).sum()))  # ln softmax, stable
        return float(-np.sum(y * log_p))
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")


def _run(w: RNNWeights, x: np.ndarray, *, per_step: dict[str, np.ndarray] | None = None,
         h_shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z (T+1, H), h (T+1, H) and o (O,) for the sequence x (T, I).

    ``per_step``: copies of W_xh / W_hh / b_h, one per step (row t used at step t only), in place of the
    shared ones; ``h_shift``: added to h_t right after it is computed (row 0 to h_0). Both exist for the
    per-step finite differences: the derivative with respect to step t's copy of W_hh is step t's
    contribution to dC/dW_hh, and the derivative with respect to a shift of h_t is dC/dh_t.
    """
    steps, hidden = len(x), w.sizes[1]
    z = np.full((steps + 1, hidden), np.nan)
    h = np.zeros((steps + 1, hidden))
    if h_shift is not None:
        h[0] += h_shift[0]
    for t in range(1, steps + 1):
        W_xh, W_hh, b_h = ((per_step[k][t] if per_step and k in per_step else getattr(w, k)) for k in SHARED)
        z[t] = W_xh @ x[t - 1] + W_hh @ h[t - 1] + b_h
        h[t] = np.tanh(z[t])
        if h_shift is not None:
            h[t] += h_shift[t]
    return z, h, w.W_hy @ h[steps] + w.b_y


def forward(w: RNNWeights, x: np.ndarray, loss: str = "quadratic"
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """z (T+1, H), h (T+1, H), the output's pre-activation o (O,) and y_hat (O,) for the sequence x (T, I)."""
    z, h, o = _run(w, np.asarray(x, dtype=np.float64))
    return z, h, o, (o if loss == "quadratic" else _softmax(o))


def cost(w: RNNWeights, x: np.ndarray, y: np.ndarray, loss: str = "quadratic") -> float:
    """C for the sequence x (T, I) and the target y (O,)."""
    return _cost_of(loss, _run(w, np.asarray(x, dtype=np.float64))[2], np.asarray(y, dtype=np.float64))


# ------------------------------------------------------------------------------------------ backward
@dataclass
class BPTTStep:
    """Everything one step of backpropagation through time computes; arrays indexed by time have T + 1 rows.

    ``dh[t]`` is dC/dh_t, all the error that reaches h_t (from the output for t = T, from step t + 1
    otherwise); ``delta[t]`` is dC/dz_t = dh[t] * tanh_prime[t]; ``back[t]`` = W_hh^T delta[t] is what step t
    sends to step t - 1 (equal to ``dh[t - 1]``). ``contributions[name][t]`` is step t's share of the
    gradient of a shared parameter (W_xh, W_hh, b_h); ``grads`` holds the full gradients of all five.
    ``jacobians[t]`` is dh_t/dh_(t-1) = diag(1 - h_t^2) W_hh and ``reach[t]`` is dh_T/dh_t, their product
    J_T .. J_(t+1) (the identity for t = T).
    """

    weights: RNNWeights
    loss: str
    x: np.ndarray  # (T+1, I), row 0 NaN
    y: np.ndarray
    z: np.ndarray
    h: np.ndarray
    o: np.ndarray
    y_hat: np.ndarray
    cost: float
    delta_o: np.ndarray
    dh: np.ndarray
    tanh_prime: np.ndarray
    delta: np.ndarray
    back: np.ndarray
    contributions: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    jacobians: np.ndarray
    reach: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.h) - 1

    def jacobian_norms(self) -> np.ndarray:
        """||J_t||_2 (the largest singular value) for t = 1 .. T; row 0 NaN."""
        out = np.full(self.steps + 1, np.nan)
        for t in range(1, self.steps + 1):
            out[t] = np.linalg.norm(self.jacobians[t], 2)
        return out

    def reach_norms(self) -> np.ndarray:
        """||dh_T/dh_t||_2 for t = 0 .. T."""
        return np.array([np.linalg.norm(r, 2) for r in self.reach])

    def reach_bounds(self) -> np.ndarray:
        """prod_(s = t+1 .. T) ||J_s||_2 for t = 0 .. T (1 for t = T): the bound on ||dh_T/dh_t||_2."""
        norms = self.jacobian_norms()
        out = np.ones(self.steps + 1)
        for t in range(self.steps - 1, -1, -1):
            out[t] = out[t + 1] * norms[t + 1]
        return out


def unroll(w: RNNWeights, x: np.ndarray, y: np.ndarray, loss: str = "quadratic") -> BPTTStep:
    """The forward pass, the cost and the backward pass through time for one sequence, by hand."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    steps = len(x)
    _, hidden, _ = w.sizes
    z, h, o, y_hat = forward(w, x, loss)
    delta_o = y_hat - y  # NOTE: the same for both costs: softmax's Jacobian cancels the 1/y_hat of the log
    nan = np.full((steps + 1, hidden), np.nan)
    dh, tanh_prime, delta, back = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    dh[steps] = w.W_hy.T @ delta_o
    contributions = {k: np.full((steps + 1, *getattr(w, k).shape), np.nan) for k in SHARED}
    for t in range(steps, 0, -1):
        tanh_prime[t] = 1.0 - h[t] ** 2
        delta[t] = dh[t] * tanh_prime[t]
        contributions["W_xh"][t] = np.outer(delta[t], x[t - 1])
        contributions["W_hh"][t] = np.outer(delta[t], h[t - 1])
        contributions["b_h"][t] = delta[t]
        back[t] = w.W_hh.T @ delta[t]
        dh[t - 1] = back[t]
    grads = {k: contributions[k][1:].sum(axis=0) for k in SHARED}
    grads["W_hy"] = np.outer(delta_o, h[steps])
    grads["b_y"] = delta_o.copy()
    jacobians = np.full((steps + 1, hidden, hidden), np.nan)
    reach = np.empty((steps + 1, hidden, hidden))
    reach[steps] = np.eye(hidden)
    for t in range(steps, 0, -1):
        jacobians[t] = (1.0 - h[t] ** 2)[:, None] * w.W_hh
        reach[t - 1] = reach[t] @ jacobians[t]
    x_rows = np.vstack([np.full((1, x.shape[1]), np.nan), x])
    return BPTTStep(w, loss, x_rows, y, z, h, o, y_hat, _cost_of(loss, o, y), delta_o, dh, tanh_prime, delta,
                    back, contributions, {k: grads[k] for k in PARAMETERS}, jacobians, reach)


# --------------------------------------------------------------------------------------- the checks
def engine_gradients(w: RNNWeights, x: np.ndarray, y: np.ndarray, loss: str = "quadratic"
                     ) -> tuple[dict[str, np.ndarray], float, str]:
    """dC/dp for the five parameters from backprop's autograd, float64; also C and the code, statements
    separated by '; '.

    The network is composed from engine ops (``@``, ``.T``, ``+``, ``.tanh()``) over one leaf tensor per
    parameter, so each shared weight enters the graph T times and the engine adds up its T gradients.
    """
    # NOTE: composed from ops as well as checked through nn.RNN (layer_gradients): nn.RNN is one registered op
    # with its own BPTT inside, so this is the route where the engine itself adds up a reused leaf's
    # gradients, the sum this trace teaches.
    params = {k: Tensor(v.copy(), requires_grad=True) for k, v in w.as_dict().items()}
    x = np.asarray(x, dtype=np.float64)
    h = Tensor(np.zeros((1, w.sizes[1])))
    for t in range(len(x)):
        h = (Tensor(x[t][None, :]) @ params["W_xh"].T + h @ params["W_hh"].T + params["b_h"]).tanh()
    o = h @ params["W_hy"].T + params["b_y"]
    target = np.asarray(y, dtype=np.float64)[None, :]
    if loss == "quadratic":
        d = o - Tensor(target)
        c = (d * d).sum() * 0.5
        desc = "C = 1/2 ((o - y)^2).sum()"
    else:
        c = F.cross_entropy(o, target)
        desc = "C = F.cross_entropy(o, y)"
    c.backward()
    grads = {k: np.asarray(p.grad, dtype=np.float64).reshape(getattr(w, k).shape) for k, p in params.items()}
    return grads, float(c.item()), ("h = (x_t @ W_xh.T + h @ W_hh.T + b_h).tanh() for each step; "
                                    f"o = h @ W_hy.T + b_y; {desc}; C.backward()")


def layer_gradients(w: RNNWeights, x: np.ndarray, y: np.ndarray, loss: str = "quadratic"
                    ) -> tuple[dict[str, np.ndarray], float, str]:
    """dC/dp for the five parameters from the library's layers: ``nn.RNN`` then ``nn.Linear`` on its h_n, float64;
    also C and the code, statements separated by '; '.

    ``nn.RNN`` has PyTorch's two biases; b_h goes in ``bias_ih_l0`` and ``bias_hh_l0`` is 0 (their sum is
    what the step adds), so dC/db_h is ``bias_ih_l0``'s gradient (equal to ``bias_hh_l0``'s).
    """
    inputs, hidden, outputs = w.sizes
    rng = get_rng()
    state = rng.bit_generator.state  # NOTE: the layers draw initial weights: leave the global generator as it was
    try:
        rnn = nn.RNN(inputs, hidden, dtype=np.float64)
        head = nn.Linear(hidden, outputs, dtype=np.float64)
    finally:
        rng.bit_generator.state = state
    rnn.weight_ih_l0.data[...] = w.W_xh
    rnn.weight_hh_l0.data[...] = w.W_hh
    rnn.bias_ih_l0.data[...] = w.b_h
    rnn.bias_hh_l0.data[...] = 0.0
    head.weight.data[...] = w.W_hy
    head.bias.data[...] = w.b_y
    _, h_n = rnn(Tensor(np.asarray(x, dtype=np.float64)[:, None, :]))  # (T, batch 1, I): batch_first=False
    o = head(h_n[0])
    target = np.asarray(y, dtype=np.float64)[None, :]
    c = F.mse_loss(o, target, reduction="sum") * 0.5 if loss == "quadratic" else F.cross_entropy(o, target)
    c.backward()
    grads = {"W_xh": rnn.weight_ih_l0.grad, "W_hh": rnn.weight_hh_l0.grad, "b_h": rnn.bias_ih_l0.grad,
             "W_hy": head.weight.grad, "b_y": head.bias.grad}
    desc = (f"_, h_n = nn.RNN({inputs}, {hidden})(x) with bias_ih_l0 = b_h and bias_hh_l0 = 0; "
            f"o = nn.Linear({hidden}, {outputs})(h_n[0]); "
            + ("C = 1/2 F.mse_loss(o, y, reduction='sum')" if loss == "quadratic" else "C = F.cross_entropy(o, y)")
            + "; C.backward()")
    return {k: np.asarray(g, dtype=np.float64).reshape(getattr(w, k).shape) for k, g in grads.items()}, \
        float(c.item()), desc


def _central(f: Any, arr: np.ndarray, eps: float) -> np.ndarray:
    """(f() with arr[i] + eps - f() with arr[i] - eps) / 2 eps for every element of ``arr``, perturbed in place."""
    g = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), g.reshape(-1)  # views: perturbing flat perturbs arr
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return g


def finite_differences(w: RNNWeights, x: np.ndarray, y: np.ndarray, loss: str = "quadratic",
                       eps: float = FD_EPS) -> dict[str, np.ndarray]:
    """Central differences of C for every parameter, one element at a time, float64."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    probe = RNNWeights(**w.as_dict())  # NOTE: __post_init__ copies the arrays: w is never perturbed
    arrays = probe.as_dict()
    return {k: _central(lambda: _cost_of(loss, _run(probe, x)[2], y), arrays[k], eps) for k in PARAMETERS}


def per_step_finite_differences(w: RNNWeights, x: np.ndarray, y: np.ndarray, loss: str = "quadratic",
                                eps: float = FD_EPS) -> dict[str, np.ndarray]:
    """Each step's factors from the definition of the derivative, on the network unrolled in time.

    Unrolled, the network has one copy of W_xh, W_hh and b_h per step; they are equal, but the derivative of
    C with respect to step t's copy alone is step t's contribution. So: ``"W_xh"``, ``"W_hh"``, ``"b_h"``
    (T+1, ...) perturb step t's copy only; ``"b_h"`` is then also delta_t = dC/dz_t (b_h enters z_t with
    slope 1); ``"dh"`` (T+1, H) shifts h_t itself, t = 0 .. T.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    steps, hidden = len(x), w.sizes[1]
    copies = {k: np.repeat(getattr(w, k)[None], steps + 1, axis=0) for k in SHARED}
    shift = np.zeros((steps + 1, hidden))

    def c() -> float:
        return _cost_of(loss, _run(w, x, per_step=copies, h_shift=shift)[2], y)

    out = {k: np.full_like(copies[k], np.nan) for k in SHARED}
    for k in SHARED:
        for t in range(1, steps + 1):
            out[k][t] = _central(c, copies[k][t], eps)
    out["dh"] = np.stack([_central(c, shift[t], eps) for t in range(steps + 1)])
    return out
