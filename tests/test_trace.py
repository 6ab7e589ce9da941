"""`backprop trace`: the printed step agrees with the published worked example and with a hand computation."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from backprop.cli import trace as trace_mod
from backprop.cli.main import main as backprop_main

# Matt Mazur, "A Step by Step Backpropagation Example" (2015): a 2-2-2 sigmoid network, quadratic cost.
MAZUR = {"W1": [[0.15, 0.20], [0.25, 0.30]], "b1": 0.35, "W2": [[0.40, 0.45], [0.50, 0.55]], "b2": 0.60}
MAZUR_ARGS = ["--hidden", "2", "--x", "0.05,0.10", "--y", "0.01,0.99", "--lr", "0.5", "--precision", "9"]

# A 2-3-2 network (the default shape) with weights fixed for the hand computation below.
W1 = [[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]]
B1 = [0.05, -0.05, 0.1]
W2 = [[0.7, -0.8, 0.9], [-0.1, 0.2, 0.3]]
B2 = [-0.2, 0.25]
X, Y = [0.05, 0.10], [0.01, 0.99]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "backprop", "trace", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def trace(capsys, *args):
    """Run `backprop trace ARGS` in-process: (exit code, stdout)."""
    code = backprop_main(["trace", *args])
    return code, capsys.readouterr().out


@pytest.fixture
def weights_232(tmp_path):
    path = tmp_path / "w232.json"
    path.write_text(json.dumps({"W1": W1, "b1": B1, "W2": W2, "b2": B2}))
    return str(path)


@pytest.fixture
def mazur_weights(tmp_path):
    path = tmp_path / "mazur.json"
    path.write_text(json.dumps(MAZUR))
    return str(path)


def section(out: str, k: int) -> str:
    start = out.index(f"\n({k}) ")
    end = out.find(f"\n({k + 1}) ", start)
    return out[start:] if end < 0 else out[start:end]


def printed(out: str, name: str) -> np.ndarray:
    """The vector or matrix printed as `name = (..)` or `name = [ .. ]` with continuation rows."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if f"{name} = " not in line:
            continue
        rest = line.split(f"{name} = ", 1)[1]
        if rest.startswith("("):
            return np.array([float(v) for v in rest.strip("()").split(",")])
        rows = [rest]
        for nxt in lines[i + 1:]:
            if not nxt.strip().startswith("["):
                break
            rows.append(nxt.strip())
        return np.array([[float(v) for v in r.strip("[] ").split()] for r in rows])
    raise AssertionError(f"{name} not printed")


def check_rows(out: str) -> dict[str, tuple[float, float, str]]:
    rows = {}
    for line in section(out, 5).splitlines():
        m = re.match(r"\s+([Wb]\^\d+)\s+(\S+)\s+(\S+)\s+(OK|MISMATCH)$", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), m.group(4))
    return rows


def hand_step(w1, b1, w2, b2, x, y, lr):
    """The textbook's equations for a 2-layer sigmoid network with C = 1/2 ||a - y||^2, written independently."""
    def sig(z):
        return 1 / (1 + np.exp(-z))

    w1, b1, w2, b2, x, y = (np.asarray(v, dtype=np.float64) for v in (w1, b1, w2, b2, x, y))
    a1 = sig(w1 @ x + b1)
    a2 = sig(w2 @ a1 + b2)
    cost = 0.5 * np.sum((a2 - y) ** 2)
    d2 = (a2 - y) * a2 * (1 - a2)
    d1 = (w2.T @ d2) * a1 * (1 - a1)
    g = {"W1": np.outer(d1, x), "b1": d1, "W2": np.outer(d2, a1), "b2": d2}
    new = {"W1": w1 - lr * g["W1"], "b1": b1 - lr * g["b1"], "W2": w2 - lr * g["W2"], "b2": b2 - lr * g["b2"]}
    a2_new = sig(new["W2"] @ sig(new["W1"] @ x + new["b1"]) + new["b2"])
    return {"a1": a1, "a2": a2, "cost": cost, "d1": d1, "d2": d2, "grads": g, "new": new,
            "cost_after": 0.5 * np.sum((a2_new - y) ** 2)}


