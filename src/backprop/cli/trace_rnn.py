"""``backprop trace --model rnn``: one training step of a tiny recurrent network, unrolled through time.

    backprop trace --model rnn                                 # 1-2-1 tanh RNN over T = 3 steps, squared error
    backprop trace --model rnn --x 0.5 -0.1 0.9 --y 0.3        # your own sequence and target
    backprop trace --model rnn --hidden 3 --steps 6 --loss cross_entropy
    backprop trace --model rnn --steps 40 --precision 3        # watch the error vanish on its way back

The network is an Elman RNN read many-to-one: z_t = W_xh x_t + W_hh h_(t-1) + b_h, h_t = tanh(z_t) for
t = 1 .. T from h_0 = 0, and one output o = W_hy h_T + b_y after the last step (y_hat = o for the quadratic
cost, softmax(o) for cross-entropy). The trace prints the weights, the forward pass step by step, the cost,
the backward pass through time (dC/dh_t, delta_t = dC/dh_t * (1 - h_t^2), what passes to the step before,
each step's contribution to the shared weights' gradients), the sums that are those gradients, the Jacobian
norms that make gradients vanish or explode, a check of every number against backprop's autograd (ops
composed, and the nn.RNN layer) and central finite differences, and the update. The arithmetic is
:mod:`backprop.viz.trace_rnn`; this module parses the options and prints.

``--model`` is an option of ``backprop trace``: :func:`add_model_option` gives the MLP's parser the option and
routes a command line that asks for ``rnn`` to this module's own parser (its own options and defaults).

The exit status is 0 when all the checks agree, 1 when one does not, 2 for bad options.

>>> parser = build_rnn_parser(argparse.ArgumentParser, "trace --model rnn")
>>> args = parser.parse_args(["--x", "0.5", "-0.1", "0.9", "--y", "0.3"])
>>> args.model, args.x.tolist(), args.y.tolist()
('rnn', [[0.5], [-0.1], [0.9]], [0.3])
>>> requested_model(["--hidden", "3", "--model=rnn"]), requested_model(["--model", "mlp"])
('rnn', 'mlp')
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from backprop.cli.options import CLIError, int_in, positive_float
from backprop.cli.printing import Printer
from backprop.viz import trace_rnn as bptt
from backprop.viz.trace_rnn import PARAMETERS, SHARED, BPTTStep, RNNWeights

MODELS = ("mlp", "rnn")
ATOL, RTOL = 1e-7, 1e-5  # the check: |hand - other| <= ATOL + RTOL * |hand|, as for the MLP
MAX_SIZE = 16  # units per layer
MAX_STEPS = 100
MAX_EVALUATIONS = 1_000_000  # RNN steps run by the finite differences (about 5 us each)
DETAIL_MAX_UNITS = 4  # write out every sum when no layer is wider than this
SUM_MAX_STEPS = 10  # write out dC/dW[j,k] = contribution_T + .. + contribution_1 for at most this many steps
ELEMENTWISE_MAX_PARAMETERS = 60  # list every parameter's update up to this many
STEP_TABLE_MAX = 40  # the Jacobian table shows every step up to this many, then the first and last ones


# --------------------------------------------------------------------------------------------- parsing
def _numbers(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if not all(np.isfinite(values)):
        raise ValueError
    return values


def _sequence(text: str) -> np.ndarray:
    """One or more time steps: '0.5' or '0.5,1' (one step of 2 inputs) or '0.5;-0.1;0.9' (3 steps)."""
    try:
        rows = [_numbers(step) for step in text.split(";")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as 0.5 (one step) or 0.5,1 (one step of 2 "
                                         f"inputs), steps separated by spaces or ';', got {text!r}") from None
    if len({len(r) for r in rows}) != 1:
        raise argparse.ArgumentTypeError(f"every step needs the same number of inputs, got {text!r}")
    return np.asarray(rows, dtype=np.float64)


def _target(text: str) -> np.ndarray:
    try:
        return np.asarray(_numbers(text), dtype=np.float64)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.3 or 0,1, got {text!r}"
                                         ) from None


class _Steps(argparse.Action):
    """--x: the steps of every value given, joined into one (T, I) array."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if len({v.shape[1] for v in values}) != 1:
            parser.error(f"argument {option_string}: every step needs the same number of inputs")
        setattr(namespace, self.dest, np.vstack(values))


