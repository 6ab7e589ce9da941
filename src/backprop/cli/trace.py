"""``backprop trace``: one step of gradient descent on a tiny network, told the way the textbook tells it.

    backprop trace                                   # 2-3-2 sigmoid network, x = (0.05, 0.10), y = (0.01, 0.99)
    backprop trace --hidden 2 --precision 9          # the shape of Matt Mazur's worked example
    backprop trace --hidden 4,3 --activation relu --loss cross_entropy --batch 3

The hand-written part (sections 1-4 and 6) is plain NumPy in float64: the four equations of backpropagation
applied one by one, every intermediate printed. Section 5 then computes the same gradients twice more, with
backprop's autograd engine (``nn.Linear`` + activations, ``loss.backward()``) and with central finite
differences, so the learner sees that the chain rule by hand, the engine and the definition of the derivative
agree. The output depends only on the options (and ``--seed``): it is deterministic.

Notation (Nielsen, "Neural Networks and Deep Learning", ch. 2): layer 0 is the input, layer L the output;
``W^l[j,k]`` is the weight from unit k of layer l-1 to unit j of layer l, so ``W^l`` is an (out, in) matrix,
the layout of ``nn.Linear.weight``. Indices start at 0, as in NumPy.

The exit status is 0 when all three gradients agree, 1 when one does not, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np

from backprop.cli import trace_rnn
from backprop.cli.options import CLIError, int_in, layer_sizes, positive_float
from backprop.cli.printing import Printer
from backprop.viz.trace import FD_EPS, Net
from backprop.viz.trace import backward as _backward
from backprop.viz.trace import cost as _cost
from backprop.viz.trace import engine_gradients as _engine_gradients
from backprop.viz.trace import finite_differences as _finite_differences

ACTIVATIONS = ("sigmoid", "relu", "tanh")
LOSSES = ("quadratic", "cross_entropy")
MAZUR_X = (0.05, 0.10)  # the inputs and targets of Matt Mazur's "A Step by Step Backpropagation Example"
MAZUR_Y = (0.01, 0.99)
ATOL, RTOL = 1e-7, 1e-5  # the check: |hand - other| <= ATOL + RTOL * |hand|
MAX_PARAMETERS = 10_000  # finite differences cost two forward passes per parameter
DETAIL_MAX_UNITS = 4  # write out every sum (z^l[j] = w*a + w*a + b) when no layer is wider than this
ELEMENTWISE_MAX_PARAMETERS = 60  # list every weight's update when the network has at most this many parameters


# --------------------------------------------------------------------------------------------- parsing
def _samples(text: str) -> np.ndarray:
    """'0.05,0.10' (one sample) or '0.05,0.10;0.2,0.3' (one sample per ';'), as an (n, features) array."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.05,0.10 (samples separated by ';'), got {text!r}"
        ) from None
    if len({len(r) for r in rows}) != 1:
        raise argparse.ArgumentTypeError(f"every sample needs the same number of values, got {text!r}")
    arr = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return arr


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``trace`` subcommand to ``subparsers`` (the object ``add_subparsers`` returned)."""
    p = subparsers.add_parser(
        "trace",
        help="print one backpropagation step of a tiny network, equation by equation",
        description="Run ONE step of gradient descent on a small network and print it as the textbook tells it: "
        "the weights, the forward pass, the cost, the backward pass (delta^L, then delta^l for each earlier "
        "layer, then dC/dW and dC/db), a check against backprop's autograd and finite differences, and the "
        "update. Hand computations are plain NumPy in float64.",
        epilog="Hidden layers use --activation; the output layer is sigmoid for the quadratic cost and softmax "
        "for cross-entropy (as in 'backprop train'). Without --x/--y a 2-input, 2-output, one-sample run uses "
        "Matt Mazur's example x = (0.05, 0.10), y = (0.01, 0.99); other shapes draw the sample with --seed.",
    )
    p.add_argument("--hidden", type=layer_sizes, default=[3],
                   help="hidden layer sizes, comma-separated, 0 for none (default: 3)")
    p.add_argument("--inputs", type=int_in(1, 1000), default=None, help="input units (default: 2, or from --x)")
    p.add_argument("--outputs", type=int_in(1, 1000), default=None, help="output units (default: 2, or from --y)")
    p.add_argument("--batch", type=int_in(1, 1000), default=None,
                   help="samples in the step; gradients are averaged over them (default: 1, or from --x/--y)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="sigmoid", help="hidden activation (default: sigmoid)")
    p.add_argument("--loss", choices=LOSSES, default="quadratic",
                   help="quadratic: C = 1/2 ||a - y||^2 with sigmoid outputs; cross_entropy: softmax outputs, "
                   "C = -sum y ln a (default: quadratic)")
    p.add_argument("--lr", type=positive_float, default=0.5, help="learning rate eta (default: 0.5)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0,
                   help="seed of the initial weights and of a random sample (default: 0)")
    p.add_argument("--x", type=_samples, default=None, metavar="X",
                   help="the input, e.g. 0.05,0.10 (several samples: '0.05,0.10;0.2,0.3'; a leading minus: "
                   "--x=-0.5,0.1)")
    p.add_argument("--y", type=_samples, default=None, metavar="Y", help="the target, e.g. 0.01,0.99")
    p.add_argument("--precision", type=int_in(0, 15), default=6, help="digits after the decimal point (default: 6)")
    p.add_argument("--weights-json", default=None, metavar="FILE",
                   help='start from these weights instead of random ones: a JSON object {"W1": [[...]], '
                   '"b1": [...] or one number, "W2": ..., "b2": ...}, one W (out x in) and b per layer; with '
                   "--hidden 2 and Matt Mazur's weights it reproduces his worked example")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    trace_rnn.add_model_option(p)  # --model mlp|rnn: rnn has its own options, parsed and printed by trace_rnn
    return p


# ------------------------------------------------------------------------------------ the network, in NumPy
# NOTE: the computation (Net, the four equations, the engine's and the finite-difference gradients) lives in
# backprop.viz.trace, shared with `backprop playground`'s "explain a weight": one code path for both.
def _derivative_text(name: str, l: int) -> str:
    """sigma'(z^l) as the textbook writes it for ``name``."""
    return {
        "sigmoid": f"sigma'(z^{l}) = a^{l} (1 - a^{l})",
        "tanh": f"tanh'(z^{l}) = 1 - (a^{l})^2",
        "relu": f"relu'(z^{l}) = (1 where z^{l} > 0, else 0)",
    }[name]