# --------------------------------------------------------------------------------------------- worked example
def test_mazur_published_numbers(mazur_weights):
    proc = run_cli(*MAZUR_ARGS, "--weights-json", mazur_weights)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # his forward pass: out_h1, out_o1, out_o2 and the total error
    for published in ("0.593269992", "0.751365070", "0.772928465", "C = 0.298371109"):
        assert published in out
    # his new weights after one step with eta = 0.5 (w1..w8; he does not update the biases)
    for name, value in {"W^1[0,0]": "0.149780716", "W^1[0,1]": "0.19956143", "W^1[1,0]": "0.24975114",
                        "W^1[1,1]": "0.29950229", "W^2[0,0]": "0.35891648", "W^2[0,1]": "0.408666186",
                        "W^2[1,0]": "0.511301270", "W^2[1,1]": "0.561370121"}.items():
        line = next(ln for ln in section(out, 6).splitlines() if ln.strip().startswith(name + " "))
        decimals = len(value.split(".")[1])  # he rounds to 8 or 9 decimals
        assert float(line.split("= ")[-1]) == pytest.approx(float(value), abs=0.5 * 10**-decimals + 1e-12), line
    # and his dE/dw5 = 0.082167041
    assert printed(out, "dC/dW^2")[0, 0] == pytest.approx(0.082167041, abs=1e-9)


def test_mazur_against_an_independent_hand_computation(capsys, mazur_weights):
    code, out = trace(capsys, *MAZUR_ARGS, "--weights-json", mazur_weights)
    assert code == 0
    h = hand_step(MAZUR["W1"], [0.35, 0.35], MAZUR["W2"], [0.60, 0.60], [0.05, 0.10], [0.01, 0.99], 0.5)
    assert h["cost"] == pytest.approx(0.298371109, abs=1e-9)  # the hand computation is his
    assert h["new"]["W2"][0, 0] == pytest.approx(0.35891648, abs=1e-8)
    assert float(section(out, 3).split("C = ")[-1].split()[0]) == pytest.approx(h["cost"], abs=1e-9)
    for name in ("W1", "b1", "W2", "b2"):
        label = f"dC/d{name[0]}^{name[1]}"
        np.testing.assert_allclose(printed(out, label), h["grads"][name], atol=1e-9, err_msg=label)


# ------------------------------------------------------------------------------------ the default 2-3-2 network
def test_default_network_every_number_matches_the_formulas(capsys, weights_232):
    code, out = trace(capsys, "--weights-json", weights_232, "--x", "0.05,0.10", "--y", "0.01,0.99",
                      "--precision", "9")
    assert code == 0
    assert "2-3-2 network" in out
    h = hand_step(W1, B1, W2, B2, X, Y, 0.5)
    tol = 2e-9  # printed with 9 decimals
    np.testing.assert_allclose(printed(out, "W^1"), W1)
    np.testing.assert_allclose(printed(section(out, 2), "a^1 = sigmoid(z^1) = 1 / (1 + exp(-z))"), h["a1"], atol=tol)
    np.testing.assert_allclose(printed(section(out, 2), "a^2 = sigmoid(z^2) = 1 / (1 + exp(-z))"), h["a2"], atol=tol)
    assert f"C = {h['cost']:.9f}" in section(out, 3)
    np.testing.assert_allclose(printed(out, "dC/da^2 = a^2 - y"), h["a2"] - np.array(Y), atol=tol)
    np.testing.assert_allclose(printed(out, "sigma'(z^2) = a^2 (1 - a^2)"), h["a2"] * (1 - h["a2"]), atol=tol)
    np.testing.assert_allclose(printed(out, "delta^2 = dC/da^2 \u2299 sigma'(z^2)"), h["d2"], atol=tol)
    np.testing.assert_allclose(printed(out, "(W^2)^T delta^2"), np.array(W2).T @ h["d2"], atol=tol)
    np.testing.assert_allclose(printed(out, "sigma'(z^1) = a^1 (1 - a^1)"), h["a1"] * (1 - h["a1"]), atol=tol)
    for name in ("W1", "b1", "W2", "b2"):
        label = f"dC/d{name[0]}^{name[1]}"
        np.testing.assert_allclose(printed(out, label), h["grads"][name], atol=tol, err_msg=label)
    # (6): every parameter's old - eta * gradient = new, against the hand computation
    upd = {}
    for line in section(out, 6).splitlines():
        m = re.match(r"\s+([Wb])\^(\d)\[([\d,]+)\]\s+(\S+) - 0\.5 \* \(?(\S+?)\)? = (\S+)$", line)
        if m:
            upd[(m.group(1) + m.group(2), tuple(int(i) for i in m.group(3).split(",")))] = float(m.group(6))
    assert len(upd) == 6 + 3 + 6 + 2
    for (name, idx), new in upd.items():
        assert new == pytest.approx(h["new"][name][idx], abs=tol), (name, idx)
    before = float(re.search(r"cost before the step: C = (\S+)", out).group(1))
    after = float(re.search(r"cost after the step:  C = (\S+)", out).group(1))
    assert before == pytest.approx(h["cost"], abs=tol) and after == pytest.approx(h["cost_after"], abs=tol)
    assert after < before and "the cost decreased" in out