def build_rnn_parser(parser_class: type[argparse.ArgumentParser], prog: str) -> argparse.ArgumentParser:
    """The parser of ``backprop trace --model rnn`` (``parser_class``: the command line's, for its errors)."""
    p = parser_class(
        prog=prog,
        description="Run ONE step of gradient descent on a tiny recurrent network (a tanh Elman RNN) and print "
        "it unrolled through time: the weights, the forward pass step by step (z_t, h_t), the cost, the backward "
        "pass through time (dC/dh_t, delta_t = dC/dz_t, what passes to the step before, each step's contribution "
        "to the shared weights' gradients), the sums that are those gradients, the Jacobian norms behind "
        "vanishing and exploding gradients, a check against backprop's autograd, its nn.RNN layer and "
        "finite differences, and the update. Hand computations are plain NumPy in float64.",
        epilog="The network: z_t = W_xh x_t + W_hh h_(t-1) + b_h, h_t = tanh(z_t) for t = 1..T from h_0 = 0, "
        "and one output after the last step (many-to-one): o = W_hy h_T + b_y, y_hat = o for the quadratic "
        "cost, softmax(o) for cross-entropy. Without --x/--y the sequence and the target are drawn with --seed. "
        "The MLP trace: 'backprop trace --help'.",
    )
    p.add_argument("--model", choices=MODELS, default="rnn", help="mlp: a feed-forward network (backprop trace "
                   "--help); rnn: this recurrent one")
    p.add_argument("--inputs", type=int_in(1, MAX_SIZE), default=None, metavar="I",
                   help="inputs per time step (default: 1, or from --x)")
    p.add_argument("--hidden", type=int_in(1, MAX_SIZE), default=None, metavar="H",
                   help="hidden units, the size of h_t (default: 2)")
    p.add_argument("--outputs", type=int_in(1, MAX_SIZE), default=None, metavar="O",
                   help="output units (default: 1 for the quadratic cost, 2 for cross-entropy, or from --y)")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None, metavar="T",
                   help="time steps T (default: 3, or from --x)")
    p.add_argument("--x", "--sequence", dest="x", type=_sequence, nargs="+", action=_Steps, default=None,
                   metavar="X_t", help="the input sequence, one value per step: --x 0.5 -0.1 0.9; several inputs "
                   "per step with commas: --x 0.5,1 0.2,0 (or one argument with ';' between the steps: "
                   "--x='-0.5,1;0.2,0')")
    p.add_argument("--y", type=_target, default=None, metavar="Y",
                   help="the target after the last step, e.g. 0.3 (several outputs: 0,1; a leading minus: "
                   "--y=-0.5,1)")
    p.add_argument("--loss", choices=bptt.LOSSES, default="quadratic",
                   help="quadratic: y_hat = o, C = 1/2 ||y_hat - y||^2; cross_entropy: y_hat = softmax(o), "
                   "C = -sum y ln y_hat (default: quadratic)")
    p.add_argument("--lr", type=positive_float, default=0.5, help="learning rate eta (default: 0.5)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0,
                   help="seed of the initial weights and of a drawn sequence and target (default: 0)")
    p.add_argument("--precision", type=int_in(0, 15), default=6, help="digits after the decimal point (default: 6)")
    p.add_argument("--weights-json", default=None, metavar="FILE",
                   help='start from these weights: a JSON object {"W_xh": [[...]] (H x I), "W_hh": (H x H), '
                   '"b_h": [...] (H), "W_hy": (O x H), "b_y": [...] (O)}')
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    # NOTE: argparse takes '-0.2' for a value but '-0.2,1' (a step of two inputs) for an unknown option; a
    # token that starts with a minus and a digit is a number here, as newer Pythons' argparse reads it too
    # (without this, --x='-0.2,1;0.5,0' still works, as the help says).
    p._negative_number_matcher = re.compile(r"^-\.?\d")
    return p


def requested_model(args: Sequence[str]) -> str:
    """The value of the last ``--model`` in a ``backprop trace`` command line ('mlp' without one).

    Reads ``--model rnn``, ``--model=rnn`` and the abbreviations argparse accepts (``--mod rnn``), up to ``--``.
    """
    model = "mlp"
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if len(name) > 2 and "--model".startswith(name):
            if eq:
                model = value
            elif i + 1 < len(args):
                model = args[i + 1]
                i += 1
        i += 1
    return model


