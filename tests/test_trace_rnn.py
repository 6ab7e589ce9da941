"""`backprop trace --model rnn`: every printed number against an independent hand computation.

The reference below (:func:`hand_bptt`) is written from the equations with plain Python loops over the
indices, one multiplication at a time; it calls nothing of backprop's, and its own gradients are checked
against its own finite differences before they judge the command's output.
"""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from backprop.cli import trace_rnn as cli_mod
from backprop.cli.main import main as backprop_main
from backprop.viz import trace_rnn as bptt

# a 1-2-1 network with fixed weights (the module doctest's), for a run that reads no drawn number
FIXED = {"W_xh": [[0.5], [-0.3]], "W_hh": [[0.1, 0.2], [-0.4, 0.3]], "b_h": [0.0, 0.0], "W_hy": [[1.0, -1.0]],
         "b_y": [0.0]}
NAMES = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "backprop", "trace", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def trace(capsys, *args):
    """`backprop trace --model rnn ARGS` in-process: (exit code, stdout)."""
    code = backprop_main(["trace", "--model", "rnn", *args])
    return code, capsys.readouterr().out


def section(out: str, k: int) -> str:
    start = out.index(f"\n({k}) ")
    end = out.find(f"\n({k + 1}) ", start)
    return out[start:] if end < 0 else out[start:end]


