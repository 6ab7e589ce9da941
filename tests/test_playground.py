"""``backprop playground`` without a browser: the data, the configuration, the session on backprop's engine,
the hand computation it shares with ``backprop trace``, the exports, the message protocol, the server (through
Starlette's test client) and the command line.

The browser tests (Playwright driving Chromium) are in test_playground_browser.py.

>>> from backprop.playground import Config
>>> Config().with_field("hidden", [8, 8]).activations
('tanh', 'tanh')
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
import backprop.viz.trace as vtrace
from backprop.cli import trace as trace_cli
from backprop.cli.main import main as backprop_main
from backprop.engine.tensor import Tensor
from backprop.nn import functional as F
from backprop.playground import Config, ConfigError, Session
from backprop.playground import session as session_mod
from backprop.playground.datasets import CSV_MAX_BYTES, DATASETS, CSVError, features, make, parse_csv, split
from backprop.playground.protocol import MAX_MESSAGE, Outbox, ProtocolError, Worker, dumps, parse

ROOT = Path(__file__).resolve().parents[1]
ALL_FEATURES = ("x1", "x2", "x1sq", "x2sq", "x1x2", "sinx1", "sinx2")


def small(**kw) -> Config:
    """A small, quick configuration: the circle, one hidden layer of 3 tanh units, SGD."""
    base = {"dataset": "circle", "hidden": (3,), "activations": ("tanh",), "lr": 0.1, "samples": 200}
    base.update(kw)
    return Config(**base)


def weights(session: Session) -> list[np.ndarray]:
    return [p.data.copy() for p in session.model.parameters()]


# ------------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("name", DATASETS)
def test_every_data_set_is_drawn_from_its_seed(name):
    x, y, task, k = make(name, samples=300, noise=20, seed=5, classes=4)
    x2, y2, _, _ = make(name, samples=300, noise=20, seed=5, classes=4)
    assert x.shape == (300, 2) and y.shape == (300,) and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, make(name, samples=300, noise=20, seed=6, classes=4)[0])
    if task == "classification":
        assert y.dtype == np.int64 and set(np.unique(y)) == set(range(k))
    else:
        assert k == 0 and y.dtype == np.float64 and np.all(np.abs(y) <= 1)
    (x_tr, _), (x_te, _) = split(x, y, 30, seed=5)
    assert len(x_tr) == 90 and len(x_te) == 210


def test_features_are_the_named_functions_of_the_point():
    x = np.array([[0.5, -2.0]])
    f = features(x, list(ALL_FEATURES))
    np.testing.assert_array_equal(f[0], [0.5, -2.0, 0.25, 4.0, -1.0, np.sin(0.5), np.sin(-2.0)])


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty"),
    ("1 2 3\n4 5 6\n", "separated by commas"),
    ("x1,x2,label\n1,2,0\n3,4\n5,6,1\n7,8,0\n", "line 3: 2 columns, expected 3"),
    ("x1,x2,label\n1,2,0\n3,abc,1\n5,6,1\n7,8,0\n", "line 3: x2 is 'abc', not a number"),
    ("1,2,0\n3,4,1\n5,nan,1\n7,8,0\n", "line 3: x2 is 'nan'; only finite numbers"),
    ("1,2,0\n3,4,1\n", "at least 4 are needed"),
    ("1,2,0\n3,4,0\n5,6,0\n7,8,0\n", "at least 2 classes"),
    ("".join(f"{i},{i},{i}\n" for i in range(20)), "at most 10 classes"),
    ("x" * (CSV_MAX_BYTES + 1), "larger than 1000 KB"),
])
def test_a_bad_csv_gets_one_clear_line(text, message):
    with pytest.raises(CSVError, match=re.escape(message)) as info:
        parse_csv(text)
    assert "\n" not in str(info.value)


def test_a_csv_gives_classes_or_a_regression():
    c = parse_csv("x1;x2;label\n0;0;5\n1;1;7\n2;2;5\n3;3;7\n")
    assert c.task == "classification" and c.classes == 2 and c.labels == ("5", "7") and c.y.tolist() == [0, 1, 0, 1]
    r = parse_csv("0,0,0.5\n1,1,-0.25\n2,2,1.5\n3,3,0\n")
    assert r.task == "regression" and r.y.tolist() == [0.5, -0.25, 1.5, 0.0]


# ------------------------------------------------------------------------------------------------ config
def test_the_url_carries_every_field_and_reads_back_the_same():
    c = Config(dataset="blobs", classes=4, samples=300, noise=15, train_percent=70, seed=42, features=ALL_FEATURES,
               hidden=(8, 3, 2), activations=("relu", "gelu", "linear"), loss="quadratic", optimizer="adamw",
               lr=0.003, momentum=0.0, schedule="cosine", decay_steps=500, batch_size=7, l2=1e-4, dropout=0.25,
               init="he", stop_loss=0.05, stop_accuracy=97.5, stop_iterations=1234, points=((1.5, -2.0, 3.0),))
    back, errors = Config.from_query(c.to_query())
    assert back == c and errors == []


@pytest.mark.parametrize("field, value, message", [
    ("lr", 0, "lr: expected a number in (0, 10]"),
    ("lr", "1e400", "lr: expected a number in (0, 10]"),
    ("batch_size", 0, "batch_size: expected a whole number from 1 to 2000"),
    ("hidden", [9], "hidden: expected a whole number from 1 to 8"),
    ("hidden", [1] * 7, "hidden: expected 0 to 6 hidden layer sizes"),
    ("activations", ["tanh", "swish"], "expected one of tanh, relu, sigmoid, linear, gelu"),
    ("dataset", "mnist", "dataset: expected one of"),
    ("dropout", 0.95, "dropout: expected a number in [0, 0.9]"),
    ("features", [], "features: expected 1 to 7 features"),
    ("points", [[7, 0, 1]], "expected a number in [-6, 6]"),
    ("nonsense", 1, "nonsense: not a setting of the playground"),
])
def test_a_bad_value_names_its_field_and_what_it_accepts(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config().with_field(field, value)


def test_a_bad_link_keeps_the_good_fields_and_says_what_it_dropped():
    config, errors = Config.from_query("?dataset=spiral&lr=-3&hidden=5&bogus=1")
    assert config.dataset == "spiral" and config.hidden == (5,) and config.lr == Config().lr
    assert [e.field for e in errors] == ["lr", "bogus"]


def test_the_loss_follows_the_task():
    assert Config().with_field("dataset", "plane").loss == "quadratic"
    assert Config(loss="bce").with_field("dataset", "blobs").loss == "cross_entropy"
    with pytest.raises(ConfigError, match="binary cross-entropy is for 2 classes"):
        Session(Config(dataset="blobs", loss="bce"))


# ------------------------------------------------------------------------------------- the shared hand computation
@pytest.mark.parametrize("acts, loss", [
    (["sigmoid", "sigmoid"], "quadratic"), (["tanh", "softmax"], "cross_entropy"), (["relu", "sigmoid"], "bce"),
    (["gelu", "linear"], "quadratic"), (["linear", "tanh", "softmax"], "cross_entropy"),
])
@pytest.mark.parametrize("dropout", [False, True])
def test_hand_engine_and_finite_differences_agree(acts, loss, dropout):
    rng = np.random.default_rng(0)
    sizes = [3, 4, 3, 2][: len(acts) + 1]
    if loss == "bce":
        sizes[-1] = 1
    n = 5
    W = [rng.normal(size=(sizes[i + 1], sizes[i])) for i in range(len(acts))]
    b = [rng.normal(size=sizes[i + 1]) for i in range(len(acts))]
    masks = [(rng.random((sizes[i + 1], n)) > 0.3) / 0.7 if dropout and i < len(acts) - 1 else None
             for i in range(len(acts))]
    x = rng.normal(size=(sizes[0], n))
    y = (np.eye(sizes[-1])[rng.integers(0, sizes[-1], n)].T if loss == "cross_entropy"
         else rng.integers(0, 2, (sizes[-1], n)).astype(float) if loss == "bce" else rng.random((sizes[-1], n)))
    net = vtrace.Net(W, b, acts, loss, masks)
    hand = vtrace.backward(net, x, y)
    engine, engine_cost, _ = vtrace.engine_gradients(net, x, y)
    numeric = vtrace.finite_differences(net, x, y)
    assert engine_cost == pytest.approx(hand.cost, abs=1e-12)
    for l in range(1, len(acts) + 1):
        np.testing.assert_allclose(hand.grads_W[l], engine[2 * l - 2], atol=1e-10)
        np.testing.assert_allclose(hand.grads_b[l], engine[2 * l - 1], atol=1e-10)
        np.testing.assert_allclose(hand.grads_W[l], numeric[2 * l - 2], atol=1e-6)


def test_trace_and_the_playground_share_one_code_path(monkeypatch):
    """backprop trace prints what backprop.viz.trace computes, and the playground explains with it."""
    assert trace_cli._backward is vtrace.backward and trace_cli.Net is vtrace.Net
    assert trace_cli._engine_gradients is vtrace.engine_gradients
    assert trace_cli._finite_differences is vtrace.finite_differences
    assert session_mod.backward is vtrace.backward and session_mod.explain_weight is vtrace.explain_weight


# ------------------------------------------------------------------------------------------------ the session
def test_one_step_is_one_mini_batch_and_the_counter_does_the_arithmetic():
    s = Session(small(samples=500, batch_size=16))  # 250 training samples: ceil(250/16) = 16 iterations
    assert s.iterations_per_epoch == 16 == -(-len(s.data.x_train) // 16)
    s.step()
    assert (s.iteration, s.epoch, s.samples_seen) == (1, 0, 16)
    s.run(15)
    assert (s.iteration, s.epoch, s.epoch_iteration, s.samples_seen) == (16, 1, 0, 250)  # the last batch: 10
    assert s.substep() == "forward" and s.iteration == 16
    assert s.substep() == "backward" and s.iteration == 16
    assert s.substep() == "update" and (s.iteration, s.samples_seen) == (17, 266)


@pytest.mark.parametrize("optimizer, extra", [("sgd", {}), ("sgd", {"momentum": 0.9, "l2": 0.01}), ("adam", {}),
                                             ("rmsprop", {"momentum": 0.5}), ("adamw", {"l2": 0.1})])
def test_a_step_changes_the_weights_by_the_optimizers_update_from_that_state_and_batch(optimizer, extra):
    s = Session(small(optimizer=optimizer, lr=0.05, dropout=0.0, **extra))
    s.run(7)
    before = weights(s)
    # the same state in a model of our own: weights and the optimizer's state, copied
    model = bp.nn.Sequential(bp.nn.Linear(2, 3, dtype=np.float64), bp.nn.Tanh(), bp.nn.Linear(3, 2, dtype=np.float64))
    for p, w in zip(model.parameters(), before):
        p.data[...] = w
    opt = type(s.optimizer)(model.parameters(), **{k: v for k, v in s.optimizer.defaults.items()})
    opt.load_state_dict(s.optimizer.state_dict())  # momentum buffers, Adam's moments and step count
    s.step()
    batch = s.batch
    out = model(Tensor(batch.x))
    F.cross_entropy(out, batch.y).backward()
    grads = [np.array(p.grad) for p in model.parameters()]
    opt.step()
    for engine, mine in zip(s.grads, grads):
        np.testing.assert_allclose(engine, mine, rtol=0, atol=1e-12)
    for after, mine in zip(weights(s), model.parameters()):
        np.testing.assert_allclose(after, mine.data, rtol=0, atol=1e-12)
    if optimizer == "sgd" and not extra:  # plain SGD: exactly -lr * dL/dw
        for u, g in zip(s.update, s.grads):
            np.testing.assert_allclose(u, -0.05 * g, rtol=0, atol=1e-15)


def test_explain_gives_the_chain_rule_and_agrees_with_the_engine_and_finite_differences():
    s = Session(small(hidden=(4, 3), activations=("relu", "sigmoid"), dropout=0.3))
    s.run(3)
    assert s.substep() == "forward"
    with pytest.raises(ConfigError, match="no gradient yet"):
        s.explain(1, 0, 0)
    assert s.substep() == "backward"
    for layer, w in enumerate(s.linears, start=1):
        for j in range(w.weight.shape[0]):
            for k in range(w.weight.shape[1]):
                e = s.explain(layer, k, j)
                assert e["hand"] == pytest.approx(e["engine"], abs=1e-10)
                assert e["numeric"] == pytest.approx(e["engine"], abs=1e-6)
    assert e["formula"] == f"dC/dW^3[{j},{k}] = (1/10) sum_x delta^3[{j}] * a^2[{k}]"
    assert "BP2" in s.explain(1, 0, 0)["delta_rule"] and "mask" in s.explain(1, 0, 0)["delta_rule"]
    with pytest.raises(ConfigError, match="no edge"):
        s.explain(1, 5, 0)


def test_acceptance_circle_and_spiral_learn_on_the_engine():
    """Item 1 without the browser (the browser test drives the page): the two networks of the issue."""
    s = Session(Config(dataset="circle", hidden=(4,), activations=("tanh",), stop_accuracy=95.1,
                       stop_iterations=2000))
    s.run(2000)
    assert s.evaluate()["accuracy"] > 0.95 and s.iteration <= 2000
    s = Session(Config(dataset="spiral", hidden=(8, 8), activations=("tanh", "tanh"),
                       features=("x1", "x2", "sinx1", "sinx2"), optimizer="adam", lr=0.03, stop_accuracy=95.1))
    s.run(3000)
    assert s.evaluate()["accuracy"] > 0.95, s.evaluate()


def test_the_stop_condition_fires_once():
    s = Session(small(stop_iterations=30, stop_loss=100.0))
    assert s.run(1000) == 1 and s.stopped.startswith("test loss")  # the loss is below 100 at once
    s.stopped = None  # what play does: go on past the condition
    assert s.run(50) == 50 and s.stopped is None and s.iteration == 51


def test_the_same_config_trains_the_same_weights_to_the_bit():
    c = small(dataset="xor", dropout=0.2, optimizer="adam", schedule="step", decay_steps=50, points=((1, 1, 0),))
    a, b = Session(c), Session(c)
    a.run(120)
    for _ in range(40):  # the same run in other pieces: substeps, steps and frames between them
        b.substep()
        b.frame()
    assert (b.iteration, b.phase) == (13, "forward")
    b.run(107)  # the half-done iteration first, then 106 more
    assert b.iteration == 120
    assert all(np.array_equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert a.evaluate()["test_loss"] == b.evaluate()["test_loss"]


def test_sessions_do_not_disturb_each_other_or_the_global_generator():
    bp.manual_seed(7)
    expected = bp.get_rng().random()
    bp.manual_seed(7)
    c = small(dropout=0.5)
    alone = Session(c)
    alone.run(50)
    x, y = Session(c), Session(small(dropout=0.3, seed=9))
    for _ in range(50):
        x.run(1)
        y.run(1)
    assert all(np.array_equal(p, q) for p, q in zip(weights(alone), weights(x)))
    assert bp.get_rng().random() == expected


def test_the_exported_script_reaches_the_same_weights_and_the_model_loads(tmp_path):
    s = Session(small(dataset="spiral", features=("x1", "x2", "sinx1"), hidden=(5, 4), activations=("tanh", "gelu"),
                      dropout=0.1, optimizer="sgd", momentum=0.9, schedule="exponential", decay_steps=100,
                      init="he", l2=0.001, points=((0.5, 0.5, 1),)))
    s.run(137)
    script = tmp_path / "train.py"
    script.write_text(s.export_script())
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "m.safetensors")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "iteration 137:" in out.stdout
    retrained = bp.io.load(tmp_path / "m.safetensors")
    assert all(np.array_equal(a, b.data) for a, b in zip(weights(s), retrained.parameters()))
    (tmp_path / "exported.safetensors").write_bytes(s.export_model())
    model = bp.io.load(tmp_path / "exported.safetensors")
    assert all(np.array_equal(a, b.data) for a, b in zip(weights(s), model.parameters()))
    assert bp.io.load_metadata(tmp_path / "exported.safetensors")["features"] == ["x1", "x2", "sinx1"]
    model.eval()
    f = s.data.f_test
    np.testing.assert_array_equal(model(Tensor(f)).data, s._outputs(f)[1].data)


def test_a_script_for_uploaded_data_carries_the_data(tmp_path):
    csv = parse_csv("".join(f"{np.cos(i)},{np.sin(2 * i)},{i % 3}\n" for i in range(60)))
    s = Session(small(dataset="csv"), csv=csv)
    s.run(20)
    script = tmp_path / "train.py"
    script.write_text(s.export_script())
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "m.safetensors")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert all(np.array_equal(a, b.data) for a, b in zip(weights(s), bp.io.load(tmp_path / "m.safetensors").parameters()))


def test_a_diverging_run_stops_with_a_message_and_keeps_finite_weights():
    s = Session(small(lr=10.0, dataset="plane", loss="quadratic", hidden=(8, 8), activations=("relu", "relu"),
                      init="he"))
    with pytest.raises(session_mod.Diverged, match="lower the learning rate"):
        s.run(5000)
    assert all(np.all(np.isfinite(w)) for w in weights(s))
    json.loads(dumps(s.frame()))  # what the page gets is valid JSON (a non-finite loss is null)


def test_memory_stays_flat_over_100000_steps():
    """100,000 iterations on the session object (frames every 2,000): Python's allocated blocks and the
    process's resident memory do not grow."""
    s = Session(Config(dataset="gauss", hidden=(), activations=(), batch_size=1, samples=100))

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    s.run(2000)
    s.frame()
    blocks, memory = sys.getallocatedblocks(), rss() if os.path.exists("/proc/self/statm") else 0
    for _ in range(49):
        s.run(2000)
        s.frame()
    assert s.iteration == 100_000
    grown = sys.getallocatedblocks() - blocks
    assert grown < 2000, f"{grown} more Python blocks after 98,000 more steps"
    if memory:
        assert rss() - memory < 8 * 2**20