def add_model_option(p: argparse.ArgumentParser) -> None:
    """Give ``backprop trace``'s parser ``--model mlp|rnn``; a command line asking for rnn is parsed by
    :func:`build_rnn_parser`'s parser instead, and ``trace.cmd_trace`` hands its namespace to
    :func:`cmd_trace_rnn`."""
    p.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp: this feed-forward network; rnn: a tiny recurrent network unrolled through time, "
                   "with options of its own (see 'backprop trace --model rnn --help') (default: mlp)")
    rnn = build_rnn_parser(type(p), f"{p.prog} --model rnn")
    parse_mlp = p.parse_known_args

    def parse_known_args(args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        if requested_model(given) == "rnn":
            return rnn.parse_known_args(given, namespace)
        return parse_mlp(args, namespace)

    # NOTE: the two models share the subcommand but not their options (--hidden is a list of layer sizes for
    # the MLP and one size here, --steps is the RNN's, --batch the MLP's), nor their defaults, so one parser
    # cannot hold both. argparse hands a subcommand's arguments to its parser's parse_known_args (3.10 to
    # 3.13 alike), so routing there gives each model its own options, defaults, --help and errors.
    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------ formatting
# ------------------------------------------------------------------------------------------- the options
def _agree(what: str, claims: list[tuple[str, int | None]], default: int) -> int:
    """One size from the options that state it, which must agree; ``default`` when none does."""
    given = [(source, v) for source, v in claims if v is not None]
    for (s1, v1), (s2, v2) in itertools.pairwise(given):
        if v1 != v2:
            raise CLIError(f"{s1} gives {v1} {what} but {s2} gives {v2}")
    return given[0][1] if given else default


def _load_weights(path: str) -> RNNWeights:
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"--weights-json: {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CLIError(f"--weights-json: cannot read {path}: {e}") from None
    if not isinstance(spec, dict) or set(spec) != set(PARAMETERS):
        raise CLIError(f"--weights-json: expected an object with the keys {', '.join(PARAMETERS)}")
    try:
        arrays = {k: np.asarray(spec[k], dtype=np.float64) for k in PARAMETERS}
    except (TypeError, ValueError):
        raise CLIError(f"--weights-json: {', '.join(PARAMETERS)} must be numbers") from None
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        raise CLIError("--weights-json: the weights must be finite")
    if arrays["W_xh"].ndim != 2 or arrays["W_hy"].ndim != 2:
        raise CLIError("--weights-json: W_xh and W_hy must be matrices (lists of rows)")
    try:
        return RNNWeights(**arrays)
    except ValueError as e:
        raise CLIError(f"--weights-json: {e}") from None


def _resolve(args: argparse.Namespace) -> tuple[RNNWeights, np.ndarray, np.ndarray, str]:
    """The weights, x (T, I), y (O,) and where the weights came from, checked for consistency."""
    loaded = _load_weights(args.weights_json) if args.weights_json else None
    sizes = loaded.sizes if loaded else (None, None, None)
    x, y = args.x, args.y
    inputs = _agree("input(s) per step", [("--inputs", args.inputs), ("--x", None if x is None else x.shape[1]),
                                          ("--weights-json", sizes[0])], 1)
    hidden = _agree("hidden unit(s)", [("--hidden", args.hidden), ("--weights-json", sizes[1])], 2)
    outputs = _agree("output(s)", [("--outputs", args.outputs), ("--y", None if y is None else len(y)),
                                   ("--weights-json", sizes[2])], 2 if args.loss == "cross_entropy" else 1)
    steps = _agree("step(s)", [("--steps", args.steps), ("--x", None if x is None else len(x))], 3)
    if steps > MAX_STEPS:
        raise CLIError(f"--x has {steps} steps; trace is for short sequences (at most {MAX_STEPS})")
    per_step = hidden * inputs + hidden * hidden + hidden
    evaluations = 2 * steps * (steps * per_step + (steps + 1) * hidden + per_step + outputs * hidden + outputs)
    if evaluations > MAX_EVALUATIONS:
        raise CLIError(f"the {inputs}-{hidden}-{outputs} RNN over {steps} steps needs {evaluations:,} RNN steps "
                       f"for its finite differences; trace is for small networks (at most {MAX_EVALUATIONS:,}): "
                       "use fewer --steps or --hidden units")
    if args.loss == "cross_entropy":
        if outputs < 2:
            raise CLIError("--loss cross_entropy needs at least 2 outputs (a softmax over one output is always 1)")
        if y is not None and (np.any(y < 0) or abs(float(y.sum()) - 1.0) > 1e-6):
            raise CLIError("--loss cross_entropy needs a target that is a probability vector (non-negative, "
                           f"summing to 1), got --y {','.join(f'{v:g}' for v in y)}")
    weights, x, y = bptt.draw_example(inputs, hidden, outputs, steps, args.loss, args.seed, x, y)
    if loaded is not None:
        return loaded, x, y, f"initial weights from {args.weights_json}"
    return weights, x, y, (f"initial weights drawn with --seed {args.seed} from U(-1/sqrt(H), 1/sqrt(H)), H = "
                           f"{hidden}, as nn.RNN does, rounded to 2 decimals so the arithmetic can be followed")


# ------------------------------------------------------------------------------------------------ trace
def cmd_trace_rnn(args: argparse.Namespace) -> int:
    """Print one training step of the RNN; 0 when every check agrees, 1 when one does not."""
    w, x, y, origin = _resolve(args)
    s = bptt.unroll(w, x, y, args.loss)
    P = Printer(args.precision, columns=False)
    T = s.steps
    detail = max(w.sizes) <= DETAIL_MAX_UNITS
    quadratic = args.loss == "quadratic"
    _heading(P, args, w, T)
    _network(P, w, T, quadratic, origin)
    _forward(P, s, args, detail)
    _cost(P, s, quadratic, detail)
    _backward(P, s, detail)
    _sums(P, s, detail)
    _vanishing(P, s)
    failures = _check(P, s, x, y)
    _update(P, s, x, y, args.lr)
    print("\n".join(P.lines))
    if failures:
        print(f"backprop: error: the gradient check failed for {', '.join(failures)}: the hand computation "
              f"and another route (autograd, nn.RNN or finite differences) disagree by more than {ATOL:g} + {RTOL:g} |hand| (see (7))",
              file=sys.stderr)
        return 1
    return 0


def _heading(P: Printer, args: argparse.Namespace, w: RNNWeights, T: int) -> None:
    inputs, hidden, outputs = w.sizes
    P.say(f"backprop trace --model rnn: one training step of a {inputs}-{hidden}-{outputs} recurrent network "
          f"unrolled over T = {T} step{'s' if T > 1 else ''}, by hand in float64")
    P.para(f"tanh hidden units, one output after the last step (many-to-one), "
          f"{'quadratic cost' if args.loss == 'quadratic' else 'softmax outputs and cross-entropy cost'}, "
          f"learning rate eta = {args.lr:g}, {w.count()} parameters")
    P.say("notation: vectors are columns, written (v0, v1, ...); W[j,k] is the weight from unit k to unit j "
          "(indices from 0)")
    P.say(f"time steps t = 1..{T}; delta_t = dC/dz_t is the error at step t")


def _network(P: Printer, w: RNNWeights, T: int, quadratic: bool, origin: str) -> None:
    inputs, hidden, outputs = w.sizes
    P.say()
    P.say("(1) The network and its initial weights")
    P.say(f"z_t = W_xh x_t + W_hh h_(t-1) + b_h,  h_t = tanh(z_t)   for t = 1..{T}, from h_0 = 0", 4)
    P.say(f"o = W_hy h_{T} + b_y,  y_hat = {'o' if quadratic else 'softmax(o)'}   (one output, after the last step)", 4)
    P.para(f"W_xh is {hidden}x{inputs}, W_hh {hidden}x{hidden}, b_h has {hidden}: the SAME at every step (shared "
          f"through time); W_hy is {outputs}x{hidden}, b_y has {outputs}: used once", 4)
    P.para(origin, 4)
    for name in PARAMETERS:
        P.show(name, getattr(w, name))


def _forward(P: Printer, s: BPTTStep, args: argparse.Namespace, detail: bool) -> None:
    w, T = s.weights, s.steps
    P.say()
    P.say("(2) Forward pass, step by step: z_t = W_xh x_t + W_hh h_(t-1) + b_h, h_t = tanh(z_t)")
    if args.x is None:
        P.para(f"the sequence x_1..x_{T}, drawn with --seed {args.seed} from U(-1, 1), rounded to 2 decimals", 4)
    P.show("h_0", s.h[0])
    for t in range(1, T + 1):
        P.say(f"step {t}:", 4)
        P.show(f"x_{t}", s.x[t], indent=6)
        P.show(f"z_{t} = W_xh x_{t} + W_hh h_{t - 1} + b_h", s.z[t], indent=6)
        if detail:
            for j in range(len(s.z[t])):
                terms = [f"{P.term(w.W_xh[j, k])}*{P.term(s.x[t][k])}" for k in range(len(s.x[t]))]
                terms += [f"{P.term(w.W_hh[j, k])}*{P.term(s.h[t - 1][k])}" for k in range(len(s.h[t - 1]))]
                P.say(f"z_{t}[{j}] = {' + '.join(terms)} + {P.term(w.b_h[j])} = {P.num(s.z[t][j])}", 8)
        P.show(f"h_{t} = tanh(z_{t})", s.h[t], indent=6)
    P.say("output, after the last step:", 4)
    P.show(f"o = W_hy h_{T} + b_y", s.o, indent=6)
    if detail:
        for j in range(len(s.o)):
            terms = " + ".join(f"{P.term(w.W_hy[j, k])}*{P.term(s.h[T][k])}" for k in range(len(s.h[T])))
            P.say(f"o[{j}] = {terms} + {P.term(w.b_y[j])} = {P.num(s.o[j])}", 8)
    if args.loss == "quadratic":
        P.show("y_hat = o", s.y_hat, indent=6)
    else:
        P.show("y_hat = softmax(o), y_hat[j] = exp(o[j]) / sum_k exp(o[k])", s.y_hat, indent=6)


def _cost(P: Printer, s: BPTTStep, quadratic: bool, detail: bool) -> None:
    P.say()
    if quadratic:
        P.say("(3) The cost: C = 1/2 ||y_hat - y||^2 = 1/2 sum_j (y_hat[j] - y[j])^2")
    else:
        P.say("(3) The cost: C = -sum_j y[j] ln y_hat[j] (cross-entropy of the softmax outputs)")
    P.show("y", s.y)
    if detail and quadratic:
        P.say("C = 1/2 (" + " + ".join(f"({P.num(a)} - {P.term(b)})^2" for a, b in zip(s.y_hat, s.y)) + ")", 4)
    elif detail:
        P.say("C = -(" + " + ".join(f"{P.term(b)}*ln({P.num(a)})" for a, b in zip(s.y_hat, s.y)) + ")", 4)
    P.say(f"C = {P.num(s.cost)}", 4)


def _backward(P: Printer, s: BPTTStep, detail: bool) -> None:
    w, T, had = s.weights, s.steps, P.had
    P.say()
    P.say("(4) Backward pass through time: the error at each step, from the last one back to the first")
    P.say("output (used once):", 4)
    P.show("dC/do = y_hat - y", s.delta_o, indent=6,
           note="" if s.loss == "quadratic" else "(softmax's Jacobian and the 1/y_hat of ln cancel: the targets sum to 1)")
    P.show(f"dC/dW_hy = dC/do h_{T}^T", s.grads["W_hy"], indent=6)
    P.show("dC/db_y = dC/do", s.grads["b_y"], indent=6)
    P.show(f"dC/dh_{T} = W_hy^T dC/do", s.dh[T], indent=6)
    if detail:
        for k in range(len(s.dh[T])):
            terms = " + ".join(f"{P.term(w.W_hy[j, k])}*{P.term(s.delta_o[j])}" for j in range(len(s.delta_o)))
            P.say(f"dC/dh_{T}[{k}] = {terms} = {P.num(s.dh[T][k])}", 8)
    for t in range(T, 0, -1):
        P.say(f"step {t}:", 4)
        source = "from the output" if t == T else f"from step {t + 1}: W_hh^T delta_{t + 1}"
        P.show(f"dC/dh_{t}", s.dh[t], indent=6, note=f"({source})")
        P.show(f"tanh'(z_{t}) = 1 - h_{t}^2", s.tanh_prime[t], indent=6)
        P.show(f"delta_{t} = dC/dz_{t} = dC/dh_{t} {had} (1 - h_{t}^2)", s.delta[t], indent=6)
        if detail:
            for j in range(len(s.delta[t])):
                P.say(f"delta_{t}[{j}] = {P.term(s.dh[t][j])} * {P.term(s.tanh_prime[t][j])} = "
                      f"{P.num(s.delta[t][j])}", 8)
        P.say(f"step {t}'s contributions to the shared weights' gradients:", 6)
        P.show(f"delta_{t} h_{t - 1}^T", s.contributions["W_hh"][t], indent=8,
               note="(to dC/dW_hh)" + ("; h_0 = 0, so step 1 adds nothing to it" if t == 1 else ""))
        P.show(f"delta_{t} x_{t}^T", s.contributions["W_xh"][t], indent=8, note="(to dC/dW_xh)")
        P.show(f"delta_{t}", s.contributions["b_h"][t], indent=8, note="(to dC/db_h)")
        to = f"step {t - 1}" if t > 1 else "h_0"
        P.para(f"passes back to {to}: dC/dh_{t - 1} = W_hh^T delta_{t}, the transposed weights times the error", 6)
        P.show("W_hh^T", w.W_hh.T, indent=8)
        P.show(f"delta_{t}", s.delta[t], indent=8)
        P.show(f"dC/dh_{t - 1} = W_hh^T delta_{t}", s.back[t], indent=8)
        if detail:
            for k in range(len(s.back[t])):
                terms = " + ".join(f"{P.term(w.W_hh[j, k])}*{P.term(s.delta[t][j])}" for j in range(len(s.delta[t])))
                P.say(f"dC/dh_{t - 1}[{k}] = {terms} = {P.num(s.back[t][k])}", 10)
        if t == 1:
            P.para("h_0 is a fixed zero state here, not learned: the error stops at the start of the sequence", 8)


def _sums(P: Printer, s: BPTTStep, detail: bool) -> None:
    T = s.steps
    P.say()
    P.say("(5) The shared weights' gradients: the sum of the per-step contributions")
    P.para("W_xh, W_hh and b_h are used at every step, so C depends on them through every z_t and dC/dW is the "
          "sum over t of each step's share:", 4)
    formulas = {"W_hh": ("delta_t h_(t-1)^T", lambda t: f"delta_{t} h_{t - 1}^T"),
                "W_xh": ("delta_t x_t^T", lambda t: f"delta_{t} x_{t}^T"),
                "b_h": ("delta_t", lambda t: f"delta_{t}")}
    for name in ("W_hh", "W_xh", "b_h"):
        general, each = formulas[name]
        parts = " + ".join(each(t) for t in range(T, 0, -1)) if T <= SUM_MAX_STEPS else f"sum_(t=1..{T}) {general}"
        P.say(f"dC/d{name} = {parts}", 4)
        c = s.contributions[name]
        if detail and T <= SUM_MAX_STEPS:
            for idx in np.ndindex(*c.shape[1:]):
                where = ",".join(map(str, idx))
                terms = " + ".join(P.term(c[(t, *idx)]) for t in range(T, 0, -1))
                P.say(f"dC/d{name}[{where}] = {terms} = {P.num(s.grads[name][idx])}", 8)
        P.show(f"dC/d{name}", s.grads[name], indent=6)
    P.say("(W_hy and b_y are used once, after the last step: their gradients are the ones in (4))", 4)


def _vanishing(P: Printer, s: BPTTStep) -> None:
    T = s.steps
    norms, reach, bounds = s.jacobian_norms(), s.reach_norms(), s.reach_bounds()
    w_norm = float(np.linalg.norm(s.weights.W_hh, 2))
    P.say()
    P.say("(6) Why gradients vanish or explode: on its way back the error crosses one Jacobian per step")
    P.say("the Jacobian of a step is J_t = dh_t/dh_(t-1) = diag(1 - h_t^2) W_hh, and dC/dh_(t-1) = J_t^T dC/dh_t, so",
          4)
    P.say(f"dC/dh_t = (dh_{T}/dh_t)^T dC/dh_{T}   with   dh_{T}/dh_t = J_{T} .. J_(t+1)", 6)
    P.say(f"||dh_{T}/dh_t|| <= ||J_{T}|| .. ||J_(t+1)||   and   ||J_t|| <= max_j (1 - h_t[j]^2) ||W_hh|| <= "
          f"||W_hh|| = {P.num(w_norm)}", 6)
    P.say("(||.|| is the spectral norm, the largest singular value)", 4)
    P.say(f"{'t':>4}  {'||J_t||':>12}  {'prod_(s>t) ||J_s||':>18}  {f'||dh_{T}/dh_t||':>14}  "
          f"{'||dC/dh_t||':>12}  {'||delta_t||':>12}", 4)
    shown: list[int | None] = list(range(T, -1, -1))
    if len(shown) > STEP_TABLE_MAX:
        half = STEP_TABLE_MAX // 2
        shown = shown[:half] + [None] + shown[-half:]
    for t in shown:
        if t is None:
            P.say(f"{'...':>4}", 4)
            continue
        jn = P.norm(norms[t]) if t > 0 else "-"
        dn = P.norm(np.linalg.norm(s.delta[t])) if t > 0 else "-"
        P.say(f"{t:>4}  {jn:>12}  {P.norm(bounds[t]):>18}  {P.norm(reach[t]):>14}  "
              f"{P.norm(np.linalg.norm(s.dh[t])):>12}  {dn:>12}", 4)
    # NOTE: the verdict reads the actual product dh_T/dh_0, not the bound: a product of matrices can shrink
    # while the product of their norms grows (rotations), and a learner should see the error that arrives.
    rate = float(reach[0]) ** (1.0 / T)
    P.para(f"the error reaching h_0 has crossed {T} Jacobian{'s' if T > 1 else ''}: ||dh_{T}/dh_0|| = "
          f"{P.norm(reach[0])}, a factor of {rate:.3g} per step on average (the bound prod ||J_t|| is "
          f"{P.norm(bounds[0])})", 4)
    ratio = np.linalg.norm(s.delta[1]) / max(float(np.linalg.norm(s.delta[T])), 1e-300)
    P.para(f"at that rate the error that reaches back 10 steps is {rate ** 10:.3g}x what left, 100 steps "
           f"{rate ** 100:.3g}x; here ||delta_1|| is {ratio:.3g}x ||delta_{T}||", 4)
    if rate < 1:
        P.para("below 1: the error fades geometrically as it goes back (vanishing gradients), so the early steps "
              "barely move the shared weights and the network cannot learn long-range dependencies; gated cells "
              "(LSTM, GRU) keep a path along which it does not fade", 4)
    else:
        P.para("above 1: the error grows geometrically as it goes back (exploding gradients) and one step can "
              "throw the weights far; clip_grad_norm_ caps the step", 4)


def _check(P: Printer, s: BPTTStep, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Section (7); the names of the quantities that disagree."""
    T = s.steps
    w = s.weights
    engine, engine_cost, engine_desc = bptt.engine_gradients(w, x, y, s.loss)
    layer, layer_cost, layer_desc = bptt.layer_gradients(w, x, y, s.loss)
    numeric = bptt.finite_differences(w, x, y, s.loss)
    per_step = bptt.per_step_finite_differences(w, x, y, s.loss)
    P.say()
    P.say("(7) Check: the same numbers by three other routes")
    P.para("autograd: backprop's engine in float64, the network composed from engine ops (one tensor per "
          "parameter, so each shared weight is used at every step and the engine adds up its gradients):", 4)
    for statement in engine_desc.split("; "):
        P.say(statement, 6)
    P.para("nn.RNN: the library's recurrent layer (one op, with its own backward through time), float64:", 4)
    for statement in layer_desc.split("; "):
        P.say(statement, 6)
    P.say(f"numeric: central finite differences (C(p + eps) - C(p - eps)) / (2 eps), eps = {bptt.FD_EPS:g}, float64",
          4)
    P.say(f"cost C: by hand {P.num(s.cost)}, autograd {P.num(engine_cost)}, nn.RNN {P.num(layer_cost)}", 4)
    P.say(f"OK when every |hand - other| <= {ATOL:g} + {RTOL:g} |hand|", 4)
    failures: list[str] = []

    def agree(hand: np.ndarray, *others: np.ndarray) -> tuple[bool, list[float]]:
        tol = ATOL + RTOL * np.abs(hand)
        ok = all(bool(np.all(np.abs(hand - o) <= tol)) for o in others)
        return ok, [float(np.max(np.abs(hand - o))) for o in others]

    P.say(f"{'gradient':<10}  {'max|hand - autograd|':>20}  {'max|hand - nn.RNN|':>18}  {'max|hand - numeric|':>19}"
          "  result", 4)
    for name in PARAMETERS:
        ok, (d_engine, d_layer, d_numeric) = agree(s.grads[name], engine[name], layer[name], numeric[name])
        if not ok:
            failures.append(f"dC/d{name}")
        P.say(f"{'dC/d' + name:<10}  {d_engine:>20.1e}  {d_layer:>18.1e}  {d_numeric:>19.1e}  "
              f"{'OK' if ok else 'MISMATCH'}", 4)
    P.para("each step's factors, numerically, on the network unrolled in time: it has one copy of W_xh, W_hh and "
          "b_h per step, all equal;", 4)
    P.para("the derivative with respect to step t's copy alone is step t's contribution (b_h's is delta_t, since "
          "dz_t/db_h = 1), and shifting h_t alone gives dC/dh_t", 4)
    P.say(f"{'step':>4}  {'dC/dh_t':>9}  {'delta_t':>9}  {'delta_t h_(t-1)^T':>17}  {'delta_t x_t^T':>13}  result", 4)
    for t in range(T, -1, -1):
        checks = [(f"dC/dh_{t}", s.dh[t], per_step["dh"][t])]
        if t > 0:
            checks += [(f"delta_{t}", s.delta[t], per_step["b_h"][t]),
                       (f"delta_{t} h_{t - 1}^T", s.contributions["W_hh"][t], per_step["W_hh"][t]),
                       (f"delta_{t} x_{t}^T", s.contributions["W_xh"][t], per_step["W_xh"][t])]
        cells = []
        step_ok = True
        for label, hand, num in checks:
            ok, (d,) = agree(hand, num)
            step_ok &= ok
            if not ok:
                failures.append(label)
            cells.append(f"{d:.1e}")
        cells += ["-"] * (4 - len(cells))
        P.say(f"{t:>4}  {cells[0]:>9}  {cells[1]:>9}  {cells[2]:>17}  {cells[3]:>13}  "
              f"{'OK' if step_ok else 'MISMATCH'}", 4)
    # NOTE: this one involves no hand computation: the derivatives with respect to the per-step copies add up to
    # the derivative with respect to the shared weight (the multivariable chain rule), by definition alone.
    sums = []
    for k in SHARED:
        ok, (d,) = agree(numeric[k], per_step[k][1:].sum(axis=0))
        if not ok:
            failures.append(f"sum of the numeric per-step {k}")
        sums.append(f"{k} {d:.1e} {'OK' if ok else 'MISMATCH'}")
    P.para("numerically alone, the per-step derivatives add up to the shared weight's derivative (max|difference|): "
           + ", ".join(sums), 4)
    P.say("the hand computation, the engine, nn.RNN and the finite differences agree: OK" if not failures else
          f"the gradients disagree: MISMATCH ({', '.join(failures)})", 4)
    return failures


def _update(P: Printer, s: BPTTStep, x: np.ndarray, y: np.ndarray, lr: float) -> None:
    w = s.weights
    new = w.step(s.grads, lr)
    P.say()
    P.say(f"(8) The update, gradient descent with eta = {lr:g}: p <- p - eta dC/dp for every parameter")
    if w.count() <= ELEMENTWISE_MAX_PARAMETERS:
        rows = []
        for name in PARAMETERS:
            old, g, nw = getattr(w, name), s.grads[name], getattr(new, name)
            for idx in np.ndindex(*old.shape):
                rows.append((f"{name}[{','.join(map(str, idx))}]", old[idx], g[idx], nw[idx]))
        width = max(len(P.num(r[1])) for r in rows)
        P.say(f"{'parameter':<12}  {'old':>{width}} - eta * gradient = new", 4)
        for label, old_v, g_v, new_v in rows:
            P.say(f"{label:<12}  {P.num(old_v):>{width}} - {lr:g} * {P.term(g_v)} = {P.num(new_v)}", 4)
    else:
        for name in PARAMETERS:
            P.show(f"new {name}", getattr(new, name))
    after = bptt.cost(new, x, y, s.loss)
    sq = sum(float(np.sum(g ** 2)) for g in s.grads.values())
    P.say(f"cost before the step: C = {P.num(s.cost)}", 4)
    P.say(f"cost after the step:  C = {P.num(after)}", 4)
    change = after - s.cost
    verdict = "decreased" if change < 0 else "did not decrease (try a smaller --lr)"
    P.para(f"change {P.num(change)}: the cost {verdict}; to first order the change is -eta ||grad C||^2 = "
          f"{P.num(-lr * sq)}", 4)