# ------------------------------------------------------------------------------------------ formatting
# ------------------------------------------------------------------------------------------- the options
def _resolve(args: argparse.Namespace) -> tuple[list[int], int, np.ndarray | None, np.ndarray | None]:
    """Layer sizes and batch size from the options, checked for consistency; x and y as given (n, k) or None."""
    x, y = args.x, args.y
    if x is not None and y is not None and len(x) != len(y):
        raise CLIError(f"--x gives {len(x)} sample(s) but --y gives {len(y)}")
    given_n = len(x) if x is not None else len(y) if y is not None else None
    if args.batch is not None and given_n is not None and args.batch != given_n:
        raise CLIError(f"--batch {args.batch} but --x/--y give {given_n} sample(s)")
    n = args.batch or given_n or 1
    n_in = _width("--inputs", args.inputs, x, "--x")
    n_out = _width("--outputs", args.outputs, y, "--y")
    sizes = [n_in, *args.hidden, n_out]
    count = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    if count > MAX_PARAMETERS:
        raise CLIError(f"the {'-'.join(map(str, sizes))} network has {count} parameters; trace is for small "
                         f"networks (at most {MAX_PARAMETERS})")
    return sizes, n, x, y


def _width(option: str, value: int | None, sample: np.ndarray | None, sample_option: str) -> int:
    if sample is None:
        return value or 2
    if value is not None and value != sample.shape[1]:
        raise CLIError(f"{option} {value} but {sample_option} has {sample.shape[1]} value(s) per sample")
    return sample.shape[1]