def printed(out: str, label: str) -> np.ndarray:
    """The vector `label = (..)` or matrix `label = [ .. ]` (continued on the next lines) on a line that starts
    with `label = `; a note after the value is ignored."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if not line.strip().startswith(f"{label} = "):
            continue
        rest = line.strip()[len(label) + 3:]
        if rest.startswith("("):
            return np.array([float(v) for v in rest[1:rest.index(")")].split(",")])
        if not rest.startswith("["):
            continue
        rows = [rest[:rest.index("]") + 1]]
        for nxt in lines[i + 1:]:
            if not nxt.strip().startswith("["):
                break
            rows.append(nxt.strip())
        return np.array([[float(v) for v in r.strip("[] ").split()] for r in rows])
    raise AssertionError(f"{label} not printed")


def scalar(out: str, pattern: str) -> float:
    return float(re.search(pattern, out).group(1))


# ------------------------------------------------------------------------------------ the independent reference
def _tanh_step(W_xh, W_hh, b_h, x_t, h_prev):
    H, I = len(W_xh), len(x_t)
    z = []
    for j in range(H):
        acc = b_h[j]
        for k in range(I):
            acc += W_xh[j][k] * x_t[k]
        for k in range(H):
            acc += W_hh[j][k] * h_prev[k]
        z.append(acc)
    return z, [math.tanh(v) for v in z]


def _forward(p, xs, y, loss):
    H = len(p["W_hh"])
    h, z = [[0.0] * H], [None]
    for x_t in xs:
        zt, ht = _tanh_step(p["W_xh"], p["W_hh"], p["b_h"], x_t, h[-1])
        z.append(zt)
        h.append(ht)
    o = [p["b_y"][j] + sum(p["W_hy"][j][k] * h[-1][k] for k in range(H)) for j in range(len(p["W_hy"]))]
    if loss == "quadratic":
        y_hat = list(o)
        cost = 0.5 * sum((a - b) ** 2 for a, b in zip(y_hat, y))
    else:
        m = max(o)
        e = [math.exp(v - m) for v in o]
        y_hat = [v / sum(e) for v in e]
        cost = -sum(b * math.log(a) for a, b in zip(y_hat, y))
    return z, h, o, y_hat, cost


def hand_bptt(p, xs, y, loss="quadratic", lr=0.5):
    """One step of backpropagation through time, from the equations, index by index."""
    p = {k: np.asarray(v, dtype=float).tolist() for k, v in p.items()}
    xs = np.asarray(xs, dtype=float).tolist()
    y = list(np.asarray(y, dtype=float))
    T, H, I, O = len(xs), len(p["W_hh"]), len(xs[0]), len(p["W_hy"])
    z, h, o, y_hat, cost = _forward(p, xs, y, loss)
    if loss == "quadratic":
        d_o = [y_hat[j] - y[j] for j in range(O)]
    else:  # through the softmax's Jacobian, without the shortcut: dC/do_j = sum_i (-y_i / p_i) p_i (1[i=j] - p_j)
        d_o = [sum(-y[i] / y_hat[i] * y_hat[i] * ((i == j) - y_hat[j]) for i in range(O)) for j in range(O)]
    dh = {T: [sum(p["W_hy"][j][k] * d_o[j] for j in range(O)) for k in range(H)]}
    delta, c_hh, c_xh = {}, {}, {}
    for t in range(T, 0, -1):
        delta[t] = [dh[t][k] * (1 - h[t][k] ** 2) for k in range(H)]
        c_hh[t] = [[delta[t][j] * h[t - 1][k] for k in range(H)] for j in range(H)]
        c_xh[t] = [[delta[t][j] * xs[t - 1][k] for k in range(I)] for j in range(H)]
        dh[t - 1] = [sum(p["W_hh"][j][k] * delta[t][j] for j in range(H)) for k in range(H)]
    g = {"W_hh": [[sum(c_hh[t][j][k] for t in range(1, T + 1)) for k in range(H)] for j in range(H)],
         "W_xh": [[sum(c_xh[t][j][k] for t in range(1, T + 1)) for k in range(I)] for j in range(H)],
         "b_h": [sum(delta[t][j] for t in range(1, T + 1)) for j in range(H)],
         "W_hy": [[d_o[j] * h[T][k] for k in range(H)] for j in range(O)],
         "b_y": list(d_o)}
    new = {k: (np.asarray(p[k]) - lr * np.asarray(g[k])).tolist() for k in NAMES}
    # the Jacobians dh_t/dh_(t-1)[j][k] = (1 - h_t[j]^2) W_hh[j][k] and dh_T/dh_t, their product
    J = {t: np.array([[(1 - h[t][j] ** 2) * p["W_hh"][j][k] for k in range(H)] for j in range(H)])
         for t in range(1, T + 1)}
    reach = {T: np.eye(H)}
    for t in range(T, 0, -1):
        reach[t - 1] = reach[t] @ J[t]
    bound = {T: 1.0}
    for t in range(T, 0, -1):
        bound[t - 1] = bound[t] * np.linalg.norm(J[t], 2)
    return {"z": z, "h": h, "o": o, "y_hat": y_hat, "cost": cost, "d_o": d_o, "dh": dh, "delta": delta,
            "c_hh": c_hh, "c_xh": c_xh, "grads": {k: np.asarray(v) for k, v in g.items()}, "new": new,
            "cost_after": _forward(new, xs, y, loss)[4],
            "J_norm": {t: np.linalg.norm(J[t], 2) for t in J}, "reach": {t: np.linalg.norm(r, 2) for t, r in reach.items()},
            "bound": bound}


def hand_finite_differences(p, xs, y, loss, eps=1e-6):
    out = {}
    for k in NAMES:
        arr = np.array(p[k], dtype=float)
        g = np.zeros_like(arr)
        for idx in np.ndindex(*arr.shape):
            costs = []
            for sign in (1, -1):
                q = {n: np.array(p[n], dtype=float) for n in NAMES}
                q[k][idx] += sign * eps
                costs.append(_forward({n: v.tolist() for n, v in q.items()}, xs, y, loss)[4])
            g[idx] = (costs[0] - costs[1]) / (2 * eps)
        out[k] = g
    return out


def weights_from(out: str) -> dict[str, np.ndarray]:
    return {k: printed(section(out, 1), k) for k in NAMES}


def sequence_from(out: str, steps: int) -> np.ndarray:
    return np.array([printed(section(out, 2), f"x_{t}") for t in range(1, steps + 1)])


def check_against_hand(out: str, p, xs, y, loss, lr, tol):
    """Every number of sections (2)-(6) and (8) against hand_bptt."""
    h = hand_bptt(p, xs, y, loss, lr)
    T = len(xs)
    # the reference is right: its gradients are the finite differences of its own cost
    fd = hand_finite_differences(p, xs, y, loss)
    for k in NAMES:
        np.testing.assert_allclose(h["grads"][k], fd[k], atol=1e-7, err_msg=f"the reference's {k}")
    s2, s4 = section(out, 2), section(out, 4)
    for t in range(1, T + 1):
        np.testing.assert_allclose(printed(s2, f"z_{t} = W_xh x_{t} + W_hh h_{t - 1} + b_h"), h["z"][t], atol=tol)
        np.testing.assert_allclose(printed(s2, f"h_{t} = tanh(z_{t})"), h["h"][t], atol=tol)
    np.testing.assert_allclose(printed(s2, f"o = W_hy h_{T} + b_y"), h["o"], atol=tol)
    assert scalar(section(out, 3), r"\n    C = ([-\d.]+)\n") == pytest.approx(h["cost"], abs=tol)
    np.testing.assert_allclose(printed(s4, "dC/do = y_hat - y"), h["d_o"], atol=tol)
    np.testing.assert_allclose(printed(s4, f"dC/dW_hy = dC/do h_{T}^T"), h["grads"]["W_hy"].reshape(len(h["o"]), -1),
                               atol=tol)
    np.testing.assert_allclose(printed(s4, "dC/db_y = dC/do"), h["grads"]["b_y"], atol=tol)
    np.testing.assert_allclose(printed(s4, f"dC/dh_{T} = W_hy^T dC/do"), h["dh"][T], atol=tol)
    for t in range(T, 0, -1):
        step = s4[s4.index(f"\n    step {t}:"):]
        np.testing.assert_allclose(printed(step, f"dC/dh_{t}"), h["dh"][t], atol=tol)
        np.testing.assert_allclose(printed(step, f"tanh'(z_{t}) = 1 - h_{t}^2"), 1 - np.array(h["h"][t]) ** 2,
                                   atol=tol)
        np.testing.assert_allclose(printed(step, f"delta_{t} = dC/dz_{t} = dC/dh_{t} \u2299 (1 - h_{t}^2)"),
                                   h["delta"][t], atol=tol)
        np.testing.assert_allclose(printed(step, f"delta_{t} h_{t - 1}^T"), h["c_hh"][t], atol=tol)
        np.testing.assert_allclose(printed(step, f"delta_{t} x_{t}^T"), h["c_xh"][t], atol=tol)
        np.testing.assert_allclose(printed(step, f"dC/dh_{t - 1} = W_hh^T delta_{t}"), h["dh"][t - 1], atol=tol)
    s5 = section(out, 5)
    for k in ("W_hh", "W_xh", "b_h"):
        np.testing.assert_allclose(printed(s5, f"dC/d{k}"), h["grads"][k], atol=tol, err_msg=k)
    # (6): the Jacobian table, one row per t = T .. 0
    rows = {}
    for line in section(out, 6).splitlines():
        m = re.match(r"\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", line)
        if m:
            rows[int(m.group(1))] = m.groups()[1:]
    assert sorted(rows) == list(range(T + 1))
    for t, (jn, bound, reach, dh_norm, delta_norm) in rows.items():
        if t > 0:
            assert float(jn) == pytest.approx(h["J_norm"][t], abs=tol)
            assert float(delta_norm) == pytest.approx(np.linalg.norm(h["delta"][t]), abs=tol)
        assert float(bound) == pytest.approx(h["bound"][t], abs=tol)
        assert float(reach) == pytest.approx(h["reach"][t], abs=tol)
        assert float(dh_norm) == pytest.approx(np.linalg.norm(h["dh"][t]), abs=tol)
    # (8): every parameter's old - eta * gradient = new, and the cost after the step
    updates = {}
    for line in section(out, 8).splitlines():
        m = re.match(r"\s+(W_xh|W_hh|b_h|W_hy|b_y)\[([\d,]+)\]\s+\S+ - \S+ \* \(?\S+?\)? = (\S+)$", line)
        if m:
            updates[(m.group(1), tuple(int(i) for i in m.group(2).split(",")))] = float(m.group(3))
    assert len(updates) == sum(np.asarray(p[k]).size for k in NAMES)
    for (k, idx), value in updates.items():
        assert value == pytest.approx(np.asarray(h["new"][k])[idx], abs=tol), (k, idx)
    assert scalar(out, r"cost before the step: C = (\S+)") == pytest.approx(h["cost"], abs=tol)
    assert scalar(out, r"cost after the step:  C = (\S+)") == pytest.approx(h["cost_after"], abs=tol)
    return h


def check_rows(out: str) -> tuple[dict, dict]:
    grads, steps = {}, {}
    for line in section(out, 7).splitlines():
        m = re.match(r"\s+dC/d(\w+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(OK|MISMATCH)$", line)
        if m:
            grads[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)), m.group(5))
        m = re.match(r"\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(OK|MISMATCH)$", line)
        if m:
            steps[int(m.group(1))] = ([float(v) for v in m.groups()[1:5] if v != "-"], m.group(6))
    return grads, steps


@pytest.fixture
def fixed_weights(tmp_path):
    path = tmp_path / "rnn.json"
    path.write_text(json.dumps(FIXED))
    return str(path)


# ------------------------------------------------------------------------------------------------ the numbers
def test_default_run_against_the_hand_computation(capsys):
    code, out = trace(capsys, "--precision", "12")
    assert code == 0, out
    assert "1-2-1 recurrent network unrolled over T = 3 steps" in out and "quadratic cost" in out
    p, xs = weights_from(out), sequence_from(out, 3)
    y = printed(section(out, 3), "y")
    # the drawn numbers are rounded to 2 decimals, so that a learner can redo the arithmetic
    for v in (*p.values(), xs, y):
        np.testing.assert_array_equal(np.round(v, 2), v)
    check_against_hand(out, p, xs, y, "quadratic", 0.5, tol=2e-12)
    assert "the cost decreased" in out


def test_cross_entropy_more_steps_three_hidden_against_the_hand_computation(capsys):
    code, out = trace(capsys, "--hidden", "3", "--steps", "5", "--inputs", "2", "--loss", "cross_entropy",
                      "--seed", "7", "--lr", "0.3", "--precision", "12")
    assert code == 0, out
    assert "2-3-2 recurrent network unrolled over T = 5 steps" in out and "cross-entropy" in out
    p, xs = weights_from(out), sequence_from(out, 5)
    y = printed(section(out, 3), "y")
    assert sorted(y.tolist()) == [0.0, 1.0]  # a one-hot target drawn with the seed
    h = check_against_hand(out, p, xs, y, "cross_entropy", 0.3, tol=2e-12)
    np.testing.assert_allclose(printed(section(out, 2), "y_hat = softmax(o), y_hat[j] = exp(o[j]) / sum_k exp(o[k])"),
                               h["y_hat"], atol=2e-12)


def test_given_weights_sequence_and_target(capsys, fixed_weights):
    code, out = trace(capsys, "--weights-json", fixed_weights, "--x", "1", "0.5", "-1", "--y", "0.2",
                      "--precision", "12")
    assert code == 0, out
    assert f"initial weights from {fixed_weights}" in out
    np.testing.assert_array_equal(sequence_from(out, 3), [[1.0], [0.5], [-1.0]])
    h = check_against_hand(out, FIXED, [[1.0], [0.5], [-1.0]], [0.2], "quadratic", 0.5, tol=2e-12)
    assert h["cost"] == pytest.approx(0.31364843222, abs=1e-11)
    # the sums are written out term by term, step T first
    c = h["c_hh"]
    line = next(ln.strip() for ln in section(out, 5).splitlines() if ln.strip().startswith("dC/dW_hh[0,1] = "))
    terms = [float(v.strip("()")) for v in line.split(" = ")[1].split(" + ")]
    np.testing.assert_allclose(terms, [c[3][0][1], c[2][0][1], c[1][0][1]], atol=2e-12)
    assert float(line.split(" = ")[-1]) == pytest.approx(sum(terms), abs=2e-12)


def test_the_per_step_contributions_sum_to_the_gradient(capsys):
    code, out = trace(capsys, "--hidden", "3", "--steps", "4", "--inputs", "2", "--seed", "3", "--precision", "12")
    assert code == 0
    s4, s5 = section(out, 4), section(out, 5)
    for name, label in (("W_hh", "delta_{t} h_{p}^T"), ("W_xh", "delta_{t} x_{t}^T")):
        parts = [printed(s4[s4.index(f"\n    step {t}:"):], label.format(t=t, p=t - 1)) for t in range(1, 5)]
        np.testing.assert_allclose(np.sum(parts, axis=0), printed(s5, f"dC/d{name}"), atol=1e-11)
    deltas = [printed(s4[s4.index(f"\n    step {t}:"):], f"delta_{t} = dC/dz_{t} = dC/dh_{t} \u2299 (1 - h_{t}^2)")
              for t in range(1, 5)]
    np.testing.assert_allclose(np.sum(deltas, axis=0), printed(s5, "dC/db_h"), atol=1e-11)
    assert "dC/dW_hh = delta_4 h_3^T + delta_3 h_2^T + delta_2 h_1^T + delta_1 h_0^T" in s5


def test_the_library_agrees_with_the_hand_computation():
    rng = np.random.default_rng(5)
    w = bptt.RNNWeights(*(rng.normal(size=s) for s in ((4, 3), (4, 4), (4,), (2, 4), (2,))))
    xs, y = rng.normal(size=(6, 3)), np.array([0.25, 0.75])
    step = bptt.unroll(w, xs, y, "cross_entropy")
    h = hand_bptt(w.as_dict(), xs, y, "cross_entropy")
    for k in NAMES:
        np.testing.assert_allclose(step.grads[k], h["grads"][k], atol=1e-12)
    for t in range(1, 7):
        np.testing.assert_allclose(step.delta[t], h["delta"][t], atol=1e-12)
        np.testing.assert_allclose(step.contributions["W_hh"][t], h["c_hh"][t], atol=1e-12)
    np.testing.assert_allclose(step.reach_norms(), [h["reach"][t] for t in range(7)], atol=1e-12)
    engine, engine_cost, _ = bptt.engine_gradients(w, xs, y, "cross_entropy")
    assert engine_cost == pytest.approx(h["cost"], abs=1e-12)
    layer, layer_cost, _ = bptt.layer_gradients(w, xs, y, "cross_entropy")
    assert layer_cost == pytest.approx(h["cost"], abs=1e-12)
    for k in NAMES:
        np.testing.assert_allclose(engine[k], h["grads"][k], atol=1e-12)
        np.testing.assert_allclose(layer[k], h["grads"][k], atol=1e-12)


# ------------------------------------------------------------------------------------------------ the checks
@pytest.mark.parametrize("options", [
    [],
    ["--hidden", "3", "--steps", "5", "--loss", "cross_entropy"],
    ["--hidden", "1", "--steps", "1"],
    ["--inputs", "3", "--outputs", "2", "--hidden", "4", "--steps", "6", "--seed", "11"],
    ["--hidden", "11", "--steps", "12", "--outputs", "12", "--precision", "3"],  # matrices and vectors elided
    ["--hidden", "1", "--steps", "45"],  # the Jacobian table elided
    ["--sequence", "0.5,1", "-0.2,0", "--y=-0.5", "--lr", "0.1"],
])
def test_finite_differences_and_the_engine_agree(capsys, options):
    code, out = trace(capsys, *options)
    assert code == 0, out
    grads, steps = check_rows(out)
    assert set(grads) == set(NAMES)
    for name, (vs_engine, vs_layer, vs_numeric, verdict) in grads.items():
        assert verdict == "OK" and vs_engine < 1e-12 and vs_layer < 1e-12 and vs_numeric < 1e-8, name
    assert steps and all(v == "OK" and max(d) < 1e-8 for d, v in steps.values())
    assert "per-step derivatives add up to the shared weight's" in out
    assert "the hand computation, the engine, nn.RNN and the finite differences agree: OK" in out
    assert scalar(out, r"cost after the step:  C = (\S+)") < scalar(out, r"cost before the step: C = (\S+)") or \
        "try a smaller --lr" in out


def test_a_wrong_gradient_fails_with_a_clear_message(capsys, monkeypatch):
    real = bptt.per_step_finite_differences
    monkeypatch.setattr(bptt, "per_step_finite_differences",
                        lambda *a: {k: (v + 1e-3 if k == "W_hh" else v) for k, v in real(*a).items()})
    code = backprop_main(["trace", "--model", "rnn"])
    captured = capsys.readouterr()
    assert code == 1
    assert "MISMATCH" in section(captured.out, 7)
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("backprop: error: the gradient check failed for delta_3 h_2^T")


def test_vanishing_and_exploding(capsys, tmp_path):
    code, out = trace(capsys, "--steps", "30", "--hidden", "3", "--precision", "4")
    assert code == 0
    assert "below 1: the error fades geometrically" in section(out, 6)
    big = dict(FIXED, W_hh=[[1.6, 0.0], [0.0, 1.6]], W_xh=[[0.01], [0.01]])  # near 0, tanh' ~ 1: ||J_t|| ~ 1.6
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big))
    code, out = trace(capsys, "--weights-json", str(path), "--x", "0.01", "0", "0", "0", "0", "--y", "1",
                      "--precision", "12")
    assert code == 0
    assert "above 1: the error grows geometrically" in section(out, 6)
    h = check_against_hand(out, big, [[0.01], [0], [0], [0], [0]], [1.0], "quadratic", 0.5, tol=2e-12)
    assert h["reach"][0] > 1.5 ** 5


def test_mlp_output_is_unchanged_by_the_model_option(capsys):
    assert backprop_main(["trace"]) == 0
    default = capsys.readouterr().out
    assert backprop_main(["trace", "--model", "mlp"]) == 0
    assert capsys.readouterr().out == default
    assert "2-3-2 network" in default


def test_output_is_deterministic_for_a_seed(capsys):
    _, a = trace(capsys, "--seed", "3")
    _, b = trace(capsys, "--seed", "3")
    _, c = trace(capsys, "--seed", "4")
    assert a == b and a != c


def test_requested_model_reads_what_argparse_reads():
    assert cli_mod.requested_model([]) == "mlp"
    assert cli_mod.requested_model(["--model", "rnn"]) == "rnn"
    assert cli_mod.requested_model(["--mod=rnn", "--hidden", "3"]) == "rnn"
    assert cli_mod.requested_model(["--model", "rnn", "--model", "mlp"]) == "mlp"
    assert cli_mod.requested_model(["--", "--model", "rnn"]) == "mlp"


# ------------------------------------------------------------------------------------------------ bad options
@pytest.mark.parametrize("options, message", [
    (["--hidden", "0"], "argument --hidden"),
    (["--hidden", "2,3"], "argument --hidden"),
    (["--steps", "0"], "argument --steps"),
    (["--steps", "101"], "argument --steps"),
    (["--lr", "0"], "argument --lr"),
    (["--loss", "mse"], "argument --loss"),
    (["--x", "1,a"], "argument --x"),
    (["--x", "1,2", "3"], "argument --x: every step needs the same number of inputs"),
    (["--y", "b"], "argument --y"),
    (["--precision", "99"], "argument --precision"),
])
def test_bad_options_are_usage_errors(options, message):
    proc = run_cli("--model", "rnn", *options)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backprop trace --model rnn: error: " + message), proc.stderr


@pytest.mark.parametrize("options, message", [
    (["--batch", "2"], "unrecognized arguments: --batch 2"),  # an MLP option
    (["--steps", "4", "--x", "1", "2", "3"], "--steps gives 4 step(s) but --x gives 3"),
    (["--inputs", "2", "--x", "1", "2"], "--inputs gives 2 input(s) per step but --x gives 1"),
    (["--loss", "cross_entropy", "--outputs", "1"], "needs at least 2 outputs"),
    (["--loss", "cross_entropy", "--y", "0.5,0.6"], "a probability vector"),
    (["--hidden", "16", "--steps", "100"], "trace is for small networks"),
    (["--weights-json", "/no/such/file.json"], "does not exist"),
])
def test_inconsistent_options_give_one_line(options, message):
    proc = run_cli("--model", "rnn", *options)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backprop") and message in lines[0], proc.stderr


def test_bad_weights_file_names_the_shape(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(dict(FIXED, W_hh=[[1.0, 2.0]])))
    proc = run_cli("--model", "rnn", "--weights-json", str(path))
    assert proc.returncode == 2
    assert "W_hh has shape (1, 2), expected (2, 2)" in proc.stderr
    path.write_text(json.dumps({"W_xh": [[1.0]]}))
    proc = run_cli("--model", "rnn", "--weights-json", str(path))
    assert proc.returncode == 2 and "expected an object with the keys W_xh, W_hh, b_h, W_hy, b_y" in proc.stderr


def test_help_lists_every_option():
    proc = run_cli("--model", "rnn", "--help")
    assert proc.returncode == 0
    for option in ("--model", "--inputs", "--hidden", "--outputs", "--steps", "--x", "--sequence", "--y", "--loss",
                   "--lr", "--seed", "--precision", "--weights-json FILE", "--debug"):
        assert option in proc.stdout, option
    assert "many-to-one" in proc.stdout
    mlp = run_cli("--help")
    assert mlp.returncode == 0 and "--model {mlp,rnn}" in mlp.stdout and "--batch" in mlp.stdout


def test_trace_leaves_the_global_generator_alone(capsys):
    import backprop as bp

    bp.manual_seed(123)
    expected = bp.get_rng().random()
    bp.manual_seed(123)
    trace(capsys)
    assert bp.get_rng().random() == expected