def test_default_run_has_the_six_sections_in_order(capsys):
    code, out = trace(capsys)
    assert code == 0
    positions = [out.index(f"({k}) ") for k in range(1, 7)]
    assert positions == sorted(positions)
    assert "2-3-2 network" in out and "1 sample," in out
    assert "a^0 = x = (0.050000, 0.100000)" in out  # the Mazur sample by default
    assert "y = (0.010000, 0.990000)" in out
    assert "hidden activation sigmoid" in out and "quadratic cost" in out


def test_check_section_agrees_with_finite_differences(capsys):
    code, out = trace(capsys)
    assert code == 0
    rows = check_rows(out)
    assert set(rows) == {"W^1", "b^1", "W^2", "b^2"}
    for name, (vs_autograd, vs_numeric, verdict) in rows.items():
        assert verdict == "OK", name
        assert vs_autograd < 1e-12 and vs_numeric < 1e-8, name
    assert "all three agree: OK" in out


def test_output_is_deterministic_for_a_seed(capsys):
    _, a = trace(capsys, "--seed", "3", "--hidden", "4,2", "--batch", "2")
    _, b = trace(capsys, "--seed", "3", "--hidden", "4,2", "--batch", "2")
    _, c = trace(capsys, "--seed", "4", "--hidden", "4,2", "--batch", "2")
    assert a == b and a != c


@pytest.mark.parametrize("options", [
    ["--activation", "relu"],
    ["--activation", "tanh"],
    ["--loss", "cross_entropy"],
    ["--loss", "cross_entropy", "--activation", "relu", "--hidden", "4,3", "--inputs", "3", "--outputs", "4"],
    ["--hidden", "0"],
    ["--hidden", "5", "--batch", "4", "--inputs", "3"],
    ["--hidden", "30", "--inputs", "12", "--outputs", "3", "--batch", "2"],
    ["--x", "0.05,0.10;0.5,-0.2", "--y", "0.01,0.99;0.7,0.3", "--loss", "cross_entropy"],
])
def test_every_configuration_checks_out_and_descends(capsys, options):
    code, out = trace(capsys, *options, "--lr", "0.1")
    assert code == 0, out
    assert all(v[2] == "OK" for v in check_rows(out).values()) and check_rows(out)
    before = float(re.search(r"cost before the step: C = (\S+)", out).group(1))
    after = float(re.search(r"cost after the step:  C = (\S+)", out).group(1))
    assert after < before