def _load_weights(path: str, sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"--weights-json: {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CLIError(f"--weights-json: cannot read {path}: {e}") from None
    L = len(sizes) - 1
    expected = {f"{k}{l}" for l in range(1, L + 1) for k in "Wb"}
    if not isinstance(spec, dict) or set(spec) != expected:
        raise CLIError(f"--weights-json: expected an object with the keys {', '.join(sorted(expected))} "
                         f"for the {'-'.join(map(str, sizes))} network")
    weights, biases = [], []
    for l in range(1, L + 1):
        try:
            w = np.asarray(spec[f"W{l}"], dtype=np.float64)
            b = np.asarray(spec[f"b{l}"], dtype=np.float64)
        except (TypeError, ValueError):
            raise CLIError(f"--weights-json: W{l} and b{l} must be numbers") from None
        if w.shape != (sizes[l], sizes[l - 1]):
            raise CLIError(f"--weights-json: W{l} has shape {w.shape}, expected {(sizes[l], sizes[l - 1])}")
        if b.ndim == 0:  # one bias shared by the layer, as in Mazur's example
            b = np.full(sizes[l], float(b))
        if b.shape != (sizes[l],):
            raise CLIError(f"--weights-json: b{l} has shape {b.shape}, expected ({sizes[l]},) or a number")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise CLIError(f"--weights-json: W{l} and b{l} must be finite")
        weights.append(w)
        biases.append(b)
    return weights, biases


# ------------------------------------------------------------------------------------------------ trace
def cmd_trace(args: argparse.Namespace) -> int:
    """Print one step of backpropagation; 0 when the gradients check out, 1 when they do not."""
    if getattr(args, "model", "mlp") == "rnn":
        return trace_rnn.cmd_trace_rnn(args)
    sizes, n, x_given, y_given = _resolve(args)
    L = len(sizes) - 1
    rng = np.random.default_rng(args.seed)
    if args.weights_json:
        weights, biases = _load_weights(args.weights_json, sizes)
        origin = f"initial weights from {args.weights_json}"
    else:
        weights, biases = [], []
        for l in range(1, L + 1):
            bound = 1.0 / math.sqrt(sizes[l - 1])
            weights.append(np.round(rng.uniform(-bound, bound, size=(sizes[l], sizes[l - 1])), 2))
            biases.append(np.round(rng.uniform(-bound, bound, size=sizes[l]), 2))
        origin = (f"initial weights drawn with --seed {args.seed} from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as "
                  "nn.Linear does, rounded to 2 decimals so the arithmetic can be followed by hand")

    # the sample: one column per sample, as in the textbook's a^0 = x
    if x_given is not None:
        x = x_given.T.copy()
    elif sizes[0] == 2 and n == 1:
        x = np.array(MAZUR_X)[:, None]
    else:
        x = np.round(rng.uniform(0.0, 1.0, size=(sizes[0], n)), 2)
    if y_given is not None:
        y = y_given.T.copy()
    elif sizes[-1] == 2 and n == 1:
        y = np.array(MAZUR_Y)[:, None]
    elif args.loss == "cross_entropy":
        y = np.eye(sizes[-1])[:, rng.integers(0, sizes[-1], size=n)]
    else:
        y = np.round(rng.uniform(0.0, 1.0, size=(sizes[-1], n)), 2)
    if args.loss == "cross_entropy" and (np.any(y < 0) or not np.allclose(y.sum(axis=0), 1.0, atol=1e-6)):
        raise CLIError("--loss cross_entropy needs targets that are probabilities (non-negative, summing to 1 "
                         f"for each sample), got --y {';'.join(','.join(map(str, c)) for c in y.T)}")

    out_act = "sigmoid" if args.loss == "quadratic" else "softmax"
    acts = [args.activation] * (L - 1) + [out_act]
    net = Net(weights, biases, acts, args.loss)
    P = Printer(args.precision)
    detail = n == 1 and max(sizes) <= DETAIL_MAX_UNITS
    n_params = sum(w.size + b.size for w, b in zip(weights, biases))

    # ---------------------------------------------------------------------------------------- (0) heading
    arch = "-".join(map(str, sizes))
    P.say(f"backprop trace: one step of gradient descent on a {arch} network, computed by hand in float64")
    P.say(f"{f'hidden activation {args.activation}' if L > 1 else 'no hidden layer'}, output {out_act}, "
          f"{'quadratic cost' if args.loss == 'quadratic' else 'cross-entropy cost'}, learning rate eta = {args.lr:g}, "
          f"{n} sample{'s' if n > 1 else ''}, {n_params} parameters")
    P.say("notation: W^l[j,k] is the weight from unit k of layer l-1 to unit j of layer l; indices start at 0; "
          + ("vectors are columns, written (v0, v1, ...)" if n == 1 else f"a^l and z^l have one column per sample ({n})"))

    # ---------------------------------------------------------------------------------------- (1) network
    P.say()
    P.say("(1) The network and its initial weights and biases")
    for l in range(L + 1):
        if l == 0:
            P.say(f"layer 0 (input): {sizes[0]} unit{'s' if sizes[0] > 1 else ''}", 4)
        else:
            kind = "output" if l == L else "hidden"
            P.say(f"layer {l} ({kind}): {sizes[l]} unit{'s' if sizes[l] > 1 else ''}, activation {net.acts[l]}, "
                  f"W^{l} is {sizes[l]}x{sizes[l - 1]}, b^{l} has {sizes[l]}", 4)
    P.say(origin, 4)
    for l in range(1, L + 1):
        P.show(f"W^{l}", net.W[l], column=False)
        P.show(f"b^{l}", net.b[l])

    # ---------------------------------------------------------------------------------------- (2) forward
    bw = _backward(net, x, y)  # the forward pass, the cost and the four equations: printed below, step by step
    zs, as_ = bw.zs, bw.as_
    P.say()
    P.say("(2) Forward pass, layer by layer: z^l = W^l a^(l-1) + b^l and a^l = sigma(z^l)")
    P.show("a^0 = x", x)
    for l in range(1, L + 1):
        P.say(f"layer {l}:", 4)
        P.show(f"z^{l} = W^{l} a^{l - 1} + b^{l}", zs[l], indent=6)
        if detail:
            for j in range(sizes[l]):
                terms = " + ".join(f"{P.term(net.W[l][j, k])}*{P.term(as_[l - 1][k, 0])}" for k in range(sizes[l - 1]))
                P.say(f"z^{l}[{j}] = {terms} + {P.term(net.b[l][j])} = {P.num(zs[l][j, 0])}", 8)
        if net.acts[l] == "softmax":
            P.show(f"a^{l} = softmax(z^{l}), a[j] = exp(z[j]) / sum_k exp(z[k])", as_[l], indent=6)
        else:
            formula = {"sigmoid": "1 / (1 + exp(-z))", "tanh": "tanh(z)", "relu": "max(z, 0)"}[net.acts[l]]
            P.show(f"a^{l} = {net.acts[l]}(z^{l}) = {formula}", as_[l], indent=6)

    # ---------------------------------------------------------------------------------------- (3) cost
    aL, zL = as_[L], zs[L]
    cost = bw.cost
    P.say()
    if args.loss == "quadratic":
        P.say("(3) The cost: C = 1/2 ||a^L - y||^2 = 1/2 sum_j (a^L[j] - y[j])^2" +
              (f", averaged over the {n} samples" if n > 1 else ""))
    else:
        P.say("(3) The cost: C = -sum_j y[j] ln a^L[j] (cross-entropy of the softmax outputs)" +
              (f", averaged over the {n} samples" if n > 1 else ""))
    P.show("y", y)
    if detail and args.loss == "quadratic":
        terms = " + ".join(f"({P.num(aL[j, 0])} - {P.num(y[j, 0])})^2" for j in range(sizes[-1]))
        P.say(f"C = 1/2 ({terms})", 4)
    elif detail:
        terms = " + ".join(f"{P.term(y[j, 0])}*ln({P.num(aL[j, 0])})" for j in range(sizes[-1]))
        P.say(f"C = -({terms})", 4)
    if n > 1:
        per = [_cost(args.loss, zL[:, [i]], aL[:, [i]], y[:, [i]]) for i in range(n)]
        P.say("per-sample costs C_x = " + P.vec(np.array(per)), 4)
    P.say(f"C = {P.num(cost)}", 4)

    # ---------------------------------------------------------------------------------------- (4) backward
    deltas = bw.deltas
    P.say()
    P.say("(4) Backward pass: the error delta^l = dC/dz^l, from the output back to the first layer")
    if args.loss == "quadratic":
        P.say(f"output error: delta^{L} = dC/da^{L} {P.had} sigma'(z^{L})   (BP1)", 4)
        dC_da, sp = bw.dC_da, bw.sp[L]
        P.show(f"dC/da^{L} = a^{L} - y", dC_da, indent=6)
        P.show(_derivative_text(net.acts[L], L), sp, indent=6)
        P.show(f"delta^{L} = dC/da^{L} {P.had} sigma'(z^{L})", deltas[L], indent=6)
        if detail:
            for j in range(sizes[L]):
                P.say(f"delta^{L}[{j}] = {P.term(dC_da[j, 0])} * {P.term(sp[j, 0])} = {P.num(deltas[L][j, 0])}", 8)
    else:
        P.say(f"output error: with softmax outputs and the cross-entropy cost, delta^{L} = dC/dz^{L} = a^{L} - y", 4)
        P.say("(the softmax Jacobian and the 1/a of the logarithm cancel, since the targets sum to 1)", 6)
        P.show(f"delta^{L} = a^{L} - y", deltas[L], indent=6)
        if detail:
            for j in range(sizes[L]):
                P.say(f"delta^{L}[{j}] = {P.num(aL[j, 0])} - {P.num(y[j, 0])} = {P.num(deltas[L][j, 0])}", 8)
    for l in range(L - 1, 0, -1):
        P.say(f"layer {l}: delta^{l} = ((W^{l + 1})^T delta^{l + 1}) {P.had} sigma'(z^{l})   (BP2)", 4)
        back, sp = bw.back[l], bw.sp[l]
        P.show(f"(W^{l + 1})^T delta^{l + 1}", back, indent=6)
        if detail:
            for k in range(sizes[l]):
                terms = " + ".join(f"{P.term(net.W[l + 1][j, k])}*{P.term(deltas[l + 1][j, 0])}"
                                   for j in range(sizes[l + 1]))
                P.say(f"((W^{l + 1})^T delta^{l + 1})[{k}] = {terms} = {P.num(back[k, 0])}", 8)
        P.show(_derivative_text(net.acts[l], l), sp, indent=6)
        P.show(f"delta^{l} = ((W^{l + 1})^T delta^{l + 1}) {P.had} sigma'(z^{l})", deltas[l], indent=6)
        if detail:
            for k in range(sizes[l]):
                P.say(f"delta^{l}[{k}] = {P.term(back[k, 0])} * {P.term(sp[k, 0])} = {P.num(deltas[l][k, 0])}", 8)
    if n == 1:
        P.say("gradients: dC/dW^l = delta^l (a^(l-1))^T (BP4), dC/db^l = delta^l (BP3)", 4)
    else:
        P.say(f"gradients, averaged over the batch (C is the mean of the {n} per-sample costs):", 4)
        P.say("dC/dW^l = (1/n) sum_x delta^l_x (a^(l-1)_x)^T = (1/n) delta^l (a^(l-1))^T (BP4), "
              "dC/db^l = (1/n) sum_x delta^l_x (BP3)", 6)
    grads_W, grads_b = bw.grads_W, bw.grads_b
    for l in range(1, L + 1):
        gW, gb = grads_W[l], grads_b[l]
        P.show(f"dC/dW^{l}", gW, indent=6, column=False)
        if detail:
            P.say(f"e.g. dC/dW^{l}[0,0] = delta^{l}[0] * a^{l - 1}[0] = {P.term(deltas[l][0, 0])} * "
                  f"{P.term(as_[l - 1][0, 0])} = {P.num(gW[0, 0])}", 8)
        P.show(f"dC/db^{l}", gb, indent=6)

    # ---------------------------------------------------------------------------------------- (5) check
    engine_grads, engine_cost, engine_desc = _engine_gradients(net, x, y)
    numeric = _finite_differences(net, x, y)
    P.say()
    P.say("(5) Check: the same gradients by two other routes")
    P.say(f"autograd: backprop's engine in float64: {engine_desc}, then loss.backward()", 4)
    P.say(f"numeric: central finite differences (C(p + eps) - C(p - eps)) / (2 eps), eps = {FD_EPS:g}, float64", 4)
    P.say(f"engine cost C = {P.num(engine_cost)} (by hand: {P.num(cost)})", 4)
    P.say(f"OK when every |hand - other| <= {ATOL:g} + {RTOL:g} |hand|", 4)
    P.say(f"{'parameter':<10}  {'max|hand - autograd|':>20}  {'max|hand - numeric|':>20}  result", 4)
    all_ok = True
    for l in range(1, L + 1):
        for name, hand, eng, num in ((f"W^{l}", grads_W[l], engine_grads[2 * l - 2], numeric[2 * l - 2]),
                                     (f"b^{l}", grads_b[l], engine_grads[2 * l - 1], numeric[2 * l - 1])):
            tol = ATOL + RTOL * np.abs(hand)
            ok = bool(np.all(np.abs(hand - eng) <= tol) and np.all(np.abs(hand - num) <= tol))
            all_ok &= ok
            P.say(f"{name:<10}  {np.max(np.abs(hand - eng)):>20.1e}  {np.max(np.abs(hand - num)):>20.1e}  "
                  f"{'OK' if ok else 'MISMATCH'}", 4)
    P.say("all three agree: OK" if all_ok else "the gradients disagree: MISMATCH", 4)
    if not all_ok and "relu" in net.acts:
        P.say("(with relu, a z within eps of 0 puts the finite differences across the kink: try another --seed)", 4)

    # ---------------------------------------------------------------------------------------- (6) update
    lr = args.lr
    new_W = [net.W[0]] + [net.W[l] - lr * grads_W[l] for l in range(1, L + 1)]
    new_b = [net.b[0]] + [net.b[l] - lr * grads_b[l] for l in range(1, L + 1)]
    P.say()
    P.say(f"(6) The update, gradient descent with eta = {lr:g}: W^l <- W^l - eta dC/dW^l, b^l <- b^l - eta dC/db^l")
    if n_params <= ELEMENTWISE_MAX_PARAMETERS:
        rows = []
        for l in range(1, L + 1):
            for j in range(sizes[l]):
                for k in range(sizes[l - 1]):
                    rows.append((f"W^{l}[{j},{k}]", net.W[l][j, k], grads_W[l][j, k], new_W[l][j, k]))
            for j in range(sizes[l]):
                rows.append((f"b^{l}[{j}]", net.b[l][j], grads_b[l][j], new_b[l][j]))
        width = max(len(P.num(r[1])) for r in rows)
        P.say(f"{'parameter':<12}  {'old':>{width}} - eta * gradient = new", 4)
        for name, old_v, g, new_v in rows:
            P.say(f"{name:<12}  {P.num(old_v):>{width}} - {lr:g} * {P.term(g)} = {P.num(new_v)}", 4)
    else:
        for l in range(1, L + 1):
            P.show(f"new W^{l}", new_W[l], column=False)
            P.show(f"new b^{l}", new_b[l])
    after = Net(new_W[1:], new_b[1:], acts, args.loss).cost(x, y)
    sq = sum(float(np.sum(grads_W[l] ** 2) + np.sum(grads_b[l] ** 2)) for l in range(1, L + 1))
    P.say(f"cost before the step: C = {P.num(cost)}", 4)
    P.say(f"cost after the step:  C = {P.num(after)}", 4)
    change = after - cost
    verdict = "decreased" if change < 0 else "did not decrease (try a smaller --lr)"
    P.say(f"change {P.num(change)}: the cost {verdict}; to first order the change is "
          f"-eta ||grad C||^2 = {P.num(-lr * sq)}", 4)

    print("\n".join(P.lines))
    return 0 if all_ok else 1