# ------------------------------------------------------------------------------------------------ protocol
@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "a message must be a JSON object"),
    ("{bad json", "a message must be a JSON object"),
    ('{"type": "launch"}', "unknown message type 'launch'"),
    ('{"type": "step", "extra": 1}', "step: unknown field 'extra'"),
    ('{"type": "explain", "layer": 1, "from": 0}', "explain: the field 'to' is missing"),
    ('{"type": "explain", "layer": 99, "from": 0, "to": 0}', "explain: layer: expected a whole number from 1 to 7"),
    ('{"type": "sample", "index": -1}', "sample: index: expected a whole number"),
    ('{"type": "speed", "value": "warp"}', "speed: value: expected one of max, 1, 2"),
    ('{"type": "add_point", "x1": 1e9, "x2": 0, "label": 1}', "add_point: x1: expected a number from -6 to 6"),
    ('{"type": "set", "field": "rm -rf", "value": 1}', "set: field: not a setting of the playground"),
    ('{"type": "export", "what": "passwords"}', "export: what: expected one of model, script"),
])
def test_a_bad_message_is_refused_with_a_clear_error(text, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        parse(text)


def test_an_oversized_message_is_refused():
    with pytest.raises(ProtocolError, match="at most"):
        parse('{"type": "upload", "name": "x", "text": "' + "a" * MAX_MESSAGE + '"}')


def _drain(box: Outbox, worker: Worker, until: str, timeout: float = 20.0) -> list[dict]:
    """Messages until one of type ``until`` (frames included), from a worker running in its thread."""
    got: list[dict] = []
    end = time.time() + timeout
    while time.time() < end:
        got += box.take()
        if any(m["type"] == until for m in got):
            return got
        time.sleep(0.01)
    raise AssertionError(f"no {until!r} message in {[m['type'] for m in got]}")


def test_the_worker_survives_every_error_and_keeps_answering(monkeypatch):
    box = Outbox()
    w = Worker(box)
    try:
        w.submit({"type": "step"})  # before hello
        assert "send hello first" in _drain(box, w, "error")[-1]["message"]
        w.submit(parse('{"type": "hello", "query": "?hidden=3&lr=99"}'))
        got = _drain(box, w, "frame")
        assert any(m["type"] == "error" and "in the link: lr" in m["message"] for m in got)
        w.submit(parse('{"type": "set", "field": "batch_size", "value": 0}'))
        assert "batch_size" in _drain(box, w, "error")[-1]["message"]
        w.submit(parse('{"type": "upload", "name": "bad.csv", "text": "1,2\\n"}'))
        assert "at least 4 are needed" in _drain(box, w, "error")[-1]["message"]
        monkeypatch.setattr(Session, "step", lambda self: 1 / 0)  # an internal error: reported, not fatal
        w.submit({"type": "step"})
        assert "internal error: ZeroDivisionError" in _drain(box, w, "error")[-1]["message"]
        monkeypatch.undo()
        w.submit({"type": "step"})
        frames = [m for m in _drain(box, w, "frame") if m["type"] == "frame"]
        assert frames[-1]["iteration"] == 1 and w.alive
    finally:
        w.close()
    assert not w.alive


def test_playing_sends_at_most_30_frames_a_second_and_stops_at_the_condition():
    sent = []
    box = Outbox(notify=lambda: sent.extend(m for m in box.take() if m["type"] == "frame"))
    w = Worker(box)
    try:
        w.submit(parse('{"type": "hello", "query": "?hidden=2&stop_iter=1500"}'))
        start = time.time()
        w.submit({"type": "play"})
        while time.time() - start < 30 and not (sent and sent[-1]["stopped"]):
            time.sleep(0.02)
        elapsed = time.time() - start
    finally:
        w.close()
    assert sent[-1]["iteration"] == 1500 and sent[-1]["stopped"] == "reached 1500 iterations"
    playing = [f for f in sent if f["running"]]
    assert len(playing) <= 31 * elapsed + 2
    assert max(b["iteration"] - a["iteration"] for a, b in itertools.pairwise(sent)) > 1  # several steps a frame


# ------------------------------------------------------------------------------------------------ the server
starlette_testclient = pytest.importorskip("starlette.testclient", reason="could not import 'starlette': "
                                           "No module named 'starlette'")


@pytest.fixture
def client():
    pytest.importorskip("httpx")
    from backprop.playground.server import create_app

    with starlette_testclient.TestClient(create_app()) as c:
        yield c


def _until(ws, kind: str, limit: int = 200) -> list[dict]:
    got = []
    for _ in range(limit):
        got.append(ws.receive_json())
        if got[-1]["type"] == kind:
            return got
    raise AssertionError(f"no {kind}: {[m['type'] for m in got]}")


def _frame_at(ws, iteration: int, limit: int = 200) -> dict:
    for _ in range(limit):
        m = ws.receive_json()
        if m["type"] == "frame" and m["iteration"] == iteration:
            return m
    raise AssertionError(f"no frame of iteration {iteration}")


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and "backprop playground" in r.text and "default-src 'self'" in r.headers[
        "content-security-policy"]
    for name in ("app.js", "style.css", "index.html"):
        assert client.get(f"/static/{name}").status_code == 200
    # nothing outside the page: no CDN, no other host
    page = r.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert not re.search(r"(src|href)=\"https?://|url\(https?://|import .* from ['\"]https?:", page)


@pytest.mark.parametrize("path", ["/static/../server.py", "/static/..%2Fserver.py", "/static/%2e%2e/%2e%2e/pyproject.toml",
                                  "/static/..%5c..%5cserver.py", "/static//etc/passwd", "/server.py", "/static/",
                                  "/static/app.js/../../session.py"])
def test_no_path_outside_the_static_folder(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "the playground serves only its own files" in r.text
    assert client.get("/").status_code == 200  # still running


def test_the_websocket_protocol(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "hello", "query": "?dataset=xor&hidden=3&act=relu&lr=0.1"})
        got = _until(ws, "frame")
        hello = got[0]
        model = next(m for m in got if m["type"] == "model")
        assert hello["type"] == "hello" and model["sizes"] == [2, 3, 2] and "dataset=xor" in model["query"]
        assert got[-1]["iteration"] == 0 and got[-1]["heat"]["size"] == 64
        ws.send_json({"type": "step"})
        frame = _frame_at(ws, 1)
        assert frame["phase"] == "update" and len(frame["grads"]) == 2
        ws.send_json({"type": "set", "field": "lr", "value": 1e9})  # out of range: an error, nothing else
        err = _until(ws, "error")[-1]
        assert err["field"] == "lr" and "expected a number in (0, 10]" in err["message"]
        ws.send_text("not json")
        assert "JSON object" in _until(ws, "error")[-1]["message"]
        ws.send_bytes(b"\x00\x01")
        assert "binary messages are not accepted" in _until(ws, "error")[-1]["message"]
        ws.send_json({"type": "upload", "name": "bad.csv", "text": "x1,x2,label\n1,2,zero\n3,4,1\n5,6,0\n7,8,1\n"})
        assert "line 2: the label is 'zero', not a number" in _until(ws, "error")[-1]["message"]
        ws.send_json({"type": "explain", "layer": 2, "from": 1, "to": 0})
        e = _until(ws, "explain")[-1]
        assert e["hand"] == pytest.approx(e["engine"], abs=1e-10) and e["rows"]
        ws.send_json({"type": "export", "what": "model"})
        exported = _until(ws, "export")[-1]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / exported["name"]
            path.write_bytes(base64.b64decode(exported["base64"]))
            assert bp.io.load(path) is not None
        ws.send_json({"type": "upload", "name": "ok.csv", "text": "".join(f"{i % 7},{i % 5},{i % 2}\n" for i in range(40))})
        got = _until(ws, "notice")
        assert any(m["type"] == "model" and m["config"]["dataset"] == "csv" and "dataset=csv" in m["query"] for m in got)
        ws.send_json({"type": "step"})
        assert _frame_at(ws, 1)["phase"] == "update"  # the server is still there and trains the upload


def test_each_connection_is_its_own_session(client):
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        a.send_json({"type": "hello", "query": ""})
        b.send_json({"type": "hello", "query": ""})
        ida = _until(a, "frame")[0]["session"]
        idb = _until(b, "frame")[0]["session"]
        a.send_json({"type": "step"})
        assert _frame_at(a, 1)["phase"] == "update"
        b.send_json({"type": "substep"})
        fb = _until(b, "frame")[-1]
        assert ida != idb and fb["iteration"] == 0 and fb["phase"] == "forward"


def test_a_page_of_another_origin_cannot_connect(client):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as info, \
            client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws:
        ws.receive_json()
    assert info.value.code == 1008


# ------------------------------------------------------------------------------------------------ the command
def test_the_command_says_how_to_install_the_extra(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "starlette" or m.startswith("starlette.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "starlette", None)
    assert backprop_main(["playground", "--no-browser"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "backprop[playground]"' in err[0] and "backprop playground needs" in err[0]


def test_help_names_the_options():
    out = subprocess.run([sys.executable, "-m", "backprop", "playground", "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for option in ("--host", "--port", "--no-browser"):
        assert option in out


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_the_server_prints_its_address_serves_and_stops_cleanly_on_ctrl_c():
    import http.client

    proc = subprocess.Popen([sys.executable, "-m", "backprop", "playground", "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"backprop playground: http://127\.0\.0\.1:(\d+)/ ", line)
        assert m, line
        port = int(m.group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/static/../../cli/main.py")  # sent as written: no client normalises it
        r = conn.getresponse()
        assert r.status == 404 and b"serves only its own files" in r.read()
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "backprop playground: stopped" in out and "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_stops_the_server_while_a_page_is_connected_and_playing():
    sync_client = pytest.importorskip("websockets.sync.client")
    proc = subprocess.Popen([sys.executable, "-m", "backprop", "playground", "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r":(\d+)/", proc.stdout.readline()).group(1))
        with sync_client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            ws.send(json.dumps({"type": "hello", "query": "?hidden=8,8&act=tanh,tanh"}))
            ws.send(json.dumps({"type": "play"}))
            for _ in range(200):
                m = json.loads(ws.recv(timeout=10))
                if m["type"] == "frame" and m["iteration"] > 20:
                    break
            start = time.time()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "backprop playground: stopped" in out, err
    assert "Traceback" not in err and time.time() - start < 10, err


def test_the_page_is_package_data():
    """pyproject.toml's package-data ships every file the server may send (they are in the wheel)."""
    import fnmatch

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from backprop.playground.server import STATIC, static_files

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "backprop.playground"]
    names = [p.name for p in STATIC.iterdir() if p.is_file()]
    assert sorted(static_files()) == sorted(names) == ["app.js", "index.html", "style.css"]
    for name in names:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name


def test_the_exported_model_is_a_plain_safetensors_file_pytorch_reads(tmp_path):
    s = Session(small(hidden=(4,), activations=("relu",)))
    s.run(30)
    path = tmp_path / "m.safetensors"
    path.write_bytes(s.export_model())
    from safetensors.numpy import load_file

    tensors = load_file(path)
    assert sorted(tensors) == ["0.bias", "0.weight", "2.bias", "2.weight"]  # torch.nn.Sequential's names
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_torch

    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    net.load_state_dict(load_torch(path))
    f = s.data.f_test
    np.testing.assert_allclose(net(torch.from_numpy(f)).detach().numpy(), s._outputs(f)[1].data, atol=1e-12)


def test_a_port_in_use_is_one_clear_line():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "backprop", "playground", "--port", str(port), "--no-browser"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"backprop: error: cannot listen on 127.0.0.1:{port}: Address already in use "
                                   "(--port 0 picks a free port)")


def test_a_link_that_does_not_fit_its_data_opens_the_defaults_and_says_why():
    box = Outbox()
    w = Worker(box)
    try:
        w.submit(parse('{"type": "hello", "query": "?dataset=xor&points=1:1:7"}'))  # class 7 of a 2-class set
        got = _drain(box, w, "frame")
    finally:
        w.close()
    assert any(m["type"] == "error" and "a point's class must be 0 to 1" in m["message"] for m in got)
    assert w.session is not None and w.session.config.points == ()