def test_batch_gradients_are_averaged_and_said_so(capsys):
    x, y = "0.05,0.10;0.9,0.2;0.3,0.3", "0.01,0.99;0.5,0.5;1,0"
    code, out = trace(capsys, "--x", x, "--y", y, "--precision", "10")
    assert code == 0
    assert "averaged over the batch" in out and "(1/n) delta^l (a^(l-1))^T" in out
    # the batch gradient is the mean of the three single-sample gradients
    singles = []
    for xs, ys in zip(x.split(";"), y.split(";")):
        _, o = trace(capsys, "--x", xs, "--y", ys, "--precision", "10")
        singles.append(printed(o, "dC/dW^2"))
    np.testing.assert_allclose(printed(out, "dC/dW^2"), np.mean(singles, axis=0), atol=1e-9)


def test_cross_entropy_output_error_is_softmax_minus_y(capsys):
    code, out = trace(capsys, "--loss", "cross_entropy", "--precision", "9")
    assert code == 0
    a2 = printed(out, "a^2 = softmax(z^2), a[j] = exp(z[j]) / sum_k exp(z[k])")
    z2 = printed(out, "z^2 = W^2 a^1 + b^2")
    np.testing.assert_allclose(a2, np.exp(z2) / np.exp(z2).sum(), atol=2e-9)
    np.testing.assert_allclose(printed(out, "delta^2 = a^2 - y"), a2 - np.array([0.01, 0.99]), atol=2e-9)


def test_a_wrong_gradient_is_reported_as_mismatch(capsys, monkeypatch):
    real = trace_mod._finite_differences
    monkeypatch.setattr(trace_mod, "_finite_differences", lambda *a: [g + 1e-3 for g in real(*a)])
    code, out = trace(capsys)
    assert code == 1
    assert "MISMATCH" in out and "OK" not in section(out, 5).split("result")[1]


def test_trace_leaves_the_global_generator_alone(capsys):
    import backprop as bp

    bp.manual_seed(123)
    expected = bp.get_rng().random()
    bp.manual_seed(123)
    trace(capsys)
    assert bp.get_rng().random() == expected


# ------------------------------------------------------------------------------------------------ bad options
@pytest.mark.parametrize("options, message", [
    (["--hidden", "x"], "argument --hidden"),
    (["--lr", "0"], "argument --lr"),
    (["--precision", "99"], "argument --precision"),
    (["--activation", "gelu"], "argument --activation"),
    (["--loss", "mse"], "argument --loss"),
    (["--x", "1,a"], "argument --x"),
])
def test_bad_options_are_usage_errors(options, message):
    proc = run_cli(*options)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("backprop trace: error: " + message)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("options, message", [
    (["--x", "0.1,0.2", "--inputs", "3"], "--inputs 3 but --x has 2 value(s)"),
    (["--x", "0.1,0.2;0.3,0.4", "--y", "0.5,0.5"], "--x gives 2 sample(s) but --y gives 1"),
    (["--batch", "3", "--y", "0.5,0.5"], "--batch 3 but --x/--y give 1 sample(s)"),
    (["--loss", "cross_entropy", "--y", "0.5,0.6"], "needs targets that are probabilities"),
    (["--hidden", "300,300"], "trace is for small networks"),
    (["--weights-json", "/no/such/file.json"], "does not exist"),
])
def test_inconsistent_options_give_one_line(options, message):
    proc = run_cli(*options)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backprop: error: ") and message in lines[0], proc.stderr


def test_bad_weights_file_names_the_shape(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"W1": [[1, 2]], "b1": 0, "W2": [[1, 2, 3]], "b2": 0}))
    proc = run_cli("--weights-json", str(path))
    assert proc.returncode == 2
    assert "W1 has shape (1, 2), expected (3, 2)" in proc.stderr


def test_help_lists_every_option():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for option in ("--hidden", "--inputs", "--outputs", "--batch", "--activation", "--loss", "--lr", "--seed",
                   "--x", "--y", "--precision", "--weights-json FILE"):
        assert option in proc.stdout
